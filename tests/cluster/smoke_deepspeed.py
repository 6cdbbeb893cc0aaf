"""Smoke check (not a pytest test): a DeepSpeed (CPU, gloo) engine trains a few steps in a submitit job.

    .venv/bin/python tests/cluster/smoke_deepspeed.py [--nodes 2 --tasks-per-node 1]

Every rank: TorchDistributedEnvironment().export(), deepspeed.initialize with ZeRO-1 and a torch AdamW
(no C++ op build), 3 steps; returns the parameter checksum, which must agree across ranks.
"""

import argparse
import sys
import tempfile
import time

import submitit


def train() -> dict:
    import os

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import torch

    env = submitit.helpers.TorchDistributedEnvironment().export()
    deepspeed.init_distributed(dist_backend="gloo", timeout=__import__("datetime").timedelta(seconds=60))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    cfg = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 1}, "steps_per_print": 100}
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    torch.manual_seed(1 + env.rank)
    for _ in range(3):
        x = torch.randn(4, 8)
        loss = engine(x).pow(2).mean()
        engine.backward(loss)
        engine.step()
    checksum = float(sum(p.detach().double().sum() for p in engine.module.parameters()))
    return {"rank": env.rank, "world": env.world_size, "checksum": round(checksum, 6), "host": os.uname().nodename}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--tasks-per-node", type=int, default=2)
    ap.add_argument("--deadline", type=float, default=400)
    a = ap.parse_args()
    ex = submitit.AutoExecutor(folder=tempfile.mkdtemp(prefix="smoke_ds_", dir="/tmp"), cluster="slurm")
    ex.update_parameters(nodes=a.nodes, tasks_per_node=a.tasks_per_node, cpus_per_task=1, mem_gb=2, timeout_min=10)
    t0 = time.time()
    job = ex.submit(train)
    print(f"job {job.job_id}", flush=True)
    while not job.done() and time.time() - t0 < a.deadline:
        time.sleep(1)
    if not job.done():
        job.cancel(check=False)
        print("FAIL: deadline")
        return 1
    res = job.results()
    for r in res:
        print(r)
    ok = len({r["checksum"] for r in res}) == 1 and len(res) == a.nodes * a.tasks_per_node
    print(f"{time.time() - t0:.1f}s", "OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
