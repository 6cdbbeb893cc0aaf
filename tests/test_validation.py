"""Numbers that always count: validation metrics from a tiny val split, and a gradient norm under ZeRO-0."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY, read_metrics, run_module

RUN = [*TINY, "global_batch_size=8", "engine.micro_batch_size=8", "max_steps=3", "checkpoint.at_end=false"]


@pytest.fixture(scope="module")
def tiny_val(tmp_path_factory):
    """5 validation samples: fewer than one micro-batch of 8 (dropped, before, leaving no val metrics at all)."""
    from tests.synth import make_shards

    return make_shards(tmp_path_factory.mktemp("tinyval"), [64], [5], seq_len=64)


def test_a_validation_split_smaller_than_a_micro_batch_still_gives_val_metrics(tiny_val, tmp_path):
    run = tmp_path / "run"
    run_module("pipeline.pretrain", [f"data.path={tiny_val}", f"run_dir={run}", *RUN])
    val = [r for r in read_metrics(run) if "val_loss" in r]
    assert [r["step"] for r in val] == [3]
    assert val[0]["val_loss"] > 0 and 0 <= val[0]["val_mlm_acc"] <= 1 and 0 <= val[0]["val_nsp_acc"] <= 1
    assert json.loads((run / "summary.json").read_text())["val_loss"] == val[0]["val_loss"]


def test_grad_norm_is_a_number_under_zero_0_and_matches_zero_1(tiny_val, tmp_path):
    norms = {}
    for stage in (0, 1):
        run = tmp_path / f"z{stage}"
        args = [f"data.path={tiny_val}", f"run_dir={run}", *RUN, f"engine.zero_stage={stage}", "eval.at_end=false"]
        run_module("pipeline.pretrain", [*args, "model.hidden_dropout=0", "model.attention_dropout=0"])
        norms[stage] = [r.get("grad_norm") for r in read_metrics(run) if "loss" in r]
    assert len(norms[0]) == 3 and all(isinstance(g, float) and g > 0 for g in norms[0]), norms
    # DeepSpeed's own norm under ZeRO-1 (before clipping) for the same steps: ours must be the same quantity.
    assert norms[0] == pytest.approx(norms[1], rel=1e-4), norms
