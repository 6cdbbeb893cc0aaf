"""python -m pipeline.report run_dir=DIR [out=DIR]

PNG plots and a Markdown summary of a pretraining run, a finetuning run, or a sweep (a folder of either), from the
files every run writes (metrics.jsonl, summary.json, results.json, .hydra/overrides.yaml): for users without W&B.
Written to ``<run_dir>/report/`` (report.md next to the plots).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.config import ConfigError  # noqa: E402
from pipeline.results import job_dirs, overrides, read_json  # noqa: E402


class ReportError(ConfigError):
    """A run_dir that is not a run or sweep: reported in one line (pipeline/cli.py)."""


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def series(recs: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in recs if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot(path: Path, title: str, panels: list[tuple[str, list[tuple[str, list, list]]]], logy: bool = False) -> str:
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
    for ax, (ylabel, lines) in zip(axes[0], panels):
        for label, xs, ys in lines:
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 12 else None, ms=3, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if logy:
            ax.set_yscale("log")
        if any(xs for _, xs, _ in lines):
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(rows: list[tuple[str, object]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {fmt(v)} |" for k, v in rows)]


def pretrain_report(run: Path, out: Path) -> list[str]:
    recs = read_jsonl(run / "metrics.jsonl")
    train = [r for r in recs if "loss" in r]
    summary = read_json(run / "summary.json")
    s = lambda k: series(recs, k)  # noqa: E731
    figs = [
        plot(
            out / "loss.png",
            f"{run.name}: losses",
            [
                ("loss", [("train", *s("loss")), ("val", *s("val_loss"))]),
                ("MLM loss", [("train", *s("mlm_loss")), ("val", *s("val_mlm_loss"))]),
                ("NSP loss", [("train", *s("nsp_loss")), ("val", *s("val_nsp_loss"))]),
            ],
        ),
        plot(
            out / "accuracy.png",
            f"{run.name}: accuracy",
            [
                ("MLM accuracy", [("train", *s("mlm_acc")), ("val", *s("val_mlm_acc"))]),
                ("NSP accuracy", [("train", *s("nsp_acc")), ("val", *s("val_nsp_acc"))]),
            ],
        ),
        plot(
            out / "lr.png",
            f"{run.name}: learning rate and gradient norm",
            [("learning rate", [("lr", *s("lr"))]), ("gradient norm", [("grad_norm", *s("grad_norm"))])],
        ),
        plot(
            out / "throughput.png",
            f"{run.name}: throughput",
            [
                ("tokens/s", [("tokens/s", *s("tokens_per_s"))]),
                ("fraction of time waiting for data", [("data wait", *s("data_wait_frac"))]),
            ],
        ),
    ]
    rates = [r["tokens_per_s"] for r in train[1:]] or [r["tokens_per_s"] for r in train]
    last = train[-1] if train else {}
    rows = [
        ("steps", f"{summary.get('step', last.get('step'))} of {summary.get('max_steps', '?')}"),
        ("final train loss (MLM + NSP)", last.get("loss")),
        ("final MLM accuracy (train)", last.get("mlm_acc")),
        *((k, summary[k]) for k in ("val_loss", "val_mlm_acc", "val_nsp_acc") if k in summary),
        ("tokens seen", summary.get("tokens", last.get("tokens"))),
        ("median tokens/s", statistics.median(rates) if rates else None),
        (
            "median MFU",
            statistics.median([r["mfu"] for r in train if "mfu" in r])
            if any("mfu" in r for r in train)
            else "n/a (no peak FLOP/s known for this device)",
        ),
        ("skipped steps (non-finite loss)", summary.get("skipped_steps", last.get("skipped_steps"))),
        ("bad samples replaced", summary.get("bad_samples")),
        ("skipped shards", summary.get("skipped_shards")),
        ("latest checkpoint", summary.get("checkpoint")),
    ]
    for name, src in (summary.get("sources") or {}).items():  # a blend: what each source supplied
        seen = f"{src.get('samples')} samples, {src.get('tokens')} tokens, {fmt(src.get('passes', 0.0))} passes"
        rows.append((f"source {name}", f"{seen}, weight {fmt(src.get('weight', '-'))}"))
    if start := summary.get("init_from"):
        rows.append(("started from", f"{start['run']} at step {start['step']} ({start['tokens']} tokens)"))
        figs.append(phases_plot(run, out, recs, start))
    return [f"# Pretraining run `{run}`", "", *table(rows), "", *(f"![{f}]({f})" for f in figs if f)]


def phases_plot(run: Path, out: Path, recs: list[dict], start: dict) -> str | None:
    """Both phases' training loss on one token axis: the run it started from up to its starting step, then this run
    (its tokens counted from there)."""
    before = [r for r in read_jsonl(Path(start["run"]) / "metrics.jsonl") if r.get("step", 0) <= start["step"]]
    lines = []
    for label, rs, offset in (
        (f"phase 1: {Path(start['run']).name}", before, 0),
        (f"phase 2: {run.name}", recs, start["tokens"]),
    ):
        pts = [(r["tokens"] + offset, r["loss"]) for r in rs if isinstance(r.get("loss"), float) and "tokens" in r]
        lines.append((label, [p[0] for p in pts], [p[1] for p in pts]))
    if not lines[0][1]:
        return None  # the first run's metrics are gone: nothing to join
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for label, xs, ys in lines:
        ax.plot(xs, ys, label=label)
    ax.axvline(start["tokens"], color="grey", ls=":", lw=1)
    ax.set_xlabel("tokens")
    ax.set_ylabel("train loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"{run.name}: both phases")
    fig.tight_layout()
    fig.savefig(out / "phases.png", dpi=110)
    plt.close(fig)
    return "phases.png"


def finetune_report(run: Path, out: Path) -> list[str]:
    res = json.loads((run / "results.json").read_text())
    recs = read_jsonl(run / "metrics.jsonl")
    main = res["main_metric"]
    val_keys = sorted({k for r in recs for k in r if k.startswith("val_") and k != "val_loss"})
    figs = [
        plot(
            out / "finetune.png",
            f"{run.name}: {res['task']}",
            [
                ("train loss", [("loss", *series(recs, "loss"))]),
                ("validation", [(k[4:], *series(recs, k)) for k in val_keys]),
            ],
        )
    ]
    best = f"{res.get('best_step')} of {res.get('steps')}"
    rows = [
        ("task", res["task"]),
        ("main metric", main),
        ("best step", best),
        *((f"validation {k}", v) for k, v in res["validation"].items()),
        *((f"test {k}", v) for k, v in (res.get("test") or {}).items()),
        ("seed", res.get("seed")),
        ("learning rate", res["hyperparameters"].get("lr")),
        ("source", res.get("source", {}).get("path")),
        ("random init", res.get("source", {}).get("random_init", False)),
    ]
    return [f"# Finetuning run `{run}`", "", *table(rows), "", *(f"![{f}]({f})" for f in figs)]


def sweep_report(sweep: Path, out: Path) -> list[str]:
    jobs = job_dirs(sweep)
    ovs = {j: overrides(j) for j in jobs}
    varying = sorted({k for o in ovs.values() for k in o if len({x.get(k) for x in ovs.values()}) > 1})
    label = lambda j: " ".join(f"{k}={ovs[j].get(k, '')}" for k in varying) or j.name  # noqa: E731
    finetune = any((j / "results.json").is_file() for j in jobs)
    lines = [
        f"# Sweep `{sweep}`: {len(jobs)} jobs",
        "",
        "| job | " + " | ".join(varying) + " | result |",
        "|---|" + "---|" * (len(varying) + 1),
    ]
    names, values = [], []
    for j in jobs:
        if finetune:
            res = read_json(j / "results.json") or None
            value = res["validation"][res["main_metric"]] if res else None
            metric = res["main_metric"] if res else "?"
        else:
            summary = read_json(j / "summary.json")
            value, metric = summary.get("val_loss"), "val_loss"
        lines.append(f"| {j.name} | " + " | ".join(ovs[j].get(k, "") for k in varying) + f" | {metric} {fmt(value)} |")
        if value is not None:
            names.append(label(j))
            values.append(value)
    fig, axes = plt.subplots(1, 2 if not finetune else 1, figsize=(11 if not finetune else 7, 3.8), squeeze=False)
    axes[0][0].barh(names, values)
    axes[0][0].set_xlabel("validation " + ("main metric" if finetune else "loss"))
    if not finetune:
        for j in jobs:
            axes[0][1].plot(*series(read_jsonl(j / "metrics.jsonl"), "loss"), label=label(j))
        axes[0][1].set_xlabel("step")
        axes[0][1].set_ylabel("train loss")
        axes[0][1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=110)
    plt.close(fig)
    return [*lines, "", "![sweep](sweep.png)"]


def report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run = Path(run_dir)
    if not run.is_dir():
        raise ReportError(f"run_dir={run}: no such directory")
    dest = Path(out) if out else run / "report"
    dest.mkdir(parents=True, exist_ok=True)
    if (run / "results.json").is_file():
        lines = finetune_report(run, dest)
    elif (run / "metrics.jsonl").is_file():
        lines = pretrain_report(run, dest)
    elif job_dirs(run):
        lines = sweep_report(run, dest)
    else:
        raise ReportError(f"{run}: neither a run (metrics.jsonl, results.json) nor a sweep (jobs with .hydra/)")
    (dest / "report.md").write_text("\n".join(lines) + "\n")
    return dest / "report.md"


def main() -> None:
    import hydra

    from pipeline.cli import run, user_errors

    @hydra.main(config_path="../conf", config_name="report", version_base="1.3")
    def _run(cfg) -> None:
        with user_errors():
            print(report(cfg.run_dir, cfg.out))

    run(_run, "report")


if __name__ == "__main__":
    main()
