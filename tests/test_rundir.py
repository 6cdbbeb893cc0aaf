"""What a run_dir means (pipeline/rundir.py) without training: the key table, configs from older schemas, the record."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import yaml
from omegaconf import OmegaConf

from pipeline import rundir
from pipeline.config import ConfigError

COMING = {"data.weights"}  # named in the table ahead of the schema (issue 30's data mixtures)


def compose(stage: str, *overrides: str):
    from pipeline.preflight import compose

    return compose(stage, list(overrides))


def schema_keys(schema: type, prefix: str = "") -> set[str]:
    """Every leaf key of a stage's schema (groups without a default through their schema class)."""
    keys = set()
    for f in dataclasses.fields(schema):
        hint = typing.get_type_hints(schema)[f.name]
        keys |= schema_keys(hint, f"{prefix}{f.name}.") if dataclasses.is_dataclass(hint) else {prefix + f.name}
    return keys


def test_every_entry_of_the_table_names_a_key_and_what_the_run_is_defaults_to_refused():
    from pipeline.finetune.config import FinetuneConfig
    from pipeline.pretrain.config import PretrainConfig

    keys = schema_keys(PretrainConfig) | schema_keys(FinetuneConfig)
    for entry in set(rundir.RULES) - COMING - {"hydra."}:
        assert (entry in keys) if not entry.endswith(".") else any(k.startswith(entry) for k in keys), entry
    assert {rundir.kind(k) for k in ("seed", "data.mlm_probability", "data.whole_word_masking", "task.name")} == {
        rundir.DEFINES
    }
    assert rundir.kind("engine.some_key_added_later") == rundir.DEFINES  # unknown: the safe side
    assert rundir.kind("logger.wandb.tags") == rundir.RUNTIME and rundir.kind("optim.lr") == rundir.COURSE
    assert rundir.kind("model.num_layers") == rundir.FIXED and rundir.kind("data.path") == rundir.DATA


def test_a_config_from_an_older_schema_compares_only_what_both_know(tmp_path):
    cfg = compose("pretrain", "data.path=/d", "model=bert-tiny", "engine=cpu")
    old = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    old["engine"]["seed_workers_by_rank"] = True  # a key removed from the schema since: ignored
    del old["data"]["fixed_shapes"]  # a key added since, left at its default: the run's behaviour then
    del old["data"]["packing"]  # a key added since, set now: a change from its default
    old["engine"]["deepspeed_overrides"] = {"steps_per_print": 10}  # an entry of a free-form dict, gone now
    found = rundir.changes(OmegaConf.merge(cfg, {"data": {"packing": True}}), old)
    assert [str(c) for c in found] == [
        "data.packing false -> true",
        "engine.deepspeed_overrides.steps_per_print 10 -> null",
    ]
    # As a checkpoint's config: what defines the run (deepspeed_overrides, a seed changed on top) is refused in one
    # line naming each key, the way out included; the rest continues.
    (tmp_path / "checkpoints" / "step_00000004").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_00000004" / "COMPLETE").write_text("")
    (tmp_path / "checkpoints" / "step_00000004" / "config.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError) as e:
        rundir.check_run_dir(OmegaConf.merge(cfg, {"seed": 7, "data": {"packing": True}}), tmp_path)
    assert str(e.value) == (
        f"run_dir={tmp_path} holds a run with other values (checkpoints/step_00000004): engine.deepspeed_overrides."
        "steps_per_print 10 -> null, seed 1234 -> 7; a run_dir holds one run: use another run_dir, or "
        "allow_config_change=true to continue this run with the new values"
    )
    rundir.check_run_dir(OmegaConf.merge(cfg, {"seed": 7, "allow_config_change": True}), tmp_path)
    # Finished (results.json, its checkpoints kept): what it would train differently is refused, whatever the switch.
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"finished run \(results.json\) with other values: .*max_steps 1000 -> 9;"):
        rundir.check_run_dir(OmegaConf.merge(cfg, {"max_steps": 9, "allow_config_change": True}), tmp_path)


def test_an_older_run_dir_keeps_its_config_as_the_first_start(tmp_path):
    cfg = compose("pretrain", "data.path=/d", "model=bert-tiny", "engine=cpu", "max_steps=30")
    (tmp_path / "config.yaml").write_text("max_steps: 20\n")  # written before configs/ was kept
    rundir.record_start(cfg, tmp_path, "max_steps: 30\n")  # no checkpoint: a fresh start
    assert (tmp_path / "configs" / "start-1.yaml").read_text().endswith("max_steps: 20\n")
    start2 = (tmp_path / "configs" / "start-2.yaml").read_text()
    assert start2.startswith("# start 2: no checkpoint to resume from: a fresh start; changed since the last start:")
    assert "max_steps 20 -> 30" in start2.splitlines()[0]
    assert (tmp_path / "config.yaml").read_text() == "max_steps: 30\n"
