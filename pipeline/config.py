"""Structured config: one dataclass per component, registered in Hydra's ConfigStore.

Each YAML in ``conf/<group>/`` extends its schema (``defaults: [<group>_schema]``), so an unknown or misspelt key
fails at composition, before any process group or model is built. *What* is computed (model, data, optim) is kept
apart from *how fast* (engine: ZeRO stage, precision, micro-batch, loader workers); the DeepSpeed JSON is generated
from ``engine`` + ``optim`` (see pipeline/engine.py), never written by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


@dataclass
class ModelConfig:
    name: str = MISSING
    hidden_size: int = MISSING
    num_layers: int = MISSING
    num_heads: int = MISSING
    intermediate_size: int = MISSING
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    # null: the vocabulary of the data's tokenizer, rounded up to vocab_multiple_of (tensor-core friendly).
    vocab_size: int | None = None
    vocab_multiple_of: int = 8
    # A Hugging Face BERT directory to start from instead of random weights (continued pretraining).
    init_from: str | None = None


@dataclass
class DataConfig:
    path: str = MISSING  # a data_prep output directory (manifest.json + shards)
    # Streams per rank = max(1, engine.loader_workers); each stream reads its own contiguous slice of the epoch.
    shuffle_shards: bool = True
    shuffle_block: int = 2048  # samples shuffled together inside a stream (0: no shuffle)
    length_buckets: bool = True  # inside a shuffle block, batch sequences of similar length (less padding)
    mlm_probability: float = 0.15
    max_predictions_per_seq: int | None = None  # cap on masked tokens per sequence (BERT used 20 at seq 128)
    whole_word_masking: bool = False
    pad_to_multiple_of: int = 8
    # "size": each shard exists with the manifest's byte size (cheap); "sha256": full hash, split across ranks.
    verify: str = "size"
    on_bad_shard: str = "skip"  # "skip" (counted, named in a warning) or "error"
    # Refuse data whose manifest fingerprint or tokenizer differs from the checkpoint's, unless this is true.
    allow_data_change: bool = False


@dataclass
class EngineConfig:
    zero_stage: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16
    micro_batch_size: int | None = None  # per rank; null: the largest divisor of the per-rank batch <= max_micro
    max_micro_batch_size: int = 64
    loader_workers: int = 1
    prefetch_factor: int = 4
    activation_checkpointing: bool = False
    compile: bool = False
    backend: str | None = None  # null: nccl with CUDA, gloo otherwise
    accelerator: str | None = None  # null: DeepSpeed picks (cuda on GPUs, cpu otherwise)
    fp16_initial_scale_power: int = 16
    fp16_loss_scale_window: int = 1000
    seed_workers_by_rank: bool = True
    timeout_s: int = 600  # process-group timeout: ranks that cannot meet fail with a message, not a hang
    deepspeed_overrides: dict[str, Any] = field(default_factory=dict)  # merged last into the generated JSON


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | lamb
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    schedule: str = "linear"  # linear | cosine | wsd | constant
    warmup_steps: int | None = None
    warmup_ratio: float = 0.01
    decay_ratio: float = 0.1  # wsd: fraction of the steps spent decaying at the end
    min_lr_ratio: float = 0.0


@dataclass
class WandbConfig:
    mode: str = "disabled"  # online | offline | disabled
    project: str = "bertrun"
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    every_steps: int = 10
    progress: bool = True
    peak_tflops: float | None = None  # per device, for MFU; null: a guess from the device (H100/H200/A100) or none
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class CheckpointConfig:
    every_steps: int = 1000
    keep_last: int = 2
    at_end: bool = True


@dataclass
class EvalConfig:
    every_steps: int = 1000
    max_batches: int | None = None  # per rank; null: the whole validation split
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
class PretrainConfig:
    model: ModelConfig = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    engine: EngineConfig = MISSING
    optim: OptimConfig = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    nan: NanConfig = field(default_factory=NanConfig)
    preempt: PreemptConfig = field(default_factory=PreemptConfig)
    name: str = "pretrain"
    run_dir: str | None = None  # null: Hydra's output dir (checkpoints/<name>, or one per job in a sweep)
    global_batch_size: int = 256
    seq_len: int | None = None  # null: the data's seq_len (checked against it either way)
    max_steps: int = 1000
    seed: int = 1234
    stop_after_steps: int | None = None  # stop (with a checkpoint) at this step, as a preemption would


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="pretrain_schema", node=PretrainConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="engine", name="engine_schema", node=EngineConfig)
    cs.store(group="optim", name="optim_schema", node=OptimConfig)


def _first(*values):
    return next((v for v in values if v not in (None, "", "None", "null")), None)


if not OmegaConf.has_resolver("first"):
    OmegaConf.register_new_resolver("first", _first)

register_configs()


@dataclass
class ExportConfig:
    run_dir: str = MISSING
    step: int | None = None  # null: the latest complete checkpoint
    output: str | None = None  # null: <run_dir>/hf/step_<N>


ConfigStore.instance().store(name="export_schema", node=ExportConfig)


@dataclass
class ReportConfig:
    run_dir: str = MISSING  # a pretraining or finetuning run_dir, or a sweep directory
    out: str | None = None  # null: <run_dir>/report


ConfigStore.instance().store(name="report_schema", node=ReportConfig)
