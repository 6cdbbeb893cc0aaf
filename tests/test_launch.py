"""Launch code that needs no Slurm: the distributed environment, request checks, submitit's LocalExecutor."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import astuple

import pytest

from launch.resources import LaunchError, check_slurm_request
from pipeline.dist import detect, expand_first_host
from tests.conftest import ROOT, TINY, TWO_RANKS, child_env, run_module, train_losses


def test_detect_reads_slurm_torchrun_and_submitit_local_variables():
    slurm = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[003-006]",
        "SLURM_JOB_NUM_NODES": "4",
        "SLURM_NTASKS_PER_NODE": "2(x4)",
        "SLURM_JOB_ID": "123456",
    }
    d = detect(slurm)
    assert (d.rank, d.world_size, d.local_rank, d.local_world_size, d.master_addr, d.source) == (
        5,
        8,
        1,
        2,
        "gpu003",
        "slurm",
    )
    assert d.master_port == detect(slurm).master_port and 20000 <= d.master_port < 60000
    assert detect({**slurm, "SLURM_JOB_ID": "123457"}).master_port != d.master_port
    # torchrun inside an sbatch job: torchrun's variables win.
    tr = {**slurm, "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29511"}
    assert astuple(detect(tr))[:6] == (3, 3, 4, 4, "10.0.0.1", 29511)
    local = {
        "SUBMITIT_LOCAL_GLOBALID": "1",
        "SUBMITIT_LOCAL_LOCALID": "1",
        "SUBMITIT_LOCAL_NTASKS": "2",
        "SUBMITIT_LOCAL_JOB_ID": "999",
    }
    assert astuple(detect(local))[:5] == (1, 1, 2, 2, "127.0.0.1")
    assert detect({}).world_size == 1


@pytest.mark.parametrize(
    "nodelist, first",
    [("node1", "node1"), ("node[1-2]", "node1"), ("gpu[003-005,9],cpu1", "gpu003"), ("a-b[07,10]x", "a-b07x")],
)
def test_first_host_of_a_slurm_hostlist(nodelist, first):
    assert expand_first_host(nodelist) == first


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_num_timeout": 0}, "max_num_timeout=0"),
        ({"signal_delay_s": 900}, "shorter than the time limit"),
        ({"tasks_per_node": 1, "gpus_per_node": 8}, "one task per GPU"),
    ],
)
def test_requests_that_cannot_requeue_are_refused(kwargs, message):
    base = {
        "partition": None,
        "timeout_min": 10,
        "signal_delay_s": 60,
        "max_num_timeout": 3,
        "tasks_per_node": 1,
        "gpus_per_node": None,
    }
    with pytest.raises(LaunchError, match=message):
        check_slurm_request(**{**base, **kwargs})


def test_unknown_launcher_preset_is_named(synth_data, tmp_path):
    p = run_module(
        "pipeline.pretrain",
        ["-m", "hydra/launcher=slurmm", f"data.path={synth_data}", f"hydra.sweep.dir={tmp_path}"],
        check=False,
        timeout=120,
    )
    assert p.returncode == 2 and p.stderr.startswith(
        "error: hydra/launcher=slurmm: no such preset in conf/hydra/launcher/; available: basic, local, slurm"
    )


def test_ranks_that_cannot_reach_the_master_fail_with_a_message(synth_data, tmp_path):
    # Rank 1 of 2 whose rank 0 never starts: the rendezvous times out with a message, not a hang.
    env = child_env(
        {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29981"}
    )
    t = time.monotonic()
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.pretrain",
            f"data.path={synth_data}",
            f"run_dir={tmp_path / 'run'}",
            *TINY,
            "engine.timeout_s=8",
            "max_steps=2",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert p.returncode != 0 and time.monotonic() - t < 200
    assert "could not join the process group at 127.0.0.1:29981" in p.stderr


@pytest.mark.slow
def test_submitit_local_executor_runs_two_ranks_like_torchrun(synth_data, torchrun_reference, tmp_path):
    common = [f"data.path={synth_data}", *TWO_RANKS, "max_steps=6"]  # the torchrun reference's settings
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.submit",
            "--local",
            "--tasks-per-node",
            "2",
            "--time",
            "10",
            "--wait",
            "--",
            *common,
            f"run_dir={tmp_path / 'local'}",
        ],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert train_losses(tmp_path / "local") == pytest.approx(train_losses(torchrun_reference(6)), abs=1e-6)


def test_submit_needs_a_run_dir():
    p = subprocess.run(
        [sys.executable, "-m", "launch.submit", "--local", "--", "model=bert-tiny"],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and "run_dir=" in p.stderr
