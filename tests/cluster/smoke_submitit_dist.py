"""Smoke check (not a pytest test): a submitit job on the real Slurm cluster runs torch.distributed (gloo).

    .venv/bin/python tests/cluster/smoke_submitit_dist.py                 # 1 node x 2 tasks
    .venv/bin/python tests/cluster/smoke_submitit_dist.py --nodes 2 --tasks-per-node 1   # needs SLURM_NODES=2

Checks: every rank sees the expected SLURM_* / torch env, all_reduce gives the expected sum,
`job.results()` returns one result per task, and sacct reports COMPLETED.
Exit code 0 on success.
"""

import argparse
import datetime
import os
import socket
import sys
import tempfile
import time

import submitit


def dist_task(expect_world: int) -> dict:
    import torch
    import torch.distributed as dist

    env = submitit.helpers.TorchDistributedEnvironment().export()
    t0 = time.time()
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    x = torch.tensor([float(env.rank + 1)])
    dist.all_reduce(x)
    dist.barrier()
    out = {
        "rank": env.rank,
        "world_size": env.world_size,
        "local_rank": env.local_rank,
        "master": f"{env.master_addr}:{env.master_port}",
        "sum": x.item(),
        "hostname": socket.gethostname(),
        "SLURM_NODEID": os.environ.get("SLURM_NODEID"),
        "SLURM_JOB_NODELIST": os.environ.get("SLURM_JOB_NODELIST"),
        "SLURMD_NODENAME": os.environ.get("SLURMD_NODENAME"),
        "SLURM_RESTART_COUNT": os.environ.get("SLURM_RESTART_COUNT"),
        "init_s": round(time.time() - t0, 2),
    }
    dist.destroy_process_group()
    assert env.world_size == expect_world, out
    return out


def wait_state(job, final=("COMPLETED",), timeout=60.0) -> str:
    end = time.time() + timeout
    state = job.watcher.get_state(job.job_id, mode="force")
    while state not in final and time.time() < end:
        time.sleep(2)
        state = job.watcher.get_state(job.job_id, mode="force")
    return state


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--tasks-per-node", type=int, default=2)
    p.add_argument("--partition", default=None)
    p.add_argument("--folder", default=None)
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the job")
    a = p.parse_args()
    folder = a.folder or tempfile.mkdtemp(prefix="smoke_dist_", dir="/tmp")
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    params = dict(nodes=a.nodes, tasks_per_node=a.tasks_per_node, cpus_per_task=1, timeout_min=5, mem_gb=1)
    if a.partition:
        params["slurm_partition"] = a.partition
    ex.update_parameters(**params)
    world = a.nodes * a.tasks_per_node
    t0 = time.time()
    job = ex.submit(dist_task, world)
    print(f"submitted job {job.job_id} (folder {folder})", flush=True)
    # job.results() blocks without a bound: poll done() with our own deadline
    end = time.time() + a.timeout
    while not job.done() and time.time() < end:
        time.sleep(1)
    if not job.done():
        print(f"FAIL: job {job.job_id} not done after {a.timeout}s, state {job.state}; cancelling")
        job.cancel(check=False)
        return 1
    t_done = time.time() - t0
    results = job.results()
    for r in sorted(results, key=lambda r: r["rank"]):
        print(r)
    expect_sum = world * (world + 1) / 2
    ok = len(results) == world and all(r["sum"] == expect_sum for r in results)
    node_ids = sorted({r["SLURM_NODEID"] for r in results})
    ok &= node_ids == [str(i) for i in range(a.nodes)]
    state = wait_state(job)
    print(f"job {job.job_id}: results after {t_done:.1f}s, sacct state {state} after {time.time() - t0:.1f}s")
    ok &= state == "COMPLETED"
    print("OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
