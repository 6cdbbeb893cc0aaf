"""The pretraining run: set up, then one loop that reads top to bottom."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from launch.distenv import DistEnv
from pipeline import data as D
from pipeline.checkpoint import CheckpointManager, TrainState
from pipeline.engine import (
    ConfigError,
    Engine,
    all_reduce_sum,
    barrier,
    check_engine_config,
    deepspeed_config,
    gather_lists,
    init_process_group,
    plan_batch,
    write_json,
)
from pipeline.metrics import build_metrics
from pipeline.model import build_model, flops_per_token
from pipeline.optim import build_optimizer, build_scheduler
from pipeline.preempt import SignalFlag

log = logging.getLogger(__name__)

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


@dataclass
class RunResult:
    step: int
    stopped_by_signal: int = 0
    final: dict | None = None


def validate(cfg) -> None:
    """Checks that need no process group, model or data."""
    check_engine_config(cfg.engine)
    if cfg.max_steps <= 0:
        raise ConfigError(f"max_steps={cfg.max_steps} must be positive")
    if cfg.data.on_bad_shard not in ("skip", "error"):
        raise ConfigError(f"data.on_bad_shard={cfg.data.on_bad_shard}: expected skip or error")
    if cfg.logger.wandb.mode not in ("online", "offline", "disabled"):
        raise ConfigError(f"logger.wandb.mode={cfg.logger.wandb.mode}: expected online, offline or disabled")


def check_resume_compat(state: dict, spec: D.DataSpec, world: int, streams: int, allow_change: bool) -> None:
    if state.get("world_size", world) != world:
        raise ConfigError(
            f"the checkpoint was written by {state['world_size']} ranks and this run has {world}: ZeRO optimizer "
            f"state is partitioned per rank. Resume with the same number of processes (DeepSpeed's ds_to_universal "
            f"conversion is the route to another size)."
        )
    if not allow_change:
        if state.get("data_fingerprint") and state["data_fingerprint"] != spec.fingerprint:
            raise ConfigError(
                f"data at {spec.root} differs from the data this checkpoint was trained on (manifest fingerprint "
                f"{spec.fingerprint[:12]} != {state['data_fingerprint'][:12]}). Point data.path at the original "
                f"data, or set data.allow_data_change=true to continue on new data deliberately."
            )
        if state.get("tokenizer_sha256") and state["tokenizer_sha256"] != spec.tokenizer_sha256:
            raise ConfigError(
                f"the tokenizer of {spec.root} differs from the checkpoint's; the embeddings would be meaningless. "
                f"Set data.allow_data_change=true only if the vocabulary is the same."
            )
        if state.get("streams_per_rank", streams) != streams:
            raise ConfigError(
                f"engine.loader_workers changed ({state['streams_per_rank']} -> {streams}): the sample order depends "
                f"on it. Resume with engine.loader_workers={state['streams_per_rank']}, or set "
                f"data.allow_data_change=true to accept a different order."
            )


class Batches:
    """This rank's micro-batches from a position (epoch, batch) on, across epochs, with time spent waiting."""

    def __init__(
        self,
        spec: D.DataSpec,
        masker: D.Masker,
        cfg,
        env: DistEnv,
        micro: int,
        streams: int,
        pin: bool,
        state: TrainState,
    ):
        self.spec, self.masker, self.cfg, self.env = spec, masker, cfg, env
        self.micro, self.streams, self.pin, self.state = micro, streams, pin, state
        self.wait_s = 0.0
        self._it = None

    def _open(self):
        ds = D.PretrainStreams(
            self.spec.train,
            self.masker,
            rank=self.env.rank,
            world=self.env.world_size,
            streams_per_rank=self.streams,
            micro_batch=self.micro,
            epoch=self.state.epoch,
            start_batch=self.state.batch_in_epoch,
            seed=self.cfg.seed,
            shuffle=self.cfg.data.shuffle_shards,
            shuffle_block=self.cfg.data.shuffle_block,
            on_bad=self.cfg.data.on_bad_shard,
            length_buckets=self.cfg.data.length_buckets,
        )
        if ds.batches_per_epoch == 0:
            raise D.DataError(
                f"{self.spec.root}: {sum(s.samples for s in self.spec.train)} train samples cannot make one "
                f"micro-batch of {self.micro} for each of {self.env.world_size} ranks x {self.streams} streams. "
                f"Use more data, fewer engine.loader_workers or a smaller engine.micro_batch_size."
            )
        self.batches_per_epoch = ds.batches_per_epoch
        loader = D.make_loader(ds, self.cfg.engine.loader_workers, self.cfg.engine.prefetch_factor, self.pin)
        self._it = iter(loader)

    def close(self) -> None:
        """Stop the loader workers now: they ignore TERM (data.py), so multiprocessing's exit-time terminate()
        could not stop them if the iterator outlived the run (an exception holding it, say)."""
        it, self._it = self._it, None
        stop = getattr(it, "_shutdown_workers", None)  # torch's own shutdown: sentinel, join
        if stop is not None:
            stop()

    def next(self) -> dict:
        t0 = time.perf_counter()
        if self._it is None:
            self._open()
        batch = next(self._it, None)
        if batch is None:  # end of epoch
            self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0
            self._open()
            batch = next(self._it)
        self.state.batch_in_epoch += 1
        if self.state.batch_in_epoch == self.batches_per_epoch:
            self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0
            self._it = None  # the loader is exhausted; the next call opens the next epoch
        self.wait_s += time.perf_counter() - t0
        return batch


KEYS = (
    "loss",
    "mlm_loss",
    "nsp_loss",
    "mlm_correct",
    "mlm_count",
    "nsp_correct",
    "nsp_count",
    "tokens",
    "samples",
    "skipped_micro",
)


def summarize(tot: dict, n_batches: float, prefix: str = "") -> dict:
    """Mean losses over batches and accuracies over counted predictions."""
    n = max(n_batches, 1.0)
    return {
        f"{prefix}loss": tot["loss"] / n,
        f"{prefix}mlm_loss": tot["mlm_loss"] / n,
        f"{prefix}nsp_loss": tot["nsp_loss"] / n,
        f"{prefix}mlm_acc": tot["mlm_correct"] / max(tot["mlm_count"], 1.0),
        f"{prefix}nsp_acc": tot["nsp_correct"] / max(tot["nsp_count"], 1.0),
    }


def reduce_dict(d: dict, device: torch.device) -> dict:
    """Sum a dict of floats over ranks (keys in the fixed order of KEYS)."""
    t = all_reduce_sum(torch.tensor([float(d.get(k, 0.0)) for k in KEYS], dtype=torch.float64, device=device))
    return dict(zip(KEYS, t.cpu().tolist()))


def evaluate(engine: Engine, spec: D.DataSpec, masker: D.Masker, cfg, env: DistEnv, micro: int, pin: bool) -> dict:
    """MLM/NSP losses and accuracies on the val shards; every rank runs the same number of batches."""
    if not spec.val:
        return {}
    ds = D.PretrainStreams(
        spec.val,
        masker,
        rank=env.rank,
        world=env.world_size,
        streams_per_rank=1,
        micro_batch=micro,
        epoch=0,
        start_batch=0,
        seed=cfg.seed,
        shuffle=False,
        shuffle_block=0,
        on_bad=cfg.data.on_bad_shard,
        tag=1,
    )
    sums: dict[str, float] = {}
    n = 0
    for i, batch in enumerate(D.make_loader(ds, 0, 2, pin)):
        if cfg.eval.max_batches is not None and i >= cfg.eval.max_batches:
            break
        for k, v in engine.eval_step(batch).items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
    sums["samples"] = n
    tot = reduce_dict(sums, engine.device)
    if tot["samples"] == 0:
        log.warning("validation split too small for one batch per rank: no validation metrics")
        return {}
    return summarize(tot, tot["samples"], "val_")


def peak_tflops(cfg, device: torch.device) -> float | None:
    if cfg.logger.peak_tflops:
        return float(cfg.logger.peak_tflops)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return None


def pretrain(cfg, env: DistEnv, run_dir: Path, group: str | None = None) -> RunResult:
    validate(cfg)
    spec = D.load_data_spec(cfg.data.path)
    seq_len = cfg.seq_len or spec.seq_len
    if seq_len < spec.seq_len or seq_len > cfg.model.max_position_embeddings:
        raise ConfigError(
            f"seq_len={seq_len}: the data holds sequences of up to {spec.seq_len} tokens and the model "
            f"takes up to {cfg.model.max_position_embeddings}"
        )
    plan = plan_batch(cfg.global_batch_size, env.world_size, cfg.engine)
    streams = max(1, cfg.engine.loader_workers)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = CheckpointManager(run_dir, cfg.checkpoint.keep_last, env.rank, barrier)
    resume_tag = ckpt.latest()
    if resume_tag:
        check_resume_compat(ckpt.trainer_state(resume_tag), spec, env.world_size, streams, cfg.data.allow_data_change)

    # Process group, shards, model, engine.
    device = init_process_group(env, cfg.engine)
    D.verify_shards(spec, cfg.data.verify, cfg.data.on_bad_shard, env.rank, env.world_size, gather_lists)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, spec.vocab_size, spec.special_ids["pad"])
    ds_config = deepspeed_config(cfg.engine, cfg.optim, plan)
    optimizer = build_optimizer(model, cfg.optim, device)
    engine = Engine(
        model,
        optimizer,
        build_scheduler(optimizer, cfg.optim, cfg.max_steps),
        cfg.engine,
        ds_config,
        device,
        cfg.nan.check,
    )
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    if env.rank == 0:
        write_json(run_dir / "deepspeed_config.json", ds_config)
        (run_dir / "config.yaml").write_text(config_yaml)
    state = TrainState(
        world_size=env.world_size,
        streams_per_rank=streams,
        data_fingerprint=spec.fingerprint,
        tokenizer_sha256=spec.tokenizer_sha256,
    )
    if resume_tag:
        ckpt.load(engine, resume_tag, state)
        state.data_fingerprint, state.tokenizer_sha256 = spec.fingerprint, spec.tokenizer_sha256
        log.info(
            "resumed from %s (step %d, epoch %d, batch %d)", resume_tag, state.step, state.epoch, state.batch_in_epoch
        )
    cont = D.continuation_table(spec.tokenizer_dir, spec.vocab_size) if cfg.data.whole_word_masking else None
    masker = D.Masker(
        spec,
        cfg.data.mlm_probability,
        cfg.data.max_predictions_per_seq,
        cfg.data.pad_to_multiple_of,
        cfg.data.whole_word_masking,
        cont,
    )
    pin = device.type == "cuda"
    batches = Batches(spec, masker, cfg, env, plan.micro_batch, streams, pin, state)
    metrics = build_metrics(
        env.rank,
        run_dir,
        cfg.logger,
        OmegaConf.to_container(cfg, resolve=True),
        state.step if resume_tag else None,
        group,
    )
    if env.rank == 0 and hasattr(metrics.sinks[-1], "run_id"):
        state.wandb_id = metrics.sinks[-1].run_id
    flag = SignalFlag(list(cfg.preempt.signals))
    fpt = flops_per_token(engine.module.config, spec.seq_len, cfg.data.mlm_probability)
    peak = peak_tflops(cfg, device)
    bar = tqdm(
        total=cfg.max_steps,
        initial=state.step,
        disable=env.rank != 0 or not cfg.logger.progress,
        desc="pretrain",
        dynamic_ncols=True,
    )
    if spec.skipped_shards:
        metrics.log({"skipped_shards": len(spec.skipped_shards)}, state.step)

    try:
        window: dict[str, float] = {}
        t_window, wait0, steps_in_window = time.perf_counter(), batches.wait_s, 0
        result = RunResult(step=state.step)
        while state.step < cfg.max_steps:
            # One optimizer step: the accumulation window of micro-batches.
            micro = [batches.next() for _ in range(plan.accumulation)]
            state.bad_samples += int(sum(int(m["meta"][3]) for m in micro))
            sums, info = engine.train_step(micro, inject_nan=state.step + 1 in cfg.nan.inject_at_steps)
            state.step += 1
            steps_in_window += 1
            # One collective per step: has any rank been signalled, and the step's tokens and samples over all ranks.
            stop_signal, (tokens, samples) = flag.agreed([sums["tokens"], sums["samples"]])
            state.tokens, state.samples = state.tokens + int(tokens), state.samples + int(samples)
            for k, v in sums.items():
                window[k] = window.get(k, 0.0) + v
            state.skipped_micro += int(sums["skipped_micro"])
            state.skipped_steps += int(info["good_micro"] == 0)
            state.consecutive_bad = state.consecutive_bad + 1 if sums["skipped_micro"] else 0
            bar.update(1)
            # Too many non-finite steps in a row: stop with a clear error.
            if state.consecutive_bad >= cfg.nan.max_consecutive:
                raise FloatingPointError(
                    f"{state.consecutive_bad} steps in a row had a non-finite loss (last at step {state.step}); "
                    f"the run is diverging. Lower optim.lr, raise warmup, or use bf16 instead of fp16. "
                    f"Resume from the last checkpoint in {ckpt.root}."
                )

            # Log: sums over the window, all-reduced across ranks.
            if state.step % cfg.logger.every_steps == 0 or state.step == cfg.max_steps:
                dt = time.perf_counter() - t_window
                tot = reduce_dict(window, device)
                used = steps_in_window * plan.accumulation * env.world_size - tot["skipped_micro"]
                rec = {
                    **summarize(tot, used),
                    "lr": engine.lr(),
                    "grad_norm": engine.grad_norm(),
                    "epoch": state.epoch,
                    "tokens_per_s": tot["tokens"] / dt,
                    "samples_per_s": tot["samples"] / dt,
                    "data_wait_frac": (batches.wait_s - wait0) / dt,
                    "skipped_steps": state.skipped_steps,
                    "skipped_micro": state.skipped_micro,
                    "bad_samples": state.bad_samples,
                    "tokens": state.tokens,
                    **engine.memory(),
                }
                if peak:
                    rec["mfu"] = rec["tokens_per_s"] * fpt / (peak * 1e12 * env.world_size)
                if engine.loss_scale() is not None:
                    rec["loss_scale"], rec["overflow_skips"] = engine.loss_scale(), engine.overflow_skips()
                metrics.log(rec, state.step)
                bar.set_postfix(
                    loss=f"{rec['loss']:.3f}", mlm_acc=f"{rec['mlm_acc']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}"
                )
                window = {}
                t_window, wait0, steps_in_window = time.perf_counter(), batches.wait_s, 0

            # Evaluate on the val shards.
            if state.step % cfg.eval.every_steps == 0 or (state.step == cfg.max_steps and cfg.eval.at_end):
                val = evaluate(engine, spec, masker, cfg, env, plan.micro_batch, pin)
                if val:
                    metrics.log(val, state.step)
                    result.final = {**(result.final or {}), **val}

            # Stop on a signal (agreed by all ranks) or at stop_after_steps: checkpoint, then return.
            stop_now = stop_signal or (cfg.stop_after_steps is not None and state.step >= cfg.stop_after_steps)
            # Checkpoint every N steps, at the end, and before stopping early.
            at_end = state.step == cfg.max_steps and cfg.checkpoint.at_end
            if state.step % cfg.checkpoint.every_steps == 0 or at_end or stop_now:
                ckpt.save(engine, state, config_yaml)
            if stop_now:
                result.stopped_by_signal = stop_signal
                break
    finally:  # stop the loader workers (they ignore TERM, see data.py) and give the signals back
        batches.close()
        bar.close()
        flag.restore()
    result.step = state.step
    if env.rank == 0:
        summary = {
            "step": state.step,
            "max_steps": cfg.max_steps,
            "stopped_by_signal": result.stopped_by_signal,
            "samples": state.samples,
            "tokens": state.tokens,
            "skipped_steps": state.skipped_steps,
            "bad_samples": state.bad_samples,
            "skipped_shards": spec.skipped_shards,
            "checkpoint": ckpt.latest(),
            **(result.final or {}),
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    metrics.close()
    return result
