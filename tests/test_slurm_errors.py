"""Real Slurm: mistakes are refused before anything is queued, and a failed job looks failed (sacct, log, collect)."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from tests.conftest import ROOT, child_env, run_module
from tests.test_slurm import COMMON, LAUNCHER, SUBMIT, n_nodes, sh, wait_done, wait_for

pytestmark = pytest.mark.slurm


def jobs_named(name: str) -> list[str]:
    """Every job with this name that Slurm knows of, queued or finished (accounting)."""
    queued = sh("squeue", "-h", "-n", name, "-o", "%i").split()
    done = sh("sacct", "-n", "-X", "-P", "--name", name, "-S", "now-1hours", "-o", "JobID").split()
    return queued + done


def test_typos_and_impossible_requests_are_refused_with_nothing_submitted(synth_data, tmp_path):
    tag = f"typo-{uuid.uuid4().hex[:8]}"
    cases = [
        (["max_step=5"], "error: max_step: no such key (did you mean max_steps?)"),
        (["engine.precision=fp8"], "error: engine.precision=fp8: Invalid value 'fp8', expected one of"),
        (["global_batch_size=7"], "error: global_batch_size=7 is not divisible by the world size 2"),
    ]
    for extra, expected in cases:
        p = subprocess.run(
            [sys.executable, "-m", "launch.submit", *SUBMIT, "--tasks-per-node", "2", "--", f"data.path={synth_data}",
             f"run_dir={tmp_path / tag}", *COMMON, *extra],
            cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert p.returncode == 2 and p.stderr.strip().startswith(expected), p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    # More CPUs per node than any node has: refused here with the numbers, instead of pending forever.
    args = [*SUBMIT, "--tasks-per-node", "2", "--cpus-per-task", "64"]
    p = subprocess.run(
        [sys.executable, "-m", "launch.submit", *args, "--", f"data.path={synth_data}", f"run_dir={tmp_path / tag}"],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "cannot hold this job: it asks for 128 CPUs per node (--tasks-per-node 2 x --cpus-per-task 64)" in p.stderr
    assert "and its largest node has" in p.stderr and ". Ask for --cpus-per-task " in p.stderr
    assert "preset" not in p.stderr  # every value here was given on the command line
    # A Slurm multirun: a typo in one sweep point, or a request no node can hold, submits no job at all.
    for extra, expected in [
        (["engine.precision=fp32,fp8"], "engine.precision=fp8: Invalid value 'fp8'"),
        (
            ["hydra.launcher.cpus_per_task=64"],
            "128 CPUs per node (hydra.launcher.tasks_per_node=2 x hydra.launcher.cpus_per_task=64)",
        ),
    ]:
        p = run_module(
            "pipeline.pretrain",
            [*LAUNCHER, f"hydra.launcher.name={tag}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
             f"data.path={synth_data}", *COMMON, *extra],
            check=False, timeout=120,
        )  # fmt: skip
        assert p.returncode == 2 and expected in p.stderr, p.stderr[-2000:]
        assert [x for x in p.stderr.splitlines() if x.startswith("error:")] == [p.stderr.strip().splitlines()[-1]]
    assert jobs_named(tag) == [] and jobs_named(f"pretrain-{tag}") == []


def test_a_sweep_with_a_failing_point_ends_failed_and_collect_exits_nonzero(synth_data, tmp_path):
    """A point whose data directory does not exist (not knowable before the job runs) fails on its node."""
    tag = f"fail-{uuid.uuid4().hex[:8]}"
    sweep = tmp_path / "sweep"
    p = run_module(
        "pipeline.pretrain",
        [*LAUNCHER, f"hydra.launcher.name={tag}", f"hydra.sweep.dir={sweep}", *COMMON, "max_steps=2",
         f"data.path={synth_data},{tmp_path / 'nosuch'}"],
        check=False, timeout=600,
    )  # fmt: skip
    assert p.returncode == 2, p.stderr[-3000:]
    assert "error: sweep job" in p.stderr and "failed" in p.stderr and "launch.collect" in p.stderr
    jobs = sorted(set(j.split(".")[0] for j in jobs_named(tag)))
    assert len(jobs) == 2, jobs
    states = {j: wait_done(j) for j in jobs}
    assert sorted(states.values()) == ["COMPLETED", "FAILED"], states
    failed = next(j for j, s in states.items() if s == "FAILED")
    exit_code = sh("sacct", "-n", "-X", "-P", "-j", failed, "-o", "ExitCode")
    assert exit_code.startswith("2:"), exit_code  # the job step's and the batch script's exit code: ours
    log = next((sweep / ".submitit" / failed).glob("*_0_log.err")).read_text()
    assert f"error: data.path={tmp_path / 'nosuch'}: no such directory" in log
    assert "Job completed successfully" not in next((sweep / ".submitit" / failed).glob("*_0_log.out")).read_text()
    c = subprocess.run(
        [sys.executable, "-m", "launch.collect", str(sweep)],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert c.returncode == 1 and "job 1: no summary.json" in c.stderr and "| 0 |" in c.stdout, c.stderr
    c = subprocess.run(
        [sys.executable, "-m", "launch.collect", str(sweep), "--allow-missing"],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert c.returncode == 0 and "job 1:" in c.stderr


def test_the_sbatch_script_stops_a_typo_before_srun_and_the_job_is_failed(synth_data, tmp_path):
    assert n_nodes() >= 1
    p = subprocess.run(
        ["sbatch", "--parsable", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=5", f"--output={tmp_path}/%j.out",
         str(ROOT / "launch/pretrain.sbatch"), f"data.path={synth_data}", f"run_dir={tmp_path / 'run'}", "max_step=5"],
        cwd=ROOT, env=child_env({"BERTRUN_VENV": sys.prefix}), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    job = p.stdout.strip().split(";")[0]
    assert wait_done(job, 180) == "FAILED"
    out = wait_for("the log", lambda: (tmp_path / f"{job}.out").exists() and (tmp_path / f"{job}.out").read_text(), 30)
    assert "error: max_step: no such key (did you mean max_steps?)" in out, out
    assert "srun" not in out and not (tmp_path / "run").exists()  # no rank started
