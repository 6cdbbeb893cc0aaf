"""What every stage does around its loop: start a run (engine, checkpoints, resume, metrics, signals, progress), and
``run_stage``, the one tail shared by the entry points and the submitit job (check that the command fits the run
already in run_dir, leave the process group, hand a stop signal over to whoever started us).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from pipeline.checkpoint import CheckpointManager, TrainState
from pipeline.cli import closing_summary, rank
from pipeline.dist import DistEnv, barrier, detect, on_rank0, shutdown
from pipeline.engine import BatchPlan, Engine, convert_to_universal, deepspeed_config, partitioned, write_json
from pipeline.metrics import Metrics, build_metrics
from pipeline.optim import build_optimizer, build_scheduler
from pipeline.preempt import SignalFlag, hand_over
from pipeline.rundir import check_run_dir, record_start
from pipeline.runlock import RunDirBusy, RunLock

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    step: int
    stopped_by_signal: int = 0
    final: dict | None = None
    stopped: bool = False  # stopped before the end (a signal or stop_after_steps) with a checkpoint: resumable


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
    lock: RunLock | None = None

    def save_or_stop(self, cfg, stop_signal: int, result: RunResult, at_end: bool = False) -> bool:
        """Stop on a signal (agreed by all ranks) or at stop_after_steps; checkpoint every N steps, at ``at_end``,
        and before stopping early. Returns whether the loop stops here (``result`` then says why)."""
        step = self.state.step
        stop = bool(stop_signal) or (cfg.stop_after_steps is not None and step >= cfg.stop_after_steps)
        if step % cfg.checkpoint.every_steps == 0 or at_end or stop:
            self.ckpt.save(self.engine, self.state, self.config_yaml)
        if stop:
            result.stopped_by_signal, result.stopped = stop_signal, True
        return stop

    def close(self) -> None:
        self.bar.close()
        self.flag.restore()
        if self.lock is not None:
            self.lock.release()


def lock_run_dir(env: DistEnv, run_dir: Path) -> RunLock | None:
    """Rank 0 takes ``run_dir``'s lock before any work (see runlock.py); every rank learns the outcome, so a busy
    run_dir stops all of them at once with the holder's name. Returns the lock on rank 0 (None elsewhere)."""

    def take() -> RunLock:
        lock = RunLock(run_dir)
        if previous := lock.acquire():
            log.info("took over %s from a run that is gone (pid %s)", lock.path, previous.get("pid"))
        return lock

    return on_rank0(env.rank, take, (RunDirBusy,))


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
    lock: RunLock | None = None,
    init: Callable[[Engine], None] | None = None,
    init_universal: bool = False,
) -> Run:
    """Optimizer, schedule and engine for ``model``; the resolved config (this start's, kept beside the earlier ones:
    pipeline/rundir.py) and DeepSpeed JSON in ``run_dir``; the latest complete checkpoint loaded into the engine and
    ``state`` (after ``check_resume`` saw its trainer state), under this config's schedule and optimizer settings.
    Without a checkpoint, ``init`` (if any) gets the engine: a run that starts from another run's state, which the
    engine loads in universal form when ``init_universal`` (pretrain/phase.py)."""
    ds_config = deepspeed_config(cfg.engine, cfg.optim, plan, nan_check=cfg.nan.check)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    ckpt = CheckpointManager(run_dir, cfg.checkpoint.keep_last, env.rank, barrier)
    tag = ckpt.latest()
    saved = ckpt.trainer_state(tag) if tag else None
    if saved is not None and check_resume is not None:
        check_resume(saved)
    if env.rank == 0:  # once the checkpoint's own checks passed: the record never says what the checkpoints deny
        write_json(run_dir / "deepspeed_config.json", ds_config)
        record_start(cfg, run_dir, config_yaml)
    resized = bool(saved) and saved.get("world_size", env.world_size) != env.world_size
    universal = resized and partitioned(ckpt.root / tag)
    if universal:  # another data-parallel size: DeepSpeed's universal checkpoint, converted once by rank 0
        if env.rank == 0:
            log.info("%s was written by %d ranks; this run has %d", tag, saved["world_size"], env.world_size)
        on_rank0(env.rank, lambda: convert_to_universal(ckpt.root, tag), (RuntimeError,))
    optimizer = build_optimizer(model, cfg.optim, device)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    universal = universal or (init is not None and init_universal and not tag)
    engine = Engine(model, optimizer, scheduler, cfg.engine, ds_config, device, cfg.nan.check, universal)
    if tag:
        settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        ckpt.load(engine, tag, state)
        follow_config(optimizer, scheduler, settings)
        log.info("resumed from %s (step %d)", ckpt.root / tag, state.step)
    elif init is not None:
        init(engine)
    config = OmegaConf.to_container(cfg, resolve=True)
    metrics = build_metrics(env.rank, run_dir, cfg.logger, config, state.step if tag else None, group)
    flag = SignalFlag(list(cfg.preempt.signals))
    quiet = env.rank != 0 or not cfg.logger.progress
    bar = tqdm(total=total_steps, initial=state.step, disable=quiet, desc=desc, dynamic_ncols=True)
    return Run(env, run_dir, plan, engine, ckpt, state, tag, metrics, flag, bar, config_yaml, lock)


def follow_config(optimizer: torch.optim.Optimizer, scheduler, settings: list[dict]) -> None:
    """After a load: the optimizer's settings (lr, betas, weight decay...) and the schedule's peak are this config's,
    not the checkpoint's (its state_dicts restore both), so a changed optim.* on resume takes effect as the log says;
    the learning rate of the next step is the schedule's at the restored step. Unchanged settings give the same values
    as the checkpoint's, so an exact resume stays exact."""
    for group, own in zip(optimizer.param_groups, settings, strict=True):
        group.update(own)
    scheduler.base_lrs = [own["initial_lr"] for own in settings]
    lrs = [base * f(scheduler.last_epoch) for f, base in zip(scheduler.lr_lambdas, scheduler.base_lrs, strict=True)]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs


def run_stage(
    stage: Callable[..., RunResult], cfg, run_dir: Path, group: str | None = None, leave_group: bool = True
) -> RunResult:
    """Run ``stage(cfg, env, run_dir, group)`` in this process's distributed environment, leave the process group
    (unless later in-process sweep jobs share it), and hand a stop signal over: submitit's handler requeues on USR2;
    with no handler before ours the process exits 75 (resumable), after saying so. A command that does not fit the
    run already in ``run_dir`` is refused first, before any work (pipeline/rundir.py)."""
    check_run_dir(cfg, Path(run_dir))
    env = detect()
    try:
        result = stage(cfg, env, Path(run_dir), group)
    finally:
        if leave_group:
            shutdown()
    if result.stopped_by_signal:
        # hand_over exits 75 when no handler was there before ours: the user (or a script) runs the command again.
        if env.rank == 0 and not callable(signal.getsignal(result.stopped_by_signal)):
            name = signal.Signals(result.stopped_by_signal).name
            ckpt = Path(run_dir) / "checkpoints" / CheckpointManager.tag(result.step)
            print(f"stopped by {name} at step {result.step}, checkpoint {ckpt}: run the same command again to resume",
                  flush=True)  # fmt: skip
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
