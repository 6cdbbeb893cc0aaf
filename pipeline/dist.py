"""The distributed environment and its collectives.

:func:`detect` is the one place that reads how a process was started: Slurm (srun/sbatch/submitit), torchrun,
submitit's LocalExecutor, or nothing (pure environment parsing). The collectives below work in one process too.
No ssh, no hostfile: under Slurm the master is the first host of SLURM_JOB_NODELIST and the port is
derived from the job id (stable across requeues, different between jobs sharing a node).

Every collective of the project goes through this module (tests/test_multigpu.py checks that no other module uses
``torch.distributed``), on the process group's device: NCCL serves CUDA tensors only, so a host tensor handed to it
fails on the first step of a multi-GPU run ("No backend type associated with device type cpu").
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


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
# Collectives: no-ops without a process group of more than one rank, unless strict.

STRICT_ENV = "BERTRUN_STRICT_COLLECTIVES"
_device = None  # where this process's collectives run; set by bind_device (pipeline/engine.py)


def strict() -> bool:
    """``BERTRUN_STRICT_COLLECTIVES=1``: with any process group, collectives run even at a world size of 1.

    One GPU is the most a test machine has, and NCCL refuses two ranks on one GPU; skipping collectives at world
    size 1 would hide every mistake a multi-GPU run then meets (a host tensor, an unset device). Strict, a one-GPU
    run under torchrun with NCCL makes every collective a multi-GPU run makes, and fails the same way. On in the
    tests (tests/conftest.py) and in bench/gpu_check.sh; off by default only because it costs a few microseconds."""
    return os.environ.get(STRICT_ENV, "0") not in ("", "0", "false")


def bind_device(device) -> None:
    """The device this process computes on, which its process group serves (CUDA under NCCL, CPU under gloo).
    NCCL's object collectives and barrier pick their CUDA device from the current one: it is set here, once."""
    import torch

    global _device
    _device = torch.device(device)
    if _device.type == "cuda":
        torch.cuda.set_device(_device)


def device():
    """Where collective tensors must live: the bound device; else the current CUDA device under NCCL, else CPU."""
    import torch
    import torch.distributed as dist

    if _device is not None:
        return _device
    if dist.is_initialized() and "nccl" in str(dist.get_backend()) and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _active() -> bool:
    import torch.distributed as dist

    return initialized() and (dist.get_world_size() > 1 or strict())


def _on_device(t):
    if t.device != device():
        raise RuntimeError(
            f"a collective got a tensor on {t.device}, but this process group serves {device()}: build it there "
            f"(pipeline.dist.device(), or the engine's device) or pass host numbers to pipeline.dist.sum_values"
        )
    return t


def all_reduce_sum(t):
    """Sum ``t`` over ranks in place; ``t`` must be on :func:`device` (no hidden copy, no host sync)."""
    import torch.distributed as dist

    if _active():
        dist.all_reduce(_on_device(t))
    return t


def all_reduce_max(t):
    import torch.distributed as dist

    if _active():
        dist.all_reduce(_on_device(t), op=dist.ReduceOp.MAX)
    return t


def sum_values(values: list[float]) -> list[float]:
    """Host numbers summed over ranks: one collective on the group's device, read back once."""
    import torch

    if not _active():
        return [float(v) for v in values]
    return all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=device())).tolist()


def gather_lists(items: list) -> list:
    """Concatenate a small picklable list from every rank (our own objects: never data from outside)."""
    import torch.distributed as dist

    if not _active():
        return list(items)
    _current_device()
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, list(items))
    return [x for part in out for x in part]


def on_rank0(rank: int, fn: Callable[[], T], errors: tuple[type[Exception], ...]) -> T | None:
    """``fn()`` on rank 0 alone (a lock, a conversion); if it raises one of ``errors``, every rank raises it, with
    rank 0's message, at the same point: no rank goes on into a collective that another has left. Returns ``fn``'s
    result on rank 0, None elsewhere."""
    result, failed = None, []
    if rank == 0:
        try:
            result = fn()
        except errors as e:
            failed = [(errors.index(next(t for t in errors if isinstance(e, t))), str(e))]
    failed = gather_lists(failed)
    if failed:
        kind, message = failed[0]
        raise errors[kind](message)
    return result


def _current_device() -> None:
    """NCCL's object collectives stage their bytes on the *current* CUDA device: make it this process's."""
    import torch

    d = device()
    if d.type == "cuda" and torch.cuda.current_device() != d.index:
        torch.cuda.set_device(d)


PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "NCCL communicator was aborted")


class PeerLost(RuntimeError):
    """Another process of the job died (``kill -9``, OOM killer, a lost node): its connections dropped."""


def peer_lost(e: BaseException) -> bool:
    """Whether a collective failed because a peer's connection dropped (gloo raises at once; NCCL only after
    ``engine.timeout_s`` unless async error handling aborts the communicator first)."""
    return isinstance(e, RuntimeError) and any(s in str(e) for s in PEER_LOST)


def barrier() -> None:
    """All ranks meet (also at world size 1, where it costs nothing). Under NCCL with the device named: without
    ``device_ids`` NCCL guesses the GPU from the rank and can hang when that guess is not this process's GPU."""
    import torch.distributed as dist

    if not initialized():
        return
    d = device()
    if d.type == "cuda" and "nccl" in str(dist.get_backend()):
        _current_device()
        dist.barrier(device_ids=[d.index])
    else:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (NCCL warns about leaked resources otherwise); a later run in-process rejoins."""
    import torch.distributed as dist

    global _device
    _device = None
    if initialized():
        dist.destroy_process_group()
