"""Hard faults with real processes: a second run in a live run_dir, kill -9 inside a save, kill -9 of one rank."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipeline.dist import free_port
from tests.conftest import ROOT, TINY, child_env, read_metrics, run_module


def args_for(data, run_dir, *extra) -> list[str]:
    return [f"data.path={data}", f"run_dir={run_dir}", *TINY, *extra]


def start(data, run_dir, *extra, nproc=1, env=None) -> subprocess.Popen:
    """A pretraining run in the background (its own session, so a kill of its tree spares pytest)."""
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port())]
    cmd = [sys.executable, *(launcher if nproc > 1 else []), "-m", "pipeline.pretrain"]
    log = open(Path(run_dir).parent / f"{Path(run_dir).name}-{time.monotonic_ns()}.log", "w+")  # noqa: SIM115
    p = subprocess.Popen(
        [*cmd, *args_for(data, run_dir, *extra)],
        cwd=ROOT,
        env=child_env(env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    p.log = log
    return p


def output(p: subprocess.Popen) -> str:
    p.log.seek(0)
    return p.log.read()


def wait_for(cond, p: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if p.poll() is not None:
            raise AssertionError(f"the run ended (rc {p.returncode}) before {what}\n{output(p)[-6000:]}")
        if time.monotonic() > deadline:
            kill_tree(p)
            raise AssertionError(f"no {what} after {timeout}s\n{output(p)[-6000:]}")
        time.sleep(0.1)


def kill_tree(p: subprocess.Popen) -> list[int]:
    """SIGKILL the launcher and every process under it (torchrun's workers run in sessions of their own)."""
    procs = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
    for q in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            q.send_signal(signal.SIGKILL)
    p.wait()
    psutil.wait_procs(procs, timeout=30)
    return [q.pid for q in procs]


def rank_process(p: subprocess.Popen, rank: int) -> psutil.Process:
    for q in psutil.Process(p.pid).children(recursive=True):
        try:
            # The rank itself (torchrun's child), not one of its loader workers.
            if q.environ().get("RANK") == str(rank) and q.parent().pid == p.pid:
                return q
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no rank {rank} under pid {p.pid}")


def steps_logged(run_dir: Path) -> list[int]:
    f = Path(run_dir) / "metrics.jsonl"
    return [r["step"] for r in read_metrics(run_dir) if "loss" in r] if f.is_file() else []


def test_a_second_run_is_refused_and_a_kill_9_inside_a_save_resumes_from_the_previous_checkpoint(synth_data, tmp_path):
    run = tmp_path / "run"
    common = [
        "max_steps=10",
        "global_batch_size=16",
        "engine.micro_batch_size=4",
        "checkpoint.every_steps=4",
        "checkpoint.keep_last=2",
        "model.hidden_dropout=0",
        "model.attention_dropout=0",
    ]
    p = start(synth_data, run, *common, nproc=2, env={"BERTRUN_PAUSE_IN_SAVE": "8:300"})
    partial = run / "checkpoints" / "step_00000008"
    wait_for(lambda: all((partial / f"rank_{r:05d}.pt").is_file() for r in (0, 1)), p, "step 8's save")
    holder = json.loads((run / "run.lock").read_text())
    config = (run / "config.yaml").read_text()
    # A second run in the live run_dir (another config) is refused, naming the holder, and changes nothing.
    second = run_module("pipeline.pretrain", args_for(synth_data, run, *common, "max_steps=12"), check=False)
    message = second.stdout + second.stderr
    assert second.returncode != 0, message
    assert f"pid {holder['pid']}" in message and "is in use by a live run" in message, message
    assert p.poll() is None, output(p)[-4000:]  # the first run is still in its save
    assert json.loads((run / "run.lock").read_text()) == holder and (run / "config.yaml").read_text() == config
    assert steps_logged(run) == list(range(1, 9))
    killed = kill_tree(p)
    assert holder["pid"] in killed and len(killed) >= 3  # torchrun, both ranks (and their loader workers)
    # The pointer still names the previous complete checkpoint; the partial one is there but not complete.
    assert json.loads((run / "checkpoints" / "latest.json").read_text()) == {"tag": "step_00000004", "step": 4}
    assert partial.is_dir() and not (partial / "COMPLETE").exists()
    before = {r["step"]: r for r in read_metrics(run) if "loss" in r}
    assert max(before) == 8

    # The same command again: takes over the dead run's lock, resumes at step 4, rewrites step 8, finishes.
    again = run_module("pipeline.pretrain", args_for(synth_data, run, *common), nproc=2)
    log = again.stdout + again.stderr
    assert "resumed from" in log and "step_00000004 (step 4)" in log, log[-3000:]
    # metrics.jsonl drops what came after the checkpoint and logs it again: each step once, equal to the first time.
    after = [r for r in read_metrics(run) if "loss" in r]
    assert [r["step"] for r in after] == list(range(1, 11))
    for r in after[:8]:  # the resumed steps equal the ones the killed run had logged
        assert r["loss"] == pytest.approx(before[r["step"]]["loss"], abs=1e-6), r["step"]
        assert r["tokens"] == before[r["step"]]["tokens"]
    folders = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert folders == ["step_00000008", "step_00000010"]
    assert all((run / "checkpoints" / f / "COMPLETE").is_file() for f in folders)
    assert "max_steps: 10" in (run / "config.yaml").read_text()
    assert (run / "run.lock").read_text() == ""  # released at the end


def test_kill_9_of_one_rank_ends_the_job_naming_it_and_the_next_run_resumes(synth_data, tmp_path):
    run = tmp_path / "run"
    common = ["max_steps=40", "global_batch_size=16", "engine.micro_batch_size=4", "checkpoint.every_steps=5"]
    p = start(synth_data, run, *common, nproc=2)
    wait_for(lambda: len(steps_logged(run)) >= 7, p, "step 7")
    victim = rank_process(p, 1)
    victim.send_signal(signal.SIGKILL)
    # Bounded: far below the 600 s process-group timeout (the wait raises if the job hangs).
    rc = p.wait(timeout=240)
    log = output(p)
    assert rc != 0, log[-4000:]
    # torchrun names the killed rank as the root cause; the surviving rank says what happened and how to resume.
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s*exitcode\s*:\s*-9", log), log[-4000:]
    assert "another rank of this job died" in log and "Run the same command again to resume" in log, log[-4000:]
    alive = [q for q in psutil.process_iter(["cmdline"]) if str(run) in " ".join(q.info["cmdline"] or [])]
    assert not alive, alive  # no rank left training on
    last = json.loads((run / "checkpoints" / "latest.json").read_text())["step"]
    assert last >= 5 and last % 5 == 0
    again = run_module("pipeline.pretrain", args_for(synth_data, run, *common, f"stop_after_steps={last + 3}"), nproc=2)
    assert f"(step {last})" in again.stdout + again.stderr
    assert steps_logged(run)[-3:] == [last + 1, last + 2, last + 3]


@contextlib.contextmanager
def small_disk(where: Path, mb: int):
    """A real filesystem of ``mb`` MB (tmpfs; needs root, as CI and the Slurm tests have)."""
    where.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(where)], capture_output=True)
    if p.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.decode().strip()}): this test needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(disk: Path, leave_kb: int) -> Path:
    """A ballast file that leaves about ``leave_kb`` KB free on ``disk``."""
    import shutil

    ballast = disk / "ballast"
    free = shutil.disk_usage(disk).free - leave_kb * 1024
    with open(ballast, "wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(0, free))
    return ballast


def test_a_full_disk_stops_a_save_in_one_line_and_the_same_command_resumes_once_space_is_freed(synth_data, tmp_path):
    with small_disk(tmp_path / "disk", 24) as disk:
        run = disk / "run"
        cmd = ["global_batch_size=8", "checkpoint.every_steps=2", "checkpoint.keep_last=1"]
        run_module("pipeline.pretrain", args_for(synth_data, run, *cmd, "max_steps=2"))
        assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 2
        # Room for the logs and metrics, not for the next checkpoint (8 MB).
        ballast = fill(disk, leave_kb=512)
        p = run_module("pipeline.pretrain", args_for(synth_data, run, *cmd, "max_steps=4"), check=False)
        errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
        assert p.returncode == 2 and len(errors) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
        assert errors[0].startswith("error: saving checkpoint step_00000004 (step 4) in ") and "MB free of" in errors[0]
        assert "no space left on device" in errors[0] and "resumes from step 2" in errors[0], errors[0]
        assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 2
        assert not (run / "checkpoints" / "step_00000004").exists()  # the partial save gave its space back
        # Space freed: the same command resumes from step 2 and finishes.
        ballast.unlink()
        p = run_module("pipeline.pretrain", args_for(synth_data, run, *cmd, "max_steps=4"))
        assert "resumed from" in p.stdout + p.stderr and json.loads((run / "summary.json").read_text())["step"] == 4
        assert [r["step"] for r in read_metrics(run) if "loss" in r] == [1, 2, 3, 4]
        # The export and metrics.jsonl say the same in one line when the disk is full.
        fill(disk, leave_kb=64)
        p = run_module("pipeline.export", [f"run_dir={run}", f"output={disk / 'hf'}"], check=False)
        errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
        assert p.returncode == 2 and len(errors) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
        assert errors[0].startswith("error: exporting ") and "no space left on device" in errors[0]
        assert "the checkpoint is untouched" in errors[0]
        from pipeline.metrics import JsonlSink
        from pipeline.storage import StorageError

        sink = JsonlSink(disk / "metrics.jsonl", None)
        with pytest.raises(StorageError, match=r"writing .*metrics.jsonl \(step 7\) failed: no space left on device"):
            for _ in range(2000):
                sink.log({"loss": 1.0, "note": "x" * 100}, 7)
