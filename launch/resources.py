"""The Slurm request checked against the cluster before anything is queued (requeue settings, partition, a node that
can hold the request), shared by ``launch.submit`` and the bertrun Hydra launchers (launch/hydra_launcher.py). The
jobs' configs are checked by pipeline/preflight.py. No submitit import."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Collection

from pipeline.config import ConfigError


class LaunchError(ConfigError):
    """A request that cannot work; the entry points print it in one line and exit 2 (pipeline/cli.py)."""


_no_controller = False


def sinfo(*args: str) -> str | None:
    """sinfo's output, or None where there is no Slurm (the checks are then skipped). A client without a controller
    (installed, but no cluster up) waits about 20 s before failing: it is asked once per process, not once per check."""
    global _no_controller
    if _no_controller or not shutil.which("sinfo"):
        return None
    try:
        return subprocess.run(["sinfo", *args], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        _no_controller = True
        return None


def slurm_partitions() -> list[str] | None:
    """Partition names known to Slurm, or None when sinfo is not available (checks are then skipped)."""
    out = sinfo("-h", "-o", "%P")
    return None if out is None else sorted({p.strip().rstrip("*") for p in out.split() if p.strip()})


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
    out = sinfo("-h", "-N", "-o", "%N|%P|%c|%m|%G")
    if out is None:
        return None
    nodes = {}
    for line in out.splitlines():
        name, part, cpus, mem, gres = line.strip().split("|")
        if partition is None and not part.endswith("*") or partition is not None and part.rstrip("*") != partition:
            continue
        gpus = sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,(]+)?:(\d+)", gres))
        nodes[name] = {"name": name, "cpus": int(cpus.rstrip("+")), "mem_mb": int(mem.rstrip("+")), "gpus": gpus}
    return list(nodes.values())


def _spelled(name: str, value) -> str:
    return f"{name}={value}"


def check_capacity(
    partition: str | None,
    nodes: int,
    tasks_per_node: int,
    cpus_per_task: int | None,
    mem_gb: float | None,
    gpus_per_node: int | None,
    *,
    preset: Collection[str] = (),
    spell: Callable[[str, object], str] = _spelled,
) -> None:
    """Refuse a request that no node (or too few nodes) of the partition can hold: it would pend forever, or be
    rejected only at submission with a vaguer message. The message says what is short, the numbers on both sides,
    which of the values asked for the user never set (``preset``: they came from conf/hydra/launcher/slurm.yaml, and a
    user blamed for a value they never typed does not know where it came from), and the values that would fit,
    spelled as the user writes them (``spell``: ``--cpus-per-task 4`` for launch.submit, ``hydra.launcher...=4``)."""
    found = slurm_nodes(partition)
    if not found:
        return
    cpus = tasks_per_node * (cpus_per_task or 1)
    mem_mb = int((mem_gb or 0) * 1024)
    gpus = gpus_per_node or 0
    fit = [n for n in found if n["cpus"] >= cpus and n["mem_mb"] >= mem_mb and n["gpus"] >= gpus]
    if len(fit) >= nodes:
        return

    named = []  # every value the message names, in order, to say afterwards which of them the user never set

    def asked(name: str, value) -> str:
        named.append((name, value))
        return spell(name, value)

    most = {k: max(n[k] for n in found) for k in ("cpus", "mem_mb", "gpus")}
    short, fixes = [], []  # what no node has enough of, and the largest values that would fit
    if most["cpus"] < cpus:
        how = asked("tasks_per_node", tasks_per_node) + " x " + asked("cpus_per_task", cpus_per_task or 1)
        short.append(f"{cpus} CPUs per node ({how}), and its largest node has {most['cpus']}")
        if most["cpus"] >= tasks_per_node:
            fixes.append(spell("cpus_per_task", most["cpus"] // tasks_per_node) + " or less")
    if most["mem_mb"] < mem_mb:
        largest = most["mem_mb"] // 1024
        short.append(f"{mem_gb:g} GB per node ({asked('mem_gb', mem_gb)}), and its largest node has {largest}")
        fixes.append(spell("mem_gb", largest) + " or less")
    if most["gpus"] < gpus:
        short.append(f"{gpus} GPUs per node ({asked('gpus_per_node', gpus)}), and its largest node has {most['gpus']}")
        if most["gpus"]:
            fixes.append(spell("gpus_per_node", most["gpus"]) + " or less (and as many tasks per node)")
    if not short:  # each resource exists somewhere, but not on enough nodes together
        each = ", ".join([f"{cpus} CPUs", *([f"{mem_gb:g} GB"] if mem_mb else []), *([f"{gpus} GPUs"] if gpus else [])])
        short.append(f"{asked('nodes', nodes)} with {each} each, and {len(fit)} of its {len(found)} nodes have that")
        if fit:
            fixes.append(spell("nodes", len(fit)))
    from_preset = [spell(k, v) for k, v in dict(named).items() if k in preset]
    if from_preset:
        short[-1] += (
            f". {' and '.join(from_preset)} {'is' if len(from_preset) == 1 else 'are'} the preset's "
            f"(conf/hydra/launcher/slurm.yaml), not {'a value' if len(from_preset) == 1 else 'values'} you gave"
        )
    where = f"partition {partition!r}" if partition else "the default partition"
    fix = f"Ask for {' and '.join(fixes)}, or pick another partition" if fixes else "Pick another partition"
    raise LaunchError(f"{where} cannot hold this job: it asks for {'; it also asks for '.join(short)}. {fix}.")
