"""Helpers of bench/gpu_pretrain.sh: a varlen self-check, a GEMM-only ceiling, and the table (with sanity checks).

    python bench/gpu_tools.py check               # varlen attention == block-masked SDPA on a packed batch
    python bench/gpu_tools.py gemm MODEL SEQ MB   # TFLOP/s of the model's linear layers alone, fwd + bwd
    python bench/gpu_tools.py table RESULTS_DIR   # one row per run: real tokens/s, MFU, real-token fraction

Every subcommand exits non-zero with a message rather than print a number it cannot vouch for.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEAK = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def fail(msg: str) -> None:
    print(f"FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def model_cfg(name: str, **kw):
    from omegaconf import OmegaConf

    from pipeline.pretrain.config import ModelConfig

    raw = OmegaConf.load(ROOT / "conf/model" / f"{name}.yaml")
    raw.pop("defaults", None)
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), raw, kw)


def check() -> None:
    """Varlen (flash on CUDA) against the block-diagonal SDPA mask, same weights, same packed batch."""
    from types import SimpleNamespace

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
    masker = Masker(SimpleNamespace(special_ids={"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}, vocab_size=1000),
                    0.15, None, 8, False)  # fmt: skip
    batch = pack_batch(masker(samples, np.random.default_rng(1)), 128, 8)
    batch = {k: v.to(dev) for k, v in batch.items() if k != "meta"}
    outs = {}
    for attn in ("sdpa", "varlen"):
        torch.manual_seed(0)
        cfg = model_cfg("bert-tiny", attention=attn, hidden_dropout=0.0, attention_dropout=0.0)
        model = build_model(cfg, 1000).to(dev, dtype).eval()
        with torch.no_grad():
            outs[attn] = model(**batch)
    a, b = outs["sdpa"], outs["varlen"]
    for k in ("mlm_loss", "nsp_loss"):
        if not (math.isfinite(float(b[k])) and abs(float(a[k]) - float(b[k])) <= 2e-2 * max(1.0, abs(float(a[k])))):
            fail(f"varlen {k} {float(b[k]):.5f} differs from the SDPA block mask's {float(a[k]):.5f} on {dev}")
    print(f"varlen check on {dev}: mlm_loss {float(a['mlm_loss']):.4f} (sdpa) vs {float(b['mlm_loss']):.4f} (varlen)")


def gemm(name: str, seq: int, micro: int) -> None:
    """The linear layers of one micro-batch (QKV, output, FFN up and down; the masked-only decoder left out):
    forward + both backward GEMMs, timed alone. The ceiling a step's matmuls could reach on this device."""
    cfg = model_cfg(name)
    cuda = torch.cuda.is_available()
    dev, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    t, h, f = micro * seq, cfg.hidden_size, cfg.intermediate_size
    shapes = [(h, 3 * h), (h, h), (h, f), (f, h)]
    xs = [(torch.randn(t, k, device=dev, dtype=dtype), torch.randn(k, n, device=dev, dtype=dtype)) for k, n in shapes]
    gs = [torch.randn(t, n, device=dev, dtype=dtype) for _, n in shapes]

    def layer():
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
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            layer()
        end.record()
        torch.cuda.synchronize()
        sec = start.elapsed_time(end) / 1e3 / reps
    else:
        import time

        t0 = time.perf_counter()
        for _ in range(reps):
            layer()
        sec = (time.perf_counter() - t0) / reps
    tflops = flops / sec / 1e12
    peak = next((v for k, v in PEAK.items() if cuda and k in torch.cuda.get_device_name()), None)
    frac = f"{tflops / peak:.1%} of {peak:.0f}" if peak else "no peak known"
    print(json.dumps({"model": name, "seq": seq, "micro": micro, "gemm_tflops": tflops, "of_peak": frac}))


def table(results: Path) -> None:
    """One row per run from RESULTS/<name>.metrics.jsonl; refuses runs whose numbers cannot be right."""
    rows, bad = [], []
    gemms = {}
    for line in (results / "gemm.jsonl").read_text().splitlines() if (results / "gemm.jsonl").is_file() else []:
        g = json.loads(line)
        gemms[(g["model"], g["seq"])] = g
    for path in sorted(results.glob("*.metrics.jsonl")):
        name = path.name.removesuffix(".metrics.jsonl")
        recs = [json.loads(x) for x in path.read_text().splitlines() if '"tokens_per_s"' in x]
        recs = recs[1:]  # the first window holds start-up (and compilation)
        if len(recs) < 2:
            bad.append(f"{name}: {len(recs)} logging windows after warm-up (raise STEPS)")
            continue
        med = {k: statistics.median(r[k] for r in recs) for k in ("tokens_per_s", "real_token_frac")}
        mfu = [r["mfu"] for r in recs if r.get("mfu") is not None]
        loss = recs[-1]["loss"]
        if not (med["tokens_per_s"] > 0 and 0 < med["real_token_frac"] <= 1 and math.isfinite(loss)):
            bad.append(f"{name}: tokens/s {med['tokens_per_s']}, real fraction {med['real_token_frac']}, loss {loss}")
            continue
        if not mfu or not 0 < statistics.median(mfu) < 1:
            bad.append(f"{name}: MFU {mfu[:3]} (a peak the device does not have? set logger.peak_tflops)")
            continue
        if any(r.get("skipped_micro") for r in recs):
            bad.append(f"{name}: non-finite micro-batches were skipped: its throughput is not a clean number")
        meta = json.loads((results / f"{name}.meta.json").read_text())
        g = gemms.get((meta["model"], meta["seq"]))
        rows.append((name, meta, med, statistics.median(mfu), loss, g))
    head = "| run | model | seq | variant | real tokens/s | MFU (real tokens) | real fraction | loss | GEMM ceiling |"
    print(head)
    print("|---|---|---|---|---|---|---|---|---|")
    for name, meta, med, mfu, loss, g in rows:
        ceil = f"{g['gemm_tflops']:.3g} TFLOP/s ({g['of_peak']})" if g else "-"
        print(f"| {name} | {meta['model']} | {meta['seq']} | {meta['variant']} | {med['tokens_per_s']:,.0f} | "
              f"{mfu:.1%} | {med['real_token_frac']:.1%} | {loss:.3f} | {ceil} |")  # fmt: skip
    if bad:
        fail("; ".join(bad))


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "check":
        check()
    elif cmd == "gemm":
        gemm(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "table":
        table(Path(sys.argv[2]))
    else:
        fail("usage: gpu_tools.py check | gemm MODEL SEQ MICRO | table RESULTS_DIR")
