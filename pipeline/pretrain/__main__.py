"""python -m pipeline.pretrain data.path=DIR model=bert-base run_dir=checkpoints/NAME [overrides]

Works in one process, under torchrun, and under Slurm (srun, sbatch, submitit): the distributed environment comes
from pipeline.dist. Running the same command again in the same run_dir resumes from the latest complete checkpoint.
Exit code 75 means: stopped early on a signal, checkpoint saved, run again to resume.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import pipeline.pretrain.config  # noqa: F401 - registers the structured configs
from pipeline.cli import run, user_errors


@hydra.main(config_path="../../conf", config_name="pretrain", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    with user_errors():
        from pipeline.pretrain.loop import pretrain  # heavy imports after the config is known to be valid
        from pipeline.run import run_hydra_stage

        return (run_hydra_stage(pretrain, cfg).final or {}).get("val_loss")


if __name__ == "__main__":
    run(main, "pretrain")
