"""Structured config of the finetune stage, registered in Hydra's ConfigStore on import.

``conf/finetune.yaml`` extends ``finetune_schema``; every ``conf/task/<name>.yaml`` extends ``task_schema``. The
engine, optim, logger, checkpoint, NaN and preemption groups are the pretraining ones (pipeline/config.py), so the
same ZeRO stages, precisions and launchers apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from pipeline.config import StageConfig


class TaskType(StrEnum):
    classification = "classification"
    regression = "regression"
    token_classification = "token_classification"
    question_answering = "question_answering"


@dataclass
class TaskConfig:
    name: str = MISSING
    type: TaskType = MISSING
    # Hugging Face hub dataset (needs the hub); ignored when data_files.train is set.
    hub_dataset: str | None = None
    hub_config: str | None = None
    # Local files per split; they replace the hub dataset when train is set. A task with extra validation splits
    # lists them here too (MNLI: validation_mismatched), so that every key can be set from the command line.
    data_files: dict[str, str | None] = field(default_factory=lambda: {"train": None, "validation": None, "test": None})
    # csv | tsv | jsonl | json | parquet | conll | squad; null: from each file's suffix.
    format: str | None = None
    # Split names in the hub dataset (MNLI: validation_matched).
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str | None = "test"
    # Further labelled splits evaluated with the best model, metrics added to "validation" with this suffix
    # (MNLI: {validation_mismatched: _mm} gives accuracy_mm).
    extra_validation: dict[str, str] = field(default_factory=dict)
    text_columns: list[str] = field(default_factory=lambda: ["sentence"])  # one column, or two for pairs
    label_column: str = "label"
    # Class names in order (index = model output). null: read from the hub's ClassLabel, else the sorted
    # labels of the training split. Integer labels in the files index this list.
    labels: list[str] | None = None
    tokens_column: str = "tokens"  # token classification (JSONL / hub)
    tags_column: str = "tags"
    main_metric: str = MISSING  # selects the best checkpoint, drives early stopping and the sweep table
    # Metrics whose mean is the task's GLUE-style score (null: the main metric alone).
    score_metrics: list[str] | None = None
    max_seq_len: int = 128
    # Question answering: sliding windows over long contexts.
    doc_stride: int = 128
    max_query_len: int = 64
    n_best: int = 20
    max_answer_length: int = 30


@dataclass
class SourceConfig:
    # A pretraining run_dir (exported on the fly), a Hugging Face directory, or a hub model id.
    path: str = MISSING
    step: int | None = None  # run_dir only: this checkpoint step (null: the latest complete one)
    # true: the source's architecture and tokenizer with random weights (what pretraining is compared against)
    random_init: bool = False
    hidden_dropout: float | None = None  # null: the source's config
    attention_dropout: float | None = None


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])


@dataclass
class FinetuneEvalConfig:
    every_steps: int | None = None  # null: once per epoch
    patience: int | None = None  # stop after this many evaluations without improvement (null: never)
    min_delta: float = 0.0  # an improvement must beat the best by more than this
    batch_size: int = 64  # per rank


@dataclass
class FinetuneConfig(StageConfig):
    model: SourceConfig = field(default_factory=SourceConfig)
    task: TaskConfig = MISSING
    lora: LoraConfig = field(default_factory=LoraConfig)
    eval: FinetuneEvalConfig = field(default_factory=FinetuneEvalConfig)
    name: str = "finetune"
    global_batch_size: int = 32
    epochs: float = 3.0
    max_steps: int | None = None  # overrides epochs
    seed: int = 42
    max_train_samples: int | None = None  # quick runs: the first N training examples (classes: the whole split)
    max_eval_samples: int | None = None
    # Remove the DeepSpeed checkpoints (resume and best) once results.json and best_model/ are written.
    cleanup: bool = True


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="finetune_schema", node=FinetuneConfig)
    cs.store(group="task", name="task_schema", node=TaskConfig)


register_configs()
