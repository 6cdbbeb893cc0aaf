"""Evaluation for finetuning: sharded prediction with equal batch counts on every rank, then decoding and metrics.

Every rank runs the same number of eval batches (ZeRO-3 gathers parameters collectively in each forward): the
features are padded to a multiple of the world size with copies marked ``index = -1``, each rank takes every
world-th one, and the padded predictions are dropped after the gather, so metrics are on exactly the full split.
"""

from __future__ import annotations

import numpy as np

from pipeline.dist import gather_lists
from pipeline.finetune import metrics as M
from pipeline.finetune.tasks import Split, collate


def local_predictions(
    engine, feats: list[dict], rank: int, world: int, batch_size: int, pad_id: int, task_type: str
) -> list[tuple]:
    """This rank's share: (feature index, compact output) for every world-th feature of the padded list."""
    per_rank = -(-len(feats) // world)
    padded = [*range(len(feats)), *[-1] * (per_rank * world - len(feats))]
    mine = padded[rank::world]
    local = []
    for b in range(0, len(mine), batch_size):
        chunk = [feats[i] if i >= 0 else {**feats[0], "index": -1} for i in mine[b : b + batch_size]]
        batch = collate(chunk, pad_id)
        for k in ("labels", "start_positions", "end_positions"):
            batch.pop(k, None)
        out = engine.eval_step(batch)
        for j, f in enumerate(chunk):
            if f["index"] < 0:  # a padded copy: run (so every rank runs as many batches), never kept
                continue
            n = len(f["input_ids"])
            if task_type == "question_answering":
                local.append((f["index"], out["start_logits"][j, :n].numpy(), out["end_logits"][j, :n].numpy()))
            elif task_type == "token_classification":
                starts = np.asarray(f["word_starts"])
                tags = out["logits"][j].argmax(-1).numpy()[np.maximum(starts, 0)]
                local.append((f["index"], np.where(starts >= 0, tags, -1)))
            else:
                local.append((f["index"], out["logits"][j].numpy()))
    return local


def predict(engine, feats: list[dict], rank: int, world: int, batch_size: int, pad_id: int, task_type: str) -> list:
    """Per feature, in order, from all ranks: the compact model output (logits or QA start/end logits)."""
    local = local_predictions(engine, feats, rank, world, batch_size, pad_id, task_type)
    gathered = sorted(gather_lists(local), key=lambda x: x[0])
    if [g[0] for g in gathered] != list(range(len(feats))):
        raise RuntimeError(f"evaluation gathered {len(gathered)} predictions for {len(feats)} features")
    return [g[1:] for g in gathered]


def decode(task, split: Split, feats: list[dict], outputs: list, names: list[str]) -> tuple[list, list[dict]]:
    """Predictions per example and the records of predictions_<split>.jsonl."""
    rows, gold = split.rows, split.labels if split.labelled else [None] * len(split.rows)
    if task.type == "classification":
        preds = [int(np.argmax(o[0])) for o in outputs]
        recs = [
            {"index": i, "prediction": names[p], "label": None if g is None else names[g]}
            for i, (p, g) in enumerate(zip(preds, gold))
        ]
    elif task.type == "regression":
        preds = [float(o[0][0]) for o in outputs]
        recs = [{"index": i, "prediction": p, "label": g} for i, (p, g) in enumerate(zip(preds, gold))]
    elif task.type == "token_classification":
        outside = "O" if "O" in names else names[0]  # words cut off by max_seq_len are predicted outside
        preds = [[names[t] if t >= 0 else outside for t in o[0]] for o in outputs]
        recs = [
            {
                "index": i,
                "tokens": r[task.tokens_column],
                "prediction": p,
                "label": None if g is None else [names[t] for t in g],
            }
            for i, (r, p, g) in enumerate(zip(rows, preds, gold))
        ]
    else:
        by_example: dict[int, list] = {}
        for f, (start, end) in zip(feats, outputs):
            by_example.setdefault(f["example"], []).append((start, end, f["offsets"]))
        preds = [
            M.best_span(by_example.get(i, []), r["context"], task.n_best, task.max_answer_length)
            for i, r in enumerate(rows)
        ]
        recs = [
            {"id": r.get("id", i), "prediction": p, "answers": g} for i, (r, p, g) in enumerate(zip(rows, preds, gold))
        ]
    return preds, recs


def score(task, split: Split, preds: list, names: list[str]) -> dict[str, float]:
    if not split.labelled:
        return {}
    if task.type == "classification":
        return M.classification_metrics(preds, split.labels, names)
    if task.type == "regression":
        return M.regression_metrics(preds, split.labels)
    if task.type == "token_classification":
        return M.token_metrics(preds, [[names[t] for t in g] for g in split.labels])
    return M.qa_metrics(preds, split.labels)


def evaluate(
    engine, task, split: Split, feats: list[dict], names: list[str], rank: int, world: int, batch_size: int, pad_id: int
) -> tuple[dict, list[dict]]:
    """Metrics on the whole split (identical on every rank) and its prediction records."""
    outputs = predict(engine, feats, rank, world, batch_size, pad_id, task.type)
    preds, recs = decode(task, split, feats, outputs, names)
    return score(task, split, preds, names), recs
