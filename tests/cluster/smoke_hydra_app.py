"""Tiny Hydra app for the Slurm smoke check (see smoke_hydra.py). Each job: tasks_per_node ranks do a
gloo all_reduce; rank 0 writes result.json into the job's Hydra output directory and returns a dict.

    .venv/bin/python tests/cluster/smoke_hydra_app.py -m hydra/launcher=submitit_slurm x=1,2 \
        hydra.launcher.tasks_per_node=2 hydra.launcher.partition=debug hydra.sweep.dir=/tmp/sweep
"""

import datetime
import json
import os
import socket
from dataclasses import dataclass

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig


@dataclass
class SmokeConf:
    x: int = 0


ConfigStore.instance().store(name="smoke", node=SmokeConf)


@hydra.main(version_base="1.3", config_path=None, config_name="smoke")
def main(cfg: SmokeConf) -> dict:
    import submitit
    import torch
    import torch.distributed as dist

    env = submitit.helpers.TorchDistributedEnvironment().export()
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    t = torch.tensor([float(cfg.x * (env.rank + 1))])
    dist.all_reduce(t)
    dist.destroy_process_group()
    out = {
        "x": cfg.x,
        "rank": env.rank,
        "world_size": env.world_size,
        "sum": t.item(),
        "host": socket.gethostname(),
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
    }
    if env.rank == 0:  # every rank runs this function in the same output dir: guard side effects
        with open(os.path.join(HydraConfig.get().runtime.output_dir, "result.json"), "w") as f:
            json.dump(out, f)
    return out


if __name__ == "__main__":
    main()
