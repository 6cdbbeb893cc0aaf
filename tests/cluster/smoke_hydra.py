"""Smoke check (not a pytest test): a 2-point Hydra multirun through hydra-submitit-launcher on Slurm.

    .venv/bin/python tests/cluster/smoke_hydra.py [--tasks-per-node 2] [--nodes 1]

Runs smoke_hydra_app.py -m hydra/launcher=submitit_slurm x=1,2 with a bounded wall time, then checks
that both points wrote result.json with the expected all_reduce sum and that sacct shows the array
tasks COMPLETED.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks-per-node", type=int, default=2)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--partition", default="debug")
    ap.add_argument("--timeout", type=int, default=240)
    a = ap.parse_args()
    sweep = tempfile.mkdtemp(prefix="smoke_hydra_", dir="/tmp")
    cmd = [
        sys.executable,
        os.path.join(HERE, "smoke_hydra_app.py"),
        "-m",
        "hydra/launcher=submitit_slurm",
        "x=1,2",
        f"hydra.launcher.tasks_per_node={a.tasks_per_node}",
        f"hydra.launcher.nodes={a.nodes}",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=5",
        f"hydra.launcher.partition={a.partition}",
        f"hydra.sweep.dir={sweep}",
    ]
    print(" ".join(cmd), flush=True)
    t0 = time.time()
    try:
        # the launcher blocks in job.results() with no timeout of its own: bound it here
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    except subprocess.TimeoutExpired as e:
        print(f"FAIL: multirun did not finish in {a.timeout}s\n{e.stdout}\n{e.stderr}")
        subprocess.run("squeue", shell=True)
        return 1
    dt = time.time() - t0
    print(r.stdout[-3000:], r.stderr[-3000:], sep="\n")
    results = []
    for f in sorted(glob.glob(os.path.join(sweep, "*", "result.json"))):
        with open(f) as fh:
            results.append(json.load(fh))
    for res in results:
        print(res)
    world = a.tasks_per_node * a.nodes
    tri = world * (world + 1) / 2
    ok = r.returncode == 0 and sorted(res["x"] for res in results) == [1, 2]
    ok &= all(res["sum"] == res["x"] * tri and res["world_size"] == world for res in results)
    job_ids = {res["job_id"] for res in results}
    sacct = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-o", "JobID,State"] + sum([["-j", j] for j in job_ids], []),
        capture_output=True,
        text=True,
    ).stdout
    print("sacct:", sacct.strip().replace("\n", "; "))
    print(f"multirun finished in {dt:.1f}s (rc {r.returncode})")
    print("OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
