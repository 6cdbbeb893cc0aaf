"""Smoke experiment (not a pytest test): failure modes seen through submitit on the real cluster.

    .venv/bin/python tests/cluster/smoke_errors.py partition     # submit to a partition that does not exist
    .venv/bin/python tests/cluster/smoke_errors.py badport       # rank 1 uses another MASTER_PORT than rank 0
    .venv/bin/python tests/cluster/smoke_errors.py badaddr       # MASTER_ADDR is a name that does not resolve
    .venv/bin/python tests/cluster/smoke_errors.py noroute       # MASTER_ADDR is an address nobody answers on

Prints the exception type/message and how long it took.  For the rendezvous cases the task calls
init_process_group("gloo", timeout=--pg-timeout) and records what each rank raised.
"""

import argparse
import datetime
import os
import sys
import tempfile
import time
import traceback

import submitit


def rendezvous(mode: str, pg_timeout: float) -> dict:
    import torch.distributed as dist

    env = submitit.helpers.TorchDistributedEnvironment().export()
    if mode == "badport" and env.rank == 1:
        os.environ["MASTER_PORT"] = str(env.master_port + 1)
    if mode == "badaddr":
        os.environ["MASTER_ADDR"] = "no-such-host.invalid"
    if mode == "noroute":
        os.environ["MASTER_ADDR"] = "10.77.0.250"  # inside the node subnet, nobody there
    t0 = time.time()
    try:
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=pg_timeout))
        dist.destroy_process_group()
        return {"rank": env.rank, "ok": True, "s": round(time.time() - t0, 1)}
    except Exception as e:  # noqa: BLE001
        return {
            "rank": env.rank,
            "ok": False,
            "s": round(time.time() - t0, 1),
            "exc": f"{type(e).__module__}.{type(e).__name__}: {str(e)[:300]}",
        }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["partition", "badport", "badaddr", "noroute"])
    ap.add_argument("--pg-timeout", type=float, default=20.0)
    ap.add_argument("--deadline", type=float, default=180.0)
    a = ap.parse_args()
    folder = tempfile.mkdtemp(prefix=f"smoke_err_{a.mode}_", dir="/tmp")
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    ex.update_parameters(tasks_per_node=2, cpus_per_task=1, mem_gb=1, timeout_min=3)
    t0 = time.time()
    if a.mode == "partition":
        ex.update_parameters(slurm_partition="nosuchpart")
        try:
            job = ex.submit(print, "never")
            print(f"UNEXPECTED: submitted {job.job_id}")
            return 1
        except Exception as e:  # noqa: BLE001
            print(f"raised after {time.time() - t0:.2f}s: {type(e).__module__}.{type(e).__name__}")
            print(str(e)[:1500])
            print("cause:", repr(e.__cause__)[:500])
            return 0
    job = ex.submit(rendezvous, a.mode, a.pg_timeout)
    print(f"job {job.job_id} folder {folder}", flush=True)
    while not job.done() and time.time() - t0 < a.deadline:
        time.sleep(1)
    if not job.done():
        print(f"deadline {a.deadline}s reached; cancelling")
        job.cancel(check=False)
        return 1
    print(f"done after {time.time() - t0:.1f}s")
    try:
        for r in job.results():
            print(r)
    except Exception:  # noqa: BLE001
        traceback.print_exc(limit=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
