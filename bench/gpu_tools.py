"""Helpers of the offline GPU scripts (bench/gpu_check.sh, bench/gpu_demo.sh): what they carry, and the checks and
rows of bench/gpu_check.sh. Every subcommand exits non-zero with a message rather than print a number it cannot
vouch for.

Here, where the registry is:
    python bench/gpu_tools.py wheels DIR [EXTRA...]  # the wheels an offline GPU machine lacks (/work/shared/GPU.md)
    python bench/gpu_tools.py fits PATH...           # the tracked files and PATHs fit one transfer (64 MiB)
There, or here under CPU=1:
    python bench/gpu_tools.py check                  # varlen attention == the SDPA block mask, free and fixed shapes
    python bench/gpu_tools.py gemm MODEL:SEQ:MICRO.. # TFLOP/s of the models' linear layers alone (a ceiling)
    python bench/gpu_tools.py pretrained RUN STEPS   # a pretraining run took STEPS finite steps, evaluated, saved
    python bench/gpu_tools.py finetuned RUN STEPS    # a finetuning run took STEPS steps and wrote its results
    python bench/gpu_tools.py graphs RUN             # a compiled run never recompiled after its first step
    python bench/gpu_tools.py loads HF_DIR           # an export loads as BertForPreTraining, every weight matched
    python bench/gpu_tools.py row NAME RUN MODEL SEQ ZERO MICRO VARIANT SECONDS  # one row of the table
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# What an offline GPU machine with the 'cuda' image lacks of our dependencies (/work/shared/GPU.md; it has torch,
# transformers, tokenizers, peft, numpy, scipy, scikit-learn, pandas, pyarrow, psutil, py-cpuinfo, ninja, msgpack,
# einops, tqdm, pyyaml, cloudpickle). data_prep's corpus readers (blingfire 42 MB, mwparserfromhell, zstandard) only
# where data_prep runs there (gpu_demo.sh). Each at the version this environment runs (tested here), so that the
# pins between them hold: hydra-core 1.3 wants antlr4 4.9 (an sdist only, as are deepspeed and seqeval 1.x, which
# are built here as pure-Python wheels), pydantic its exact pydantic-core and a newer typing-extensions.
WHEELS = [
    "webdataset", "braceexpand", "hydra-core", "omegaconf", "antlr4-python3-runtime", "submitit",
    "hydra-submitit-launcher", "seqeval", "hjson", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
    "typing-extensions", "deepspeed",
]  # fmt: skip
PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:", "--no-deps"] + [
    x for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64") for x in ("--platform", p)
]
TRANSFER = 64 * 2**20  # what one device call carries: tracked files, untracked ones, carried folders


def fail(msg: str) -> None:
    print(f"FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def wheels(folder: Path, extra: list[str]) -> None:
    """Wheels for Python 3.12 manylinux at this environment's versions: a binary wheel where the registry has one,
    else one built here from the sdist (pure Python; DeepSpeed with no compiled ops). One version of each project
    (two stop the whole install there)."""
    import tempfile
    from importlib.metadata import PackageNotFoundError, version

    from packaging.utils import canonicalize_name, parse_wheel_filename

    folder.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    for name in WHEELS + extra:
        try:
            pin = f"{name}=={version(name)}"
        except PackageNotFoundError:
            pin = name
        want = canonicalize_name(name)
        have = {f: parse_wheel_filename(f.name) for f in folder.glob("*.whl")}
        have = {f: v for f, (n, v, _, _) in have.items() if n == want}
        if "==" in pin and any(str(v) == pin.split("==")[1] for v in have.values()):
            continue
        for f in have:
            f.unlink()  # another version
        quiet = ["-q", "--disable-pip-version-check"]
        got = subprocess.run([*pip, "download", *quiet, *PLATFORM, "-d", str(folder), pin], capture_output=True)
        if got.returncode != 0:
            with tempfile.TemporaryDirectory() as sd:
                subprocess.run([*pip, "download", *quiet, "--no-deps", "--no-binary=:all:", "-d", sd, pin], check=True)
                sdist = next(Path(sd).iterdir())
                build = [*pip, "wheel", *quiet, "--no-deps", "--no-build-isolation", "-w", str(folder), str(sdist)]
                subprocess.run(build, check=True, env={**os.environ, "DS_BUILD_OPS": "0"})
        print(f"{pin}: {', '.join(f.name for f in folder.glob('*.whl') if parse_wheel_filename(f.name)[0] == want)}")
    print(f"{folder}/: {len(list(folder.glob('*.whl')))} wheels, {size(folder) / 2**20:.1f} MiB")


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).is_dir() else 0


def fits(paths: list[Path]) -> None:
    """The tracked and untracked-not-ignored files plus ``paths`` must fit one transfer; over it, say what is big."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True
    ).stdout
    tree = sum((ROOT / f).stat().st_size for f in out.decode().split("\0") if f and (ROOT / f).is_file())
    parts = {"tracked and untracked files": tree, **{f"{p}/": size(p) for p in paths}}
    total = sum(parts.values())
    print("to carry: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in parts.items()) + f"; {total / 2**20:.1f} MiB")
    if total > TRANSFER:
        big = sorted((f for p in paths for f in Path(p).rglob("*") if f.is_file()), key=lambda f: -f.stat().st_size)
        fail(f"{total / 2**20:.1f} MiB is over the 64 MiB transfer; largest: {[str(f) for f in big[:5]]}")


def model_cfg(name: str, **kw):
    from omegaconf import OmegaConf

    from pipeline.pretrain.config import ModelConfig

    raw = OmegaConf.load(ROOT / "conf/model" / f"{name}.yaml")
    raw.pop("defaults", None)
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), raw, kw)


def check() -> None:
    """Varlen (flash on CUDA) against the block-diagonal SDPA mask: same weights, same packed batches, with free
    shapes and with fixed ones (empty rows and empty segments, which the compiled fast path feeds the kernel)."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from pipeline.pretrain.masking import Masker
    from pipeline.pretrain.model import build_model
    from pipeline.pretrain.packing import pack_batch

    cuda = torch.cuda.is_available()
    dev, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    if cuda:
        try:
            from torch.nn.attention.varlen import varlen_attn  # noqa: F401
        except ImportError as e:
            fail(f"torch {torch.__version__} has no torch.nn.attention.varlen ({e}): varlen rows would be SDPA")
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(24):
        a, b = int(rng.integers(4, 60)), int(rng.integers(4, 60))
        body = rng.integers(5, 1000, a + b)
        samples.append((np.concatenate([[2], body[:a], [3], body[a:], [3]]).astype(np.int64), a, int(rng.integers(2))))
    special = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    masker = Masker(SimpleNamespace(special_ids=special, vocab_size=1000), 0.15, None, 8, False, fixed_width=128)
    unpacked = masker(samples, np.random.default_rng(1))
    models = {}
    for attn in ("sdpa", "varlen"):
        torch.manual_seed(0)
        cfg = model_cfg("bert-tiny", attention=attn, hidden_dropout=0.0, attention_dropout=0.0)
        models[attn] = build_model(cfg, 1000).to(dev, dtype).eval()
    said = []
    free_rows = pack_batch(unpacked, 128, 8)["input_ids"].shape[0]
    for fixed, rows in ((False, None), (True, free_rows + 3)):  # fixed: 3 empty rows, and empty segments
        batch = pack_batch(unpacked, 128, 8, fixed=fixed, rows=rows)
        batch = {k: v.to(dev) for k, v in batch.items() if k != "meta"}
        with torch.no_grad():
            a, b = (models[attn](**batch) for attn in ("sdpa", "varlen"))
        for k in ("mlm_loss", "nsp_loss"):
            if not (math.isfinite(float(b[k])) and abs(float(a[k]) - float(b[k])) <= 2e-2 * max(1.0, abs(float(a[k])))):
                fail(f"varlen {k} {float(b[k]):.5f} differs from the SDPA block mask's {float(a[k]):.5f} on {dev}"
                     f" ({'fixed' if fixed else 'free'} shapes)")  # fmt: skip
        shape = "x".join(map(str, batch["input_ids"].shape))
        mlm = f"{float(a['mlm_loss']):.4f} vs {float(b['mlm_loss']):.4f}"
        said.append(f"{'fixed' if fixed else 'free'} shapes {shape}: mlm_loss {mlm}")
    print(f"on {dev}, " + "; ".join(said))


def gemm(cases: list[str]) -> None:
    """The linear layers of one micro-batch (QKV, output, FFN up and down; the masked-only decoder left out):
    forward + both backward GEMMs, timed alone. The ceiling a step's matmuls could reach on this device."""
    import time

    import torch

    from pipeline.pretrain.mfu import peak_for

    cuda = torch.cuda.is_available()
    dev, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    peak = peak_for(torch.cuda.get_device_name()) if cuda else None
    for case in cases:
        name, seq, micro = case.split(":")
        cfg = model_cfg(name)
        t, h, f = int(micro) * int(seq), cfg.hidden_size, cfg.intermediate_size
        shapes = [(h, 3 * h), (h, h), (h, f), (f, h)]
        rand = lambda *shape: torch.randn(*shape, device=dev, dtype=dtype)  # noqa: E731
        xs = [(rand(t, k), rand(k, n)) for k, n in shapes]
        gs = [rand(t, n) for _, n in shapes]

        def layer(xs=xs, gs=gs):
            for (x, w), g in zip(xs, gs):
                x @ w  # forward
                g @ w.T  # grad of the input
                x.T @ g  # grad of the weight

        flops = sum(3 * 2 * t * k * n for k, n in shapes)
        for _ in range(3):
            layer()
        reps = 20 if cuda else 2
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            layer()
        if cuda:
            torch.cuda.synchronize()
        tflops = flops / ((time.perf_counter() - t0) / reps) / 1e12
        frac = f"{tflops / peak:.0%} of {peak:g}" if peak else "unknown peak"
        print(f"| GEMM ceiling {name} s{seq} x{micro} | {tflops:.4g} TFLOP/s | {frac} |")


def metrics(run: Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        fail(f"{path} is missing")
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def pretrained(run: Path, steps: int) -> None:
    recs = metrics(run)
    train = [r for r in recs if "loss" in r]
    val = [r for r in recs if "val_loss" in r]
    if not train or train[-1]["step"] != steps or not all(math.isfinite(r["loss"]) for r in train):
        fail(f"{run}: training records {[(r['step'], r['loss']) for r in train][-3:]}, expected {steps} finite steps")
    if not val or not math.isfinite(val[-1]["val_loss"]):
        fail(f"{run}: no finite validation loss ({val[-1:]})")
    latest = json.loads((Path(run) / "checkpoints" / "latest.json").read_text())
    if latest["step"] != steps:
        fail(f"{run}: latest checkpoint {latest}, expected step {steps}")
    print(f"{steps} steps, loss {train[0]['loss']:.3f} -> {train[-1]['loss']:.3f}, val_loss {val[-1]['val_loss']:.3f}")


def finetuned(run: Path, steps: int) -> None:
    path = Path(run) / "results.json"
    if not path.is_file():
        fail(f"{path} is missing")
    res = json.loads(path.read_text())
    value = res["validation"].get(res["main_metric"])
    if res["steps"] != steps or value is None or not math.isfinite(value):
        fail(f"{run}: {res['steps']} steps, validation {res['main_metric']} {value}; expected {steps} steps")
    print(f"{res['task']}: {steps} steps, validation {res['main_metric']} {value:.3f}, best_model/ written")


def graphs(run: Path) -> None:
    counts = [r["compiled_graphs"] for r in metrics(run) if "compiled_graphs" in r]
    if len(counts) < 3 or counts[0] <= 0 or any(c != counts[0] for c in counts):
        fail(f"{run}: compiled graphs per step {counts}: expected the first step's count, never more")
    print(f"{counts[0]} graph(s) at step 1, the same after {len(counts)} steps")


def loads(hf_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertForPreTraining

    model, info = BertForPreTraining.from_pretrained(hf_dir, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        fail(f"{hf_dir} loads with {bad}")
    tok = AutoTokenizer.from_pretrained(hf_dir)
    with torch.no_grad():
        out = model(**tok(["the export loads", "as a BERT"], return_tensors="pt"))
    if not torch.isfinite(out.prediction_logits).all():
        fail(f"{hf_dir}: non-finite logits")
    print(f"BertForPreTraining, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, finite logits")


def row(name: str, run: Path, model: str, seq: str, zero: str, micro: str, variant: str, seconds: str) -> None:
    """One markdown row: medians over the logging windows after the first (start-up, compilation)."""
    recs = [r for r in metrics(run) if "tokens_per_s" in r][1:]
    if len(recs) < 2:
        fail(f"{name}: {len(recs)} logging windows after warm-up (raise the steps)")
    med = {k: statistics.median(r[k] for r in recs) for k in ("tokens_per_s", "real_token_frac", "mem_gb")}
    loss = recs[-1]["loss"]
    if not (med["tokens_per_s"] > 0 and 0 < med["real_token_frac"] <= 1 and math.isfinite(loss)):
        fail(f"{name}: tokens/s {med['tokens_per_s']}, real fraction {med['real_token_frac']}, loss {loss}")
    mfu = [r["mfu"] for r in recs if r.get("mfu") is not None]
    if mfu and not 0 < statistics.median(mfu) < 1:
        fail(f"{name}: MFU {mfu[:3]}: a peak this device does not have (logger.peak_tflops)?")
    skipped = sum(r.get("skipped_micro", 0) for r in recs[-1:])
    mfu_s = f"{statistics.median(mfu):.1%}" if mfu else "unknown peak"
    print(f"| {name} | {model} | {seq} | {zero} | {micro} | {variant} | {med['tokens_per_s']:,.0f} | {mfu_s} | "
          f"{med['real_token_frac']:.1%} | {med['mem_gb']:.1f} | {loss:.3f}{' (skips)' if skipped else ''} | "
          f"{seconds} |")  # fmt: skip


if __name__ == "__main__":
    cmd, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if cmd == "wheels" and args:
        wheels(Path(args[0]), args[1:])
    elif cmd == "fits":
        fits([Path(a) for a in args])
    elif cmd == "check":
        check()
    elif cmd == "gemm":
        gemm(args)
    elif cmd == "pretrained" and len(args) == 2:
        pretrained(Path(args[0]), int(args[1]))
    elif cmd == "finetuned" and len(args) == 2:
        finetuned(Path(args[0]), int(args[1]))
    elif cmd == "graphs" and len(args) == 1:
        graphs(Path(args[0]))
    elif cmd == "loads" and len(args) == 1:
        loads(Path(args[0]))
    elif cmd == "row" and len(args) == 8:
        row(args[0], Path(args[1]), *args[2:])
    else:
        fail(__doc__)
