"""Schedules, LAMB, the generated DeepSpeed config, the batch arithmetic and the build tools DeepSpeed compiles with."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
import torch
from omegaconf import OmegaConf

from pipeline.config import ConfigError, EngineConfig, OptimConfig
from pipeline.engine import deepspeed_config, plan_batch, prepare_cpu_ops
from pipeline.optim import Lamb, build_optimizer, build_scheduler, param_groups


def lrs(cfg: OptimConfig, total: int) -> list[float]:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    sched = build_scheduler(opt, OmegaConf.structured(cfg), total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_linear_cosine_and_warmup_stable_decay():
    lin = lrs(OptimConfig(lr=1.0, warmup_steps=10, schedule="linear"), 100)
    assert lin[0] == 0 and lin[5] == pytest.approx(0.5) and lin[10] == pytest.approx(1.0)
    assert lin[55] == pytest.approx(0.5) and lin[99] == pytest.approx(1 / 90)
    cos = lrs(OptimConfig(lr=1.0, warmup_steps=10, schedule="cosine"), 100)
    assert cos[10] == pytest.approx(1.0) and cos[55] == pytest.approx(0.5, abs=1e-6) and cos[99] < 0.01
    wsd = lrs(OptimConfig(lr=1.0, warmup_steps=10, schedule="wsd", decay_ratio=0.2), 100)
    assert all(x == pytest.approx(1.0) for x in wsd[10:80]) and wsd[90] == pytest.approx(0.5) and wsd[99] < 0.06
    assert lrs(OptimConfig(lr=1.0, warmup_ratio=0.1, schedule="constant"), 50)[5:] == [1.0] * 45
    # A one-step run (a smoke test): the default warmup_ratio rounds up to the whole run; the schedule still steps.
    for schedule in ("linear", "cosine", "wsd", "constant"):
        assert lrs(OptimConfig(lr=1.0, schedule=schedule), 1) == [1.0]
    assert lrs(OptimConfig(lr=1.0, warmup_steps=4), 4) == [0.0, 1 / 3, 2 / 3, 1.0]
    with pytest.raises(ValueError, match=r"Invalid value 'exp', expected one of \[linear, cosine, wsd, constant\]"):
        lrs(OptimConfig(schedule="exp"), 10)


def test_lamb_minimises_and_exempts_biases_and_layernorm():
    torch.manual_seed(0)
    x, w_true = torch.randn(256, 8), torch.randn(8, 1)
    y = x @ w_true
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 1))
    groups = param_groups(model, 0.01)
    assert [len(g["params"]) for g in groups] == [2, 4]  # weights decay; biases and the LayerNorm do not
    opt = Lamb(groups, lr=0.02)
    first = None
    for _ in range(300):
        loss = torch.nn.functional.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first
    # A weight's step is its trust ratio times lr: never more than lr * 10 * ||w|| in norm.
    assert build_optimizer(model, OmegaConf.structured(OptimConfig(name="lamb")), torch.device("cpu")).__class__ is Lamb


def test_global_batch_is_set_once_and_micro_batch_follows_the_world_size():
    eng = OmegaConf.structured(EngineConfig(max_micro_batch_size=64))
    mb = lambda g, w: (plan_batch(g, w, eng).micro_batch, plan_batch(g, w, eng).accumulation)  # noqa: E731
    assert mb(256, 1) == (64, 4) and mb(256, 8) == (32, 1) and mb(96, 2) == (48, 1)
    with pytest.raises(ConfigError, match="not divisible by the world size 3"):
        plan_batch(256, 3, eng)
    cfg = deepspeed_config(
        OmegaConf.structured(
            EngineConfig(
                zero_stage=3, precision="bf16", deepspeed_overrides={"zero_optimization": {"overlap_comm": False}}
            )
        ),
        OmegaConf.structured(OptimConfig(grad_clip=0.5)),
        plan_batch(256, 8, eng),
    )
    assert cfg["train_batch_size"] == 256 and cfg["train_micro_batch_size_per_gpu"] == 32
    assert cfg["gradient_accumulation_steps"] == 1 and cfg["gradient_clipping"] == 0.5
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert cfg["zero_optimization"] == {  # the override wins over the generated overlap_comm (8 ranks)
        "stage": 3,
        "stage3_gather_16bit_weights_on_model_save": False,
        "overlap_comm": False,
        "reduce_bucket_size": 20_000_000,
    }


def test_cpu_runs_skip_the_unused_shm_op_and_build_others_with_the_environments_ninja(monkeypatch):
    """Launched as .venv/bin/python without activation, PATH finds the system's ninja first; an activated launch
    (sbatch) finds the environment's. Each treats the other's build of a DeepSpeed CPU op as stale."""
    import deepspeed.ops

    env_ninja = os.path.join(os.path.dirname(sys.executable), "ninja")
    if not os.path.exists(env_ninja):
        pytest.skip("no ninja in this environment")
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/local/bin", "/usr/bin", "/bin"]))
    prepare_cpu_ops()
    assert shutil.which("ninja") == env_ninja
    assert os.environ["PATH"].split(os.pathsep)[1:] == ["/usr/local/bin", "/usr/bin", "/bin"]
    assert deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] is False
    prepare_cpu_ops()  # idempotent: activated already
    assert os.environ["PATH"].split(os.pathsep).count(os.path.dirname(sys.executable)) == 1
