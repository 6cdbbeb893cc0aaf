"""The callable submitit runs on every task: compose the config, run the stage, requeue if the stop asks for it.

It imports the training code lazily (the submitting process needs none of it) and is Checkpointable: on requeue,
submitit calls it again with the same overrides and the stage resumes from its run_dir.
"""

from __future__ import annotations

import signal
from pathlib import Path

import submitit

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
STAGES = {"pretrain": "pretrain", "finetune": "finetune"}


def compose(stage: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import pipeline.config  # noqa: F401 - registers the schemas
    import pipeline.finetune_config  # noqa: F401

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: expected one of {sorted(STAGES)}")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name=STAGES[stage], overrides=list(overrides))


class TrainJob(submitit.helpers.Checkpointable):
    def __init__(self, stage: str = "pretrain"):
        self.stage = stage

    def __call__(self, overrides: list[str]) -> dict:
        import logging

        from launch.distenv import detect

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")

        cfg = compose(self.stage, overrides)
        if not cfg.get("run_dir"):
            raise ValueError("launch.submit needs run_dir=... (the job resumes from it after a requeue)")
        env = detect()
        if self.stage == "pretrain":
            from pipeline.trainer import pretrain

            result = pretrain(cfg, env, Path(cfg.run_dir), cfg.logger.wandb.group)
        else:
            from pipeline.finetune import finetune

            result = finetune(cfg, env, Path(cfg.run_dir))
        if result.stopped_by_signal and env.rank == 0:
            handler = signal.getsignal(result.stopped_by_signal)
            if callable(handler):  # submitit's: checkpoint() below, scontrol requeue, exit
                handler(result.stopped_by_signal, None)
        return {
            "rank": env.rank,
            "step": result.step,
            "stopped_by_signal": result.stopped_by_signal,
            "final": result.final,
            "run_dir": str(cfg.run_dir),
        }
