"""The callable submitit runs on every task: compose the stage's config, then the same ``run_stage`` as the entry
points (pipeline/run.py), which saves and hands a stop signal to submitit's handler (requeue on USR2).

It imports the training code lazily (the submitting process needs none of it) and is Checkpointable: on requeue,
submitit calls it again with the same overrides and the stage resumes from its run_dir.
"""

from __future__ import annotations

import submitit


class TrainJob(submitit.helpers.Checkpointable):
    def __init__(self, stage: str = "pretrain"):
        self.stage = stage

    def __call__(self, overrides: list[str]) -> dict:
        import logging

        from pipeline.dist import detect
        from pipeline.preflight import compose
        from pipeline.run import run_stage
        from pipeline.stages import run_function

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
        cfg = compose(self.stage, overrides)
        if not cfg.get("run_dir"):
            raise ValueError("launch.submit needs run_dir=... (the job resumes from it after a requeue)")
        result = run_stage(run_function(self.stage), cfg, cfg.run_dir)
        return {
            "rank": detect().rank,
            "step": result.step,
            "stopped_by_signal": result.stopped_by_signal,
            "final": result.final,
            "run_dir": str(cfg.run_dir),
        }
