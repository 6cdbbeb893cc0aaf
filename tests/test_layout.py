"""The layout's promises: every shipped preset composes, imports point downstream, and a run_dir stands alone."""

from __future__ import annotations

import ast
import os
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
    from pipeline.preflight import compose as run_compose

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


def _launch_references(node, where: str = "") -> list[str]:
    """Every string value of a YAML tree that names a module of launch/ (``_target_: launch.x.Y`` and the like)."""
    if isinstance(node, dict):
        return [r for k, v in node.items() for r in _launch_references(v, f"{where}.{k}".lstrip("."))]
    if isinstance(node, list):
        return [r for i, v in enumerate(node) for r in _launch_references(v, f"{where}[{i}]")]
    return [f"{where}: {node}"] if isinstance(node, str) and node.split(".")[0] == "launch" else []


def test_imports_point_downstream():
    import yaml

    # The stages' YAML loads nothing from launch/ either (Hydra imports what a _target_ names on every run).
    refs = [f"{f.relative_to(ROOT)}: {r}" for f in CONF.rglob("*.yaml") for r in _launch_references(
        yaml.safe_load(f.read_text()))]  # fmt: skip
    assert not refs, refs
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


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the pipeline modules it imports anywhere in its code (imports inside functions included)."""
    mods = {".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): f
            for f in (root / "pipeline").rglob("*.py")}  # fmt: skip
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                graph[m] |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in mods:
                graph[m] |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                             for a in node.names}  # fmt: skip
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import circle once, as the path that closes it."""
    cycles, done = [], set()

    def visit(m: str, path: list[str]) -> None:
        for n in sorted(graph[m]):
            if n in path:
                cycle = path[path.index(n) :]
                if frozenset(cycle) not in done:
                    done.add(frozenset(cycle))
                    cycles.append([*cycle, n])
            elif n not in seen:
                seen.add(n)
                visit(n, [*path, n])

    for start in sorted(graph):
        seen = {start}
        visit(start, [start])
    return cycles


def test_no_import_circle_inside_pipeline():
    # A circle (pipeline.run importing the stage loops that import it; data.py and elastic.py importing each other)
    # means neither side reads alone, and a lazy import hides it from Python until the day it breaks.
    assert import_cycles(import_graph(ROOT)) == []


def test_the_trainer_composes_and_checks_a_config_with_launch_unimportable(tmp_path, synth_data):
    """pipeline never loads launch/: not by import, not through conf/ (a callback), not through Hydra's plugin scan of
    hydra_plugins/ (which imports our launcher module on every run)."""
    stub = tmp_path / "launch"
    stub.mkdir()
    (stub / "__init__.py").write_text("raise ImportError('the trainer imported launch/')\n")
    code = (
        "import warnings; warnings.simplefilter('error')\n"
        "import pipeline.pretrain.__main__, pipeline.finetune.__main__\n"
        "from pipeline.preflight import check_job\n"
        f"cfg = check_job('pretrain', ['data.path={synth_data}', 'model=bert-tiny', 'global_batch_size=8'], 2)\n"
        "check_job('finetune', ['task=sst2', 'model.path=x'], 1)\n"
        "import sys; print(cfg.model.name, sorted(m for m in sys.modules if m.split('.')[0] == 'launch'))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.split() == ["bert-tiny", "[]"], p.stderr[-2000:]
    # The entry point itself, through Hydra (plugin scan, callbacks, logging config), with launch/ unimportable.
    p = subprocess.run([sys.executable, "-m", "pipeline.pretrain", f"data.path={synth_data}", "--cfg", "job"],
                       cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0 and "Error importing" not in p.stderr, p.stderr[-2000:]
    assert OmegaConf.create(p.stdout).data.path == str(synth_data)


# A run_dir that stands alone (moved, its data gone: export and finetune; the data back: exact resume) is checked
# in tests/test_pretrain.py::test_exact_resume_matches_an_uninterrupted_run_even_from_a_moved_run_dir.
