"""Attention-head pruning: Michel, Levy and Neubig (2019), "Are Sixteen Heads Really Better than One?".

A head's importance is the expected absolute gradient of the loss with respect to a gate on that head's output
(their head mask, eq. 2), summed over batches of training data and normalised per layer (their section 4.1, as in
Hugging Face's bertology example). The lowest fraction over all layers is removed; each layer keeps one head at
least. transformers 5 removed ``prune_heads`` (and ``head_mask``), so both are done here: a forward hook applies the
gates, and the query/key/value rows and the attention output's columns of a removed head are cut out with
``transformers.pytorch_utils.prune_linear_layer``. The removed heads are recorded in config.json
(``bertrun_pruned_heads``) so that ``load_model`` rebuilds the smaller shapes before loading the weights.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from pipeline.deploy.source import DeployError

log = logging.getLogger(__name__)
KEY = "bertrun_pruned_heads"


def layers(model) -> list:
    enc = getattr(model.base_model, "encoder", None)
    found = getattr(enc, "layer", None)
    if not found or not hasattr(found[0], "attention") or not hasattr(found[0].attention, "self"):
        raise DeployError(f"prune.heads: {type(model).__name__} is not a BERT-style encoder; set prune.heads=0")
    return list(found)


def heads_per_layer(model) -> list[int]:
    return [layer.attention.self.num_attention_heads for layer in layers(model)]


def _batches(feats: list[dict], size: int, pad_id: int):
    from pipeline.finetune.tasks import collate

    for i in range(0, len(feats), size):
        b = collate(feats[i : i + size], pad_id)
        b.pop("meta")
        yield b


def importance(model, feats: list[dict], task_type: str, batch_size: int, pad_id: int) -> np.ndarray:
    """[layers, heads] importance, each layer's scores divided by their L2 norm."""
    from pipeline.finetune.model import TaskModel

    blocks = layers(model)
    gates = torch.ones(len(blocks), max(heads_per_layer(model)), requires_grad=True)
    hooks = []
    for i, layer in enumerate(blocks):
        att = layer.attention.self

        def gate(module, args, out, i=i, att=att):
            ctx = out[0]
            shape = ctx.shape
            h = att.num_attention_heads
            ctx = (ctx.view(*shape[:-1], h, -1) * gates[i, :h, None]).view(shape)
            return (ctx, *out[1:])

        hooks.append(att.register_forward_hook(gate))
    task_model = TaskModel(model, task_type).eval()  # no dropout: the gradients of the model that is served
    try:
        for b in _batches(feats, batch_size, pad_id):
            task_model(**b)["loss"].backward()
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
    imp = gates.grad.abs().numpy().astype(np.float64)
    for i, n in enumerate(heads_per_layer(model)):
        imp[i, n:] = np.nan
        norm = np.sqrt(np.nansum(imp[i] ** 2)) + 1e-20
        imp[i] /= norm
    return imp


def choose(imp: np.ndarray, fraction: float) -> dict[int, list[int]]:
    """The heads to remove: the lowest ``fraction`` of all by importance, never a layer's last one."""
    alive = {i: int(np.sum(~np.isnan(imp[i]))) for i in range(imp.shape[0])}
    total = sum(alive.values())
    want = min(int(round(fraction * total)), total - len(alive))
    order = sorted((v, i, h) for (i, h), v in np.ndenumerate(imp) if not math.isnan(v))
    out: dict[int, list[int]] = {}
    for _, i, h in order:
        if sum(len(v) for v in out.values()) >= want:
            break
        if alive[i] - len(out.get(i, [])) > 1:
            out.setdefault(i, []).append(h)
    return {i: sorted(hs) for i, hs in sorted(out.items())}


def prune_heads(model, heads: dict[int, list[int]]) -> None:
    """Remove these heads (indices among each layer's current heads) in place; record them in the config."""
    from transformers.pytorch_utils import prune_linear_layer

    blocks = layers(model)
    for i, drop in heads.items():
        att = blocks[i].attention
        n, d = att.self.num_attention_heads, att.self.attention_head_size
        keep = torch.tensor([h * d + k for h in range(n) if h not in drop for k in range(d)], dtype=torch.long)
        att.self.query = prune_linear_layer(att.self.query, keep)
        att.self.key = prune_linear_layer(att.self.key, keep)
        att.self.value = prune_linear_layer(att.self.value, keep)
        att.output.dense = prune_linear_layer(att.output.dense, keep, dim=1)
        att.self.num_attention_heads = n - len(drop)
        att.self.all_head_size = att.self.num_attention_heads * d
    done = {int(k): list(v) for k, v in (getattr(model.config, KEY, None) or {}).items()}
    for i, drop in heads.items():  # stored as indices of the original heads
        before = [h for h in range(model.config.num_attention_heads) if h not in done.get(i, [])]
        done[i] = sorted(done.get(i, []) + [before[h] for h in drop])
    setattr(model.config, KEY, {str(k): v for k, v in sorted(done.items())})


def recover(
    model, feats: list[dict], task_type: str, steps: int, lr: float, batch_size: int, seed: int, pad_id: int
) -> list[float]:
    """A few finetuning steps on the pruned model. A plain torch loop on one process: recovery is short and local,
    and the DeepSpeed engine (pipeline/engine.py) would add start-up time and nothing this needs."""
    from pipeline.finetune.model import TaskModel
    from pipeline.finetune.tasks import collate

    task_model = TaskModel(model, task_type).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        b = collate([feats[i] for i in rng.choice(len(feats), min(batch_size, len(feats)), replace=False)], pad_id)
        b.pop("meta")
        loss = task_model(**b)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def load_model(model_dir: Path, task_type: str):
    """A Hugging Face classifier from ``model_dir``, pruned ones included (weights read with safetensors only)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    cls = AutoModelForTokenClassification if task_type == "token_classification" else AutoModelForSequenceClassification
    config = AutoConfig.from_pretrained(model_dir)
    if not getattr(config, KEY, None):
        return cls.from_pretrained(model_dir).eval()
    from safetensors.torch import load_file

    removed = {int(k): list(v) for k, v in getattr(config, KEY).items()}
    setattr(config, KEY, None)  # prune_heads records them again
    model = cls.from_config(config)
    prune_heads(model, removed)
    model.load_state_dict(load_file(Path(model_dir) / "model.safetensors"), strict=True)
    return model.eval()
