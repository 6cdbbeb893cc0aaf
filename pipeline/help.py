"""``--help`` for the pipeline entry points, built from the schemas and ``conf/`` so that it cannot go stale.

Hydra's own help composes the config first, so it fails wherever a group has no default (finetune's ``task: ???``)
and lists every group in ``conf/`` (and the schema names registered beside them) for every entry. This text names
only the entry's own groups with their presets, its top-level keys with their defaults, the components' keys, and
the README section; ``--hydra-help`` still gives Hydra's.
"""

from __future__ import annotations

import dataclasses
import enum
import textwrap
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

ENTRIES = {
    "pretrain": (
        "Pretrain BERT (MLM + NSP) on data_prep shards with DeepSpeed ZeRO; rerun in the same run_dir to resume.",
        "python -m pipeline.pretrain data.path=DIR model=bert-base run_dir=checkpoints/NAME [key=value ...]",
        ("model", "engine", "optim"),
        "README.md, section 2 (Pretrain); Slurm: section 3",
    ),
    "finetune": (
        "Finetune a pretraining run_dir or a Hugging Face BERT on a task (GLUE, your files, NER, SQuAD, LoRA).",
        "python -m pipeline.finetune model.path=RUN_DIR_or_HF_DIR task=sst2 [key=value ...]",
        ("task", "engine", "optim"),
        "README.md, section 5 (Finetune); every key: pipeline/finetune/README.md",
    ),
    "export": (
        "Export a pretraining checkpoint (any ZeRO stage) to a Hugging Face directory.",
        "python -m pipeline.export run_dir=DIR [step=N] [output=HF_DIR]",
        (),
        "README.md, section 4 (Export)",
    ),
    "report": (
        "Plots and report.md for a pretraining run, a finetuning run or a sweep, in <run_dir>/report/.",
        "python -m pipeline.report run_dir=DIR [out=DIR]",
        (),
        "README.md, section 6 (Report)",
    ),
    "deploy": (
        "A finetuned model to ONNX fp32 and int8 (and head-pruned), each measured on the validation split.",
        "python -m pipeline.deploy model.path=FINETUNE_RUN_DIR output=DIR [quantize=int8|none] [prune.heads=F]",
        ("task",),
        "pipeline/deploy/README.md",
    ),
    "serve": (
        "Serve a deploy folder over HTTP (onnxruntime, dynamic batching, /v1/predict, /health, /metrics).",
        "python -m pipeline.serve model.path=DEPLOY_DIR [host=127.0.0.1] [port=8000] [max_batch=32]",
        (),
        "pipeline/deploy/README.md",
    ),
}


def _schema(entry: str) -> type:
    if entry == "pretrain":
        from pipeline.pretrain.config import PretrainConfig

        return PretrainConfig
    if entry == "finetune":
        from pipeline.finetune.config import FinetuneConfig

        return FinetuneConfig
    if entry in ("deploy", "serve"):
        from pipeline.deploy.config import DeployConfig, ServeConfig

        return DeployConfig if entry == "deploy" else ServeConfig
    from pipeline.config import ExportConfig, ReportConfig

    return ExportConfig if entry == "export" else ReportConfig


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        v = f.default
    elif f.default_factory is not dataclasses.MISSING:
        v = f.default_factory()
    else:
        return ""
    if v == "???":
        return "(required)"
    if isinstance(v, enum.Enum):
        v = v.value
    return "null" if v is None else str(v)


def _kind(f: dataclasses.Field, schema: type) -> type | None:
    """The dataclass a field holds (engine, data, ...), or None for a plain value."""
    import typing

    hint = typing.get_type_hints(schema).get(f.name)
    return hint if dataclasses.is_dataclass(hint) else None


def _presets(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _default_preset(entry: str, group: str) -> str:
    import yaml

    for item in yaml.safe_load((CONF_DIR / f"{entry}.yaml").read_text()).get("defaults", []):
        if isinstance(item, dict) and group in item:
            return str(item[group])
    return "?"


def help_text(entry: str) -> str:
    what, usage, groups, readme = ENTRIES[entry]
    schema = _schema(entry)
    lines = [what, "", f"usage: {usage}", ""]
    if groups:
        lines.append("config groups (group=preset; the default in brackets):")
        for g in groups:
            d = _default_preset(entry, g).replace("???", "required")
            lines += textwrap.wrap(
                f"{g:8} [{d}] " + ", ".join(_presets(g)), 118, initial_indent="  ", subsequent_indent=" " * 11
            )
        lines.append("")
    plain = [f for f in dataclasses.fields(schema) if _kind(f, schema) is None]
    nested = [f for f in dataclasses.fields(schema) if _kind(f, schema) is not None]
    lines.append("keys (key=value; the default after the name):")
    lines += [f"  {f.name} = {_default(f)}" for f in plain]
    for f in nested:
        names = ", ".join(g.name for g in dataclasses.fields(_kind(f, schema)))
        lines += textwrap.wrap(f"{f.name}.{{{names}}}", 118, initial_indent="  ", subsequent_indent="    ")
    lines.append("")
    if groups:
        lines.append("The full composed config: add --cfg job. Sweeps: -m key=a,b (hydra/launcher=slurm on Slurm).")
    lines += ["A mistake prints one line and exits 2; BERTRUN_DEBUG=1 shows the traceback.", f"More: {readme}."]
    return "\n".join(lines)
