"""What every stage does around its loop: start a run (engine, checkpoints, resume, metrics, signals, progress), and
``run_stage``, the one tail shared by the entry points and the submitit job (leave the process group, hand a stop
signal over to whoever started us).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from pipeline.checkpoint import CheckpointManager, TrainState
from pipeline.cli import closing_summary, rank
from pipeline.dist import DistEnv, barrier, detect, shutdown
from pipeline.engine import BatchPlan, Engine, deepspeed_config, write_json
from pipeline.metrics import Metrics, build_metrics
from pipeline.optim import build_optimizer, build_scheduler
from pipeline.preempt import SignalFlag, hand_over
from pipeline.preflight import STAGE_NAMES, compose  # noqa: F401 - compose: launch.job's entry to the config

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    step: int
    stopped_by_signal: int = 0
    final: dict | None = None


@dataclass
class Run:
    """A started run: the engine, the checkpoint manager, the state (restored on resume), the metrics sinks, the
    stop-signal flag and the progress bar. ``close()`` gives the signals back and closes the bar."""

    env: DistEnv
    run_dir: Path
    plan: BatchPlan
    engine: Engine
    ckpt: CheckpointManager
    state: TrainState
    resumed_from: str | None
    metrics: Metrics
    flag: SignalFlag
    bar: tqdm
    config_yaml: str

    def close(self) -> None:
        self.bar.close()
        self.flag.restore()


def start_run(
    cfg,
    env: DistEnv,
    run_dir: Path,
    plan: BatchPlan,
    device: torch.device,
    model: torch.nn.Module,
    total_steps: int,
    state: TrainState,
    *,
    group: str | None,
    desc: str,
    check_resume: Callable[[dict], None] | None = None,
) -> Run:
    """Optimizer, schedule and engine for ``model``; the resolved config and DeepSpeed JSON in ``run_dir``; the
    latest complete checkpoint loaded into the engine and ``state`` (after ``check_resume`` saw its trainer state)."""
    ds_config = deepspeed_config(cfg.engine, cfg.optim, plan)
    optimizer = build_optimizer(model, cfg.optim, device)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    engine = Engine(model, optimizer, scheduler, cfg.engine, ds_config, device, cfg.nan.check)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    if env.rank == 0:
        write_json(run_dir / "deepspeed_config.json", ds_config)
        (run_dir / "config.yaml").write_text(config_yaml)
    ckpt = CheckpointManager(run_dir, cfg.checkpoint.keep_last, env.rank, barrier)
    tag = ckpt.latest()
    if tag:
        if check_resume is not None:
            check_resume(ckpt.trainer_state(tag))
        ckpt.load(engine, tag, state)
        log.info("resumed from %s (step %d)", ckpt.root / tag, state.step)
    config = OmegaConf.to_container(cfg, resolve=True)
    metrics = build_metrics(env.rank, run_dir, cfg.logger, config, state.step if tag else None, group)
    flag = SignalFlag(list(cfg.preempt.signals))
    quiet = env.rank != 0 or not cfg.logger.progress
    bar = tqdm(total=total_steps, initial=state.step, disable=quiet, desc=desc, dynamic_ncols=True)
    return Run(env, run_dir, plan, engine, ckpt, state, tag, metrics, flag, bar, config_yaml)


def run_stage(
    stage: Callable[..., RunResult], cfg, run_dir: Path, group: str | None = None, leave_group: bool = True
) -> RunResult:
    """Run ``stage(cfg, env, run_dir, group)`` in this process's distributed environment, leave the process group
    (unless later in-process sweep jobs share it), and hand a stop signal over: submitit's handler requeues on USR2;
    with no handler before ours the process exits 75 (resumable)."""
    try:
        result = stage(cfg, detect(), Path(run_dir), group)
    finally:
        if leave_group:
            shutdown()
    if result.stopped_by_signal:
        hand_over(result.stopped_by_signal)
    return result


def run_hydra_stage(stage: Callable[..., RunResult], cfg: DictConfig) -> RunResult:
    """``run_stage`` from a ``@hydra.main`` entry: run_dir from the config or Hydra's output dir; in a multirun, the
    sweep's name is the W&B group and the process group stays up for the next in-process job."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    multirun = hc.mode.name == "MULTIRUN"
    run_dir = Path(cfg.run_dir or hc.runtime.output_dir)
    result = run_stage(stage, cfg, run_dir, Path(hc.sweep.dir).name if multirun else None, leave_group=not multirun)
    if rank() == 0 and (text := closing_summary(run_dir)):
        print(text, flush=True)
    return result


def stage_function(name: str) -> Callable[..., RunResult]:
    """The stage's run function, imported on demand (a submitting process needs none of the training code)."""
    if name == "pretrain":
        from pipeline.pretrain.loop import pretrain

        return pretrain
    if name == "finetune":
        from pipeline.finetune.loop import finetune

        return finetune
    raise ValueError(f"unknown stage {name!r}: expected one of {', '.join(STAGE_NAMES)}")
