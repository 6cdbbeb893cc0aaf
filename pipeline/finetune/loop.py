"""The finetuning run (``python -m pipeline.finetune``, see __main__.py): ``setup``, ``train`` (one loop), and
``finish`` (the best model's outputs).

Finetunes on a GLUE task, custom classification/regression files, NER or SQuAD-style QA with the pretraining
engine (DeepSpeed, any ZeRO stage and precision, one process, torchrun or Slurm). Keeps the best checkpoint by the
task's validation metric (early stopping after ``eval.patience`` evaluations without improvement) and writes
results.json, predictions_<split>.jsonl and best_model/ (Hugging Face format) in the run_dir. Running the same
command again resumes; a finished run_dir (results.json present) returns at once. See pipeline/finetune/README.md.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from pipeline.checkpoint import CheckpointManager, TrainState
from pipeline.config import ConfigError
from pipeline.dist import DistEnv, all_reduce_sum, barrier
from pipeline.engine import check_engine_config, init_process_group, plan_batch
from pipeline.finetune.eval import evaluate
from pipeline.finetune.metrics import better, task_score
from pipeline.finetune.model import build_task_model, materialize, resolve_source, save_hf_model
from pipeline.finetune.tasks import TaskDataError, collate, featurize, load_task
from pipeline.run import Run, RunResult, lock_run_dir, start_run
from pipeline.storage import finite_or_none

log = logging.getLogger("pipeline.finetune")


def validate(cfg) -> None:
    check_engine_config(cfg.engine)
    if cfg.task.type in ("classification", "regression") and len(cfg.task.text_columns) not in (1, 2):
        raise ConfigError(f"task.text_columns={list(cfg.task.text_columns)}: one column, or two for sentence pairs")
    if cfg.max_steps is not None and cfg.max_steps <= 0 or cfg.epochs <= 0:
        raise ConfigError("max_steps and epochs must be positive")


def train_micro_batches(feats: list[dict], state: TrainState, plan, env: DistEnv, seed: int, pad_id: int) -> list:
    """This rank's micro-batches for the next step: a seeded permutation per epoch, cut into global batches
    (the last partial one dropped), each split evenly over ranks, so every rank runs the same number."""
    per_epoch = len(feats) // plan.global_batch
    if state.batch_in_epoch >= per_epoch:
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    order = _permutation(seed, state.epoch, len(feats))
    start = state.batch_in_epoch * plan.global_batch + env.rank * plan.micro_batch * plan.accumulation
    state.batch_in_epoch += 1
    return [
        collate([feats[i] for i in order[start + k * plan.micro_batch : start + (k + 1) * plan.micro_batch]], pad_id)
        for k in range(plan.accumulation)
    ]


@functools.lru_cache(maxsize=2)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


@dataclass
class Finetuning:
    """A started finetuning run: everything the loop and the closing outputs read, made by ``setup``."""

    cfg: object
    env: DistEnv
    run: Run
    best: CheckpointManager  # the best model so far, one kept
    src: object  # the resolved model.path (pipeline/finetune/model.py)
    model_path: Path
    tokenizer: object
    splits: dict
    feats: dict
    names: list | None
    total: int  # optimizer steps
    per_epoch: int
    eval_every: int
    pad_id: int

    def eval_kwargs(self) -> dict:
        return dict(names=self.names, rank=self.env.rank, world=self.env.world_size,
                    batch_size=self.cfg.eval.batch_size, pad_id=self.pad_id)  # fmt: skip


def progress_name(cfg) -> str:
    """The progress bar's name: which job of a sweep this is (several run side by side in the main job)."""
    return f"{cfg.task.name} {'random init' if cfg.model.random_init else 'pretrained'} seed {cfg.seed}"


def setup(cfg, env: DistEnv, run_dir: Path, group: str | None) -> Finetuning:
    """Task data, process group, source weights, tokenizer, features, model, and the engine with the latest
    checkpoint loaded."""
    task = cfg.task
    src = resolve_source(cfg.model.path, cfg.model.step)
    splits, names = load_task(task, cfg.max_train_samples, cfg.max_eval_samples)
    plan = plan_batch(cfg.global_batch_size, env.world_size, cfg.engine)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = init_process_group(env, cfg.engine)
    lock = lock_run_dir(env, run_dir)  # one live run per run_dir, before anything is written there
    model_path = materialize(src, run_dir, env.rank, barrier)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    feats = {k: featurize(task, s, tokenizer, train=k == "train") for k, s in splits.items()}
    per_epoch = len(feats["train"]) // plan.global_batch
    if per_epoch == 0:
        raise TaskDataError(
            f"{splits['train'].source}: {len(feats['train'])} training features are fewer than one "
            f"global batch ({plan.global_batch}); lower global_batch_size"
        )
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
    torch.manual_seed(cfg.seed)
    model = build_task_model(model_path, task, names, cfg.model, cfg.lora)

    def check_resume(saved: dict) -> None:
        if saved.get("world_size") != env.world_size:
            raise ConfigError(
                f"{run_dir}/checkpoints was written by {saved.get('world_size')} ranks; resume with that many "
                f"processes or use a new run_dir"
            )

    run = start_run(
        cfg, env, run_dir, plan, device, model, total, TrainState(world_size=env.world_size), group=group,
        desc=progress_name(cfg), check_resume=check_resume, lock=lock,
    )  # fmt: skip
    best = CheckpointManager(run_dir / "best", 1, env.rank, barrier)
    eval_every = cfg.eval.every_steps or per_epoch
    pad_id = tokenizer.pad_token_id or 0
    return Finetuning(cfg, env, run, best, src, model_path, tokenizer, splits, feats, names, total, per_epoch,
                      eval_every, pad_id)  # fmt: skip


def finetune(cfg, env: DistEnv, run_dir: Path, group: str | None = None) -> RunResult:
    validate(cfg)
    run_dir = Path(run_dir)
    if (run_dir / "results.json").is_file():
        done = json.loads((run_dir / "results.json").read_text())
        log.info("%s already holds results.json: finished (remove it to run again)", run_dir)
        return RunResult(step=done["steps"], final=done["validation"])
    f = setup(cfg, env, run_dir, group)
    try:
        result = train(f)
    finally:  # give the signals back, also on error
        f.run.close()
    if not result.stopped:
        result.final = finish(f)
    f.run.metrics.close()
    return result


def train(f: Finetuning) -> RunResult:
    """Steps until the planned total, early stopping, a stop signal or stop_after_steps."""
    cfg, run, state, engine = f.cfg, f.run, f.run.state, f.run.engine
    window: dict[str, float] = {}
    result = RunResult(step=state.step)
    while state.step < f.total and not state.best.get("stopped_early"):
        # One optimizer step over this rank's share of the global batch.
        micro = train_micro_batches(f.feats["train"], state, run.plan, f.env, cfg.seed, f.pad_id)
        sums, _ = engine.train_step(micro, inject_nan=state.step + 1 in cfg.nan.inject_at_steps)
        state.step += 1
        state.samples += int(sums["samples"])
        state.consecutive_bad = state.consecutive_bad + 1 if sums["skipped_micro"] else 0
        for k in ("loss", "samples", "skipped_micro"):
            window[k] = window.get(k, 0.0) + sums.get(k, 0.0)
        window["steps"] = window.get("steps", 0.0) + 1
        run.bar.update(1)
        if state.consecutive_bad >= cfg.nan.max_consecutive:
            raise FloatingPointError(
                f"{state.consecutive_bad} steps in a row had a non-finite loss (step "
                f"{state.step}); lower optim.lr or use bf16 instead of fp16"
            )
        # Log the mean training loss over the window, summed across ranks.
        if state.step % cfg.logger.every_steps == 0 or state.step == f.total:
            log_window(f, window)
            window = {}
        # Evaluate; keep the best model; stop early after `patience` evaluations without improvement.
        if state.step % f.eval_every == 0 or state.step == f.total:
            evaluate_and_keep_best(f)
        # Checkpoint every N steps; on a signal (agreed by all ranks) or at stop_after_steps, checkpoint and stop.
        if run.save_or_stop(cfg, run.flag.agreed()[0], result):
            break
    result.step = state.step
    return result


def log_window(f: Finetuning, window: dict[str, float]) -> None:
    run, state, engine = f.run, f.run.state, f.run.engine
    keys = ("loss", "samples", "skipped_micro")
    t = all_reduce_sum(torch.tensor([window[k] for k in keys], dtype=torch.float64, device=engine.device)).tolist()
    used = window["steps"] * run.plan.accumulation * f.env.world_size - t[2]
    rec = {
        "loss": t[0] / max(used, 1),
        "lr": engine.lr(),
        "grad_norm": engine.grad_norm(),
        "epoch": state.epoch + state.batch_in_epoch / f.per_epoch,
        "samples": state.samples,
    }
    run.metrics.log(rec, state.step)
    run.bar.set_postfix(loss=f"{rec['loss']:.4f}")


def evaluate_and_keep_best(f: Finetuning) -> None:
    """The task's validation metric now; a better one saves the best checkpoint, else counts toward patience."""
    cfg, state, task = f.cfg, f.run.state, f.cfg.task
    val, _ = evaluate(f.run.engine, task, f.splits["validation"], f.feats["validation"], **f.eval_kwargs())
    value = val[task.main_metric]
    f.run.metrics.log({f"val_{k}": v for k, v in val.items()}, state.step)
    if better(value, state.best.get("value"), task.main_metric, cfg.eval.min_delta):
        state.best = {"value": value, "step": state.step, "bad_evals": 0}
        f.best.save(f.run.engine, state, f.run.config_yaml)
        return
    state.best["bad_evals"] += 1
    if cfg.eval.patience is not None and state.best["bad_evals"] >= cfg.eval.patience:
        state.best["stopped_early"] = True
        log.info(
            "early stop at step %d: no improvement of %s for %d evaluations (best %.4f at %d)",
            state.step, task.main_metric, cfg.eval.patience, state.best["value"], state.best["step"],
        )  # fmt: skip


def finish(f: Finetuning) -> dict:
    """The best model: its predictions and metrics on every split, best_model/, results.json. Returns the
    validation metrics."""
    cfg, env, task, state = f.cfg, f.env, f.cfg.task, f.run.state
    best_tag = f.best.latest()
    f.best.load(f.run.engine, best_tag, TrainState())
    outputs = {}
    for name, split in f.splits.items():
        if name != "train":
            outputs[name] = evaluate(f.run.engine, task, split, f.feats[name], **f.eval_kwargs())
    validation = dict(outputs["validation"][0])
    for name, suffix in task.extra_validation.items():
        if name not in outputs:
            log.warning("no %s split (task.extra_validation): its metrics are left out", name)
            continue
        validation.update({f"{k}{suffix}": v for k, v in outputs[name][0].items()})
    validation["score"] = task_score(validation, task.main_metric, task.score_metrics)
    run_dir = f.run.run_dir
    if env.rank == 0:
        for name, (_, recs) in outputs.items():
            write_jsonl(run_dir / f"predictions_{name}.jsonl", recs)
        save_hf_model(f.best.root, best_tag, f.model_path, task, f.names, cfg.model, cfg.lora, f.tokenizer,
                      run_dir / "best_model")  # fmt: skip
        results = results_record(cfg, f.run.plan, env, f.src, f.model_path, f.names, f.splits, outputs, validation,
                                 state)  # fmt: skip
        tmp = run_dir / "results.json.tmp"
        tmp.write_text(json.dumps(finite_or_none(results), indent=2))
        tmp.replace(run_dir / "results.json")
        f.run.metrics.log({f"best_val_{k}": v for k, v in validation.items()}, state.step)
        if cfg.cleanup:  # the DeepSpeed checkpoints only served resume and the best-model reload
            shutil.rmtree(f.run.ckpt.root, ignore_errors=True)
            shutil.rmtree(f.best.root.parent, ignore_errors=True)
    barrier()
    return validation


def results_record(cfg, plan, env, src, model_path, names, splits, outputs, validation, state) -> dict:
    """results.json: what launch.collect reads (task, main_metric, validation, hyperparameters.lr, seed) and more."""
    task = cfg.task
    return {
        "task": task.name,
        "task_type": task.type,
        "main_metric": task.main_metric,
        "validation": validation,
        "validation_examples": len(splits["validation"].rows),
        "test": outputs["test"][0] if "test" in outputs and splits["test"].labelled else None,
        "seed": cfg.seed,
        "hyperparameters": {
            "lr": cfg.optim.lr,
            "global_batch_size": plan.global_batch,
            "micro_batch_size": plan.micro_batch,
            "epochs": cfg.epochs,
            "max_steps": cfg.max_steps,
            "warmup_ratio": cfg.optim.warmup_ratio,
            "warmup_steps": cfg.optim.warmup_steps,
            "weight_decay": cfg.optim.weight_decay,
            "schedule": cfg.optim.schedule,
            "max_seq_len": task.max_seq_len,
            "world_size": env.world_size,
            "zero_stage": cfg.engine.zero_stage,
            "precision": cfg.engine.precision,
            "lora": OmegaConf.to_container(cfg.lora) if cfg.lora.enabled else None,
        },
        "source": {**src.as_dict(), "loaded_from": model_path, "random_init": cfg.model.random_init},
        "labels": names,
        "steps": state.step,
        "best_step": state.best["step"],
        "stopped_early": bool(state.best.get("stopped_early")),
        "predictions": {name: f"predictions_{name}.jsonl" for name in outputs},
        "best_model": "best_model",
    }
