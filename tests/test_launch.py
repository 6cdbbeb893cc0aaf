"""Launch code that needs no Slurm: the distributed environment, request checks, submitit's LocalExecutor."""

from __future__ import annotations

import os
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


# ---------------------------------------------------------------- launch.submit and launch.check before submitting


def fake_sinfo(tmp_path, monkeypatch) -> None:
    """``sinfo`` first on PATH, answering as a partition ``debug`` of two nodes with 8 CPUs, 7 GB and no GPU each: the
    request checks run as on a cluster, with no controller (a Slurm client without one waits ~20 s per call)."""
    from launch import resources

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    sinfo = bin_dir / "sinfo"
    sinfo.write_text(
        '#!/bin/sh\ncase "$*" in\n  *%N*) printf "n1|debug*|8|7168|(null)\\nn2|debug*|8|7168|(null)\\n" ;;\n'
        '  *) echo "debug*" ;;\nesac\n'
    )
    sinfo.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(resources, "_no_controller", False)


def test_submit_reports_a_typo_before_the_request_and_says_which_values_came_from_the_preset(
    tmp_path, monkeypatch, capsys
):
    from launch.submit import main

    fake_sinfo(tmp_path, monkeypatch)
    args = ["--tasks-per-node", "2", "--", "data.path=/nowhere", f"run_dir={tmp_path / 'r'}"]
    # The preset's cpus_per_task=8 x 2 tasks fits no node of 8 CPUs; the misspelt key is still the first thing named.
    assert main([*args, "max_step=5"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: max_step: no such key (did you mean max_steps?); the keys are listed by --help"
    ]
    assert main(args) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert errors == [
        "error: the default partition cannot hold this job: it asks for 16 CPUs per node (--tasks-per-node 2 x "
        "--cpus-per-task 8), and its largest node has 8. --cpus-per-task 8 is the preset's "
        "(conf/hydra/launcher/slurm.yaml), not a value you gave. Ask for --cpus-per-task 4 or less, or pick another "
        "partition."
    ]
    assert not (tmp_path / "r").exists()


def test_capacity_refusals_read_as_sentences(monkeypatch):
    from launch import resources

    monkeypatch.setattr(
        resources,
        "slurm_nodes",
        lambda partition: [
            {"name": "a", "cpus": 8, "mem_mb": 7168, "gpus": 0},
            {"name": "b", "cpus": 4, "mem_mb": 64000, "gpus": 4},
        ],
    )
    with pytest.raises(LaunchError) as e:
        resources.check_capacity("gpu", 1, 8, 1, 128, 8)
    assert str(e.value) == (
        "partition 'gpu' cannot hold this job: it asks for 128 GB per node (mem_gb=128), and its largest node has 62; "
        "it also asks for 8 GPUs per node (gpus_per_node=8), and its largest node has 4. Ask for mem_gb=62 or less "
        "and gpus_per_node=4 or less (and as many tasks per node), or pick another partition."
    )
    # Each resource exists, but on different nodes: no node holds the whole request.
    with pytest.raises(
        LaunchError,
        match=r"it asks for nodes=1 with 8 CPUs, 4 GPUs each, and 0 of its 2 nodes have "
        r"that\. Pick another partition\.$",
    ):
        resources.check_capacity("gpu", 1, 4, 2, None, 4)
    with pytest.raises(
        LaunchError, match=r"nodes=3 is the preset's \(conf/hydra/launcher/slurm.yaml\), not a value you gave"
    ):
        resources.check_capacity(None, 3, 1, 1, None, None, preset={"nodes"})
    resources.check_capacity(None, 2, 4, 1, 4, None)  # fits: no error


def test_dry_run_prints_the_sbatch_script_submitit_would_submit(tmp_path, monkeypatch, capsys):
    from launch.submit import main

    fake_sinfo(tmp_path, monkeypatch)
    (tmp_path / "bert128").mkdir()
    args = [
        "--dry-run",
        "--nodes",
        "2",
        "--tasks-per-node",
        "2",
        "--cpus-per-task",
        "4",
        "--partition",
        "debug",
        "--time",
        "60",
        "--",
        f"data.path={tmp_path / 'bert12'}",
        f"run_dir={tmp_path / 'r'}",
        "model=bert-tiny",
    ]
    assert main(args) == 0
    out, err = capsys.readouterr()
    script = out[out.index("#!/bin/bash") : out.index("each task runs")]
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --partition=debug",
        "#SBATCH --time=60",
        "#SBATCH --signal=USR2@180",
        f"#SBATCH --output={tmp_path / 'r' / 'submitit'}/%j/%j_0_log.out",
        "export SLURM_NPROCS=$SLURM_NTASKS",
    ):
        assert line in script.splitlines(), script
    assert "srun --unbuffered" in script and "-u -m submitit.core._submit" in script
    assert f"the same run as `python -m pipeline.pretrain data.path={tmp_path / 'bert12'}" in out
    assert out.strip().endswith("dry run: every check passed; nothing submitted")
    # The data is not where the job will look: said (the nodes may see other filesystems), with the nearest name.
    assert err.splitlines() == [
        f"warning: data.path={tmp_path / 'bert12'}: no such directory on this machine (did you mean "
        f"{tmp_path / 'bert128'}?); the job will fail unless its nodes see it"
    ]
    assert not (tmp_path / "r").exists()


def test_check_warns_about_input_paths_this_machine_does_not_see(tmp_path, capsys):
    from launch.check import main

    (tmp_path / "data").mkdir()
    assert main(["--", f"data.path={tmp_path / 'data'}"]) == 0
    out, err = capsys.readouterr()
    assert out == "ok: pretrain config for 1 ranks (1 warning above)\n"
    assert (
        err == f"warning: data.path={tmp_path / 'data'}: no manifest.json in it here (data_prep writes it last): "
        "the job will fail\n"
    )
    assert (
        main(
            [
                "--stage",
                "finetune",
                "--",
                "model.path=./nosuch-model",
                "task=custom_classification",
                f"task.data_files.train={tmp_path / 'train.csv'}",
                f"task.data_files.validation={tmp_path}",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert out == "ok: finetune config for 1 ranks (3 warnings above)\n"
    assert [ln.split(": no such")[0] for ln in err.splitlines()] == [
        "warning: model.path=./nosuch-model",
        f"warning: task.data_files.train={tmp_path / 'train.csv'}",
        f"warning: task.data_files.validation={tmp_path}",  # a folder where a file is expected
    ]
