"""The pretraining run: ``setup`` (data, process group, model, engine, resume, loader), ``train`` (one loop that reads
top to bottom, each periodic action a guarded block), and ``summary.json`` at the end."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data_prep.format import DataSpec
from pipeline.checkpoint import CheckpointManager, TrainState
from pipeline.config import ConfigError
from pipeline.dist import DistEnv, PeerLost, all_reduce_sum, barrier, gather_lists, peer_lost
from pipeline.engine import check_engine_config, init_process_group, plan_batch
from pipeline.metrics import last_validation
from pipeline.pretrain import mix, phase
from pipeline.pretrain.data import Batches, build_collate
from pipeline.pretrain.elastic import note_layout, note_mix
from pipeline.pretrain.masking import Masker
from pipeline.pretrain.mfu import MFU
from pipeline.pretrain.model import build_model
from pipeline.pretrain.shards import keep_in_run_dir, verify_shards
from pipeline.pretrain.sources import Blend, Source, load_blend, new_state
from pipeline.pretrain.streams import PretrainStreams, StreamSettings, make_loader
from pipeline.run import Run, RunResult, lock_run_dir, start_run

log = logging.getLogger(__name__)


def validate(cfg) -> None:
    """Checks that need no process group, model or data (choices are Enums: composition checked those)."""
    check_engine_config(cfg.engine)
    if cfg.max_steps <= 0:
        raise ConfigError(f"max_steps={cfg.max_steps} must be positive")
    phase.validate(cfg)


def check_resume_compat(state: dict, data: Blend | DataSpec, allow_change: bool) -> None:
    """Another world size, loader_workers or micro-batch is fine (universal checkpoint, re-split data); other data
    (a source's manifest), another tokenizer or another mix of sources (weights, a source added or removed) is
    refused unless asked for (pretrain/mix.py)."""
    mix.check_resume(state, data if isinstance(data, Blend) else Blend([Source("data", data, None)]), allow_change)


KEYS = (
    "loss",
    "mlm_loss",
    "nsp_loss",
    "mlm_correct",
    "mlm_count",
    "nsp_correct",
    "nsp_count",
    "tokens",
    "slots",
    "sq_tokens",
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


def evaluate(p: Pretraining) -> dict:
    """MLM/NSP losses and accuracies on the val shards; every rank runs the same number of batches. A blend is
    evaluated source by source, and the mix is their weighted average (pretrain/mix.py)."""
    if len(p.blend.sources) == 1:
        return evaluate_split(p, p.spec)
    per_source = {s.name: m for s in p.blend.sources if (m := evaluate_split(p, s.spec))}
    return mix.val_record(per_source, p.blend)


def evaluate_split(p: Pretraining, spec: DataSpec) -> dict:
    """MLM/NSP losses and accuracies on one data_prep output's val shards."""
    env, cfg = p.env, p.cfg
    if not spec.val:
        return {}
    # A split smaller than one micro-batch per rank would give no batch at all: evaluate it as one smaller batch
    # per rank instead (every rank the same size, so the ranks stay in step). Larger splits leave out fewer than
    # one micro-batch per rank.
    per_rank = sum(s.samples for s in spec.val) // env.world_size
    micro = min(p.run.plan.micro_batch, per_rank) if per_rank else p.run.plan.micro_batch
    ds = PretrainStreams(
        spec.val, p.masker, StreamSettings.of(cfg).in_order(), rank=env.rank, world=env.world_size,
        streams_per_rank=1, micro_batch=micro, epoch=0, tag=1,
    )  # fmt: skip
    sums: dict[str, float] = {}
    n = 0
    for i, batch in enumerate(make_loader(ds, 0, 2, p.pin)):
        if cfg.eval.max_batches is not None and i >= cfg.eval.max_batches:
            break
        for k, v in p.run.engine.eval_step(batch).items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
    sums["samples"] = n
    tot = reduce_dict(sums, p.run.engine.device)
    if tot["samples"] == 0:
        log.warning(
            "the validation split (%d samples) has fewer samples than ranks (%d): no validation metrics; rerun "
            "data_prep with a larger val_fraction",
            sum(s.samples for s in spec.val),
            env.world_size,
        )
        return {}
    return summarize(tot, tot["samples"], "val_")


@dataclass
class Pretraining:
    """A started pretraining run: everything the loop reads, made by ``setup``."""

    cfg: object
    env: DistEnv
    spec: DataSpec  # the vocabulary, special ids and seq_len every source shares
    blend: Blend  # the data sources (one, or several blended by weight)
    run: Run
    masker: Masker  # validation masks with it; training batches come from ``batches``
    batches: Batches
    pin: bool
    mfu: MFU  # a window's model FLOPs utilisation, on real tokens


def setup(cfg, env: DistEnv, run_dir: Path, group: str | None) -> Pretraining:
    """The data checked, the process group, the run_dir's own copy of what it needs of the data, the model (from
    another run's checkpoint for a phase), the engine with the latest checkpoint loaded, and the loader at the
    checkpoint's position."""
    validate(cfg)
    blend = load_blend(cfg.data.path, cfg.data.weights, cfg.data.names)
    spec = blend.first
    seq_len = cfg.seq_len or spec.seq_len
    if seq_len < spec.seq_len or seq_len > cfg.model.max_position_embeddings:
        raise ConfigError(
            f"seq_len={seq_len}: the data holds sequences of up to {spec.seq_len} tokens and the model "
            f"takes up to {cfg.model.max_position_embeddings}"
        )
    # A phase: another run's checkpoint, unless this run has one of its own (then it resumes from that, and the first
    # run may have moved or gone).
    ckpts = CheckpointManager(run_dir, 1, env.rank, barrier)
    start, own = None, ckpts.latest()
    if own:  # its W&B run stays in the first run's group
        group = group or ckpts.trainer_state(own).get("init_from", {}).get("group")
    else:
        start = phase.find_start(cfg, run_dir, seq_len, spec.tokenizer_sha256)
    plan = plan_batch(cfg.global_batch_size, env.world_size, cfg.engine)
    streams = max(1, cfg.engine.loader_workers)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = init_process_group(env, cfg.engine)
    lock = lock_run_dir(env, run_dir)  # one live run per run_dir, before anything is written there
    for source in blend.sources:
        verify_shards(source.spec, cfg.data.verify, cfg.data.on_bad_shard, env.rank, env.world_size, gather_lists)
    if env.rank == 0:
        keep_in_run_dir(spec, run_dir, blend.describe() if len(blend.sources) > 1 else None)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, spec.vocab_size, spec.special_ids["pad"])
    init = None
    if start is not None:
        phase.load_weights(model, start)
        universal = phase.universal_copy(start, run_dir, env.rank)
        if start.optimizer:
            init = lambda engine: engine.load_optimizer_from(start.root, start.tag, universal)  # noqa: E731
        group = group or start.group
    state = TrainState(world_size=env.world_size, streams_per_rank=streams, micro_batch=plan.micro_batch)
    run = start_run(
        cfg, env, run_dir, plan, device, model, cfg.max_steps, state, group=group, desc="pretrain",
        check_resume=lambda saved: check_resume_compat(saved, blend, cfg.data.allow_data_change), lock=lock,
        init=init, init_universal=phase.needs_universal_load(start, cfg.engine),
    )  # fmt: skip
    state.data_fingerprint, state.tokenizer_sha256 = spec.fingerprint, spec.tokenizer_sha256
    if not run.resumed_from:
        state.blend = new_state(blend)
    if run.resumed_from and not state.micro_batch:  # a checkpoint from before micro_batch was recorded
        state.micro_batch = plan_batch(cfg.global_batch_size, state.world_size, cfg.engine).micro_batch
    settings = StreamSettings.of(cfg)
    if run.resumed_from:
        state.blend = mix.recorded_mix(state.state_dict(), blend)
        note_mix(state, blend, settings)  # another mix (allowed): the epoch ends here, its rest is carried
    note_layout(state, env.world_size, streams, plan.micro_batch)  # another layout mid-epoch: re-split the rest
    masker, collate = build_collate(cfg, spec, seq_len)
    pin = device.type == "cuda"
    batches = Batches(
        blend, collate, settings, rank=env.rank, world=env.world_size, micro=plan.micro_batch,
        workers=cfg.engine.loader_workers, prefetch=cfg.engine.prefetch_factor, pin=pin, position=state,
    )  # fmt: skip
    skipped = [s for src in blend.sources for s in src.spec.skipped_shards]
    if skipped:
        run.metrics.log({"skipped_shards": len(skipped)}, state.step)
    if start is not None:  # a phase starts with a checkpoint of its own: a restart resumes it, not phase 1
        state.init_from = start.record()
        run.metrics.log({"init_from_step": start.step, "init_from_tokens": start.tokens}, state.step)
        run.ckpt.save(run.engine, state, run.config_yaml)
    mfu = MFU(run.engine.module.config, cfg.logger.peak_tflops, device)
    return Pretraining(cfg, env, spec, blend, run, masker, batches, pin, mfu)


def pretrain(cfg, env: DistEnv, run_dir: Path, group: str | None = None) -> RunResult:
    p = setup(cfg, env, run_dir, group)
    try:
        result = train(p)
    except RuntimeError as e:
        if not peer_lost(e):
            raise
        step = p.run.state.step
        raise PeerLost(
            f"rank {env.rank}/{env.world_size}: another rank of this job died during step {step + 1} "
            f"({str(e).splitlines()[0][-160:]}). The launcher's log names it. Run the same command again to resume "
            f"from {p.run.ckpt.root / (p.run.ckpt.latest() or '(no checkpoint yet)')}."
        ) from e
    finally:  # stop the loader workers (they ignore TERM, see streams.py) and give the signals back
        p.batches.close()
        p.run.close()
    if env.rank == 0:
        write_summary(p, result)
    p.run.metrics.close()
    return result


def train(p: Pretraining) -> RunResult:
    """Steps until max_steps, a stop signal or stop_after_steps; logs, evaluates and checkpoints on the way."""
    cfg, run, state, engine = p.cfg, p.run, p.run.state, p.run.engine
    result = RunResult(step=state.step)
    window = Window(wait0=p.batches.wait_s)
    while state.step < cfg.max_steps:
        # One optimizer step: the accumulation window of micro-batches.
        micro = [p.batches.next() for _ in range(run.plan.accumulation)]
        sums, info = engine.train_step(micro, inject_nan=state.step + 1 in cfg.nan.inject_at_steps)
        # One collective per step: has any rank been signalled, and the step's tokens and samples (in all and per
        # source) over all ranks.
        sources = mix.local_counts(p.blend, micro, info.get("bad_micro"))
        stop_signal, counts = run.flag.agreed([sums["tokens"], sums["samples"], *sources])
        count_step(state, micro, sums, info, int(counts[0]), int(counts[1]))
        mix.add_counts(state, p.blend, counts[2:])
        window.add(sums)
        run.bar.update(1)

        # Too many non-finite steps in a row: stop with a clear error.
        if state.consecutive_bad >= cfg.nan.max_consecutive:
            raise FloatingPointError(
                f"{state.consecutive_bad} steps in a row had a non-finite loss (last at step {state.step}); "
                f"the run is diverging. Lower optim.lr, raise warmup, or use bf16 instead of fp16. "
                f"Resume from the last checkpoint in {run.ckpt.root}."
            )
        # Log: sums over the window, all-reduced across ranks.
        if state.step % cfg.logger.every_steps == 0 or state.step == cfg.max_steps:
            log_window(p, window)
            window = Window(wait0=p.batches.wait_s)
        # Evaluate on the val shards.
        at_eval = state.step % cfg.eval.every_steps == 0 or (state.step == cfg.max_steps and cfg.eval.at_end)
        if at_eval and (val := evaluate(p)):
            run.metrics.log(val, state.step)
            result.final = {**(result.final or {}), **val}
        # Checkpoint every N steps and at the end; on a signal or at stop_after_steps, checkpoint and stop.
        if run.save_or_stop(cfg, stop_signal, result, at_end=state.step == cfg.max_steps and cfg.checkpoint.at_end):
            break
    result.step = state.step
    return result


def count_step(state: TrainState, micro: list[dict], sums: dict, info: dict, tokens: int, samples: int) -> None:
    """The step's counters in the trainer state (what a checkpoint keeps): tokens and samples over all ranks."""
    state.step += 1
    state.bad_samples += sum(m["meta"]["bad_samples"] for m in micro)
    state.tokens, state.samples = state.tokens + tokens, state.samples + samples
    state.skipped_micro += int(sums["skipped_micro"])
    state.skipped_steps += int(info["good_micro"] == 0)
    state.consecutive_bad = state.consecutive_bad + 1 if sums["skipped_micro"] else 0


@dataclass
class Window:
    """This rank's sums since the last log line, with its start time and the loader's wait time then."""

    wait0: float
    t0: float = field(default_factory=time.perf_counter)
    steps: int = 0
    sums: dict = field(default_factory=dict)

    def add(self, sums: dict) -> None:
        self.steps += 1
        for k, v in sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + v


def log_window(p: Pretraining, window: Window) -> None:
    """One metrics record for the window: losses and accuracies over the used micro-batches of every rank, rates."""
    run, state, engine, env = p.run, p.run.state, p.run.engine, p.env
    dt = time.perf_counter() - window.t0
    tot = reduce_dict(window.sums, engine.device)
    used = window.steps * run.plan.accumulation * env.world_size - tot["skipped_micro"]
    rec = {
        **summarize(tot, used),
        "lr": engine.lr(),
        "grad_norm": engine.grad_norm(),
        "epoch": state.epoch,
        "tokens_per_s": tot["tokens"] / dt,  # real tokens (no padding)
        "real_token_frac": tot["tokens"] / max(tot["slots"], 1.0),
        "samples_per_s": tot["samples"] / dt,
        "data_wait_frac": (p.batches.wait_s - window.wait0) / dt,
        "skipped_steps": state.skipped_steps,
        "skipped_micro": state.skipped_micro,
        "bad_samples": state.bad_samples,
        "tokens": state.tokens,
        **mix.train_record(state, p.blend),
        **engine.memory(),
    }
    rec.update(p.mfu(tot, dt, env.world_size))  # on real tokens, each pair's attention on its own length
    if p.cfg.engine.compile:
        rec["compiled_graphs"] = engine.compiled_graphs
    if engine.loss_scale() is not None:
        rec["loss_scale"], rec["overflow_skips"] = engine.loss_scale(), engine.overflow_skips()
    run.metrics.log(rec, state.step)
    run.bar.set_postfix(loss=f"{rec['loss']:.3f}", mlm_acc=f"{rec['mlm_acc']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")


def write_summary(p: Pretraining, result: RunResult) -> None:
    state = p.run.state
    summary = {
        "step": state.step,
        "max_steps": p.cfg.max_steps,
        "stopped_by_signal": result.stopped_by_signal,
        "samples": state.samples,
        "tokens": state.tokens,
        "skipped_steps": state.skipped_steps,
        "bad_samples": state.bad_samples,
        "skipped_shards": [s for src in p.blend.sources for s in src.spec.skipped_shards],
        "checkpoint": p.run.ckpt.latest(),
        **last_validation(p.run.run_dir),  # this start's evaluation, or the run's last (a finished run run again)
    }
    if len(p.blend.sources) > 1 or len(state.blend.get("seen", {})) > 1:
        summary["sources"] = mix.summary(state, p.blend)
    if state.init_from:
        summary["init_from"] = state.init_from
    (p.run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
