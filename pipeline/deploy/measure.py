"""Each variant on the validation split: the task's metrics (finetuning's own decoding and scoring), its predictions,
batch-1 latency and batch-32 throughput.

Timing covers the model call on inputs already tokenized and padded (what differs between variants); tokenizing a
short text takes tens of microseconds. Variants take turns in ``measure.rounds`` rounds, so that a noisy neighbour on
a shared machine slows them all alike and the ratios hold.
"""

from __future__ import annotations

import time

import numpy as np

from pipeline.deploy.runtime import pad, softmax, word_tags


class TorchRunner:
    def __init__(self, model):
        self.model = model.eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(**{k: torch.from_numpy(v) for k, v in batch.items()})
        return out.logits.float().numpy()


def padded(feats: list[dict], pad_id: int) -> dict[str, np.ndarray]:
    return pad([(f["input_ids"], f.get("token_type_ids") or [0] * len(f["input_ids"])) for f in feats], pad_id)


def evaluate(runner, task, split, feats: list[dict], names: list[str], pad_id: int, batch_size: int = 32):
    """(metrics, prediction records with scores) over the whole split, decoded as finetuning decodes."""
    from pipeline.finetune.eval import decode, score

    outputs, probs = [], []
    for i in range(0, len(feats), batch_size):
        chunk = feats[i : i + batch_size]
        logits = runner(padded(chunk, pad_id))
        for j, f in enumerate(chunk):
            if task.type == "classification":
                outputs.append((logits[j],))
                probs.append(float(softmax(logits[j].astype(np.float64)).max()))
            else:
                tags, p = word_tags(logits[j, : len(f["input_ids"])], f["word_starts"])
                outputs.append((np.asarray(tags, dtype=np.int64),))
                probs.append(p)
    preds, recs = decode(task, split, feats, outputs, names)
    for r, p in zip(recs, probs):
        r["score"] = p
    return score(task, split, preds, names), recs


def _time(fn, inputs: list) -> list[float]:
    out = []
    for x in inputs:
        t = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t)
    return out


def speed(runners: dict, feats: list[dict], pad_id: int, m) -> dict[str, dict]:
    """Per runner: batch-1 latency p50/p99 (ms) over ``latency_runs`` validation examples in order, and examples/s
    over ``throughput_batches`` batches of ``batch_size`` consecutive examples (padded to their longest)."""
    n = len(feats)
    singles = [padded([feats[i % n]], pad_id) for i in range(m.latency_runs)]
    batches = [
        padded([feats[(b * m.batch_size + k) % n] for k in range(m.batch_size)], pad_id)
        for b in range(m.throughput_batches)
    ]
    for fn in runners.values():
        _time(fn, singles[: m.warmup] + batches[:1])
    lat: dict[str, list[float]] = {k: [] for k in runners}
    thr: dict[str, list[float]] = {k: [] for k in runners}
    rounds = max(1, min(m.rounds, m.latency_runs, m.throughput_batches))
    for r in range(rounds):
        for name, fn in runners.items():
            lat[name] += _time(fn, singles[r::rounds])
            thr[name] += _time(fn, batches[r::rounds])
    out = {}
    for name in runners:
        ms = np.asarray(lat[name]) * 1000
        out[name] = {
            "latency_ms": {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "runs": len(ms)},
            "throughput": {
                "examples_per_s": len(thr[name]) * m.batch_size / sum(thr[name]),
                "batch_size": m.batch_size,
                "batches": len(thr[name]),
            },
        }
    return out
