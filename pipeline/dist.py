"""The distributed environment and its collectives.

:func:`detect` is the one place that reads how a process was started: Slurm (srun/sbatch/submitit), torchrun,
submitit's LocalExecutor, or nothing (pure environment parsing). The collectives below work in one process too.
No ssh, no hostfile: under Slurm the master is the first host of SLURM_JOB_NODELIST and the port is
derived from the job id (stable across requeues, different between jobs sharing a node).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int
    source: str  # "slurm", "torchrun", "submitit-local" or "single"


def expand_first_host(nodelist: str) -> str:
    """First host of a Slurm hostlist ("gpu[003-005,9],cpu1" -> "gpu003"), via scontrol when it is there."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10, check=True
        ).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    first = re.split(r",(?![^\[]*\])", nodelist)[0]
    m = re.match(r"^([^\[]+)\[([^\]]+)\](.*)$", first)
    if not m:
        return first
    prefix, ranges, suffix = m.groups()
    lo = ranges.split(",")[0].split("-")[0]
    return f"{prefix}{lo}{suffix}"


def _slurm_port(job_id: str) -> int:
    # Same rule as submitit's TorchDistributedEnvironment: stable for a job, spread over 20000-59999.
    return 20000 + int(re.sub(r"\D", "", job_id) or "0") % 40000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def detect(environ: dict | None = None) -> DistEnv:
    """Rank, world size, local rank, master address and port of this process.

    torchrun's variables win when present (torchrun inside an sbatch job is common); then Slurm task variables
    (only when the job step runs more than one task or the caller is one of several, i.e. SLURM_NTASKS is set);
    otherwise a single process on a free local port.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env and "MASTER_ADDR" in env:
        world = int(env["WORLD_SIZE"])
        return DistEnv(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            world_size=world,
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world))),
            master_addr=env["MASTER_ADDR"],
            master_port=int(env.get("MASTER_PORT", "29500")),
            source="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "SLURM_JOB_NODELIST" in env:
        ntasks = int(env["SLURM_NTASKS"])
        nnodes = max(1, int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1"))))
        per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
        local_world = int(per_node) if per_node.isdigit() else max(1, ntasks // nnodes)
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            local_rank=int(env.get("SLURM_LOCALID", "0")),
            world_size=ntasks,
            local_world_size=local_world,
            master_addr=expand_first_host(env["SLURM_JOB_NODELIST"]),
            master_port=int(env.get("MASTER_PORT") or _slurm_port(env.get("SLURM_JOB_ID", "0"))),
            source="slurm",
        )
    if "SUBMITIT_LOCAL_GLOBALID" in env and "SUBMITIT_LOCAL_NTASKS" in env:  # submitit's LocalExecutor
        ntasks = int(env["SUBMITIT_LOCAL_NTASKS"])
        return DistEnv(
            rank=int(env["SUBMITIT_LOCAL_GLOBALID"]),
            local_rank=int(env.get("SUBMITIT_LOCAL_LOCALID", "0")),
            world_size=ntasks,
            local_world_size=ntasks,
            master_addr="127.0.0.1",
            master_port=int(env.get("MASTER_PORT") or _slurm_port(env.get("SUBMITIT_LOCAL_JOB_ID", "0"))),
            source="submitit-local",
        )
    return DistEnv(0, 0, 1, 1, "127.0.0.1", int(env.get("MASTER_PORT") or free_port()), "single")


def export(d: DistEnv) -> None:
    """Write the variables torch.distributed's env:// init reads."""
    os.environ.update(
        RANK=str(d.rank),
        LOCAL_RANK=str(d.local_rank),
        WORLD_SIZE=str(d.world_size),
        LOCAL_WORLD_SIZE=str(d.local_world_size),
        MASTER_ADDR=d.master_addr,
        MASTER_PORT=str(d.master_port),
    )


# ---------------------------------------------------------------------------------------------------------------
# Collectives (no-ops without a process group of more than one rank)


def _multi() -> bool:
    import torch.distributed as dist

    return dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t):
    import torch.distributed as dist

    if _multi():
        dist.all_reduce(t)
    return t


def all_reduce_max(t):
    import torch.distributed as dist

    if _multi():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def gather_lists(items: list) -> list:
    """Concatenate a small picklable list from every rank (our own objects: never data from outside)."""
    import torch.distributed as dist

    if not _multi():
        return list(items)
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, list(items))
    return [x for part in out for x in part]


PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "NCCL communicator was aborted")


class PeerLost(RuntimeError):
    """Another process of the job died (``kill -9``, OOM killer, a lost node): its connections dropped."""


def peer_lost(e: BaseException) -> bool:
    """Whether a collective failed because a peer's connection dropped (gloo raises at once; NCCL only after
    ``engine.timeout_s`` unless async error handling aborts the communicator first)."""
    return isinstance(e, RuntimeError) and any(s in str(e) for s in PEER_LOST)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (NCCL warns about leaked resources otherwise); a later run in-process rejoins."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
