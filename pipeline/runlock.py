"""One live run per run_dir: an OS lock on ``run_dir/run.lock``, held by rank 0 for the life of the run.

Two runs in one run_dir race each other's checkpoints (one's keep-last rotation deletes the folder the other is
writing). ``flock`` is released by the kernel when the holder dies, however it dies (``kill -9`` included), so a
lock left by a dead run is simply free: there is no stale-pid guessing. The file's content (host, pid, Slurm job,
start time) only names the holder in the refusal message.

A requeued Slurm job keeps its job id; its previous incarnation may still be completing (Slurm's KillWait) when the
new one starts, so a holder with our own job id is waited for (up to ``SAME_JOB_WAIT_S``) instead of refused.

Loader workers forked by rank 0 share the lock's open file, so after a ``kill -9`` of rank 0 the lock is free once
they have noticed and exited (a few seconds). On a shared file system the lock is as good as its ``flock``
support: NFSv4 and Lustre mounted with ``flock`` honour it across nodes.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = "run.lock"
SAME_JOB_WAIT_S = 300.0


class RunDirBusy(RuntimeError):
    pass


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def holder(self) -> dict:
        """What the holder wrote (it writes right after locking: retry briefly if we read in between)."""
        for _ in range(20):
            try:
                text = self.path.read_text()
                if text.strip():
                    return json.loads(text)
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        return {}

    def _try(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def acquire(self) -> dict | None:
        """Take the lock and write who holds it; returns the previous holder's record if it was left by a dead run."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        job = os.environ.get("SLURM_JOB_ID")
        deadline = time.monotonic() + SAME_JOB_WAIT_S
        while not self._try():
            h = self.holder()
            if job and str(h.get("slurm_job_id")) == job and time.monotonic() < deadline:
                time.sleep(1.0)  # our own job's previous incarnation, still completing after a requeue
                continue
            raise RunDirBusy(describe_busy(self.path, h))
        previous = self.holder_before_us()
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job_id": job,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(self._fd)
        return previous

    def holder_before_us(self) -> dict | None:
        try:
            text = os.pread(self._fd, 4096, 0).decode()
            return json.loads(text) if text.strip() else None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._fd is not None:
            # Empty it first: a file naming a holder that no longer holds the lock would only confuse a reader.
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def describe_busy(path: Path, h: dict) -> str:
    job = f", Slurm job {h['slurm_job_id']}" if h.get("slurm_job_id") else ""
    who = f"host {h.get('host', '?')}, pid {h.get('pid', '?')}{job}, started {h.get('started', '?')}"
    return (
        f"run_dir {path.parent} is in use by a live run ({who}; lock {path}). Wait for it to end or stop it "
        f"(kill the pid, or scancel the job), or use another run_dir; a lock left by a dead run is taken over."
    )
