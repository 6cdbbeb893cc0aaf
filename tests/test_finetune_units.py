"""Finetune pieces without training: metrics against hand-computed values, features, rank sharding, the sweep table,
every shipped config, and the errors for bad input."""

from __future__ import annotations

import csv
import json
import math
import statistics

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import ROOT, run_module
from tests.finetune_synth import write_csv, write_jsonl

TASKS = sorted(p.stem for p in (ROOT / "conf" / "task").glob("*.yaml"))


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import pipeline.finetune.config  # noqa: F401 - registers the schemas

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="finetune", overrides=overrides)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from tests.synth import write_tokenizer

    d = tmp_path_factory.mktemp("tok")
    write_tokenizer(d)
    tok = AutoTokenizer.from_pretrained(d)
    assert tok.convert_tokens_to_ids("[CLS]") == 2
    return tok


# ---------------------------------------------------------------- metrics, by hand


def test_classification_metrics_by_hand():
    from pipeline.finetune.metrics import classification_metrics

    gold = [1, 1, 1, 0, 0, 0, 1, 0]
    pred = [1, 1, 0, 0, 0, 1, 1, 0]  # TP 3, FN 1, TN 3, FP 1
    m = classification_metrics(pred, gold, ["no", "yes"])
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert m["mcc"] == pytest.approx((3 * 3 - 1 * 1) / math.sqrt(4 * 4 * 4 * 4))  # 0.5
    three = classification_metrics([0, 1, 2, 2], [0, 1, 1, 2], ["a", "b", "c"])
    assert "f1" not in three and three["accuracy"] == 0.75
    assert three["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_regression_metrics_by_hand():
    from pipeline.finetune.metrics import regression_metrics

    m = regression_metrics([1, 2, 3, 4], [2, 4, 9, 6])
    # deviations (-1.5, -.5, .5, 1.5) and (-3.25, -1.25, 3.75, .75): r = 8.5 / sqrt(5 * 26.75)
    assert m["pearson"] == pytest.approx(8.5 / math.sqrt(5 * 26.75))
    assert m["spearman"] == pytest.approx(1 - 6 * 2 / (4 * (16 - 1)))  # rank differences 0, 0, 1, 1: 0.8
    assert m["mse"] == pytest.approx((1 + 4 + 36 + 4) / 4)
    assert math.isnan(regression_metrics([1, 1, 1], [1, 2, 3])["pearson"])  # undefined, not an exception


def test_seqeval_entity_f1_by_hand():
    from pipeline.finetune.metrics import token_metrics

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-LOC", "I-LOC"]]
    # gold entities PER(0-1), LOC(3), LOC(0); predicted PER(0-1), ORG(3), LOC(0-1): one exact match of three
    m = token_metrics(pred, gold)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(1 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)


def test_squad_normalisation_em_f1_by_hand():
    from pipeline.finetune.metrics import normalize_answer, qa_metrics, squad_em, squad_f1

    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert normalize_answer("an apple a day") == "apple day"
    assert squad_em("the Cat.", "cat") == 1.0
    # "cat sat on mat" vs "cat on mat": 3 common tokens, precision 3/4, recall 1
    assert squad_f1("a cat sat on the mat", "Cat on mat") == pytest.approx(2 * 0.75 / 1.75)
    assert squad_f1("dog", "cat") == 0.0
    m = qa_metrics(["cat sat", "the dog"], [["x", "The cat sat."], ["a cat"]])
    assert m == {"exact_match": 0.5, "f1": 0.5}


def test_best_span_skips_question_tokens_and_long_spans():
    from pipeline.finetune.metrics import best_span

    context = "abc def ghi jkl"
    offsets = [None, None, (0, 3), (4, 7), (8, 11), (12, 15), None]
    start = np.array([0, 9, 1, 5, 0, 0, 0.0])  # the best start is a question token: not allowed
    end = np.array([0, 9, 0, 1, 4, 6, 0.0])
    assert best_span([(start, end, offsets)], context, n_best=20, max_len=30) == "def ghi jkl"
    assert best_span([(start, end, offsets)], context, n_best=20, max_len=2) == "def ghi"
    # Across windows, the higher start + end logit wins.
    other = (np.array([0, 0, 0, 0, 0, 20, 0.0]), np.array([0, 0, 0, 0, 0, 20, 0.0]), offsets)
    assert best_span([(start, end, offsets), other], context, n_best=20, max_len=30) == "jkl"


# ---------------------------------------------------------------- features


def _task(**kw):
    from pipeline.finetune.config import TaskConfig

    return OmegaConf.merge(OmegaConf.structured(TaskConfig), {"name": "t", "main_metric": "f1", **kw})


def test_token_labels_on_first_subword_only(tokenizer):
    from pipeline.finetune.tasks import Split, featurize

    task = _task(type="token_classification")
    split = Split(
        "train", "mem", [{"tokens": ["w1s3", "w7", "w2s4s5"], "tags": ["B-PER", "O", "B-LOC"]}], labels=[[1, 0, 2]]
    )
    (f,) = featurize(task, split, tokenizer, train=True)
    assert tokenizer.convert_ids_to_tokens(f["input_ids"]) == [
        "[CLS]",
        "w1",
        "##s3",
        "w7",
        "w2",
        "##s4",
        "##s5",
        "[SEP]",
    ]
    assert f["labels"] == [-100, 1, -100, 0, 2, -100, -100, -100]
    assert f["word_starts"] == [1, 3, 4]
    (cut,) = featurize(_task(type="token_classification", max_seq_len=5), split, tokenizer, train=False)
    assert cut["word_starts"] == [1, 3, -1]  # the third word was truncated away: predicted "O"


def test_qa_windows_cover_long_contexts(tokenizer, tmp_path):
    from pipeline.finetune.tasks import featurize, load_task
    from tests.finetune_synth import squad

    squad(tmp_path / "t.json", 6, 0, context_words=40)
    task = _task(
        type="question_answering",
        max_seq_len=24,
        doc_stride=6,
        data_files={"train": str(tmp_path / "t.json"), "validation": str(tmp_path / "t.json")},
    )
    splits, _ = load_task(task)
    feats = featurize(task, splits["train"], tokenizer, train=True)
    # 40 context tokens, 24 - 6 (question, [CLS], 2 [SEP]) = 18 per window, 6 overlapping: windows at 0, 12, 24
    assert len(feats) == 3 * len(splits["train"].rows)
    found = set()
    for f in feats:
        assert len(f["input_ids"]) <= 24
        s, e = f["start_positions"], f["end_positions"]
        if (s, e) != (0, 0):  # the window holds the whole answer: its tokens spell it
            row = splits["train"].rows[f["example"]]
            assert row["context"][f["offsets"][s][0] : f["offsets"][e][1]] == row["answers"]["text"][0]
            found.add(f["example"])
    assert found == set(range(len(splits["train"].rows)))
    assert any((f["start_positions"], f["end_positions"]) == (0, 0) for f in feats)


# ---------------------------------------------------------------- ranks see equal counts


def test_train_batches_split_each_global_batch_evenly():
    from pipeline.checkpoint import TrainState
    from pipeline.config import EngineConfig
    from pipeline.dist import DistEnv
    from pipeline.engine import plan_batch
    from pipeline.finetune.loop import train_micro_batches

    feats = [{"input_ids": [2, 5 + i, 3], "attention_mask": [1, 1, 1], "labels": i % 2, "index": i} for i in range(50)]
    plan = plan_batch(8, 2, EngineConfig(micro_batch_size=2))
    states = [TrainState(), TrainState()]
    seen = []
    for _step in range(6):  # 50 // 8 = 6 steps per epoch (the last partial batch dropped)
        step = []
        for rank in (0, 1):
            env = DistEnv(rank, rank, 2, 2, "127.0.0.1", 1, "single")
            micro = train_micro_batches(feats, states[rank], plan, env, seed=3, pad_id=0)
            assert len(micro) == plan.accumulation == 2 and all(m["input_ids"].shape[0] == 2 for m in micro)
            step += [int(i) for m in micro for i in m["meta"]]
        assert len(set(step)) == 8
        seen += step
    assert len(set(seen)) == 48 and states[0].epoch == 0
    env0 = DistEnv(0, 0, 2, 2, "127.0.0.1", 1, "single")
    train_micro_batches(feats, states[0], plan, env0, seed=3, pad_id=0)
    assert (states[0].epoch, states[0].batch_in_epoch) == (1, 1)


def test_eval_pads_to_equal_batches_and_drops_the_padding(monkeypatch):
    import pipeline.finetune.eval as E

    class FakeEngine:
        def __init__(self):
            self.calls = 0

        def eval_step(self, batch):
            self.calls += 1
            return {"logits": batch["input_ids"][:, 1:3].float()}

    feats = [{"input_ids": [2, i, 100 - i, 3], "attention_mask": [1] * 4, "index": i} for i in range(7)]
    world, everything, calls = 3, [], []
    for rank in range(world):
        eng = FakeEngine()
        everything += E.local_predictions(eng, feats, rank, world, 2, 0, "classification")
        calls.append(eng.calls)
    assert calls == [2, 2, 2]  # ceil(7 / 3) = 3 features per rank (2 padded copies in all), 2 batches on every rank
    assert sorted(i for i, _ in everything) == list(range(7))  # each feature once, the padded copies dropped
    monkeypatch.setattr(E, "gather_lists", lambda items: list(reversed(everything)))
    out = E.predict(FakeEngine(), feats, 0, world, 2, 0, "classification")
    assert [o[0].tolist() for o in out] == [[i, 100 - i] for i in range(7)]
    monkeypatch.setattr(E, "gather_lists", lambda items: everything[:-1])
    with pytest.raises(RuntimeError, match="gathered 6 predictions for 7 features"):
        E.predict(FakeEngine(), feats, 0, world, 2, 0, "classification")


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("task", TASKS)
def test_every_task_config_composes(task):
    cfg = compose([f"task={task}", "model.path=/x", "engine=cpu"])
    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert c["task"]["name"] == task and c["name"] == f"finetune-{task}"
    assert c["task"]["main_metric"] in (c["task"]["score_metrics"] or [c["task"]["main_metric"]])
    assert c["optim"]["lr"] == 2e-5


def test_config_typos_and_missing_task_fail_at_composition():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose(["model.path=/x", "task=sst2", "task.lable_column=y"])
    with pytest.raises(Exception, match="task"):
        OmegaConf.to_container(compose(["model.path=/x"]), resolve=True, throw_on_missing=True)


def test_glue_tasks_keep_their_official_metrics():
    expect = {
        "cola": "mcc",
        "sst2": "accuracy",
        "mrpc": "f1",
        "qqp": "f1",
        "stsb": "spearman",
        "mnli": "accuracy",
        "qnli": "accuracy",
        "rte": "accuracy",
        "wnli": "accuracy",
    }
    for task, metric in expect.items():
        t = compose([f"task={task}", "model.path=/x"]).task
        assert (t.hub_dataset, t.hub_config, t.main_metric) == ("nyu-mll/glue", task, metric)
    assert list(compose(["task=mnli", "model.path=/x"]).task.score_metrics) == ["accuracy", "accuracy_mm"]


# ---------------------------------------------------------------- bad input


def _cls_task(tmp_path, train_rows, val_rows, *extra):
    write_csv(tmp_path / "train.csv", train_rows)
    if val_rows:
        write_csv(tmp_path / "dev.csv", val_rows)
    else:
        (tmp_path / "dev.csv").write_text("text,label\n")
    return compose(
        [
            "task=custom_classification",
            "model.path=/x",
            f"task.data_files.train={tmp_path / 'train.csv'}",
            f"task.data_files.validation={tmp_path / 'dev.csv'}",
            *extra,
        ]
    ).task


def test_bad_inputs_are_named(tmp_path, caplog):
    from pipeline.config import ConfigError
    from pipeline.finetune.model import resolve_source
    from pipeline.finetune.tasks import TaskDataError, load_task

    rows = [{"text": "w1 w2", "label": "a"}, {"text": "w3", "label": "b"}]
    with pytest.raises(
        TaskDataError,
        match=r"train.csv: .*no 'target' column \(task.label_column\).*\['label', "
        r"'text'\]",
    ):
        load_task(_cls_task(tmp_path, rows, rows, "task.label_column=target"))
    with pytest.raises(TaskDataError, match=r"dev.csv: validation label values \['c'\] never appear in the training"):
        load_task(_cls_task(tmp_path, rows, [*rows, {"text": "w4", "label": "c"}]))
    with pytest.raises(TaskDataError, match=r"are not in task.labels=\['a', 'b'\]"):
        load_task(_cls_task(tmp_path, rows, [{"text": "w4", "label": "c"}], "task.labels=[a,b]"))
    with pytest.raises(TaskDataError, match=r"dev.csv: the validation split has no examples"):
        load_task(_cls_task(tmp_path, rows, []))
    with pytest.raises(TaskDataError, match=r"no text column 'sentence'"):
        load_task(_cls_task(tmp_path, rows, rows, "task.text_columns=[sentence]"))
    write_jsonl(tmp_path / "r.jsonl", [{"text": "w1", "label": "high"}])
    reg = compose(
        [
            "task=custom_regression",
            "model.path=/x",
            f"task.data_files.train={tmp_path / 'r.jsonl'}",
            f"task.data_files.validation={tmp_path / 'r.jsonl'}",
        ]
    ).task
    with pytest.raises(TaskDataError, match=r"r.jsonl: label values \['high'\] are not numbers"):
        load_task(reg)
    (tmp_path / "ner.conll").write_text("w1 B-PER\nw2 O\n\nw3 B-X\n")
    (tmp_path / "ner_dev.conll").write_text("w1 B-PER\nw2 I-MISC\n")
    ner = compose(
        [
            "task=ner",
            "model.path=/x",
            f"task.data_files.train={tmp_path / 'ner.conll'}",
            f"task.data_files.validation={tmp_path / 'ner_dev.conll'}",
        ]
    ).task
    with pytest.raises(TaskDataError, match=r"ner_dev.conll: validation tags values \['I-MISC'\] never appear"):
        load_task(ner)
    # A quick run (max_train_samples) keeps the classes of the whole training split: B-X comes after the first row.
    (tmp_path / "ner_dev.conll").write_text("w1 B-PER\nw3 B-X\n")
    splits, names = load_task(ner, max_train=1)
    assert len(splits["train"].rows) == 1 and names == ["O", "B-PER", "B-X"]
    assert splits["validation"].labels == [[1, 2]]
    # A quick run on a file ordered by label trains on mostly one class: the log says so, naming the file.
    rows = [{"text": f"w{i}", "label": "a" if i < 60 else "b"} for i in range(100)]
    with caplog.at_level("WARNING", logger="pipeline.finetune.tasks"):
        load_task(_cls_task(tmp_path, rows, rows), max_train=50)
        load_task(_cls_task(tmp_path, rows[::-1][::2] + rows[::2], rows), max_train=50)  # first 50 as the whole: 60/40
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "train.csv: max_train_samples=50 keeps the first 50 of 100" in warned[0]
    assert "100% 'a' against 60% in the whole split" in warned[0]
    with pytest.raises(
        TaskDataError,
        match=r"could not load nyu-mll/glue \(sst2\) from the Hugging Face hub.*"
        r"task.data_files.train=",
    ):
        load_task(compose(["task=sst2", "model.path=/x"]).task)

    # Not a checkpoint: a plain directory, and a run_dir whose only checkpoint never completed.
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="is not a checkpoint: neither a pretraining run_dir .* nor a Hugging Face"):
        resolve_source(str(tmp_path / "plain"), None)
    (tmp_path / "run" / "checkpoints" / "step_00000005").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"holds no complete checkpoint"):
        resolve_source(str(tmp_path / "run"), None)


def test_a_suite_task_without_its_files_names_the_fetch_and_BERTRUN_REAL_DATA(tmp_path, monkeypatch):
    """After ``data_prep.fetch trec out=DIR`` the preset still reads data/real/: the error says how it finds DIR."""
    from pipeline.cli import one_line
    from pipeline.finetune.tasks import TaskDataError, load_task

    monkeypatch.setenv("BERTRUN_REAL_DATA", str(tmp_path))
    with pytest.raises(TaskDataError) as e:
        load_task(compose(["task=trec", "model.path=/x"]).task)
    assert one_line(e.value) == (
        f"{tmp_path}/trec/train.csv: no such file: task=trec reads BERTRUN_REAL_DATA/trec/ (BERTRUN_REAL_DATA="
        f"{tmp_path}); fetch it with `python -m data_prep.fetch trec out=DIR` and set BERTRUN_REAL_DATA=DIR, or give "
        "task.data_files.train=FILE"
    )
    monkeypatch.delenv("BERTRUN_REAL_DATA")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TaskDataError, match=r"^data/real/wnut16/train.conll: no such file: .*\(BERTRUN_REAL_DATA is "
                                            r"unset, so data/real/ in this folder\)"):  # fmt: skip
        load_task(compose(["task=wnut16", "model.path=/x"]).task)


def test_bad_input_on_the_command_line_fails_before_any_training(tmp_path):
    rows = [{"text": "w1 w2", "label": "a"}, {"text": "w3", "label": "b"}]
    write_csv(tmp_path / "train.csv", rows)
    (tmp_path / "plain").mkdir()
    p = run_module(
        "pipeline.finetune",
        [
            f"model.path={tmp_path / 'plain'}",
            "task=custom_classification",
            f"task.data_files.train={tmp_path / 'train.csv'}",
            f"task.data_files.validation={tmp_path / 'train.csv'}",
            f"run_dir={tmp_path / 'out'}",
            "engine=cpu",
        ],
        check=False,
    )
    assert p.returncode != 0
    assert "is not a checkpoint: neither a pretraining run_dir" in p.stderr + p.stdout
    assert not (tmp_path / "out" / "results.json").exists()


# ---------------------------------------------------------------- the sweep table


def _job(sweep, num, task, lr, seed, value, score=None, metric="accuracy", random_init=False):
    d = sweep / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(f"- task={task}\n- optim.lr={lr}\n- seed={seed}\n")
    val = {metric: value, "score": value if score is None else score}
    r = {"task": task, "main_metric": metric, "validation": val, "hyperparameters": {"lr": lr}, "seed": seed}
    (d / "results.json").write_text(json.dumps(r | {"source": {"random_init": random_init}}))


def test_collect_takes_the_median_over_seeds_at_the_best_lr(tmp_path):
    from launch.collect import collect, problems

    sweep = tmp_path / "sweep"
    n = 0
    for lr, values in ((1e-5, [0.5, 0.7, 0.6]), (2e-5, [0.8, 0.6, 0.9])):  # medians 0.6 and 0.8
        for seed, v in enumerate(values):
            _job(sweep, n, "sst2", lr, seed, v)
            n += 1
    for lr, values in ((1e-5, [0.9, 0.7]), (3e-5, [0.4, 0.5])):  # mrpc: F1 main metric, score = mean(F1, acc)
        for seed, v in enumerate(values):
            _job(sweep, n, "mrpc", lr, seed, v, score=v - 0.1, metric="f1")
            n += 1
    (sweep / str(n) / ".hydra").mkdir(parents=True)  # a failed job: no results.json
    (sweep / str(n) / ".hydra" / "overrides.yaml").write_text("- task=rte\n")
    text = collect(sweep)
    assert problems(sweep, "results.json") == [f"job {n}: no results.json (failed or still running)"]
    with open(sweep / "sweep.csv") as f:
        rows = {r["task"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"sst2", "mrpc", "average"}
    sst2 = rows["sst2"]
    assert float(sst2["best_lr"]) == 2e-5 and sst2["seeds"] == "3" and sst2["lrs"] == "2"
    assert float(sst2["median"]) == pytest.approx(0.8)
    assert float(sst2["stdev"]) == pytest.approx(statistics.stdev([0.8, 0.6, 0.9]))  # 0.1528
    assert (float(sst2["min"]), float(sst2["max"])) == (0.6, 0.9)
    mrpc = rows["mrpc"]
    assert float(mrpc["best_lr"]) == 1e-5 and float(mrpc["median"]) == pytest.approx(0.8)
    assert float(mrpc["score"]) == pytest.approx(0.7)
    assert float(rows["average"]["score"]) == pytest.approx((0.8 + 0.7) / 2)
    assert text.splitlines()[2].startswith("| mrpc | f1 |")
    assert (sweep / "sweep.md").read_text() == text


def test_collect_takes_a_folder_of_sweeps_as_one_suite(tmp_path, capsys):
    """The suite with WNUT-16 swept apart (its own epochs, launch.demo's quality and gpu profiles): collecting the
    parent folder gives one table of both sweeps; a failed job is named with its sweep."""
    from launch.collect import main

    folder = tmp_path / "finetune"
    scores = {"trec": ((0.86, 0.87), (0.81, 0.82)), "wnut16": ((0.25, 0.27), (0.15, 0.16))}
    for task, (pre, rnd) in scores.items():
        n = 0
        for ri, values in ((False, pre), (True, rnd)):
            for seed, v in enumerate(values, 1):
                _job(
                    folder / task,
                    n,
                    task,
                    1e-3,
                    seed,
                    v,
                    metric="f1" if task == "wnut16" else "accuracy",
                    random_init=ri,
                )
                n += 1
    assert main([str(folder)]) == 0
    with open(folder / "suite.csv") as f:
        rows = {r["task"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"trec", "wnut16", "average"} and rows["wnut16"]["seeds"] == "2/2"
    assert float(rows["wnut16"]["difference"]) == pytest.approx(0.26 - 0.155)
    assert float(rows["average"]["difference"]) == pytest.approx(((0.865 - 0.815) + (0.26 - 0.155)) / 2)
    (folder / "wnut16" / "4" / ".hydra").mkdir(parents=True)  # a failed job in one of the sweeps
    (folder / "wnut16" / "4" / ".hydra" / "overrides.yaml").write_text("- task=wnut16\n")
    capsys.readouterr()
    assert main([str(folder)]) == 1
    assert f"{folder / 'wnut16'}: job 4: no results.json" in capsys.readouterr().err
    assert main([str(tmp_path / "empty")]) == 2


def test_model_dropout_override_reaches_the_config(tmp_path):
    from transformers import BertConfig, BertModel

    from pipeline.finetune.model import build_task_model
    from tests.synth import write_tokenizer

    d = tmp_path / "hf"
    BertModel(
        BertConfig(vocab_size=248, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(d)
    write_tokenizer(d)
    cfg = compose(["task=sst2", f"model.path={d}", "model.hidden_dropout=0", "lora.enabled=true"])
    m = build_task_model(str(d), cfg.task, ["negative", "positive"], cfg.model, cfg.lora)
    assert m.hf.config.hidden_dropout_prob == 0.0 and m.hf.config.num_labels == 2
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    out = m.eval()(
        input_ids=torch.tensor([[2, 7, 3]]), attention_mask=torch.ones(1, 3, dtype=torch.long), labels=torch.tensor([1])
    )
    assert out["logits"].shape == (1, 2) and out["loss"].ndim == 0
