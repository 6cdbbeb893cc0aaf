"""What ``model.path`` of a deploy is: a finetune run_dir, its best_model/, or a bare Hugging Face folder; and its task.

A finetune run brings its own task (its ``config.yaml``: the same data files, labels and ``max_seq_len`` it was
evaluated with) and its reported validation metrics, which the deploy's own PyTorch fp32 evaluation is compared
with. A bare Hugging Face folder needs ``task=NAME``. Light: no torch, so that a wrong path fails in a second.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.config import ConfigError

SUPPORTED = ("classification", "token_classification")


class DeployError(ConfigError):
    """A deploy that cannot go on; the message names the key or file and what to do (one line, pipeline/cli.py)."""


@dataclass
class DeploySource:
    kind: str  # finetune_run | hf_dir
    model_dir: Path  # the Hugging Face folder that is loaded
    task: object  # a TaskConfig (DictConfig)
    run_dir: Path | None = None
    reported: dict = field(default_factory=dict)  # the finetune run's results.json, if any

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "model_dir": str(self.model_dir),
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "finetune_validation": self.reported.get("validation"),
            "finetune_validation_examples": self.reported.get("validation_examples"),
        }


def _run_task(run_dir: Path):
    """The task block of a finetune run's resolved config (``config.yaml``, or Hydra's copy)."""
    from pipeline.finetune.config import TaskConfig

    for f in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if f.is_file():
            cfg = OmegaConf.load(f)
            if "task" in cfg:
                return OmegaConf.merge(OmegaConf.structured(TaskConfig), cfg.task)
    raise DeployError(
        f"{run_dir}: a finetune run without config.yaml (its task is unknown): give task=NAME (conf/task/) with its "
        f"task.data_files.* if needed"
    )


def resolve(path: str, task) -> DeploySource:
    """The model folder and the task; ``task`` (from ``task=NAME``) wins over the run's own."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DeployError(
            f"model.path={path}: no such directory; give a finetune run_dir, its best_model/ or a "
            f"Hugging Face model folder"
        )
    run_dir = None
    if (p / "results.json").is_file():
        run_dir, model_dir = p, p / "best_model"
    elif p.name == "best_model" and (p.parent / "results.json").is_file():
        run_dir, model_dir = p.parent, p
    else:
        model_dir = p
    if not (model_dir / "config.json").is_file():
        where = f"{run_dir} holds results.json but no best_model/" if run_dir else f"{p} has no config.json"
        raise DeployError(
            f"model.path={path}: not a model: {where}. Give a finetune run_dir (results.json + best_model/), its "
            f"best_model/, or a Hugging Face folder (config.json, weights, tokenizer)"
        )
    if not (model_dir / "tokenizer.json").is_file():
        raise DeployError(
            f"{model_dir} has no tokenizer.json (a fast tokenizer): the server needs it; save the "
            f"model's tokenizer there with tokenizer.save_pretrained(...)"
        )
    reported = json.loads((run_dir / "results.json").read_text()) if run_dir else {}
    if task is None and run_dir is None:
        raise DeployError(
            f"model.path={path} is a Hugging Face folder, not a finetune run: give its task, task=NAME (conf/task/; "
            f"task=custom_classification task.data_files.train=... task.data_files.validation=... for your files)"
        )
    if task is None:
        task = _run_task(run_dir)
    if task.type not in SUPPORTED:
        raise DeployError(f"task.type={task.type}: deploy serves {' and '.join(SUPPORTED)} models only")
    if task.type == "classification" and len(task.text_columns) != 1:
        raise DeployError(
            f"task.text_columns={list(task.text_columns)}: deploy serves single-text classifiers (one text column); "
            f"sentence pairs are not supported yet"
        )
    for split in ("train", "validation"):
        f = (task.data_files or {}).get(split)
        if f and not Path(f).is_file():
            raise DeployError(
                f"task.data_files.{split}={f}: no such file (the task's data moved?): give task=NAME "
                f"task.data_files.{split}=FILE"
            )
    kind = "finetune_run" if run_dir else "hf_dir"
    return DeploySource(kind, model_dir.resolve(), task, run_dir.resolve() if run_dir else None, reported)


def check_output(output: str) -> Path:
    out = Path(output).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "a deploy (deploy.json)" if (out / "deploy.json").is_file() else "files"
        raise DeployError(f"output={output} already holds {what}: choose another output= or remove it")
    return out
