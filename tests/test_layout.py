"""The layout's promises: every shipped preset composes, imports point downstream, and a run_dir stands alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT, run_module

CONF = ROOT / "conf"


def presets(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose(stage: str, overrides: list[str]):
    from pipeline.run import compose as run_compose

    return run_compose(stage, overrides)


@pytest.mark.parametrize("model", presets("model"))
@pytest.mark.parametrize("engine", presets("engine"))
@pytest.mark.parametrize("optim", presets("optim"))
def test_every_pretrain_preset_composes_with_typed_choices(model, engine, optim):
    cfg = compose("pretrain", [f"model={model}", f"engine={engine}", f"optim={optim}", "data.path=/x"])
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert resolved["model"]["hidden_size"] % resolved["model"]["num_heads"] == 0
    assert cfg.engine.precision in ("fp32", "bf16", "fp16") and cfg.optim.name == optim


@pytest.mark.parametrize("task", presets("task"))
def test_every_finetune_task_preset_composes(task):
    cfg = compose("finetune", [f"task={task}", "model.path=/x"])
    assert (
        cfg.task.name
        and cfg.task.main_metric
        and cfg.task.type
        in (
            "classification",
            "regression",
            "token_classification",
            "question_answering",
        )
    )


@pytest.mark.parametrize("launcher", presets("hydra/launcher"))
def test_every_launcher_preset_composes(launcher, tmp_path):
    # Composed by Hydra itself (the launcher group is Hydra's), with the job's config printed and nothing run.
    p = run_module("pipeline.pretrain", [f"hydra/launcher={launcher}", "data.path=/x", "--cfg", "hydra"], cwd=tmp_path)
    cfg = OmegaConf.create(p.stdout).hydra.launcher
    from hydra.utils import get_class

    # Ours (hydra_plugins/bertrun_launcher): submitit's launchers whose failed jobs end FAILED. (By name: Hydra's
    # plugin scan can import the upstream module a second time in one process.)
    bases = [c.__name__ for c in get_class(cfg._target_).__mro__]
    assert "BaseSubmititLauncher" in bases and cfg.timeout_min > 0
    assert not list(tmp_path.iterdir())  # composing ran nothing


@pytest.mark.parametrize(
    ("stage", "override", "message"),
    [
        ("pretrain", "engine.precision=fp8", "Invalid value 'fp8', expected one of [fp32, bf16, fp16]"),
        ("pretrain", "optim.name=sgd", "Invalid value 'sgd', expected one of [adamw, lamb]"),
        ("pretrain", "data.verify=md5", "Invalid value 'md5', expected one of [none, size, sha256]"),
        ("pretrain", "data.on_bad_shard=ignore", "Invalid value 'ignore', expected one of [skip, error]"),
        ("pretrain", "logger.wandb.mode=on", "Invalid value 'on', expected one of [online, offline, disabled]"),
        ("finetune", "task.type=ranking", "Invalid value 'ranking', expected one of [classification, regression"),
    ],
)
def test_a_value_outside_a_choice_fails_at_composition_with_the_choices(stage, override, message):
    base = ["data.path=/x"] if stage == "pretrain" else ["model.path=/x", "task=sst2"]
    with pytest.raises(Exception) as caught:  # noqa: B017 - Hydra wraps OmegaConf's ValidationError
        compose(stage, [*base, override])
    err, text = caught.value, ""
    while err is not None:
        text, err = text + str(err) + "\n", err.__cause__
    assert message in text


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_imports_point_downstream():
    for wing in ("pipeline", "data_prep"):
        for f in (ROOT / wing).rglob("*.py"):
            bad = {m for m in _imports(f) if m.split(".")[0] == "launch"}
            assert not bad, f"{f.relative_to(ROOT)} imports {bad}: pipeline and data_prep never import launch"
    for f in (ROOT / "data_prep").rglob("*.py"):
        bad = {m for m in _imports(f) if m.split(".")[0] == "pipeline"}
        assert not bad, f"{f.relative_to(ROOT)} imports {bad}: data_prep writes, pipeline reads"
    users = sorted(
        str(f.relative_to(ROOT)) for f in (ROOT / "pipeline").rglob("*.py") if any(
            m.split(".")[0] == "deepspeed" for m in _imports(f))
    )  # fmt: skip
    assert users == ["pipeline/engine.py"], users


def test_the_format_module_does_not_import_the_corpus_readers():
    code = (
        "import sys, data_prep.format, pipeline.pretrain.data\n"
        "heavy = [m for m in ('blingfire', 'mwparserfromhell', 'zstandard', 'data_prep.sources') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# A run_dir that stands alone (moved, its data gone: export and finetune; the data back: exact resume) is checked
# in tests/test_pretrain.py::test_exact_resume_matches_an_uninterrupted_run_even_from_a_moved_run_dir.
