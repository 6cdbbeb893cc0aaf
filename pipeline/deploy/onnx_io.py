"""PyTorch to ONNX, onnxruntime's graph fusions, dynamic int8 quantization, and the logits check between them.

Exporter: torch.onnx's TorchScript exporter (``dynamo=False``) with eager attention. Measured on bert-mini shapes,
transformers 5.25, torch 2.13: it exports in 2 s where the dynamo exporter takes 10-22 s and needs onnxscript; both
give logits within 1e-7 of PyTorch for any batch and sequence length (dynamic axes), padded or not. Eager attention
(not SDPA) matters: onnxruntime's transformer optimizer then fuses each layer into one Attention node (with SDPA's
graph it fuses none, whichever exporter). torch marks the TorchScript exporter deprecated; should it go, the dynamo
exporter is the way, and the logits check below is what tells whether an export is right either way.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import numpy as np

from pipeline.deploy.runtime import INPUTS
from pipeline.deploy.source import DeployError

log = logging.getLogger(__name__)


def export(model, path: Path, sample: dict[str, np.ndarray], opset: int, token_level: bool) -> Path:
    """``model`` (a Hugging Face classifier, eval mode) to ``path`` with dynamic batch and sequence axes."""
    import torch

    model.set_attn_implementation("eager")
    args = tuple(torch.from_numpy(sample[k]) for k in INPUTS)
    axes = {k: {0: "batch", 1: "sequence"} for k in INPUTS}
    axes["logits"] = {0: "batch", 1: "sequence"} if token_level else {0: "batch"}

    class Logits(torch.nn.Module):  # positional inputs in INPUTS order, one named output
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    # The TorchScript tracer warns about every Python branch in transformers' mask code and about its own
    # deprecation; the logits check on real inputs of other shapes is the real test of the trace.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Logits(model).eval(),
            args,
            str(path),
            input_names=list(INPUTS),
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    model.set_attn_implementation("sdpa")
    return path


def optimize(src: Path, dst: Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """onnxruntime's transformer optimizer (fusions only, ``opt_level=0``: the session does the rest at load)."""
    from onnxruntime.transformers import optimizer

    with quiet():
        opt = optimizer.optimize_model(
            str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0
        )
        opt.save_model_to_file(str(dst))
        return {k: v for k, v in opt.get_fused_operator_statistics().items() if v}


def quantize_int8(src: Path, dst: Path, per_channel: bool) -> dict:
    """Dynamic int8: weights of MatMul/Attention/Gather(embeddings) to int8 now, activations at run time."""
    with quiet():
        _quantize(src, dst, per_channel)
    return {"weight_type": "QInt8", "per_channel": per_channel, "activations": "uint8, per batch at run time"}


def _quantize(src: Path, dst: Path, per_channel: bool) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        # Shape inference cannot type the outputs of fused contrib ops (BiasGelu, SkipLayerNormalization): they are
        # float, as everything in this graph before quantization.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


@contextlib.contextmanager
def quiet():
    """onnxruntime's optimizer and quantizer log a line per fused node or tensor, through loggers named after their
    bare module names and the root logger: errors only while they run."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def parity(torch_fn, ort_fn, batches: list[dict[str, np.ndarray]], atol: float) -> dict:
    """Max absolute logit difference (real positions only) and argmax agreement between two runners."""
    worst, agree, total = 0.0, 0, 0
    for b in batches:
        a, o = torch_fn(b), ort_fn(b)
        if a.shape != o.shape:
            return {"max_abs_diff": float("inf"), "argmax_agreement": 0.0, "atol": atol, "ok": False}
        mask = b["attention_mask"].astype(bool) if a.ndim == 3 else np.ones(a.shape[0], dtype=bool)
        d = np.abs(a - o)[mask]
        worst = max(worst, float(d.max()) if d.size else 0.0)
        agree += int((a.argmax(-1) == o.argmax(-1))[mask].sum())
        total += int(mask.sum())
    return {"max_abs_diff": worst, "argmax_agreement": agree / max(total, 1), "atol": atol, "ok": worst <= atol}


def export_checked(model, torch_fn, out: Path, name: str, batches, cfg, ort_model) -> tuple[Path, dict]:
    """Export ``model`` as ``out/<name>.onnx`` (fused when ``cfg.onnx.optimize``), checked against PyTorch; a fused
    graph that fails the check falls back to the plain export, which must pass."""
    plain = export(model, out / f"{name}.plain.onnx", batches[0], cfg.onnx.opset, model_is_token_level(model))
    record: dict = {"exporter": "torch.onnx (TorchScript, dynamo=False)", "opset": cfg.onnx.opset, "fused": {}}
    final = out / f"{name}.onnx"
    if cfg.onnx.optimize:
        try:
            # The config's heads even after pruning: the pass reads each layer's real count from the graph's reshape
            # (measured: a pruned 4-head model fuses right), and the logits check judges the result.
            c = model.config
            record["fused"] = optimize(plain, final, c.num_attention_heads, c.hidden_size)
            check = parity(torch_fn, ort_model(final), batches, cfg.onnx.atol)
        except Exception as e:  # noqa: BLE001 - any failure of the optional fusion pass leaves the plain export
            check = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        if check["ok"]:
            plain.unlink()
            return final, {**record, "parity": check}
        log.warning(
            "%s: the fused graph failed its check (%s): kept the plain export",
            name,
            check.get("error") or f"logits differ by {check['max_abs_diff']:.2g} > onnx.atol",
        )
        record["fused"], record["fused_rejected"] = {}, check
    plain.replace(final)
    check = parity(torch_fn, ort_model(final), batches, cfg.onnx.atol)
    if not check["ok"]:
        raise DeployError(
            f"{final}: ONNX fp32 logits differ from PyTorch's by {check['max_abs_diff']:.3g} > onnx.atol="
            f"{cfg.onnx.atol} on {cfg.onnx.parity_examples} validation examples; this export is wrong (raise "
            f"onnx.atol only if you accept that difference)"
        )
    return final, {**record, "parity": check}


def model_is_token_level(model) -> bool:
    return "TokenClassification" in type(model).__name__
