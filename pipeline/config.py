"""Structured config shared by the stages: one dataclass per component, registered in Hydra's ConfigStore.

Each YAML in ``conf/<group>/`` extends its schema (``defaults: [<group>_schema]``), so an unknown or misspelt key, or
a value outside a choice (an Enum here), fails at composition with the allowed values listed, before any process
group or model is built. *What* is computed (model, data, optim) is kept apart from *how fast* (engine: ZeRO stage,
precision, micro-batch, loader workers); the DeepSpeed JSON is generated from ``engine`` + ``optim``
(pipeline/engine.py), never written by hand. The stages' own schemas live beside their loops
(pipeline/pretrain/config.py, pipeline/finetune/config.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


class ConfigError(ValueError):
    """A bad setting or combination of settings, reported before any process group or model is built."""


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"  # dynamic loss scaling


class OptimizerName(StrEnum):
    adamw = "adamw"
    lamb = "lamb"


class Schedule(StrEnum):
    linear = "linear"
    cosine = "cosine"
    wsd = "wsd"  # warmup, stable, decay
    constant = "constant"


class WandbMode(StrEnum):
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class EngineConfig:
    zero_stage: int = 0
    precision: Precision = Precision.fp32
    micro_batch_size: int | None = None  # per rank; null: the largest divisor of the per-rank batch <= max_micro
    max_micro_batch_size: int = 64
    loader_workers: int = 1
    prefetch_factor: int = 4
    activation_checkpointing: bool = False
    compile: bool = False
    # torch.compile's backend: inductor (default); aot_eager or eager trace with dynamo (same graphs and recompile
    # guards) without inductor's code generation, for debugging a compile problem.
    compile_backend: str = "inductor"
    # Losses, counts and the non-finite flags stay on the device through the accumulation window and are read once
    # per step; false: the previous step (a host sync per micro-batch), kept for benchmarks.
    lean_step: bool = True
    backend: str | None = None  # null: nccl with CUDA, gloo otherwise
    # fp32 matmuls on CUDA through TF32 tensor cores (fp32 precision; bf16 runs are unaffected but for their fp32
    # parts): 8x the fp32 rate on an H100 for a 10-bit mantissa in the products, as most trainers do.
    tf32: bool = True
    accelerator: str | None = None  # null: DeepSpeed picks (cuda on GPUs, cpu otherwise)
    fp16_initial_scale_power: int = 16
    fp16_loss_scale_window: int = 1000
    timeout_s: int = 600  # process-group timeout: ranks that cannot meet fail with a message, not a hang
    deepspeed_overrides: dict[str, Any] = field(default_factory=dict)  # merged last into the generated JSON


@dataclass
class OptimConfig:
    name: OptimizerName = OptimizerName.adamw
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    schedule: Schedule = Schedule.linear
    warmup_steps: int | None = None
    warmup_ratio: float = 0.01
    decay_ratio: float = 0.1  # wsd: fraction of the steps spent decaying at the end
    min_lr_ratio: float = 0.0


@dataclass
class WandbConfig:
    mode: WandbMode = WandbMode.disabled
    project: str = "bertrun"
    entity: str | None = None
    name: str | None = None
    group: str | None = None  # null: the sweep's name in a multirun
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    every_steps: int = 10
    progress: bool = True
    # Per device, for MFU; null: from the exact device name (pipeline/pretrain/mfu.py), else no MFU ("unknown peak").
    peak_tflops: float | None = None
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class CheckpointConfig:
    every_steps: int = 1000
    keep_last: int = 2
    at_end: bool = True


@dataclass
class NanConfig:
    check: bool = True  # skip a micro-batch whose loss is not finite on any rank
    max_consecutive: int = 5  # this many skipped steps in a row stop the run with an error
    inject_at_steps: list[int] = field(default_factory=list)  # testing aid: force a NaN loss at these steps


@dataclass
class PreemptConfig:
    # On any of these, all ranks finish the step, save a checkpoint and exit with code 75 (resumable).
    # USR2 is submitit's and our presets' warning signal; TERM is what Slurm sends on preemption and scancel.
    signals: list[str] = field(default_factory=lambda: ["USR2", "TERM"])


@dataclass
class StageConfig:
    """What every training stage's config holds; ``PretrainConfig`` and ``FinetuneConfig`` extend it."""

    engine: EngineConfig = MISSING
    optim: OptimConfig = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    nan: NanConfig = field(default_factory=NanConfig)
    preempt: PreemptConfig = field(default_factory=PreemptConfig)
    run_dir: str | None = None  # null: Hydra's output dir (checkpoints/<name>, or one per job in a sweep)
    stop_after_steps: int | None = None  # stop (with a checkpoint) at this step, as a preemption would
    # Continue the run in run_dir although the command changes what it is (seed, dropout, masking...; not what the
    # checkpoints hold, such as the model's shape): pipeline/rundir.py has the table.
    allow_config_change: bool = False


@dataclass
class ExportConfig:
    run_dir: str = MISSING
    step: int | None = None  # null: the latest complete checkpoint
    output: str | None = None  # null: <run_dir>/hf/step_<N>


@dataclass
class ReportConfig:
    run_dir: str = MISSING  # a pretraining or finetuning run_dir, or a sweep directory
    out: str | None = None  # null: <run_dir>/report


def _first(*values):
    return next((v for v in values if v not in (None, "", "None", "null")), None)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(group="engine", name="engine_schema", node=EngineConfig)
    cs.store(group="optim", name="optim_schema", node=OptimConfig)
    cs.store(name="export_schema", node=ExportConfig)
    cs.store(name="report_schema", node=ReportConfig)
    if not OmegaConf.has_resolver("first"):
        OmegaConf.register_new_resolver("first", _first)


register_configs()
