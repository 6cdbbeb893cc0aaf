"""The main job's stages as child processes: each one's whole output in its log file, its progress bar mirrored on
the console, and a stop signal passed on to it (``launch/demo.py``).

A stop signal (Slurm's time limit, ``timeout``, a preemption) reaches the main job: it goes on to the running stages,
which stop cleanly (pretraining saves a checkpoint), no later stage starts, and the job exits 75; a rerun resumes.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
_live: set[subprocess.Popen] = set()
_stopped: list[int] = []
_reported: list[str] = []
_lock = threading.RLock()  # the handler may run in the main thread while it holds the lock


def forward_stop_signals() -> None:
    """From now on a stop signal goes on to the running stages (call it from the main thread)."""
    for s in STOP_SIGNALS:
        signal.signal(s, _forward)


def _forward(signum, frame) -> None:
    with _lock:
        _stopped.append(signum)
        for child in _live:
            if child.poll() is None:
                child.send_signal(signum)


def _stop_here(title: str) -> None:
    from pipeline.preempt import EXIT_RESUMABLE

    with _lock:  # once, however many sweeps side by side were stopped
        first = not _reported
        _reported.append(title)
    if first:
        name = signal.Signals(_stopped[0]).name
        print(f"\n== stopped by {name} during {title}: what finished is kept; run the same command again to resume")
        sys.stdout.flush()
    raise SystemExit(EXIT_RESUMABLE)


# tqdm's "n/total [elapsed<remaining, rate" (with the loss as a postfix): the part of a stage's output worth showing.
PROGRESS = re.compile(rb"\d+/\d+ \[\d")


def _show(bar: bytes, tty: bool) -> None:
    line = bar.decode("utf-8", "replace").strip()[:160]
    print(f"\r   {line}\033[K" if tty else f"   {line}", end="" if tty else "\n", flush=True)


def run(title: str, cmd: list[str], log: Path, env_extra: dict | None = None) -> float:
    """Run a stage with its full output in ``log`` and its progress bar mirrored on the console: redrawn in place
    on a terminal, one line every 20 s otherwise (CI logs)."""
    if _stopped:
        _stop_here(title)
    print(f"\n== {title}\n   {shlex.join(cmd)}\n   log: {log}", flush=True)
    tty, every = sys.stdout.isatty(), (0.5 if sys.stdout.isatty() else 20.0)
    t = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    shown, last, tail = 0.0, b"", b""
    with open(log, "wb") as f:
        with _lock:
            p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
            _live.add(p)
            if _stopped:  # the signal came between the check above and the start
                p.send_signal(_stopped[0])
        newest = b""
        while chunk := p.stdout.read1(1 << 16):
            f.write(chunk)
            tail = (tail + chunk)[-8192:]
            bars = [b for b in re.split(rb"[\r\n]", tail) if PROGRESS.search(b) and not b.startswith(b"Loading")]
            newest = bars[-1] if bars else newest
            if newest != last and time.monotonic() - shown >= every:
                last, shown = newest, time.monotonic()
                _show(last, tty)
        rc = p.wait()
        with _lock:
            _live.discard(p)
        if newest != last:  # the final state of the bar (steps done, last loss), however fast the stage was
            _show(newest, tty)
            shown = 1.0
    dt = time.perf_counter() - t
    if tty and shown:
        print()
    if rc and _stopped:
        _stop_here(title)
    if rc:
        lines = log.read_text(errors="replace").replace("\r", "\n").splitlines()
        tail_text = "\n".join(ln for ln in lines[-40:] if not PROGRESS.search(ln.encode()))
        raise SystemExit(f"{title} failed (exit {rc}) after {dt:.0f}s; last lines of {log}:\n{tail_text}")
    print(f"   done in {dt:.0f}s", flush=True)
    return dt
