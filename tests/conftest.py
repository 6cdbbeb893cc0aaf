"""Shared fixtures: small data, and a runner for the real entry points (one process or torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.dist import free_port

ROOT = Path(__file__).resolve().parents[1]

# Tests run on 2 cores: one intra-op thread per process keeps 2-rank runs from fighting over them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# Collectives run at world size 1 too (pipeline/dist.py), so one-process tests make the collectives two ranks make.
os.environ.setdefault("BERTRUN_STRICT_COLLECTIVES", "1")


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def run_module(
    module: str,
    args: list[str],
    nproc: int = 1,
    cwd: Path | None = None,
    timeout: int = 600,
    check: bool = True,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` (under torchrun when nproc > 1), as a user would."""
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(free_port()),
            "-m",
            module,
            *args,
        ]
    else:
        cmd = [sys.executable, "-m", module, *args]
    p = subprocess.run(cmd, cwd=cwd or ROOT, env=child_env(env), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {p.returncode}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-8000:]}"
        )
    return p


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """Three uneven train shards and one val shard of learnable synthetic sequences (seq_len 64)."""
    from tests.synth import make_shards

    return make_shards(tmp_path_factory.mktemp("synth"), [400, 300, 250], [96], seq_len=64)


TINY = [
    "model=bert-tiny",
    "engine=cpu",
    "logger.progress=false",
    "logger.every_steps=1",
    "eval.every_steps=1000",
    "checkpoint.every_steps=1000",
]

# Two ranks under torchrun, uninterrupted: what the launchers (submitit local, Slurm jobs) must reproduce.
TWO_RANKS = [
    *TINY,
    "global_batch_size=8",
    "engine.micro_batch_size=4",
    "model.hidden_dropout=0",
    "model.attention_dropout=0",
]


@pytest.fixture(scope="session")
def torchrun_reference(synth_data, tmp_path_factory):
    """``torchrun_reference(steps)``: the run_dir of a 2-rank torchrun run of ``TWO_RANKS`` on ``synth_data``, trained
    once per session and number of steps (tests/test_launch.py and tests/test_slurm.py share them)."""
    runs: dict[int, Path] = {}

    def get(steps: int) -> Path:
        if steps not in runs:
            run = tmp_path_factory.mktemp(f"torchrun{steps}")
            run_module(
                "pipeline.pretrain",
                [f"data.path={synth_data}", f"run_dir={run}", *TWO_RANKS, f"max_steps={steps}"],
                nproc=2,
            )
            runs[steps] = run
        return runs[steps]

    return get


# Tests that share one machine-wide resource run on one pytest-xdist worker: the Slurm cluster (its two nodes), and
# test_launch.py, which shares the torchrun reference run with test_slurm.py.
_SHARED_WORKER = {"test_slurm.py": "slurm", "test_slurm_errors.py": "slurm", "test_launch.py": "slurm"}
# The longest groups, longest first (from CI's --durations output); the others follow in collection order.
_LONGEST = ("slurm", "test_demo_report", "test_pretrain", "test_elastic", "test_finetune", "test_faults",
            "test_packing")  # fmt: skip


@pytest.hookimpl(tryfirst=True)  # before xdist's worker hook, which reads the groups into the test ids
def pytest_collection_modifyitems(config, items):
    """For ``pytest -n 4 --dist loadgroup --no-loadscope-reorder`` (scripts/test.sh): each module runs whole on one
    worker, so its module fixtures (trained runs) are made once, and the longest groups go out first, so the
    workers end near each other. A serial run keeps the order within each module."""
    groups: dict[str, list] = {}
    for item in items:
        name = _SHARED_WORKER.get(item.path.name, item.path.stem)
        item.add_marker(pytest.mark.xdist_group(name))
        groups.setdefault(name, []).append(item)
    rank = {name: i for i, name in enumerate(_LONGEST)}
    items[:] = [it for name in sorted(groups, key=lambda n: rank.get(n, len(rank))) for it in groups[name]]


_GROUPS_BROKEN: list[str] = []


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session):
    """On a ``--dist loadgroup`` worker every test id must carry its group, or the groups silently do nothing (each
    module's trained fixtures made on both workers, Slurm tests on both at once): every test then fails at once."""
    if session.config.getoption("loadgroup", False) and not all("@" in it.nodeid for it in session.items):
        import xdist

        _GROUPS_BROKEN.append(
            f"pytest-xdist {xdist.__version__} did not apply the xdist_group marks under pytest {pytest.__version__} "
            "(a pytest release it does not support yet?): install the versions pyproject.toml's `test` extra allows"
        )


def pytest_runtest_setup(item):
    if _GROUPS_BROKEN:
        pytest.fail(_GROUPS_BROKEN[0], pytrace=False)
