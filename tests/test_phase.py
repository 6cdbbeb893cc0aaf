"""What a run that starts from another run's checkpoint refuses, in one line, before any work (no training here:
tests/test_elastic.py trains the phases)."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from pipeline.config import ConfigError
from pipeline.preflight import compose
from pipeline.pretrain import phase


def _first_run(root, *overrides):
    """A run_dir with one complete checkpoint (its config and trainer state; no DeepSpeed files: not needed here)."""
    tag = root / "checkpoints" / "step_00000010"
    tag.mkdir(parents=True)
    cfg = compose("pretrain", ["data.path=/x", "model=bert-tiny", *overrides])
    OmegaConf.save(cfg, tag / "config.yaml")
    (tag / "trainer_state.json").write_text(json.dumps({"step": 10, "tokens": 1234, "samples": 80}))
    (tag / "COMPLETE").write_text("step_00000010\n")
    return root


def _second(first, *overrides):
    return compose("pretrain", ["data.path=/y", "model=bert-tiny", f"init_from_run={first}", *overrides])


def test_a_phase_refuses_too_few_positions_another_model_or_an_optimizer_it_cannot_take(tmp_path):
    first = _first_run(tmp_path / "p1", "model.max_position_embeddings=128")
    with pytest.raises(ConfigError, match=r"position embeddings cover 128 positions, fewer than this run.s seq_len"):
        phase.find_start(_second(first, "model.max_position_embeddings=128"), tmp_path / "p2", 512, "")
    with pytest.raises(ConfigError, match=r"another model \(model.hidden_size=256 \(it has 128\)\)"):
        phase.find_start(_second(first, "model.max_position_embeddings=128", "model.hidden_size=256"), tmp_path / "p2",
                         128, "")  # fmt: skip
    zero0 = _first_run(tmp_path / "z0", "engine.zero_stage=0", "engine.precision=fp32")
    with pytest.raises(ConfigError, match=r"its optimizer \(ZeRO-0, fp32\) cannot be loaded at ZeRO-2 in bf16"):
        phase.find_start(_second(zero0, "init_optimizer=true", "engine.zero_stage=2", "engine.precision=bf16"),
                         tmp_path / "p2", 128, "")  # fmt: skip
    start = phase.find_start(_second(zero0, "init_optimizer=true", "engine.zero_stage=0"), tmp_path / "p2", 128, "")
    assert (start.step, start.tokens, start.tag, start.optimizer) == (10, 1234, "step_00000010", True)
    with pytest.raises(ConfigError, match="no complete checkpoint at step 5"):
        phase.find_start(_second(zero0, "init_from_run_step=5"), tmp_path / "p2", 128, "")
    with pytest.raises(ConfigError, match="is this run's own run_dir"):
        phase.find_start(_second(zero0), zero0, 128, "")
    with pytest.raises(ConfigError, match="init_from_run_step and init_optimizer need init_from_run"):
        phase.validate(compose("pretrain", ["data.path=/y", "init_optimizer=true"]))
