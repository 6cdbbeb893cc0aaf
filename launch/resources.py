"""The Slurm request checked against the cluster before anything is queued (requeue settings, partition, a node that
can hold the request), shared by ``launch.submit`` and the bertrun Hydra launchers (launch/hydra_launcher.py). The
jobs' configs are checked by pipeline/preflight.py. No submitit import."""

from __future__ import annotations

import re
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


def slurm_nodes(partition: str | None) -> list[dict] | None:
    """Per node of the partition (the default one when None): name, CPUs, memory in MB, GPUs; None without sinfo."""
    if not shutil.which("sinfo"):
        return None
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N|%P|%c|%m|%G"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    nodes = {}
    for line in out.splitlines():
        name, part, cpus, mem, gres = line.strip().split("|")
        if partition is None and not part.endswith("*") or partition is not None and part.rstrip("*") != partition:
            continue
        gpus = sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,(]+)?:(\d+)", gres))
        nodes[name] = {"name": name, "cpus": int(cpus.rstrip("+")), "mem_mb": int(mem.rstrip("+")), "gpus": gpus}
    return list(nodes.values())


def check_capacity(
    partition: str | None,
    nodes: int,
    tasks_per_node: int,
    cpus_per_task: int | None,
    mem_gb: float | None,
    gpus_per_node: int | None,
) -> None:
    """Refuse a request that no node (or too few nodes) of the partition can hold: it would pend forever, or be
    rejected only at submission with a vaguer message. The numbers are in the message."""
    found = slurm_nodes(partition)
    if not found:
        return
    cpus = tasks_per_node * (cpus_per_task or 1)
    mem_mb = int((mem_gb or 0) * 1024)
    gpus = gpus_per_node or 0
    fit = [n for n in found if n["cpus"] >= cpus and n["mem_mb"] >= mem_mb and n["gpus"] >= gpus]
    if len(fit) >= nodes:
        return
    where = f"partition {partition!r}" if partition else "the default partition"
    best = max(found, key=lambda n: (n["cpus"], n["mem_mb"], n["gpus"]))
    raise LaunchError(
        f"{where}: {len(fit)} of {len(found)} nodes can hold {cpus} CPUs (tasks_per_node={tasks_per_node} x "
        f"cpus_per_task={cpus_per_task or 1}), {mem_mb // 1024} GB and {gpus} GPUs per node, and {nodes} are asked "
        f"for; the largest node ({best['name']}) has {best['cpus']} CPUs, {best['mem_mb'] // 1024} GB, "
        f"{best['gpus']} GPUs. Lower cpus_per_task, tasks_per_node, mem_gb or gpus_per_node, or pick another partition"
    )
