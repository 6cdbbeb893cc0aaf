"""The data_prep config schema: one dataclass, registered in Hydra's ConfigStore as ``data_prep_schema``.

``conf/data_prep.yaml`` extends it, so an unknown or misspelt key fails before any work. ``prepare()`` also
takes the dataclass itself, a DictConfig or a plain dict; all are validated against this schema.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class TextFormat(enum.Enum):
    blank_line = "blank_line"  # documents separated by blank lines (the original BERT format)
    line = "line"  # one document per line


@dataclass
class TokenizerConfig:
    # An existing Hugging Face tokenizer directory to reuse (tokenizer.json, or vocab.txt for a WordPiece
    # BERT). null: train a WordPiece tokenizer on the first `train_sample_mb` of the training split.
    path: str | None = None
    vocab_size: int = 30522
    lowercase: bool = True
    # null: strip accents when lowercasing, as BERT uncased does (Cyrillic й -> и, Greek and Latin accents lost).
    # false keeps them: lowercase=true strip_accents=false for uncased text in most non-English scripts.
    strip_accents: bool | None = None
    train_sample_mb: float = 200.0
    # With num_parts > 1, part 0 trains and publishes the tokenizer; the other parts wait this long for it
    # (training is not bit-reproducible upstream, so parts must not each train their own).
    wait_s: float = 7200.0


@dataclass
class DataPrepConfig:
    input: Any = MISSING  # a path, a glob, a directory, hf:NAME[:CONFIG], or a list of these
    output: str = MISSING  # output directory (shards, manifest.json, tokenizer/)
    text_format: TextFormat = TextFormat.blank_line  # for .txt sources
    text_column: str = "text"  # for .jsonl, .parquet and hf: sources
    hf_split: str = "train"  # split streamed from hf: sources
    seq_len: int = 128  # maximum instance length, [CLS] A [SEP] B [SEP] included
    short_seq_prob: float = 0.1  # probability of a shorter target length (as in the original recipe)
    dupe_factor: int = 1  # instances made from each document this many times, with different random splits
    seed: int = 12345
    val_fraction: float = 0.01  # fraction of documents (by a hash of their id) in the validation split
    shard_mb: float = 16.0  # raw input text per shard (about 4x that on disk at seq_len 128)
    workers: int = 0  # processes; 0 = every core this process may use
    in_flight: int = 0  # chunks held in memory at once; 0 = 2 x workers
    part: int = 0  # this machine's part of the work: chunks k with k % num_parts == part
    num_parts: int = 1
    min_sentences: int = 2  # documents with fewer sentences are skipped (counted as too_few_sentences)
    max_line_bytes: int = 16 << 20  # longer lines are never read into memory; their document is skipped
    max_doc_bytes: int = 64 << 20  # longer documents are skipped
    overwrite: bool = False  # delete what a previous run with another config left in `output`
    progress: bool = True  # tqdm progress bar on stderr
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


# Keys that change how fast or where the work runs, never what it writes.
EXECUTION_KEYS = ("workers", "in_flight", "part", "num_parts", "overwrite", "progress")


def register() -> None:
    ConfigStore.instance().store(name="data_prep_schema", node=DataPrepConfig)


register()


class ConfigError(ValueError):
    """A config value that cannot work; raised before any data is read."""


def to_config(cfg: DataPrepConfig | DictConfig | dict) -> DataPrepConfig:
    """Validate anything config-like against the schema and return the dataclass."""
    if not isinstance(cfg, DataPrepConfig):
        merged = OmegaConf.merge(OmegaConf.structured(DataPrepConfig), _strip_hydra(cfg))
        cfg = OmegaConf.to_object(merged)
    for key in ("input", "output"):
        if getattr(cfg, key) in (MISSING, None, "", []):
            raise ConfigError(f"`{key}` is required: python -m data_prep input=CORPUS output=DIR")
    if isinstance(cfg.input, (list, tuple)) or OmegaConf.is_list(cfg.input):
        cfg.input = [str(x) for x in cfg.input]
    elif not isinstance(cfg.input, str):
        raise ConfigError(f"`input` must be a string or a list of strings, got {cfg.input!r}")
    _check(cfg)
    return cfg


def _strip_hydra(cfg):
    if isinstance(cfg, DictConfig) and "hydra" in cfg:
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return cfg


def _check(cfg: DataPrepConfig) -> None:
    rules = [
        (cfg.seq_len >= 8, f"seq_len must be >= 8 (got {cfg.seq_len})"),
        (0.0 <= cfg.short_seq_prob <= 1.0, f"short_seq_prob must be in [0, 1] (got {cfg.short_seq_prob})"),
        (cfg.dupe_factor >= 1, f"dupe_factor must be >= 1 (got {cfg.dupe_factor})"),
        (0.0 <= cfg.val_fraction < 1.0, f"val_fraction must be in [0, 1) (got {cfg.val_fraction})"),
        (cfg.shard_mb > 0, f"shard_mb must be > 0 (got {cfg.shard_mb})"),
        (cfg.workers >= 0 and cfg.in_flight >= 0, "workers and in_flight must be >= 0"),
        (
            cfg.num_parts >= 1 and 0 <= cfg.part < cfg.num_parts,
            f"need 0 <= part < num_parts (got {cfg.part}/{cfg.num_parts})",
        ),
        (cfg.min_sentences >= 1, f"min_sentences must be >= 1 (got {cfg.min_sentences})"),
        (cfg.max_line_bytes >= 1024 and cfg.max_doc_bytes >= 1024, "max_line_bytes and max_doc_bytes must be >= 1024"),
        (cfg.tokenizer.vocab_size >= 100, f"tokenizer.vocab_size must be >= 100 (got {cfg.tokenizer.vocab_size})"),
        (cfg.tokenizer.train_sample_mb > 0, "tokenizer.train_sample_mb must be > 0"),
        (
            not (cfg.overwrite and cfg.num_parts > 1),
            "overwrite=true with num_parts > 1 would let parts delete each "
            "other's shards: empty the output directory yourself, then start the parts",
        ),
    ]
    for ok, message in rules:
        if not ok:
            raise ConfigError(message)


def config_dict(cfg: DataPrepConfig) -> dict:
    """The resolved config as plain JSON-able data (enums as strings)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)


def output_config(cfg: DataPrepConfig) -> dict:
    """The keys that decide the bytes of the output: a rerun into the same directory must match them."""
    d = config_dict(cfg)
    for key in EXECUTION_KEYS:
        d.pop(key)
    d.pop("output")  # moving the directory is fine
    d["tokenizer"].pop("wait_s")
    if d["tokenizer"].get("strip_accents") is None:
        d["tokenizer"].pop("strip_accents", None)  # the default: directories prepared before the key still match
    return d


def config_hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def resolve_workers(cfg: DataPrepConfig) -> int:
    return cfg.workers or len(os.sched_getaffinity(0))
