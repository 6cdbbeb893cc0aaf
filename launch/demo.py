"""The whole pipeline in one command: raw corpus -> shards -> pretrained BERT -> Hugging Face export -> finetuned
classifier compared with the same model finetuned from random weights -> reports.

    python -m launch.demo [out=checkpoints/demo] [nproc=2] [seeds=1,2,3] [corpus=PATH]
                          [prep:KEY=VALUE ...] [pretrain:KEY=VALUE ...] [finetune:KEY=VALUE ...]

Defaults (the embedded corpus): the English Wikipedia dump and the Pang-Lee polarity sentences that gensim's wheel
ships; bert-mini, 2 processes with ZeRO-2 on the CPU (``engine=gpu`` when CUDA is there). ``stage:KEY=VALUE`` is a
Hydra override passed to that stage (``pretrain:model=bert-base pretrain:max_steps=100000 prep:input=/data/*.bz2``),
so the same command scales up. Every stage's config is composed first, so a typo fails before any work. Each stage
is skipped when its output is already complete, so a rerun resumes. Slurm: run the stages with launch.submit or
``-m hydra/launcher=slurm`` (README).
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PREP = ["seq_len=128", "tokenizer.vocab_size=8192", "shard_mb=0.25", "val_fraction=0.02", "progress=false"]
PRETRAIN = [
    "model=bert-mini",
    "engine.zero_stage=2",
    "global_batch_size=32",
    "max_steps=400",
    "optim.lr=1e-3",
    "optim.warmup_steps=40",
    "logger.every_steps=10",
    "eval.every_steps=100",
    "checkpoint.every_steps=100",
    "logger.progress=false",
]
FINETUNE = [
    "task=custom_classification",
    "task.text_columns=[text]",
    "task.label_column=label",
    "epochs=15",
    "global_batch_size=16",
    "optim.lr=1e-3",
    "logger.progress=false",
]


def gensim_data(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gensim")
    if spec is None:
        raise SystemExit("the demo corpus comes with gensim: pip install -e '.[demo]' (or give corpus=PATH)")
    return Path(spec.submodule_search_locations[0]) / "test" / "test_data" / name


def parse(argv: list[str]) -> dict:
    opts = {
        "out": "checkpoints/demo",
        "nproc": "2",
        "seeds": "1,2,3",
        "corpus": None,
        "prep": [],
        "pretrain": [],
        "finetune": [],
    }
    for arg in argv:
        stage, sep, override = arg.partition(":")
        if sep and stage in ("prep", "pretrain", "finetune") and "=" in override:
            opts[stage].append(override)
            continue
        key, eq, value = arg.partition("=")
        if not eq or key not in opts or key in ("prep", "pretrain", "finetune"):
            raise SystemExit(
                f"unknown argument {arg!r}: expected out=, nproc=, seeds=, corpus= or "
                f"prep:/pretrain:/finetune:KEY=VALUE (see python -m launch.demo --help)"
            )
        opts[key] = value
    return opts


def polarity_csvs(out: Path) -> tuple[Path, Path]:
    """gensim's 200 Pang-Lee sentences ('__label__pos text') as train/validation CSVs (a fixed 75/25 split)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    # The file is Windows-1252 (an em dash is byte 0x97), as the original Pang-Lee release.
    for line in gensim_data("pang_lee_polarity.cor").read_text(encoding="cp1252", errors="replace").splitlines():
        label, _, text = line.partition(" ")
        if label.startswith("__label__") and text.strip():
            rows.append({"text": text.strip(), "label": label.removeprefix("__label__")})
    splits = {"train": [], "validation": []}
    for r in rows:
        splits["validation" if zlib.crc32(r["text"].encode()) % 4 == 0 else "train"].append(r)
    paths = []
    for name, items in splits.items():
        path = out / f"{name}.csv"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label"])
            w.writeheader()
            w.writerows(items)
        paths.append(path)
    return paths[0], paths[1]


def run(title: str, cmd: list[str], log: Path) -> float:
    print(f"\n== {title}\n   {shlex.join(cmd)}\n   log: {log}", flush=True)
    t = time.perf_counter()
    with open(log, "w") as f:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        p = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    dt = time.perf_counter() - t
    if p.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise SystemExit(f"{title} failed (exit {p.returncode}) after {dt:.0f}s; last lines of {log}:\n{tail}")
    print(f"   done in {dt:.0f}s", flush=True)
    return dt


def check_configs(prep: list[str], pretrain: list[str], finetune: list[str], nproc: int = 1) -> None:
    """Compose and check every stage's config before any work (the checks launch.submit runs: pipeline/preflight.py):
    a misspelt key or preset, or a pretraining batch that does not split over nproc ranks, fails here in one line."""
    from hydra import compose, initialize_config_dir

    import data_prep.config  # noqa: F401 - registers data_prep_schema
    from pipeline.cli import one_line
    from pipeline.config import ConfigError
    from pipeline.preflight import check_job

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        try:
            compose(config_name="data_prep", overrides=prep)
        except Exception as e:  # noqa: BLE001 - Hydra raises several types; all mean a bad override
            raise SystemExit(f"error: prep: {one_line(e) or e}") from e
    for name, overrides, world in (("pretrain", pretrain, nproc), ("finetune", finetune, 1)):  # finetune: 1 process
        try:
            check_job(name, overrides, world)
        except ConfigError as e:
            raise SystemExit(f"error: {name}: {e}") from e


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    o = parse(argv)
    out = Path(o["out"]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    nproc = int(o["nproc"])
    seeds = [s for s in str(o["seeds"]).split(",") if s]
    import torch

    engine = "engine=gpu" if torch.cuda.is_available() else "engine=cpu"
    corpus = o["corpus"] or str(gensim_data("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"))
    data, pre, hf, ft = out / "data", out / "pretrain", out / "hf", out / "finetune"
    train_csv, val_csv = polarity_csvs(out / "polarity")
    prep_args = [f"input={corpus}", f"output={data}", *PREP, *o["prep"]]
    pre_args = [f"data.path={data}", f"run_dir={pre}", engine, *PRETRAIN, *o["pretrain"]]
    ft_args = [
        f"task.data_files.train={train_csv}",
        f"task.data_files.validation={val_csv}",
        f"model.path={hf}",
        engine,
        *FINETUNE,
        *o["finetune"],
    ]
    check_configs(prep_args, pre_args, ft_args, nproc)
    t0 = time.perf_counter()
    timings = {}

    if not (data / "manifest.json").is_file():
        timings["data_prep"] = run(
            "data_prep: corpus -> tokenizer -> NSP shards",
            [sys.executable, "-m", "data_prep", *prep_args],
            logs / "data_prep.log",
        )
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
        if nproc > 1
        else [sys.executable]
    )
    summary_file = pre / "summary.json"
    if not summary_file.is_file() or json.loads(summary_file.read_text()).get("stopped_by_signal"):
        timings["pretrain"] = run(
            f"pretrain: MLM + NSP, {nproc} processes",
            [*launcher, "-m", "pipeline.pretrain", *pre_args],
            logs / "pretrain.log",
        )
    timings["export"] = run(
        "export to Hugging Face",
        [sys.executable, "-m", "pipeline.export", f"run_dir={pre}", f"output={hf}"],
        logs / "export.log",
    )
    if not (ft / "multirun.yaml").is_file() or len(list(ft.glob("*/results.json"))) < 2 * len(seeds):
        timings["finetune"] = run(
            f"finetune: polarity, pretrained vs random init, seeds {','.join(seeds)}",
            [
                sys.executable,
                "-m",
                "pipeline.finetune",
                "-m",
                *ft_args,
                "model.random_init=false,true",
                f"seed={','.join(seeds)}",
                f"hydra.sweep.dir={ft}",
            ],
            logs / "finetune.log",
        )
    reports = [pre, ft]
    run(
        "reports",
        [
            sys.executable,
            "-c",
            "import sys; from pipeline.report import report\nfor d in sys.argv[1:]: print(report(d))",
            *map(str, reports),
        ],
        logs / "report.log",
    )
    return headline(out, pre, hf, ft, timings, time.perf_counter() - t0)


def headline(out: Path, pre: Path, hf: Path, ft: Path, timings: dict, total: float) -> int:
    summary = json.loads((pre / "summary.json").read_text())
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    scores: dict[bool, list[float]] = {False: [], True: []}
    for res_file in ft.glob("*/results.json"):
        res = json.loads(res_file.read_text())
        scores[bool(res["source"].get("random_init"))].append(res["validation"]["accuracy"])
    med = {k: statistics.median(v) if v else float("nan") for k, v in scores.items()}
    lines = [
        "# Demo results",
        "",
        f"- data: {manifest['documents']['used']} documents -> {manifest['splits']['train']['samples']} train / "
        f"{manifest['splits'].get('val', {}).get('samples', 0)} val instances in {len(manifest['shards'])} shards: "
        f"`{out / 'data'}`",
        f"- pretraining: {summary['step']} steps, {summary['tokens']:,} tokens; validation MLM accuracy "
        f"{summary.get('val_mlm_acc', float('nan')):.3f}, NSP accuracy {summary.get('val_nsp_acc', float('nan')):.3f}, "
        f"loss {summary.get('val_loss', float('nan')):.3f}: `{pre}` (report: `{pre / 'report' / 'report.md'}`)",
        f"- Hugging Face export: `{hf}`",
        f"- polarity accuracy (validation, median of {len(scores[False])} seeds): pretrained **{med[False]:.3f}** vs "
        f"random init **{med[True]:.3f}** (seeds: {sorted(scores[False])} vs {sorted(scores[True])}): `{ft}`",
        f"- time: {total:.0f}s in all ({', '.join(f'{k} {v:.0f}s' for k, v in timings.items())})",
    ]
    text = "\n".join(lines) + "\n"
    (out / "demo_summary.md").write_text(text)
    print("\n" + text + f"\n(written to {out / 'demo_summary.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
