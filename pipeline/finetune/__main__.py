"""python -m pipeline.finetune model.path=RUN_DIR_or_HF_DIR task=NAME [overrides]

Finetunes on a GLUE task, custom classification/regression files, NER or SQuAD-style QA with the pretraining
engine (DeepSpeed, any ZeRO stage and precision, one process, torchrun or Slurm). Keeps the best checkpoint by the
task's validation metric (early stopping after ``eval.patience`` evaluations without improvement) and writes
results.json, predictions_<split>.jsonl and best_model/ (Hugging Face format) in the run_dir. Running the same
command again resumes; a finished run_dir (results.json present) returns at once. See pipeline/finetune/README.md.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import pipeline.finetune.config  # noqa: F401 - registers finetune_schema and task_schema
from pipeline.cli import run, user_errors


@hydra.main(config_path="../../conf", config_name="finetune", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    with user_errors():
        from pipeline.finetune.loop import finetune  # heavy imports after the config is known to be valid
        from pipeline.run import run_hydra_stage

        return (run_hydra_stage(finetune, cfg).final or {}).get(cfg.task.main_metric)


if __name__ == "__main__":
    run(main, "finetune")
