"""Structured config of ``python -m pipeline.deploy`` and ``python -m pipeline.serve``, registered on import.

``conf/deploy.yaml`` extends ``deploy_schema`` and ``conf/serve.yaml`` extends ``serve_schema``: a misspelt key or a
value outside a choice fails at composition, before any model is loaded. The task group is finetune's
(``conf/task/``): a finetune run_dir brings its own task, a bare Hugging Face folder needs ``task=NAME``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from pipeline.finetune.config import TaskConfig


class Quantize(StrEnum):
    int8 = "int8"  # onnxruntime dynamic quantization: int8 weights, activations quantized per batch at run time
    none = "none"


@dataclass
class DeploySource:
    # A finetune run_dir (results.json + best_model/), its best_model/ folder, or any Hugging Face folder (task=).
    path: str = MISSING


@dataclass
class PruneConfig:
    heads: float = 0.0  # fraction of all attention heads to remove (0: no pruning); each layer keeps one at least
    samples: int = 256  # training examples whose loss gradients rank the heads (Michel et al. 2019)
    recover_steps: int = 0  # finetuning steps after pruning (0: none)
    recover_lr: float = 5e-5
    batch_size: int = 32  # for scoring and recovery
    seed: int = 0


@dataclass
class OnnxConfig:
    opset: int = 17
    # onnxruntime's transformer optimizer (Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu
    # fusions) before quantization; a fused graph that fails the logits check falls back to the plain export. Off by
    # default: on our 2-core AMD EPYC it made fp32 and int8 no faster (bench/deploy.py), the session's own graph
    # optimizations already do what matters there; CPUs with AVX-512 VNNI may differ.
    optimize: bool = False
    atol: float = 1e-4  # ONNX fp32 logits must equal PyTorch's within this (max absolute difference)
    parity_examples: int = 64  # validation examples the check runs on (batches of 32 with padding, and batch 1)


@dataclass
class MeasureConfig:
    warmup: int = 5  # calls per variant before timing
    latency_runs: int = 200  # batch-1 calls per variant (validation examples in order, cycled)
    throughput_batches: int = 8  # batches per variant
    batch_size: int = 32
    rounds: int = 4  # variants take turns this many times, so that a noisy neighbour slows them all alike


@dataclass
class DeployConfig:
    model: DeploySource = field(default_factory=DeploySource)
    task: TaskConfig | None = None  # null: the finetune run's own task
    output: str = MISSING  # a new (or empty) folder
    quantize: Quantize = Quantize.int8
    per_channel: bool = False  # int8 scales per output channel instead of per tensor
    prune: PruneConfig = field(default_factory=PruneConfig)
    onnx: OnnxConfig = field(default_factory=OnnxConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    threads: int | None = None  # null: every core this process may use (torch and onnxruntime alike)
    max_eval_samples: int | None = None  # null: the whole validation split


@dataclass
class ServeSource:
    path: str = MISSING  # a pipeline.deploy output folder (deploy.json)


@dataclass
class ServeConfig:
    model: ServeSource = field(default_factory=ServeSource)
    variant: str | None = None  # null: deploy.json's "serve" (int8 when built, the pruned one when pruned)
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (the start-up line names it)
    max_batch: int = 32  # texts per model call
    max_wait_ms: float = 5.0  # how long the first text of a batch waits for others
    max_texts: int = 64  # per request
    max_bytes: int = 1_000_000  # per request body
    threads: int | None = None  # onnxruntime intra-op threads; null: every core this process may use
    # Name of an environment variable holding a bearer token; null: no token. Never the token itself.
    auth_token_env: str | None = None
    shutdown_timeout_s: float = 30.0  # after SIGTERM, how long requests in flight may take
    access_log: bool = False


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="deploy_schema", node=DeployConfig)
    cs.store(name="serve_schema", node=ServeConfig)
    cs.store(group="task", name="task_schema", node=TaskConfig)


register_configs()
