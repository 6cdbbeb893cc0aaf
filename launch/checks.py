"""Checks on a Slurm request, shared by ``launch.submit`` and the Hydra launcher callback (no submitit import)."""

from __future__ import annotations

import shutil
import subprocess

from pipeline.config import ConfigError


class LaunchError(ConfigError):
    """A request that cannot work; the entry points print it in one line and exit 2 (pipeline/cli.py)."""


def slurm_partitions() -> list[str] | None:
    """Partition names known to Slurm, or None when sinfo is not available (checks are then skipped)."""
    if not shutil.which("sinfo"):
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return sorted({p.strip().rstrip("*") for p in out.stdout.split() if p.strip()})


def check_slurm_request(
    partition: str | None,
    timeout_min: int,
    signal_delay_s: int,
    max_num_timeout: int,
    tasks_per_node: int,
    gpus_per_node: int | None,
) -> None:
    """Refuse combinations that cannot work, with the fix in the message (shared with the Hydra launcher checks)."""
    if timeout_min <= 0:
        raise LaunchError(f"time limit {timeout_min} min must be positive")
    if signal_delay_s <= 0 or signal_delay_s >= timeout_min * 60:
        raise LaunchError(
            f"signal delay {signal_delay_s}s must be positive and shorter than the time limit ({timeout_min} min): "
            f"it is when, before the limit, Slurm warns the job so that it can save and requeue"
        )
    if max_num_timeout < 1:
        raise LaunchError(
            "max_num_timeout=0: a job reaching its time limit would not be requeued (submitit counts every warning "
            "signal in a job shorter than 10 minutes, and late in any job, as a timeout). Set it to at least 1 "
            "(our presets use 20)."
        )
    if gpus_per_node and tasks_per_node != gpus_per_node:
        raise LaunchError(
            f"tasks_per_node={tasks_per_node} with gpus_per_node={gpus_per_node}: run one task per GPU "
            f"(tasks_per_node={gpus_per_node})"
        )
    if partition:
        known = slurm_partitions()
        if known is not None and partition not in known:
            raise LaunchError(f"partition {partition!r} does not exist on this cluster; known: {', '.join(known)}")
