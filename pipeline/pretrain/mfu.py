"""Model FLOPs utilisation that does not flatter: the FLOPs the model needs for the real tokens it saw, against the
device's dense bf16 peak taken from its exact name.

- Dense layers (QKV, attention output, FFN) count every real token; padding never counts.
- Attention scores and values count each sentence pair on its own length: a pair of L tokens costs L^2, whether
  it sits alone in a padded row or packed with others (packed and varlen batches attend within each pair only).
  Crediting the whole row instead (L x seq_len per token) overstates MFU by up to ~10% on packed s512 batches.
- The MLM decoder counts the masked positions it ran at (pretrain/model.py runs it there only).
- Training is three times the forward (backward: two matmuls per forward matmul).

The peak is looked up by the device's exact name (``torch.cuda.get_device_name``): an H100 PCIe is not an H100 SXM,
and an unknown name gives no MFU ("unknown peak") rather than a guess. ``logger.peak_tflops`` overrides it.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# Dense bf16 tensor-core peaks, TFLOP/s (the datasheets' figures without sparsity), by exact CUDA device name.
PEAK_TFLOPS = {
    "NVIDIA H100 80GB HBM3": 989.0,  # H100 SXM5
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H100 NVL": 835.0,
    "NVIDIA H200": 989.0,  # H200 SXM
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0,
}


def peak_for(name: str | None) -> float | None:
    """The dense bf16 peak of a device by its exact name; None when the name is not in the table."""
    return PEAK_TFLOPS.get((name or "").strip())


def device_peak(override: float | None, device) -> tuple[float | None, str]:
    """(peak TFLOP/s or None, what it is): ``override`` (logger.peak_tflops) first, then the CUDA device's name."""
    if override:
        return float(override), f"{float(override):g} TFLOP/s (logger.peak_tflops)"
    if getattr(device, "type", None) != "cuda":
        return None, f"unknown peak for {getattr(device, 'type', device)} (set logger.peak_tflops for an MFU)"
    import torch

    name = torch.cuda.get_device_name(device)
    peak = peak_for(name)
    if peak is None:
        return None, f"unknown peak for '{name}' (set logger.peak_tflops for an MFU)"
    return peak, f"{peak:g} TFLOP/s dense bf16 ('{name}')"


def train_flops(config, tokens: float, sq_tokens: float, masked: float) -> float:
    """Training FLOPs (forward + backward) of ``tokens`` real tokens in sequences whose squared lengths sum to
    ``sq_tokens``, with the MLM decoder at ``masked`` positions. ``config``: a transformers BertConfig."""
    h, layers, ffn, vocab = config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size
    dense = 2 * (4 * h * h + 2 * h * ffn) * tokens  # QKV + output projections, FFN up and down
    attention = 2 * 2 * h * sq_tokens  # scores (Q K^T) and their weighted sum of values, per pair on its length
    decoder = 2 * (h * h + h * vocab) * masked  # transform + projection onto the vocabulary, masked positions only
    return 3.0 * (layers * (dense + attention) + decoder)


class MFU:
    """``mfu(totals, seconds, world)`` -> ``{"mfu": x}`` from a logging window's sums over all ranks (``tokens``,
    ``sq_tokens``, ``mlm_count``), or ``{}`` when the peak is unknown. Says once which peak it uses."""

    def __init__(self, config, override: float | None, device):
        self.config = config
        self.peak, self.what = device_peak(override, device)
        log.info("MFU against %s", self.what)

    def __call__(self, tot: dict, seconds: float, world: int) -> dict:
        if not self.peak or seconds <= 0:
            return {}
        flops = train_flops(self.config, tot.get("tokens", 0.0), tot.get("sq_tokens", 0.0), tot.get("mlm_count", 0.0))
        return {"mfu": flops / seconds / (self.peak * 1e12 * world)}
