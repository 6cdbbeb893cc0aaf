"""The pretraining run: set up, then one loop that reads top to bottom."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from pipeline.checkpoint import TrainState
from pipeline.config import ConfigError
from pipeline.dist import DistEnv, PeerLost, all_reduce_sum, gather_lists, peer_lost
from pipeline.engine import Engine, check_engine_config, init_process_group, plan_batch
from pipeline.pretrain import data as D
from pipeline.pretrain.elastic import note_layout
from pipeline.pretrain.mfu import MFU
from pipeline.pretrain.model import build_model
from pipeline.pretrain.packing import PackingCollator
from pipeline.pretrain.shards import keep_in_run_dir, verify_shards
from pipeline.run import RunResult, lock_run_dir, start_run

log = logging.getLogger(__name__)


def validate(cfg) -> None:
    """Checks that need no process group, model or data (choices are Enums: composition checked those)."""
    check_engine_config(cfg.engine)
    if cfg.max_steps <= 0:
        raise ConfigError(f"max_steps={cfg.max_steps} must be positive")


def check_resume_compat(state: dict, spec: D.DataSpec, allow_change: bool) -> None:
    """Another world size, loader_workers or micro-batch is fine (universal checkpoint, re-split data); other data
    or another tokenizer is refused unless asked for."""
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


def evaluate(engine: Engine, spec: D.DataSpec, masker: D.Masker, cfg, env: DistEnv, micro: int, pin: bool) -> dict:
    """MLM/NSP losses and accuracies on the val shards; every rank runs the same number of batches."""
    if not spec.val:
        return {}
    # A split smaller than one micro-batch per rank would give no batch at all: evaluate it as one smaller batch
    # per rank instead (every rank the same size, so the ranks stay in step). Larger splits leave out fewer than
    # one micro-batch per rank.
    per_rank = sum(s.samples for s in spec.val) // env.world_size
    micro = min(micro, per_rank) if per_rank else micro
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
        log.warning(
            "the validation split (%d samples) has fewer samples than ranks (%d): no validation metrics; rerun "
            "data_prep with a larger val_fraction",
            sum(s.samples for s in spec.val),
            env.world_size,
        )
        return {}
    return summarize(tot, tot["samples"], "val_")


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

    # Process group, shards, the run_dir's own copy of what it needs of the data, model, engine, resume.
    device = init_process_group(env, cfg.engine)
    lock = lock_run_dir(env, run_dir)  # one live run per run_dir, before anything is written there
    verify_shards(spec, cfg.data.verify, cfg.data.on_bad_shard, env.rank, env.world_size, gather_lists)
    if env.rank == 0:
        keep_in_run_dir(spec, run_dir)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, spec.vocab_size, spec.special_ids["pad"])
    state = TrainState(world_size=env.world_size, streams_per_rank=streams, micro_batch=plan.micro_batch)

    def check_resume(saved: dict) -> None:
        check_resume_compat(saved, spec, cfg.data.allow_data_change)

    run = start_run(
        cfg, env, run_dir, plan, device, model, cfg.max_steps, state, group=group, desc="pretrain",
        check_resume=check_resume, lock=lock,
    )  # fmt: skip
    state.data_fingerprint, state.tokenizer_sha256 = spec.fingerprint, spec.tokenizer_sha256
    if run.resumed_from and not state.micro_batch:  # a checkpoint from before micro_batch was recorded
        state.micro_batch = plan_batch(cfg.global_batch_size, state.world_size, cfg.engine).micro_batch
    note_layout(state, env.world_size, streams, plan.micro_batch)  # another layout mid-epoch: re-split the rest
    engine, metrics = run.engine, run.metrics
    cont = D.continuation_table(spec.tokenizer_dir, spec.vocab_size) if cfg.data.whole_word_masking else None
    masker = D.Masker(
        spec,
        cfg.data.mlm_probability,
        cfg.data.max_predictions_per_seq,
        cfg.data.pad_to_multiple_of,
        cfg.data.whole_word_masking,
        cont,
        fixed_width=seq_len if cfg.data.fixed_shapes else None,
    )
    # Packing is a step of collation, after masking: the loader's plan and positions are the unpacked ones.
    collate = PackingCollator(masker, seq_len, cfg.data.pad_to_multiple_of, cfg.data.fixed_shapes, cfg.data.packed_rows)
    pin = device.type == "cuda"
    batches = D.Batches(
        spec, collate if cfg.data.packing else masker, cfg, env.rank, env.world_size, plan.micro_batch, pin, state
    )
    mfu = MFU(engine.module.config, cfg.logger.peak_tflops, device)
    if spec.skipped_shards:
        metrics.log({"skipped_shards": len(spec.skipped_shards)}, state.step)

    result = RunResult(step=state.step)
    try:
        window: dict[str, float] = {}
        t_window, wait0, steps_in_window = time.perf_counter(), batches.wait_s, 0
        while state.step < cfg.max_steps:
            # One optimizer step: the accumulation window of micro-batches.
            micro = [batches.next() for _ in range(plan.accumulation)]
            state.bad_samples += sum(m["meta"]["bad_samples"] for m in micro)
            sums, info = engine.train_step(micro, inject_nan=state.step + 1 in cfg.nan.inject_at_steps)
            state.step += 1
            steps_in_window += 1
            # One collective per step: has any rank been signalled, and the step's tokens and samples over all ranks.
            stop_signal, (tokens, samples) = run.flag.agreed([sums["tokens"], sums["samples"]])
            state.tokens, state.samples = state.tokens + int(tokens), state.samples + int(samples)
            for k, v in sums.items():
                window[k] = window.get(k, 0.0) + v
            state.skipped_micro += int(sums["skipped_micro"])
            state.skipped_steps += int(info["good_micro"] == 0)
            state.consecutive_bad = state.consecutive_bad + 1 if sums["skipped_micro"] else 0
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
                dt = time.perf_counter() - t_window
                tot = reduce_dict(window, device)
                used = steps_in_window * plan.accumulation * env.world_size - tot["skipped_micro"]
                rec = {
                    **summarize(tot, used),
                    "lr": engine.lr(),
                    "grad_norm": engine.grad_norm(),
                    "epoch": state.epoch,
                    "tokens_per_s": tot["tokens"] / dt,  # real tokens (no padding)
                    "real_token_frac": tot["tokens"] / max(tot["slots"], 1.0),
                    "samples_per_s": tot["samples"] / dt,
                    "data_wait_frac": (batches.wait_s - wait0) / dt,
                    "skipped_steps": state.skipped_steps,
                    "skipped_micro": state.skipped_micro,
                    "bad_samples": state.bad_samples,
                    "tokens": state.tokens,
                    **engine.memory(),
                }
                rec.update(mfu(tot, dt, env.world_size))  # on real tokens, each pair's attention on its length
                if cfg.engine.compile:
                    rec["compiled_graphs"] = engine.compiled_graphs
                if engine.loss_scale() is not None:
                    rec["loss_scale"], rec["overflow_skips"] = engine.loss_scale(), engine.overflow_skips()
                metrics.log(rec, state.step)
                run.bar.set_postfix(
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
                run.ckpt.save(engine, state, run.config_yaml)
            if stop_now:
                result.stopped_by_signal = stop_signal
                break
    except RuntimeError as e:
        if not peer_lost(e):
            raise
        raise PeerLost(
            f"rank {env.rank}/{env.world_size}: another rank of this job died during step {state.step + 1} "
            f"({str(e).splitlines()[0][-160:]}). The launcher's log names it. Run the same command again to resume "
            f"from {run.ckpt.root / (run.ckpt.latest() or '(no checkpoint yet)')}."
        ) from e
    finally:  # stop the loader workers (they ignore TERM, see data.py) and give the signals back
        batches.close()
        run.close()
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
            "checkpoint": run.ckpt.latest(),
            **(result.final or {}),
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    metrics.close()
    return result
