"""Every ZeRO stage in fp32 and bf16 with the generated DeepSpeed config, a few steps of a tiny BERT, in one process
per rank (tests/test_multigpu.py runs it on 1 and 2 gloo ranks): real DeepSpeed, one engine after the other.

    python -m tests.zero_matrix OUT.json            # or under torchrun --nproc_per_node 2

Per (stage, precision): the losses of 3 steps (2 micro-batches each), the optimizer DeepSpeed chose and the settings
it read, and (bf16, 2 ranks) the third step's loss again after a save at step 2 and a load into a new engine.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from pipeline.config import EngineConfig, OptimConfig
from pipeline.dist import barrier, detect, gather_lists, shutdown
from pipeline.engine import Engine, deepspeed_config, init_process_group, plan_batch
from pipeline.optim import build_optimizer, build_scheduler
from pipeline.pretrain.config import ModelConfig
from pipeline.pretrain.masking import Masker
from pipeline.pretrain.model import build_model

VOCAB, MICRO, ACC, STEPS = 64, 4, 2, 3
SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}


def batches(rank: int) -> list[list[dict]]:
    """Each step's micro-batches for this rank: masked sentence pairs, the same for every configuration."""
    from types import SimpleNamespace

    masker = Masker(SimpleNamespace(special_ids=SPECIAL, vocab_size=VOCAB), 0.3, None, 8, False)
    out = []
    for step in range(STEPS):
        micro = []
        for k in range(ACC):
            rng = np.random.default_rng([rank, step, k])
            samples = []
            for _ in range(MICRO):
                a, b = int(rng.integers(3, 12)), int(rng.integers(3, 12))
                body = rng.integers(5, VOCAB, a + b)
                samples.append((np.concatenate([[2], body[:a], [3], body[a:], [3]]).astype(np.int64), a, k % 2))
            micro.append(masker(samples, rng))
        out.append(micro)
    return out


def engine(stage: int, precision: str, world: int, device) -> Engine:
    model_cfg = ModelConfig(
        name="t", hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, hidden_dropout=0.0,
        attention_dropout=0.0, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(OmegaConf.structured(model_cfg), VOCAB)
    eng = OmegaConf.structured(EngineConfig(zero_stage=stage, precision=precision, accelerator="cpu", backend="gloo"))
    optim = OmegaConf.structured(OptimConfig(lr=3e-3, warmup_ratio=0.0, schedule="constant"))
    plan = plan_batch(MICRO * ACC * world, world, OmegaConf.structured(EngineConfig(micro_batch_size=MICRO)))
    opt = build_optimizer(model, optim, device)
    return Engine(model, opt, build_scheduler(opt, optim, STEPS), eng, deepspeed_config(eng, optim, plan), device)


def settings(e: Engine) -> dict:
    """What DeepSpeed made of the generated config (read from its objects, not from our dict)."""
    opt = e.ds.optimizer
    return {
        "optimizer": type(opt).__name__,
        "grad_accum_dtype": str(e.ds.get_data_types()[1]).removeprefix("torch."),
        "check_grad_overflow": getattr(opt, "check_grad_overflow", None),
        "overlap_comm": getattr(opt, "overlap_comm", None),
        "reduce_bucket_size": getattr(opt, "reduce_bucket_size", None),
        "throughput_timer": e.ds.tput_timer.config.enabled,
    }


def matrix(env, device) -> dict:
    """Each configuration's record (rank 0's view), in a started process group."""
    data = batches(env.rank)
    results = {}
    # fp32 ZeRO-0 is the reference: fp32 ZeRO-2 and -3 (gradients accumulated into partitioned buffers) equal it,
    # the bf16 stages track it. ZeRO-1 fp32 without accumulation: test_elastic.py, with the pretraining entry point.
    for stage, precision in ((0, "fp32"), (2, "fp32"), (3, "fp32"), (0, "bf16"), (1, "bf16"), (2, "bf16"), (3, "bf16")):
        e = engine(stage, precision, env.world_size, device)
        losses = [e.train_step(data[s])[0]["loss"] / ACC for s in range(STEPS - 1)]
        resume = precision == "bf16" and env.world_size > 1  # the optimizers whose state is partitioned per rank
        if resume:  # a save before the last step, loaded into a new engine: its last step gives the same loss
            ckpt = Path(gather_lists([tempfile.mkdtemp()] if env.rank == 0 else [])[0])
            e.save(ckpt, "last", {})
            barrier()
        losses.append(e.train_step(data[-1])[0]["loss"] / ACC)
        rec = {"losses": losses, **settings(e)}
        if resume:
            e = engine(stage, precision, env.world_size, device)
            e.load(ckpt, "last")
            rec["resumed_loss"] = e.train_step(data[-1])[0]["loss"] / ACC
        results[f"{stage}-{precision}"] = rec
    return results


def main(out: Path) -> None:
    env = detect()
    device = init_process_group(env, OmegaConf.structured(EngineConfig(accelerator="cpu", backend="gloo")))
    results = matrix(env, device)
    if env.rank == 0:
        out.write_text(json.dumps(results, indent=1))
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
