"""Does a pretrained encoder carry anything a classifier can use? A frozen-feature linear probe, pretrained against
the same architecture with random weights: each layer's mean-pooled (and [CLS]) hidden states of a labelled set's
sentences, a logistic regression on the training split, accuracy on the validation split.

    python bench/probe.py --model RUN_DIR_or_HF_DIR [--step N] [--task rotten_tomatoes] [--seeds 1,2,3]

Finetuning answers "does pretraining help the whole recipe"; this answers the narrower question underneath it: if
the pretrained features do not beat random features here, pretraining has not learned what the task needs (or the
weights did not load); if they do and finetuning still loses, the loss is in the finetuning recipe. Numbers only;
the random-weights rows use --seeds initialisations, the spread over them is printed.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def read_csv(path: Path) -> tuple[list[str], list[str]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def features(model, tok, texts: list[str], max_len: int) -> list:
    """Per layer (embeddings first), [mean-pooled, CLS] features, as numpy arrays."""
    import numpy as np
    import torch

    outs: list[list[list]] = []
    with torch.no_grad():
        for i in range(0, len(texts), 256):
            b = tok(texts[i : i + 256], truncation=True, max_length=max_len, padding=True, return_tensors="pt")
            hs = model(**b, output_hidden_states=True).hidden_states
            m = b["attention_mask"].unsqueeze(-1).float()
            for li, h in enumerate(hs):
                if len(outs) <= li:
                    outs.append([[], []])
                outs[li][0].append(((h * m).sum(1) / m.sum(1)).numpy())
                outs[li][1].append(h[:, 0].numpy())
    return [[np.concatenate(x) for x in layer] for layer in outs]


def probe(xtr, ytr, xva, yva) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(xtr)
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(sc.transform(xtr), ytr)
    return float(clf.score(sc.transform(xva), yva))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a pretraining run_dir or a Hugging Face directory")
    p.add_argument("--step", type=int)
    p.add_argument("--task", default="rotten_tomatoes")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--real", type=Path, default=Path("/tmp/bertrun-probe/real"), help="where data_prep.fetch caches")
    a = p.parse_args()

    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from bench.cpu_downstream import spread
    from data_prep.fetch import fetch_one
    from pipeline.finetune.model import materialize, resolve_source

    hf_logging.set_verbosity_error()  # the pretraining heads are not needed here: no load report
    fetch_one(a.task, a.real)
    src = resolve_source(a.model, a.step)
    path = materialize(src, Path(a.real).parent / "export", 0, lambda: None)
    tok = AutoTokenizer.from_pretrained(path)
    xtr_t, ytr = read_csv(a.real / a.task / "train.csv")
    xva_t, yva = read_csv(a.real / a.task / "validation.csv")
    print(f"{a.task}: {len(xtr_t)} train / {len(xva_t)} validation; model {path}")

    def run(model) -> list[list[float]]:
        model.eval()
        ftr, fva = features(model, tok, xtr_t, a.max_len), features(model, tok, xva_t, a.max_len)
        return [[probe(ftr[li][k], ytr, fva[li][k], yva) for k in (0, 1)] for li in range(len(ftr))]

    pre = run(AutoModel.from_pretrained(path))
    rand = []
    for s in [int(x) for x in a.seeds.split(",")]:
        torch.manual_seed(s)
        rand.append(run(AutoModel.from_config(AutoConfig.from_pretrained(path))))
    print("| layer | pooling | pretrained | random (median +- sd) | diff |")
    print("|---|---|---|---|---|")
    for li in range(len(pre)):
        for k, name in enumerate(("mean", "cls")):
            r = [x[li][k] for x in rand]
            diff = pre[li][k] - statistics.median(r)
            print(f"| {li} | {name} | {pre[li][k]:.3f} | {spread(r)} | {diff:+.3f} |")


if __name__ == "__main__":
    main()
