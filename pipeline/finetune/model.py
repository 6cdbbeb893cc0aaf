"""The model side of finetuning: where the weights come from, the task head, LoRA, and the Hugging Face output.

The source is a pretraining run_dir (exported on the fly with pipeline.export), a Hugging Face BERT-family
directory (config.json + weights + tokenizer), or a hub id. ``TaskModel`` wraps the ``AutoModelFor<Task>`` so that
its forward takes the batch's keys and returns a dict of scalars (training) or scalars and logits (evaluation), as
pipeline.engine.Engine expects. Losses are computed here in fp32, whatever the engine's precision.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.config import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Source:
    kind: str  # run_dir | hf_dir | hub
    path: str
    checkpoint: str | None = None  # run_dir: the checkpoint tag
    step: int | None = None

    def as_dict(self) -> dict:
        return {"kind": self.kind, "path": self.path, "checkpoint": self.checkpoint, "step": self.step}


def resolve_source(path: str, step: int | None) -> Source:
    """Which kind of source ``model.path`` is; checked before any process group starts."""
    from pipeline.export import ExportError, find_checkpoint

    p = Path(path).expanduser()
    if p.is_dir() and (p / "checkpoints").is_dir():
        try:
            root, tag = find_checkpoint(p, step)
        except ExportError as e:
            raise ConfigError(
                f"model.path={path}: {e}. Pass a complete checkpoint's step (model.step=N) or a Hugging Face directory."
            ) from e
        import json

        state = json.loads((root / tag / "trainer_state.json").read_text())
        return Source("run_dir", str(p.resolve()), tag, int(state.get("step", 0)))
    if p.is_dir() and (p / "config.json").is_file():
        if step is not None:
            raise ConfigError(f"model.step={step} applies to pretraining run_dirs; {path} is a Hugging Face directory")
        return Source("hf_dir", str(p.resolve()))
    if not p.exists() and (_looks_local(p, path) or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")):
        raise ConfigError(
            f"model.path={path}: no such directory. Give a pretraining run_dir, a Hugging Face model directory, or "
            f"(with hub access) a hub id such as bert-base-uncased"
        )
    if p.exists() or path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise ConfigError(
            f"model.path={path} is not a checkpoint: neither a pretraining run_dir (a checkpoints/ folder with a "
            f"COMPLETE checkpoint) nor a Hugging Face model directory (config.json + weights + tokenizer). Point it "
            f"at the run_dir given to pipeline.pretrain, or at the output of python -m pipeline.export."
        )
    return Source("hub", path)  # a hub id such as bert-base-uncased: needs the hub


def _looks_local(p: Path, path: str) -> bool:
    """A hub id is ``name`` or ``org/name``; a path starting like a path, deeper, or under an existing local folder
    (``hf/nope`` beside an ``hf/`` export folder) is a local path that is missing, and is never sent to the hub."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or (p.parent != Path(".") and p.parent.is_dir())


def materialize(src: Source, run_dir: Path, rank: int, barrier) -> str:
    """A directory (or hub id) that from_pretrained reads: run_dirs are exported into ``run_dir/pretrained/``."""
    if src.kind != "run_dir":
        return src.path
    out = run_dir / "pretrained" / src.checkpoint
    if rank == 0 and not (out / "config.json").is_file():
        from pipeline.export import export

        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        export(src.path, src.step, tmp)
        tmp.rename(out)
    barrier()
    return str(out)


@contextlib.contextmanager
def _quiet_transformers():
    """A fresh task head is expected; say so once ourselves rather than through transformers' load report. Its
    "Loading weights" bar goes too: on the console it would sit before and after finetune's own bar."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_hf(path: str, task, names: list[str], model_cfg=None):
    from transformers import (
        AutoConfig,
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    kwargs = {}
    if model_cfg is not None and model_cfg.hidden_dropout is not None:
        kwargs["hidden_dropout_prob"] = model_cfg.hidden_dropout
    if model_cfg is not None and model_cfg.attention_dropout is not None:
        kwargs["attention_probs_dropout_prob"] = model_cfg.attention_dropout
    if task.type in ("classification", "token_classification"):
        kwargs.update(
            num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
        )
    elif task.type == "regression":
        kwargs.update(num_labels=1, problem_type="regression")
    cls = {
        "classification": AutoModelForSequenceClassification,
        "regression": AutoModelForSequenceClassification,
        "token_classification": AutoModelForTokenClassification,
        "question_answering": AutoModelForQuestionAnswering,
    }[task.type]
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
        if model_cfg is not None and model_cfg.random_init:  # the baseline: same architecture, no pretraining
            log.info("model.random_init=true: %s's architecture with freshly initialised weights", path)
            return cls.from_config(config)
        with _quiet_transformers():
            model, info = cls.from_pretrained(path, config=config, output_loading_info=True)
    except OSError as e:
        raise ConfigError(f"model.path={path}: could not load a model ({e}). Offline, use a local directory.") from e
    if info["missing_keys"]:
        log.info("new task head (not in %s): %s", path, sorted(info["missing_keys"]))
    return model


def add_lora(model, task, lora_cfg):
    from peft import LoraConfig, TaskType, get_peft_model

    task_type = {
        "classification": TaskType.SEQ_CLS,
        "regression": TaskType.SEQ_CLS,
        "token_classification": TaskType.TOKEN_CLS,
        "question_answering": TaskType.QUESTION_ANS,
    }[task.type]
    cfg = LoraConfig(
        task_type=task_type,
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules),
    )
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:
        raise ConfigError(f"lora.target_modules={list(lora_cfg.target_modules)}: {e}") from e


class TaskModel(torch.nn.Module):
    def __init__(self, hf, task_type: str):
        super().__init__()
        self.hf = hf
        self.task_type = task_type

    def gradient_checkpointing_enable(self, **kwargs):
        self.hf.gradient_checkpointing_enable(**kwargs)

    def forward(
        self, input_ids, attention_mask, token_type_ids=None, labels=None, start_positions=None, end_positions=None
    ) -> dict[str, torch.Tensor]:
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        res: dict[str, torch.Tensor] = {}
        if self.task_type == "question_answering":
            start, end = out.start_logits.float(), out.end_logits.float()
            if start_positions is not None:
                n = start.shape[1]
                res["loss"] = (
                    F.cross_entropy(start, start_positions.clamp(0, n - 1))
                    + F.cross_entropy(end, end_positions.clamp(0, n - 1))
                ) / 2
            if not self.training:
                res["start_logits"], res["end_logits"] = start, end
            return res
        logits = out.logits.float()
        if labels is not None:
            if self.task_type == "regression":
                res["loss"] = F.mse_loss(logits.squeeze(-1), labels.float())
            else:
                res["loss"] = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
                )
        if not self.training:
            res["logits"] = logits
        return res


def build_task_model(path: str, task, names: list[str], model_cfg, lora_cfg) -> TaskModel:
    hf = load_hf(path, task, names, model_cfg)
    if lora_cfg.enabled:
        hf = add_lora(hf, task, lora_cfg)
        trainable = sum(p.numel() for p in hf.parameters() if p.requires_grad)
        total = sum(p.numel() for p in hf.parameters())
        log.info("LoRA: %d of %d parameters train (%.2f%%)", trainable, total, 100 * trainable / total)
    return TaskModel(hf, task.type)


def save_hf_model(
    ckpt_root: Path, tag: str, source_path: str, task, names: list[str], model_cfg, lora_cfg, tokenizer, out: Path
) -> Path:
    """The fp32 weights of a DeepSpeed checkpoint (any ZeRO stage) as a Hugging Face directory; LoRA merged."""
    from pipeline.engine import consolidated_state_dict
    from pipeline.export import library_output

    model = build_task_model(source_path, task, names, model_cfg, lora_cfg)
    with library_output():  # DeepSpeed's "Processing zero checkpoint ..." lines, in the log file only
        sd = consolidated_state_dict(ckpt_root, tag)
    if lora_cfg.enabled:
        # Only adapters and head trained; DeepSpeed keeps frozen weights in the compute dtype (bf16 would round
        # them), so the base weights stay the source's own fp32 ones, loaded above.
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        sd = {k: v for k, v in sd.items() if k in trainable}
        missing, unexpected = sorted(trainable - set(sd)), []
        model.load_state_dict(sd, strict=False)
    else:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"{ckpt_root / tag} does not match the task model: missing {missing}, unexpected {unexpected}"
        )
    hf = model.hf.merge_and_unload() if lora_cfg.enabled else model.hf
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with library_output():  # a "Writing model shards" bar would sit between finetune's bar and its summary
        hf.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
