"""The offline downstream suite: the shipped task presets (conf/task/mr.yaml, wnut16.yaml, ...) swept over seeds and
pretrained vs random init in one Hydra multirun, then launch.collect's suite table (median and spread per task,
the difference, the average), recomputed here from every job's results.json.

The presets read BERTRUN_REAL_DATA/<task>/ (what data_prep.fetch writes); small learnable files in the same layout
stand in for the real sets so that this runs in seconds and without the registry (tests/test_fetch.py covers those).
"""

from __future__ import annotations

import csv
import json
import statistics

import pytest
import yaml

from tests import finetune_synth as S
from tests.conftest import run_module


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return S.pretrained_run(tmp_path_factory.getbasetemp(), zero_stage=0, nproc=1)


def real_layout(root):
    """mr/{train,validation}.csv (labels negative/positive) and wnut16/{train,validation}.conll, as fetch writes."""
    (root / "mr").mkdir(parents=True)
    (root / "wnut16").mkdir()
    for split, n, seed in (("train", 96, 1), ("validation", 48, 2)):
        rows = [
            {"text": r["text"], "label": {"pos": "positive", "neg": "negative"}[r["label"]]}
            for r in S.separable(n, seed)
        ]
        S.write_csv(root / "mr" / f"{split}.csv", rows)
        S.conll(root / "wnut16" / f"{split}.conll", n // 2, seed)
    return root


def test_suite_sweep_then_the_pretrained_vs_random_table(source, tmp_path):
    data = real_layout(tmp_path / "real")
    sweep = tmp_path / "suite"
    run_module(
        "pipeline.finetune",
        [
            "-m",
            f"model.path={source}",
            # A task.* key beside a sweep over task= (Hydra alone stops: "task is required"): pipeline/cli.sweep_safe.
            "task.max_seq_len=48",
            "task=mr,wnut16",
            "seed=1,2",
            "model.random_init=false,true",
            "max_steps=6",
            "global_batch_size=16",
            "optim.lr=1e-3",
            "engine=cpu",
            "logger.progress=false",
            f"hydra.sweep.dir={sweep}",
        ],
        env={"BERTRUN_REAL_DATA": str(data)},
        timeout=900,
    )
    runs = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert sorted((r["task"], r["source"]["random_init"], r["seed"]) for r in runs) == [
        (t, ri, s) for t in ("mr", "wnut16") for ri in (False, True) for s in (1, 2)
    ]
    # task.max_seq_len=48 reached every job, in its config and its recorded overrides, without adding jobs.
    jobs = sorted(sweep.glob("*/.hydra"))
    assert len(jobs) == 8
    for job in jobs:
        assert yaml.safe_load((job / "config.yaml").read_text())["task"]["max_seq_len"] == 48
        assert "task.max_seq_len=48" in yaml.safe_load((job / "overrides.yaml").read_text())
    # The presets read the files under BERTRUN_REAL_DATA: the validation sizes are those files'.
    assert {(r["task"], r["validation_examples"]) for r in runs} == {("mr", 48), ("wnut16", 24)}

    p = run_module("launch.collect", [str(sweep)])
    assert "pretrained" in p.stdout and "random_init" in p.stdout and "average" in p.stdout
    with open(sweep / "suite.csv") as f:
        table = {r["task"]: r for r in csv.DictReader(f)}
    assert set(table) == {"mr", "wnut16", "average"}
    medians = {}
    for task, metric in (("mr", "accuracy"), ("wnut16", "f1")):
        row = table[task]
        assert row["metric"] == metric and row["seeds"] == "2/2"
        for ri, col in ((False, "pretrained"), (True, "random_init")):
            vals = [r["validation"][metric] for r in runs if r["task"] == task and r["source"]["random_init"] == ri]
            assert float(row[col]) == pytest.approx(statistics.median(vals), abs=1e-6)
            assert float(row[f"{col}_sd"]) == pytest.approx(statistics.stdev(vals), abs=1e-6)
            medians[task, ri] = statistics.median(vals)
        assert float(row["difference"]) == pytest.approx(medians[task, False] - medians[task, True], abs=1e-6)
    avg = table["average"]
    assert float(avg["pretrained"]) == pytest.approx((medians["mr", False] + medians["wnut16", False]) / 2, abs=1e-6)
    assert float(avg["random_init"]) == pytest.approx((medians["mr", True] + medians["wnut16", True]) / 2, abs=1e-6)
    assert (sweep / "suite.md").read_text().count("\n") == 2 + 3
