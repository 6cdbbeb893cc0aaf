"""Tiny finetune run_dirs for the deploy and serve tests, made in-process in a few seconds.

A real ``pipeline.finetune`` run costs 20-30 s here (DeepSpeed's start-up); these folders have the same layout
(results.json, config.yaml with the task, best_model/ saved by ``save_pretrained`` with its tokenizer) and a model
trained with a plain loop on finetune's own features, small enough (2 layers, 4 heads, hidden 64) to be quick and
confident. The main job's test deploys a real finetune run (tests/test_demo_report.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from tests import finetune_synth as S


def _train(model, feats: list[dict], steps: int, lr: float, pad_id: int, seed: int = 0) -> None:
    from pipeline.finetune.model import TaskModel
    from pipeline.finetune.tasks import collate

    torch.manual_seed(seed)
    tm = TaskModel(model, "token_classification" if "Token" in type(model).__name__ else "classification").train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        b = collate([feats[i] for i in rng.choice(len(feats), 32, replace=False)], pad_id)
        b.pop("meta")
        loss = tm(**b)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def finetune_run(base: Path, kind: str, steps: int = 80) -> Path:
    """``kind``: "classification" (S.separable: w1 -> pos, w2 -> neg) or "ner" (S.conll: PER and LOC)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertForTokenClassification

    from pipeline.finetune.config import TaskConfig
    from pipeline.finetune.tasks import featurize, load_task
    from tests.synth import write_tokenizer

    run = base / f"ft_{kind}"
    if (run / "results.json").is_file():
        return run
    data = base / f"data_{kind}"
    data.mkdir(parents=True, exist_ok=True)
    write_tokenizer(base / "tok")
    if kind == "classification":
        files = {
            "train": S.write_csv(data / "train.csv", S.separable(256, 1)),
            "validation": S.write_csv(data / "dev.csv", S.separable(97, 2)),
        }
        task = dict(name="custom_classification", type="classification", text_columns=["text"], main_metric="accuracy")
    else:
        files = {"train": S.conll(data / "train.conll", 200, 1), "validation": S.conll(data / "dev.conll", 41, 2)}
        task = dict(name="ner", type="token_classification", main_metric="f1")
    task = OmegaConf.merge(
        OmegaConf.structured(TaskConfig),
        {**task, "max_seq_len": 32},
        {"data_files": {k: str(v) for k, v in files.items()} | {"test": None}},
    )
    splits, names = load_task(task)
    tok = AutoTokenizer.from_pretrained(base / "tok")
    train = featurize(task, splits["train"], tok, train=True)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    torch.manual_seed(0)
    cls = BertForSequenceClassification if kind == "classification" else BertForTokenClassification
    model = cls(cfg)
    _train(model, train, steps, 3e-3, tok.pad_token_id)
    model.save_pretrained(run / "best_model", safe_serialization=True)
    tok.save_pretrained(run / "best_model")
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create({"task": task, "seed": 0})))
    results = {
        "task": task.name,
        "task_type": str(task.type),
        "main_metric": task.main_metric,
        "labels": names,
        "validation": {},
        "validation_examples": len(splits["validation"].rows),
        "best_model": "best_model",
    }
    (run / "results.json").write_text(json.dumps(results))
    return run
