"""Phases: a pretraining run that starts from another run's checkpoint (``init_from_run=RUN_DIR``), as NVIDIA's BERT
recipe trains 90% of its steps at seq 128 and then 10% at seq 512.

The new run takes that run's weights (fp32, consolidated by DeepSpeed from any ZeRO stage and world size) and, with
``init_optimizer=true``, its optimizer state (moments and step count); it has its own data, schedule, ``max_steps``,
run_dir and checkpoints, and never that run's scheduler, step counter or data position. It writes its own step-0
checkpoint at once, so a restart (a crash, a requeue) resumes phase 2 exactly from its own checkpoints and never
goes back to phase 1; ``init_from_run`` is ignored from then on. Where it started (run, step, tokens) is kept in its
trainer state, ``summary.json``, its first metrics record and its W&B run (in phase 1's group), and
``pipeline.report`` draws both phases on one token axis.

The optimizer state crosses ZeRO stages and world sizes through DeepSpeed's universal checkpoint (phase 1's
checkpoint converted once into ``run_dir/init/universal``, phase 1's run_dir left untouched). A phase 2 at ZeRO-0
in fp32 (a plain torch optimizer) takes the moments parameter by parameter instead, so it also starts from a
ZeRO-0 fp32 phase 1; a partitioned phase 2 cannot (DeepSpeed converts only partitioned checkpoints), nor can fp16
at ZeRO-0 on either side: both are refused in one line.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.checkpoint import CheckpointManager
from pipeline.config import ConfigError
from pipeline.dist import on_rank0
from pipeline.engine import consolidated_state_dict, convert_to_universal, partitioned
from pipeline.pretrain.shards import run_data

log = logging.getLogger(__name__)

# What makes two runs the same model: a phase must not change any of it (dropout and the rest may change).
ARCHITECTURE = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings",
                "type_vocab_size", "vocab_size", "vocab_multiple_of", "init_from")  # fmt: skip
TIED = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}  # aliases a consolidation may leave out


@dataclass(frozen=True)
class Start:
    """The checkpoint of another run that a run starts from."""

    run_dir: Path
    root: Path  # its checkpoints/
    tag: str
    step: int
    tokens: int
    samples: int
    optimizer: bool  # its optimizer state too (init_optimizer)
    group: str  # its W&B group (or its name): this run joins it

    def record(self) -> dict:
        return {"run": str(self.run_dir.resolve()), "checkpoint": self.tag, "step": self.step, "tokens": self.tokens,
                "samples": self.samples, "optimizer": self.optimizer, "group": self.group}  # fmt: skip


def validate(cfg) -> None:
    if cfg.init_from_run is None and (cfg.init_from_run_step is not None or cfg.init_optimizer):
        raise ConfigError("init_from_run_step and init_optimizer need init_from_run=RUN_DIR (the run to start from)")


def _kind(engine) -> str:
    """How an optimizer of this engine config takes another run's state: 'plain' (ZeRO-0 fp32, a torch optimizer),
    'universal' (DeepSpeed's partitioned optimizers) or 'none' (fp16 at ZeRO-0, which DeepSpeed cannot convert)."""
    if engine.zero_stage == 0 and engine.precision == "fp32":
        return "plain"
    return "none" if engine.zero_stage == 0 and engine.precision == "fp16" else "universal"


def find_start(cfg, run_dir: Path, seq_len: int, tokenizer_sha256: str) -> Start | None:
    """The checkpoint ``init_from_run`` names, checked against this run (same model, enough positions, same
    tokenizer, an optimizer state this engine can take); None without ``init_from_run``."""
    if not cfg.init_from_run:
        return None
    src = Path(cfg.init_from_run)
    key = f"init_from_run={src}"
    mgr = CheckpointManager(src, 1, 0, lambda: None)
    if not mgr.root.is_dir():
        raise ConfigError(f"{key}: not a pretraining run_dir (no checkpoints/ inside)")
    if src.resolve() == Path(run_dir).resolve():
        raise ConfigError(f"{key} is this run's own run_dir: a phase has a run_dir of its own (run_dir=...)")
    step = cfg.init_from_run_step
    tag = mgr.latest() if step is None else mgr.tag(step)
    if tag is None or not (mgr.root / tag / "COMPLETE").is_file():
        raise ConfigError(
            f"{key}: no complete checkpoint{'' if step is None else f' at step {step}'} in {mgr.root} "
            f"(complete: {', '.join(mgr.complete_tags()) or 'none'}); init_from_run_step=N picks one"
        )
    old = OmegaConf.load(mgr.root / tag / "config.yaml")
    if old.model.max_position_embeddings < seq_len:
        raise ConfigError(
            f"{key}: its position embeddings cover {old.model.max_position_embeddings} positions, fewer than this "
            f"run's seq_len {seq_len}: train the first phase with model.max_position_embeddings>={seq_len} (BERT's "
            f"phase 1 at seq 128 keeps 512 positions)"
        )
    diff = [f"model.{k}={cfg.model.get(k)} (it has {old.model.get(k)})" for k in ARCHITECTURE
            if cfg.model.get(k) != old.model.get(k)]  # fmt: skip
    if diff:
        raise ConfigError(f"{key}: another model ({', '.join(diff)}); a phase continues the same model")
    data = run_data(src) or {}
    if data.get("tokenizer_sha256") and tokenizer_sha256 and data["tokenizer_sha256"] != tokenizer_sha256:
        raise ConfigError(
            f"{key}: its tokenizer differs from this run's data (sha256 {data['tokenizer_sha256'][:12]} vs "
            f"{tokenizer_sha256[:12]}); prepare this data with data_prep tokenizer.path={src}/tokenizer"
        )
    if cfg.init_optimizer:
        here, there = _kind(cfg.engine), "universal" if partitioned(mgr.root / tag) else _kind(old.engine)
        if "none" in (here, there) or (here, there) == ("universal", "plain"):
            raise ConfigError(
                f"{key} init_optimizer=true: its optimizer (ZeRO-{old.engine.zero_stage}, {old.engine.precision}) "
                f"cannot be loaded at ZeRO-{cfg.engine.zero_stage} in {cfg.engine.precision}: DeepSpeed's universal "
                f"checkpoint converts partitioned optimizers (ZeRO 1-3 or bf16) only, and fp16 at ZeRO-0 not at all. "
                f"Run this phase at engine.zero_stage=0 engine.precision=fp32, or set init_optimizer=false"
            )
    state = json.loads((mgr.root / tag / "trainer_state.json").read_text())
    group = old.logger.wandb.group or src.resolve().name
    return Start(src, mgr.root, tag, int(state["step"]), int(state.get("tokens", 0)), int(state.get("samples", 0)),
                 bool(cfg.init_optimizer), str(group))  # fmt: skip


def load_weights(model, start: Start) -> None:
    """The other run's fp32 weights into ``model`` (before the engine is built)."""
    missing, unexpected = model.load_state_dict(consolidated_state_dict(start.root, start.tag), strict=False)
    missing = [k for k in missing if k not in TIED]
    if missing or unexpected:
        raise ConfigError(
            f"init_from_run={start.run_dir}: {start.tag} does not fit this model (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    log.info("starting from %s (step %d, %d tokens)", start.root / start.tag, start.step, start.tokens)


def universal_copy(start: Start, run_dir: Path, rank: int) -> Path | None:
    """The other run's checkpoint in universal form in ``run_dir/init/universal`` (rank 0 converts it once; every
    rank learns the outcome), when its optimizer state is needed and was written partitioned."""
    if not start.optimizer or not partitioned(start.root / start.tag):
        return None
    out = Path(run_dir) / "init" / "universal"
    on_rank0(rank, lambda: convert_to_universal(start.root, start.tag, out=out), (RuntimeError,))
    return out


def needs_universal_load(start: Start | None, engine) -> bool:
    """Whether this run's engine loads the start's optimizer by DeepSpeed's universal route."""
    return start is not None and start.optimizer and _kind(engine) == "universal"
