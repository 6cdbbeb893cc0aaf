"""The stage registry: every ``python -m pipeline.<stage>`` entry in one table (its schema, its run function when it
trains under the engine, its help text), read by ``--help``, the pre-submit checks, the submitit job and the
launchers. Adding a stage is one entry here plus its package.

Light on purpose (no torch, no Hydra): schemas and run functions are named as ``module:attribute`` and imported only
when asked for, so that a submitting process, ``--help`` and a config check pay for nothing they do not use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@dataclass(frozen=True)
class Stage:
    name: str
    what: str  # the first line of --help
    usage: str
    groups: tuple[str, ...]  # the config groups --help lists with their presets
    readme: str  # where --help sends the reader
    schema: str  # "module:Class", the dataclass conf/<name>.yaml extends
    run: str | None = None  # "module:function(cfg, env, run_dir, group) -> RunResult": stages that launchers start


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "pretrain",
            "Pretrain BERT (MLM + NSP) on data_prep shards with DeepSpeed ZeRO; rerun in the same run_dir to resume.",
            "python -m pipeline.pretrain data.path=DIR model=bert-base run_dir=checkpoints/NAME [key=value ...]",
            ("model", "engine", "optim"),
            "pipeline/pretrain/README.md; Slurm: launch/README.md",
            "pipeline.pretrain.config:PretrainConfig",
            "pipeline.pretrain.loop:pretrain",
        ),
        Stage(
            "finetune",
            "Finetune a pretraining run_dir or a Hugging Face BERT on a task (GLUE, your files, NER, SQuAD, LoRA).",
            "python -m pipeline.finetune model.path=RUN_DIR_or_HF_DIR task=sst2 [key=value ...]",
            ("task", "engine", "optim"),
            "pipeline/finetune/README.md",
            "pipeline.finetune.config:FinetuneConfig",
            "pipeline.finetune.loop:finetune",
        ),
        Stage(
            "export",
            "Export a pretraining checkpoint (any ZeRO stage) to a Hugging Face directory.",
            "python -m pipeline.export run_dir=DIR [step=N] [output=HF_DIR]",
            (),
            "pipeline/finetune/README.md (Export)",
            "pipeline.config:ExportConfig",
        ),
        Stage(
            "report",
            "Plots and report.md for a pretraining run, a finetuning run or a sweep, in <run_dir>/report/.",
            "python -m pipeline.report run_dir=DIR [out=DIR]",
            (),
            "README.md (Stages, 6)",
            "pipeline.config:ReportConfig",
        ),
        Stage(
            "deploy",
            "A finetuned model to ONNX fp32 and int8 (and head-pruned), each measured on the validation split.",
            "python -m pipeline.deploy model.path=FINETUNE_RUN_DIR output=DIR [quantize=int8|none] [prune.heads=F]",
            ("task",),
            "pipeline/deploy/README.md",
            "pipeline.deploy.config:DeployConfig",
        ),
        Stage(
            "serve",
            "Serve a deploy folder over HTTP (onnxruntime, dynamic batching, /v1/predict, /health, /metrics).",
            "python -m pipeline.serve model.path=DEPLOY_DIR [host=127.0.0.1] [port=8000] [max_batch=32]",
            (),
            "pipeline/deploy/README.md",
            "pipeline.deploy.config:ServeConfig",
        ),
    )
}

# The stages a launcher can start (they train under the engine and resume from their run_dir).
LAUNCHABLE = tuple(name for name, s in STAGES.items() if s.run)


def stage(name: str) -> Stage:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}: expected one of {', '.join(STAGES)}")
    return STAGES[name]


def _load(ref: str):
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def schema(name: str) -> type:
    """The stage's config dataclass (importing its module registers it in Hydra's ConfigStore)."""
    return _load(stage(name).schema)


def run_function(name: str) -> Callable:
    """The stage's run function, imported on demand (a submitting process needs none of the training code)."""
    s = stage(name)
    if s.run is None:
        raise ValueError(f"stage {name!r} is not started by a launcher: expected one of {', '.join(LAUNCHABLE)}")
    return _load(s.run)
