"""Real Slurm (tests/cluster/slurm_up.sh): submitit jobs, a Hydra multirun, sbatch, preemption and requeue.

Every wait has a deadline; a job still running at the end of a test is cancelled.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, TWO_RANKS, child_env, read_metrics, run_module, train_losses

pytestmark = pytest.mark.slurm

if not shutil.which("sinfo"):
    pytest.skip("no Slurm here: start one with bash tests/cluster/slurm_up.sh", allow_module_level=True)

COMMON = TWO_RANKS  # as the torchrun reference (conftest.torchrun_reference)
SUBMIT = ["--partition", "debug", "--cpus-per-task", "1", "--time", "15", "--signal-delay", "60"]
# A Slurm multirun of two-task jobs on the test cluster's partition.
LAUNCHER = [
    "-m",
    "hydra/launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.tasks_per_node=2",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.timeout_min=15",
    "hydra.launcher.signal_delay_s=60",
]


def sh(*cmd: str, timeout: int = 60) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout.strip()


def n_nodes() -> int:
    return len(sh("sinfo", "-h", "-N", "-p", "debug", "-o", "%N").split())


def state(job: str) -> str:
    """Latest state from accounting (sacct -X: the allocation, not its steps); '' until slurmdbd knows the job."""
    lines = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job, "-o", "State"], capture_output=True, text=True, timeout=60
    ).stdout.split("\n")
    lines = [ln for ln in lines if ln.strip()]
    return lines[-1].split()[0] if lines else ""  # "CANCELLED by 0" -> "CANCELLED"


def wait_for(what: str, pred, timeout: float, job: str | None = None, every: float = 1.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(every)
    if job:
        subprocess.run(["scancel", job], timeout=30)
    where = f" (job {job}: {state(job)})" if job else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{where}")


def wait_done(job: str, timeout: float = 420) -> str:
    final = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
    return wait_for(
        f"job {job} to end", lambda: next((s for s in [state(job)] if s.startswith(final)), None), timeout, job, every=2
    )


def submit(run_dir: Path, *extra: str, data: Path, submit_args: list[str] = SUBMIT) -> str:
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.submit",
            *submit_args,
            "--",
            f"data.path={data}",
            f"run_dir={run_dir}",
            *COMMON,
            *extra,
        ],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return re.search(r"submitted job (\d+)", p.stdout).group(1)


def logs(run_dir: Path) -> str:
    return "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((run_dir / "submitit").rglob("*.err")))


@pytest.fixture(scope="module")
def reference(torchrun_reference) -> dict:
    """The same 2-rank run under torchrun, uninterrupted: what every Slurm variant must reproduce."""
    return {steps: read_metrics(torchrun_reference(steps)) for steps in (6, 120)}


def assert_same_run(run_dir: Path, ref: list[dict]) -> None:
    got = read_metrics(run_dir)
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    for a, b in zip(got, ref):
        for k in ("loss", "mlm_loss", "nsp_loss", "val_loss", "grad_norm"):
            if k in b:
                assert a[k] == pytest.approx(b[k], abs=1e-6), (b["step"], k)
        assert a.get("tokens") == b.get("tokens")


def test_submitit_two_task_deepspeed_job_matches_torchrun(synth_data, reference, tmp_path):
    run = tmp_path / "run"
    job = submit(
        run, "max_steps=6", "engine.zero_stage=2", data=synth_data, submit_args=[*SUBMIT, "--tasks-per-node", "2"]
    )
    assert wait_done(job) == "COMPLETED", logs(run)
    assert_same_run(run, reference[6])


def test_two_nodes_one_task_each_match_torchrun(synth_data, reference, tmp_path):
    if n_nodes() < 2:
        pytest.skip("the cluster has one node (SLURM_NODES=1 or no network namespaces)")
    run = tmp_path / "run"
    job = submit(run, "max_steps=6", data=synth_data, submit_args=[*SUBMIT, "--nodes", "2", "--tasks-per-node", "1"])
    assert wait_done(job) == "COMPLETED", logs(run)
    assert sh("sacct", "-n", "-X", "-P", "-j", job, "-o", "NodeList") == "node[1-2]"
    assert_same_run(run, reference[6])


def test_preempted_job_requeues_and_resumes_exactly(synth_data, reference, tmp_path):
    run = tmp_path / "run"
    nodes = ["--nodes", "2", "--tasks-per-node", "1"] if n_nodes() >= 2 else ["--tasks-per-node", "2"]
    job = submit(run, "max_steps=120", "logger.wandb.mode=offline", data=synth_data, submit_args=[*SUBMIT, *nodes])
    metrics = run / "metrics.jsonl"
    wait_for("step 20", lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 20, 300, job, 0.2)
    # The time-limit warning: USR2 to every task (what --signal=USR2@N does before the limit).
    sh("scancel", "--signal=USR2", job)
    wait_for("the requeue", lambda: "PENDING" in sh("squeue", "-h", "-j", job, "-o", "%T"), 120, job, 0.5)
    stopped_at = json.loads((run / "checkpoints" / "latest.json").read_text())["step"]
    # No `scontrol update StartTime=now`: issued before the credential expiry window (cred_expire) has passed,
    # Slurm starts the job and kills it at once ("Job credential revoked"). The cluster's window is 10 s.
    assert wait_done(job) == "COMPLETED", logs(run)
    assert 20 <= stopped_at < 120
    assert "REQUEUED" in sh("sacct", "-n", "-X", "-D", "-P", "-j", job, "-o", "State")
    assert (run / "checkpoints" / f"step_{stopped_at:08d}" / "COMPLETE").is_file()
    # Same final step, same losses and token counts at every step as the run that was never stopped.
    assert_same_run(run, reference[120])
    # One W&B run: the requeued job wrote a second offline segment under the same id.
    wid = (run / "wandb_id").read_text()
    assert len(list((run / "wandb").glob(f"offline-run-*-{wid}"))) == 2


def test_preempted_on_two_nodes_requeued_on_one_resumes_on_one_rank(synth_data, reference, tmp_path):
    """The requeued job comes back smaller (a node drained, say): it converts the checkpoint to a universal one,
    re-splits the rest of the epoch and finishes with the uninterrupted run's step, token count and LR."""
    if n_nodes() < 2:
        pytest.skip("needs the test cluster's two nodes")
    run = tmp_path / "run"
    job = submit(run, "max_steps=120", data=synth_data, submit_args=[*SUBMIT, "--nodes", "2", "--tasks-per-node", "1"])
    metrics = run / "metrics.jsonl"
    wait_for("step 20", lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 20, 300, job, 0.2)
    sh("scancel", "--signal=USR2", job)
    wait_for("the requeue", lambda: "PENDING" in sh("squeue", "-h", "-j", job, "-o", "%T"), 120, job, 0.5)
    # What a user (or an admin) does to a pending job to get it started on what is free: one node, one task.
    sh("scontrol", "update", f"JobId={job}", "NumNodes=1", "NumTasks=1")
    assert wait_done(job) == "COMPLETED", logs(run)
    text = logs(run)
    assert "to a universal checkpoint" in text and "re-split" in text, text[-3000:]
    last, ref = read_metrics(run)[-2], reference[120][-2]
    assert last["step"] == ref["step"] == 120
    assert last["lr"] == pytest.approx(ref["lr"], rel=1e-9)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["samples"] == 120 * 8


def test_cancelled_job_saves_and_is_not_requeued(synth_data, tmp_path):
    run = tmp_path / "run"
    job = submit(run, "max_steps=100000", data=synth_data, submit_args=[*SUBMIT, "--tasks-per-node", "2"])
    metrics = run / "metrics.jsonl"
    wait_for("step 10", lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 10, 300, job, 0.2)
    sh("scancel", job)
    assert wait_done(job, 120).startswith("CANCELLED")
    time.sleep(20)  # a requeued job would be PENDING or RUNNING again by now (cred_expire=10 s)
    assert state(job).startswith("CANCELLED") and sh("squeue", "-h", "-j", job, "-o", "%T") in ("", "COMPLETING")
    # SIGTERM reached every rank, which finished the step and saved (within KillWait) before exiting.
    latest = wait_for("the checkpoint", lambda: (run / "checkpoints" / "latest.json").exists(), 30)
    assert latest and json.loads((run / "checkpoints" / "latest.json").read_text())["step"] >= 10


def test_hydra_multirun_on_slurm_runs_each_point_and_collects_a_table(synth_data, tmp_path):
    sweep = tmp_path / "sweep"
    p = run_module(
        "pipeline.pretrain",
        [
            *LAUNCHER,
            f"hydra.sweep.dir={sweep}",
            f"data.path={synth_data}",
            *COMMON,
            "max_steps=4",
            "optim.lr=1e-4,1e-3",
        ],
        timeout=600,
    )
    assert p.returncode == 0
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in (0, 1)]
    assert [s["step"] for s in summaries] == [4, 4]
    lrs = [train_losses(sweep / str(i)) for i in (0, 1)]
    assert lrs[0] != lrs[1]
    table = subprocess.run(
        [sys.executable, "-m", "launch.collect", str(sweep)],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert table.splitlines()[0].startswith("| job | optim.lr |") and "0.0001" in table and "0.001" in table
    assert (sweep / "sweep.csv").read_text().count("\n") == 3


def test_bad_partition_and_bad_requeue_settings_are_refused(synth_data, tmp_path):
    # A valid job (its config is checked before the Slurm request), on a partition that does not exist.
    job = [f"run_dir={tmp_path}", f"data.path={synth_data}"]
    p = subprocess.run(
        [sys.executable, "-m", "launch.submit", "--partition", "nosuch", "--", *job],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and "partition 'nosuch' does not exist on this cluster; known: debug" in p.stderr
    p = run_module(
        "pipeline.pretrain",
        [
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.max_num_timeout=0",
            f"hydra.sweep.dir={tmp_path / 's'}",
            f"data.path={synth_data}",
            *COMMON,
        ],
        check=False,
        timeout=120,
    )
    assert p.returncode != 0 and "max_num_timeout=0" in p.stderr + p.stdout


def test_sbatch_script_requeues_on_the_warning_signal(synth_data, reference, tmp_path):
    run = tmp_path / "run"
    args = [a for a in COMMON if a != "engine=cpu"]
    p = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--nodes=1",
            "--ntasks-per-node=2",
            "--cpus-per-task=1",
            "--gpus-per-node=0",
            "--time=15",
            f"--output={tmp_path}/slurm-%j.out",
            str(ROOT / "launch/pretrain.sbatch"),
            f"data.path={synth_data}",
            f"run_dir={run}",
            *args,
            "max_steps=120",
        ],
        cwd=ROOT,
        env=child_env({"BERTRUN_ENGINE": "cpu", "BERTRUN_VENV": str(Path(sys.prefix))}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    out = p.stdout.strip()
    job = out.split(";")[0]
    metrics = run / "metrics.jsonl"
    wait_for("step 20", lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 20, 300, job, 0.2)
    sh("scancel", "--signal=USR2", job)
    wait_for("the requeue", lambda: "PENDING" in sh("squeue", "-h", "-j", job, "-o", "%T"), 120, job, 0.5)
    # No `scontrol update StartTime=now`: issued before the credential expiry window (cred_expire) has passed,
    # Slurm starts the job and kills it at once ("Job credential revoked"). The cluster's window is 10 s.
    assert wait_done(job) == "COMPLETED", (tmp_path / f"slurm-{job}.out").read_text()[-3000:]
    text = (tmp_path / f"slurm-{job}.out").read_text()
    assert "requeueing" in text and "restart 1" in text
    assert_same_run(run, reference[120])
