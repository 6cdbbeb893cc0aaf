"""python -m pipeline.pretrain data.path=DIR model=bert-base run_dir=checkpoints/NAME [overrides]

Works in one process, under torchrun, and under Slurm (srun, sbatch, submitit): the distributed environment comes
from launch.distenv. Running the same command again in the same run_dir resumes from the latest complete checkpoint.
Exit code 75 means: stopped early on a signal, checkpoint saved, run again to resume.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import pipeline.config  # noqa: F401 - registers the structured configs
from launch.distenv import detect
from pipeline.preempt import hand_over

log = logging.getLogger("pipeline.pretrain")


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.run_dir or HydraConfig.get().runtime.output_dir)


def sweep_group() -> str | None:
    hc = HydraConfig.get()
    return Path(hc.sweep.dir).name if hc.mode.name == "MULTIRUN" else None


def run_stage(stage, cfg: DictConfig):
    """The Hydra entry points' shared tail: run ``stage(cfg, env, run_dir, group)``, leave the process group
    (except between in-process sweep jobs, which share it), and hand a stop signal over (submitit requeues on
    USR2; otherwise exit 75)."""
    from pipeline.engine import shutdown

    try:
        result = stage(cfg, detect(), run_dir_of(cfg), sweep_group())
    finally:
        if HydraConfig.get().mode.name != "MULTIRUN":
            shutdown()
    if result.stopped_by_signal:
        hand_over(result.stopped_by_signal)
    return result


@hydra.main(config_path="../conf", config_name="pretrain", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from pipeline.trainer import pretrain  # heavy imports after the config is known to be valid

    return (run_stage(pretrain, cfg).final or {}).get("val_loss")


if __name__ == "__main__":
    main()
