"""deploy.json (for scripts, the server and the main job) and deploy.md (for people): one row per variant."""

from __future__ import annotations

import json
import math
from pathlib import Path

from pipeline.storage import finite_or_none

ORDER = ("pytorch_fp32", "onnx_fp32", "onnx_int8", "pruned_pytorch_fp32", "pruned_onnx_fp32", "pruned_onnx_int8")


def serve_variant(variants: dict) -> str:
    """What the server loads by default: the smallest ONNX variant built (pruned before unpruned, int8 before fp32)."""
    for name in ("pruned_onnx_int8", "pruned_onnx_fp32", "onnx_int8", "onnx_fp32"):
        if name in variants:
            return name
    raise ValueError("no ONNX variant")


def finish(variants: dict, main: str) -> None:
    """Differences against PyTorch fp32 (metric, in the metric's units; speed, as ratios), in place."""
    base = variants["pytorch_fp32"]
    for v in variants.values():
        v["main_metric"] = v["metrics"].get(main, math.nan)
        v["diff_vs_pytorch_fp32"] = v["main_metric"] - base["main_metric"]
        v["speedup_batch1_vs_pytorch_fp32"] = base["latency_ms"]["p50"] / v["latency_ms"]["p50"]
        v["throughput_vs_pytorch_fp32"] = v["throughput"]["examples_per_s"] / base["throughput"]["examples_per_s"]


def write(folder: Path, record: dict, final: Path) -> None:
    """Into ``folder`` (the temporary one); the text names ``final``, where it will be."""
    (folder / "deploy.json").write_text(json.dumps(finite_or_none(record), indent=1) + "\n")
    (folder / "deploy.md").write_text(markdown(record, final))


def table(record: dict) -> list[str]:
    main = record["task"]["main_metric"]
    lines = [
        f"| variant | file | MB | {main} | vs PyTorch fp32 (points) | batch 1 p50 / p99 ms | speed-up at batch 1 | "
        f"batch {record['measure']['batch_size']} examples/s | threads |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(record["variants"], key=ORDER.index):
        v = record["variants"][name]
        lat, thr = v["latency_ms"], v["throughput"]
        lines.append(
            f"| {name} | {v['file'] or '(source weights)'} | {v['size_bytes'] / 1e6:.1f} | {v['main_metric']:.4f} | "
            f"{100 * v['diff_vs_pytorch_fp32']:+.2f} | {lat['p50']:.2f} / {lat['p99']:.2f} | "
            f"{v['speedup_batch1_vs_pytorch_fp32']:.2f}x | {thr['examples_per_s']:.0f} | {v['threads']} |"
        )
    return lines


def markdown(r: dict, out: Path) -> str:
    t, exp = r["task"], r["export"]
    par = exp["parity"]
    lines = [
        f"# Deploy of {r['source']['model_dir']}",
        "",
        f"Task `{t['name']}` ({t['type']}), {r['validation']['examples']:,} validation examples "
        f"(`{r['validation']['source']}`), max_seq_len {t['max_seq_len']}; {r['machine']['cpu']}, "
        f"{r['threads']} threads, onnxruntime {r['machine']['onnxruntime']}, torch {r['machine']['torch']}.",
        "",
        *table(r),
        "",
        f"- ONNX export: {exp['exporter']}, opset {exp['opset']}; fusions: "
        f"{', '.join(f'{k} {v}' for k, v in exp['fused'].items()) or 'none'}. ONNX fp32 logits vs PyTorch on "
        f"{r['onnx']['parity_examples']} validation examples: max |difference| {par['max_abs_diff']:.2g} "
        f"(tolerance {par['atol']:g}), same argmax for {100 * par['argmax_agreement']:.2f}%.",
        (
            f"- int8: onnxruntime dynamic quantization, {r['quantize']['weight_type']} weights "
            f"{'per channel' if r['quantize']['per_channel'] else 'per tensor'}, activations "
            f"{r['quantize']['activations']}."
            if r.get("quantize")
            else "- int8: not built (quantize=none)."
        ),
        "- Latency: model call only, inputs tokenized and padded beforehand; batch 1 over validation examples in "
        "order; throughput over batches of consecutive examples padded to their longest. Variants took turns in "
        f"{r['measure']['rounds']} rounds.",
        "- Dynamic int8 quantizes activations with one scale per batch tensor: an int8 score moves slightly with the "
        "other texts of its batch (fp32 ones do not).",
    ]
    if r.get("prune"):
        p = r["prune"]
        lines.append(
            f"- Pruning: {p['removed']} of {p['heads_before']} heads removed (prune.heads={p['fraction']}), "
            f"heads per layer {p['heads_per_layer']}; importance from {p['samples']} training examples; "
            f"{p['recover_steps']} recovery steps"
            + (f" (loss {p['recover_loss'][0]:.4g} -> {p['recover_loss'][-1]:.4g})" if p["recover_loss"] else "")
            + f"; pruned ONNX: {'fused' if p['export']['fused'] else 'unfused'}, logits within "
            + f"{p['export']['parity']['max_abs_diff']:.2g} of the pruned PyTorch model."
        )
    rep = r["source"].get("finetune_validation")
    if rep and t["main_metric"] in rep:
        ours = r["variants"]["pytorch_fp32"]["main_metric"]
        lines.append(
            f"- The finetune run reported {t['main_metric']} {rep[t['main_metric']]:.4f}; PyTorch fp32 "
            f"here: {ours:.4f}."
        )
    lines += ["", f"Serve: `python -m pipeline.serve model.path={out}` (variant `{r['serve']}`).", ""]
    return "\n".join(lines)
