"""Optimizers and learning-rate schedules, built from ``OptimConfig``.

AdamW is torch's (fused kernel on CPU and GPU: DeepSpeed's own CPU Adam would be compiled from C++ on first use).
LAMB is written here because DeepSpeed's FusedLamb is a CUDA-only extension and apex is not installable here;
it follows You et al. 2019 (Algorithm 2) with the NVIDIA/DeepSpeed choices: bias correction, weight decay inside
the trust ratio, the trust ratio clamped to [0, 10], and no adaptation for biases and LayerNorm weights (which
also take no weight decay). Schedules come from transformers.optimization.
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import optimization as hf_optim

from pipeline.config import OptimConfig


class Lamb(Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, max_trust=10.0):
        super().__init__(
            params,
            {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "max_trust": max_trust, "adapt": True},
        )

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float()
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                t = state["step"].item()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                update = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt_().add_(group["eps"]))
                w = p.float()
                if group["weight_decay"]:
                    update.add_(w, alpha=group["weight_decay"])
                ratio = 1.0
                if group["adapt"]:
                    w_norm, u_norm = w.norm(), update.norm()
                    if w_norm > 0 and u_norm > 0:
                        ratio = float((w_norm / u_norm).clamp(max=group["max_trust"]))
                p.add_(update.to(p.dtype), alpha=-group["lr"] * ratio)
        return loss


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Biases and LayerNorm weights take no weight decay (and no LAMB trust ratio), as in BERT."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "adapt": False},
    ]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device: torch.device) -> Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "adamw":
        for g in groups:
            g.pop("adapt", None)
        fused = device.type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)
    if cfg.name == "lamb":
        return Lamb(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    raise ValueError(f"optim.name={cfg.name}: expected adamw or lamb")


def warmup_steps(cfg: OptimConfig, total: int) -> int:
    """A warmup exactly as long as the run (max_steps=1 with any warmup_ratio) ends one step earlier, at the run's last
    step: Hugging Face's linear schedule would divide by (total - warmup) there, and the others never reach the peak."""
    warm = cfg.warmup_steps if cfg.warmup_steps is not None else int(math.ceil(cfg.warmup_ratio * total))
    return warm - 1 if warm == total > 0 else warm


def build_scheduler(opt: Optimizer, cfg: OptimConfig, total_steps: int) -> LambdaLR:
    warm = warmup_steps(cfg, total_steps)
    if cfg.schedule == "linear":
        return hf_optim.get_polynomial_decay_schedule_with_warmup(
            opt, warm, total_steps, lr_end=cfg.lr * cfg.min_lr_ratio, power=1.0
        )
    if cfg.schedule == "cosine":
        return hf_optim.get_cosine_with_min_lr_schedule_with_warmup(
            opt, warm, total_steps, min_lr_rate=cfg.min_lr_ratio
        )
    if cfg.schedule == "wsd":
        decay = int(cfg.decay_ratio * total_steps)
        return hf_optim.get_wsd_schedule(
            opt, warm, decay, num_training_steps=total_steps, decay_type="linear", min_lr_ratio=cfg.min_lr_ratio
        )
    if cfg.schedule == "constant":
        return hf_optim.get_constant_schedule_with_warmup(opt, warm)
    raise ValueError(f"optim.schedule={cfg.schedule}: expected linear, cosine, wsd or constant")
