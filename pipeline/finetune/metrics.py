"""Task metrics, computed locally (no ``evaluate.load``: it needs the hub) with scikit-learn, scipy and seqeval.

Every metric is a fraction in [0, 1] (SQuAD's official script prints them x100), higher is better except ``mse``.
GLUE's official choices: CoLA Matthews correlation; SST-2, MNLI (matched/mismatched), QNLI, RTE, WNLI accuracy;
MRPC and QQP F1 (positive class 1) and accuracy; STS-B Pearson and Spearman.
"""

from __future__ import annotations

import collections
import math
import re
import string

import numpy as np

LOWER_IS_BETTER = {"mse", "loss"}


def _finite(x: float) -> float:
    return float(x) if math.isfinite(float(x)) else float("nan")


def classification_metrics(preds, labels, names: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    preds, labels = np.asarray(preds), np.asarray(labels)
    out = {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, average="macro", labels=list(range(len(names))), zero_division=0)),
        "mcc": float(matthews_corrcoef(labels, preds)),
    }
    if len(names) == 2:
        out["f1"] = float(f1_score(labels, preds, pos_label=1, zero_division=0))
    return out


def regression_metrics(preds, labels) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    preds, labels = np.asarray(preds, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    constant = np.ptp(preds) == 0 or np.ptp(labels) == 0  # correlation undefined: report nan, not a warning
    return {
        "pearson": float("nan") if constant else _finite(pearsonr(preds, labels)[0]),
        "spearman": float("nan") if constant else _finite(spearmanr(preds, labels)[0]),
        "mse": float(np.mean((preds - labels) ** 2)),
    }


def token_metrics(pred_tags: list[list[str]], gold_tags: list[list[str]]) -> dict[str, float]:
    """seqeval's entity-level scores (conlleval rules: a span must match in type and both boundaries)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    flat_p = [t for s in pred_tags for t in s]
    flat_g = [t for s in gold_tags for t in s]
    return {
        "f1": float(f1_score(gold_tags, pred_tags, zero_division=0)),
        "precision": float(precision_score(gold_tags, pred_tags, zero_division=0)),
        "recall": float(recall_score(gold_tags, pred_tags, zero_division=0)),
        "accuracy": float(np.mean([p == g for p, g in zip(flat_p, flat_g)])) if flat_g else float("nan"),
    }


# SQuAD v1.1 official evaluation (evaluate-v1.1.py), kept to the letter.
def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_f1(prediction: str, truth: str) -> float:
    p, t = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(p) & collections.Counter(t)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(t)
    return 2 * precision * recall / (precision + recall)


def squad_em(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def qa_metrics(predictions: list[str], answers: list[list[str]]) -> dict[str, float]:
    """Mean over questions of the best score against any of the gold answers."""
    if not predictions:
        return {"exact_match": float("nan"), "f1": float("nan")}
    em = [max(squad_em(p, a) for a in golds) for p, golds in zip(predictions, answers)]
    f1 = [max(squad_f1(p, a) for a in golds) for p, golds in zip(predictions, answers)]
    return {"exact_match": float(np.mean(em)), "f1": float(np.mean(f1))}


def best_span(features: list[tuple[np.ndarray, np.ndarray, list]], context: str, n_best: int, max_len: int) -> str:
    """The usual post-processing: over an example's windows, the n_best start and end logits, spans inside the
    context (offsets not None), end >= start, at most ``max_len`` tokens; the highest start + end logit wins."""
    best, best_score = "", -math.inf
    for start_logits, end_logits, offsets in features:
        starts = np.argsort(start_logits)[::-1][:n_best]
        ends = np.argsort(end_logits)[::-1][:n_best]
        for s in starts:
            for e in ends:
                if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                    continue
                if e < s or e - s + 1 > max_len:
                    continue
                score = start_logits[s] + end_logits[e]
                if score > best_score:
                    best_score, best = score, context[offsets[s][0] : offsets[e][1]]
    return best


def task_score(metrics: dict[str, float], main: str, score_metrics: list[str] | None) -> float:
    names = list(score_metrics or [main])
    vals = [metrics[n] for n in names if n in metrics]
    return float(np.mean(vals)) if vals and len(vals) == len(names) else float("nan")


def better(new: float, best: float | None, metric: str, min_delta: float = 0.0) -> bool:
    if new is None or not math.isfinite(new):
        return best is None
    if best is None or not math.isfinite(best):
        return True
    return new < best - min_delta if metric in LOWER_IS_BETTER else new > best + min_delta
