"""The main job's deploy stage: the pretrained arm's best finetune run of the first task, to ONNX int8 with
``pipeline.deploy``, and the headline's line about it (int8 against fp32 accuracy, the batch-1 speed-up).

Kept apart from launch/demo.py and launch/demo_summary.py: the job calls ``deploy_best`` after the finetune sweeps,
the headline calls ``deploy_lines`` (and ``deploy_record`` for demo_results.json).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from launch.stages import run


def best_pretrained_run(sweeps: list[Path], task: str) -> Path | None:
    """The run_dir of the pretrained arm's best seed on ``task`` (ties: the lower seed), or None."""
    best = None
    for f in sorted(f for s in sweeps for f in s.glob("*/results.json")):
        r = json.loads(f.read_text())
        if r["task"] != task or r["source"].get("random_init"):
            continue
        key = (r["validation"].get(r["main_metric"]) or 0.0, -r["seed"])
        if best is None or key > best[0]:
            best = (key, f.parent)
    return best[1] if best else None


def deploy_best(sweeps: list[Path], task: str, args: list[str], out: Path, logs: Path, env: dict) -> float | None:
    """``pipeline.deploy ARGS`` (launch.demo's: ``quantize=int8``, then the user's ``deploy:KEY=VALUE``) of that run
    into ``out`` (skipped when out/deploy.json exists); its time."""
    src = best_pretrained_run(sweeps, task)
    if src is None or (out / "deploy.json").is_file():
        return None
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:  # an offline GPU machine carries no ONNX wheels (bench/gpu_demo.sh: the 64 MiB transfer is full)
        print(f"\n== deploy: skipped, {' and '.join(missing)} not installed here (pip install onnx onnxruntime)")
        return None
    cmd = [sys.executable, "-m", "pipeline.deploy", f"model.path={src}", f"output={out}", *args]
    return run(f"deploy: {task}'s best pretrained run to ONNX int8, measured", cmd, logs / "deploy.log", env)


def deploy_record(out: Path) -> dict | None:
    f = out / "deploy.json"
    if not f.is_file():
        return None
    r = json.loads(f.read_text())
    v = r["variants"]
    if "onnx_int8" not in v:  # deploy:quantize=none: deploy.md has its numbers, the headline's line is about int8
        return None
    return {
        "task": r["task"]["name"],
        "metric": r["task"]["main_metric"],
        "source": r["source"]["run_dir"],
        "pytorch_fp32": v["pytorch_fp32"]["main_metric"],
        "onnx_int8": v["onnx_int8"]["main_metric"],
        "int8_minus_fp32": v["onnx_int8"]["diff_vs_pytorch_fp32"],
        "batch1_ms": {k: v[k]["latency_ms"]["p50"] for k in ("pytorch_fp32", "onnx_int8")},
        "batch1_speedup": v["onnx_int8"]["speedup_batch1_vs_pytorch_fp32"],
        "threads": r["threads"],
    }


def deploy_lines(out: Path) -> list[str]:
    d = deploy_record(out)
    if d is None:
        return []
    return [
        f"- deploy, int8 (ONNX Runtime dynamic quantization) vs PyTorch fp32 on {d['task']}: {d['metric']} "
        f"{d['onnx_int8']:.3f} vs {d['pytorch_fp32']:.3f} ({100 * d['int8_minus_fp32']:+.1f} points); batch-1 "
        f"latency {d['batch1_ms']['onnx_int8']:.2f} vs {d['batch1_ms']['pytorch_fp32']:.2f} ms, "
        f"{d['batch1_speedup']:.1f}x faster ({d['threads']} threads): `{out / 'deploy.md'}`"
    ]
