"""Structured config of the pretraining stage (``conf/pretrain.yaml`` extends ``pretrain_schema``; every
``conf/model/<name>.yaml`` extends ``model_schema``). The engine, optim, logger, checkpoint, NaN and preemption
groups are shared with finetuning (pipeline/config.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from pipeline.config import StageConfig


class ShardCheck(StrEnum):
    none = "none"
    size = "size"  # each shard exists with the manifest's byte size (cheap)
    sha256 = "sha256"  # full hash, split across ranks


class OnBadShard(StrEnum):
    skip = "skip"  # counted and named in a warning
    error = "error"


class Attention(StrEnum):
    sdpa = "sdpa"  # torch SDPA; packed batches get a block-diagonal mask
    # Packed batches through torch's varlen (flash) kernel on CUDA, no attention dropout; SDPA for the rest.
    varlen = "varlen"


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
    attention: Attention = Attention.sdpa  # varlen needs attention_dropout=0 (the fast-path recipe, README)


@dataclass
class DataConfig:
    # A data_prep output directory (manifest.json + shards), or a list of them blended by `weights`
    # (pipeline/pretrain/blend.py): one tokenizer and seq_len for all.
    path: Any = MISSING
    # Shares of the training samples per path (normalised); null: each source's size (as if prepared together).
    weights: list[float] | None = None
    names: list[str] | None = None  # labels for metrics and messages; null: the shortest distinct ends of the paths
    # Streams per rank = max(1, engine.loader_workers); each stream reads its own contiguous slice of the epoch.
    shuffle_shards: bool = True
    shuffle_block: int = 2048  # samples shuffled together inside a stream (0: no shuffle)
    length_buckets: bool = True  # inside a shuffle block, batch sequences of similar length (less padding)
    mlm_probability: float = 0.15
    max_predictions_per_seq: int | None = None  # cap on masked tokens per sequence (BERT used 20 at seq 128)
    whole_word_masking: bool = False
    pad_to_multiple_of: int = 8
    # Several sentence pairs per row up to seq_len (block-diagonal attention, NSP at each pair's [CLS]); the same
    # samples per micro-batch and per epoch as unpacked (pipeline/pretrain/packing.py).
    packing: bool = False
    # Rows seq_len wide and a fixed number of masked-position slots, so torch.compile compiles once; packed batches
    # also get a fixed number of rows (packed_rows) and of varlen segments.
    fixed_shapes: bool = False
    # Rows of a packed micro-batch with fixed_shapes (empty rows are padding: no loss, token or count). null: the
    # micro-batch size, which always holds it (one graph, but no fewer rows than unpacked). Fewer rows save compute;
    # a micro-batch that needs more gets micro-batch rows: one more graph (compiled_graphs) and a warning.
    packed_rows: int | None = None
    verify: ShardCheck = ShardCheck.size  # shard checks before training
    on_bad_shard: OnBadShard = OnBadShard.skip
    # Refuse data whose manifest fingerprint or tokenizer differs from the checkpoint's, or another mix of sources
    # (weights, a source added or removed), unless this is true: then each source continues from where it was.
    allow_data_change: bool = False


@dataclass
class EvalConfig:
    every_steps: int = 1000
    max_batches: int | None = None  # per rank; null: the whole validation split
    at_end: bool = True


@dataclass
class PretrainConfig(StageConfig):
    model: ModelConfig = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    name: str = "pretrain"
    global_batch_size: int = 256
    seq_len: int | None = None  # null: the data's seq_len (checked against it either way)
    max_steps: int = 1000
    seed: int = 1234
    # A phase (pipeline/pretrain/phase.py): start from another pretraining run_dir's latest complete checkpoint (or
    # the one at init_from_run_step), its weights and with init_optimizer its optimizer state; this run keeps its own
    # data, schedule, max_steps and run_dir.
    init_from_run: str | None = None
    init_from_run_step: int | None = None
    init_optimizer: bool = False


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="pretrain_schema", node=PretrainConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)


register_configs()
