"""The one wrapper around DeepSpeed: process group, generated DeepSpeed config, train step, eval step, save, load,
and the fp32 consolidation of a checkpoint for export.

No other module imports ``deepspeed``. The model stays a plain ``nn.Module``.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import ConfigError, EngineConfig, OptimConfig
from pipeline.dist import DistEnv, all_reduce_max, bind_device, export, initialized

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPlan:
    global_batch: int
    micro_batch: int
    accumulation: int
    world_size: int


def plan_batch(global_batch: int, world: int, engine: EngineConfig) -> BatchPlan:
    """The global batch is set once; micro-batch and accumulation follow from the world size."""
    if global_batch <= 0 or global_batch % world:
        raise ConfigError(f"global_batch_size={global_batch} is not divisible by the world size {world}")
    per_rank = global_batch // world
    if engine.micro_batch_size:
        if per_rank % engine.micro_batch_size:
            raise ConfigError(
                f"engine.micro_batch_size={engine.micro_batch_size} does not divide the per-rank batch {per_rank} "
                f"(global_batch_size={global_batch} / {world} ranks)"
            )
        micro = engine.micro_batch_size
    else:
        micro = max(d for d in range(1, min(per_rank, engine.max_micro_batch_size) + 1) if per_rank % d == 0)
    return BatchPlan(global_batch, micro, per_rank // micro, world)


def check_engine_config(engine: EngineConfig) -> None:
    if engine.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"engine.zero_stage={engine.zero_stage}: DeepSpeed ZeRO stages are 0, 1, 2 and 3")
    if engine.loader_workers < 0:
        raise ConfigError("engine.loader_workers must be >= 0")


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# Gradients are reduced in buckets of this many elements. DeepSpeed's default (5e8) is larger than bert-large
# (3.4e8): one bucket, reduced only after the whole backward. 2e7 (40 MB in bf16) gives bert-base 6 buckets and
# bert-large 17, each large enough for NCCL's bandwidth, the first reduced while the backward goes on.
REDUCE_BUCKET = 20_000_000


def deepspeed_config(engine: EngineConfig, optim: OptimConfig, plan: BatchPlan, nan_check: bool = True) -> dict:
    """The DeepSpeed JSON, generated from the engine and optim groups (saved in run_dir by the trainer).

    What costs least without changing the arithmetic (bench/README.md has the measurements' rows):
    - DeepSpeed's throughput timer off: it synchronises the device when it starts and stops, twice per micro-step
      (deepspeed/utils/timer.py, ThroughputTimer); metrics.jsonl has our own tokens/s.
    - bf16 with our non-finite check on: ZeRO-1/2's own overflow scan (``check_grad_overflow``, an isnan/isinf of
      every gradient and a host read per step) is off; our check agrees on the loss across ranks and skips the
      micro-batch before its backward.
    - bf16 at ZeRO 1-3: gradients accumulate in fp32 (``data_types.grad_accum_dtype``). DeepSpeed's
      ``_do_optimizer_sanity_check`` gives ZeRO-1 its BF16 optimizer for it and ZeRO-2/3 keep fp32 accumulation
      buffers; at ZeRO-0 it refuses the mix ("unsupported mix"), so ZeRO-0 accumulates in bf16.
    - Several ranks at ZeRO 1-3: ``overlap_comm`` with buckets of REDUCE_BUCKET elements, so the reduction of the
      last layers' gradients runs during the backward of the first ones (one rank: nothing to reduce).
    """
    bf16 = engine.precision == "bf16"
    cfg = {
        "train_batch_size": plan.global_batch,
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": plan.accumulation,
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": {"stage": engine.zero_stage},
        "bf16": {"enabled": bf16},
        "fp16": {
            "enabled": engine.precision == "fp16",
            "loss_scale": 0,
            "initial_scale_power": engine.fp16_initial_scale_power,
            "loss_scale_window": engine.fp16_loss_scale_window,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
        "timers": {"throughput": {"enabled": False}},
    }
    if bf16 and nan_check:
        cfg["bf16"]["check_grad_overflow"] = False
    if bf16 and engine.zero_stage > 0:
        cfg["data_types"] = {"grad_accum_dtype": "fp32"}
    if plan.world_size > 1 and engine.zero_stage > 0:
        cfg["zero_optimization"].update({"overlap_comm": True, "reduce_bucket_size": REDUCE_BUCKET})
    if engine.zero_stage == 3:
        cfg["zero_optimization"].update({"stage3_gather_16bit_weights_on_model_save": False})
    overrides = engine.deepspeed_overrides or {}
    if not isinstance(overrides, dict):  # a DictConfig: plain containers, so that nested keys merge
        from omegaconf import OmegaConf

        overrides = OmegaConf.to_container(overrides, resolve=True)
    return _merge(cfg, overrides)


def prepare_cpu_ops() -> None:
    """Before DeepSpeed starts on the CPU: no C++ build it does not need, and one ``ninja`` for those it does.

    ``init_distributed`` JIT-compiles DeepSpeed's shared-memory all-reduce (about 40 s of both cores here, on the first
    run in each environment). Only DeepSpeed inference's ``inference_all_reduce`` uses it, and that falls back to
    torch.distributed without it; training all-reduces through torch.distributed (gloo). So it is marked unavailable
    in ``deepspeed.ops.__compatible_ops__`` (a dict DeepSpeed keeps for the process and consults at that moment).

    Any op that is still built (CPU Adam for an offload config) is compiled with whichever ``ninja`` PATH finds first,
    into one cache (~/.cache/torch_extensions). ninja 1.12+ hashes command lines differently from older versions, so
    a run launched with the environment activated (sbatch) and one launched as ``.venv/bin/python`` without it (the
    system's ninja) each find the other's build stale and recompile. This interpreter's ``bin`` goes first on PATH
    when it holds ``ninja``, as an activated environment would."""
    import deepspeed.ops

    compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
    if isinstance(compatible, dict) and "deepspeed_shm_comm" in compatible:
        compatible["deepspeed_shm_comm"] = False
    bin_dir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "").split(os.pathsep)
    if os.path.exists(os.path.join(bin_dir, "ninja")) and path[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join([bin_dir, *(p for p in path if p != bin_dir)])


def init_process_group(env: DistEnv, engine: EngineConfig) -> torch.device:
    """Start (or join) the process group; returns this rank's device."""
    if engine.accelerator:
        os.environ["DS_ACCELERATOR"] = engine.accelerator
    cuda = torch.cuda.is_available() and engine.accelerator in (None, "cuda")
    if cuda:
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
        if engine.tf32:  # fp32 matmuls on tensor cores (TF32: 10-bit mantissa inputs, fp32 accumulation)
            torch.set_float32_matmul_precision("high")
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        device = torch.device("cpu")
        prepare_cpu_ops()
    backend = engine.backend or ("nccl" if cuda else "gloo")
    export(env)
    if not initialized():
        import deepspeed

        try:
            deepspeed.init_distributed(
                dist_backend=backend, auto_mpi_discovery=False, timeout=datetime.timedelta(seconds=engine.timeout_s)
            )
        except Exception as e:  # the store or rendezvous timed out: say where it waited
            raise RuntimeError(
                f"rank {env.rank}/{env.world_size} could not join the process group at {env.master_addr}:"
                f"{env.master_port} ({backend}) within {engine.timeout_s}s: {e}. Check that every task started, "
                f"that the master host is reachable from this node and that the port is free."
            ) from e
    bind_device(device)  # every collective of pipeline/dist.py runs on this device from now on
    return device


class Engine:
    """DeepSpeed engine + our step semantics (non-finite losses skipped by agreement of all ranks)."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer,
        scheduler,
        engine_cfg: EngineConfig,
        ds_config: dict,
        device: torch.device,
        nan_check: bool = True,
        load_universal: bool = False,
    ):
        import deepspeed

        if load_universal:  # the next load reads a universal checkpoint (another data-parallel size)
            ds_config = _merge(ds_config, {"checkpoint": {"load_universal": True}})
        self.load_universal = load_universal
        self.device = device
        self.nan_check = nan_check
        self.cfg = engine_cfg
        if engine_cfg.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=ds_config,
            dist_init_required=False,
        )
        self.module = self.ds.module
        if engine_cfg.compile:
            # The model's forward only: DeepSpeed's own forward and hooks read Python counters that change every
            # step (its throughput timer, ZeRO's backward flags), and dynamo would guard on them and recompile.
            self.module.forward = torch.compile(self.module.forward, backend=engine_cfg.compile_backend)
        self._forward = self.ds
        self._zero_grads = False  # previous step: a host flag
        self._bad = None  # lean step: a device flag (bool scalar) for the current micro-batch
        self.compiled_graphs = 0
        # DeepSpeed reports no gradient norm for ZeRO-0 in fp32 (its fp16/bf16 and ZeRO optimizers do): we take it
        # after the boundary all-reduce and before step() zeroes the gradients.
        self._own_grad_norm = engine_cfg.zero_stage == 0 and engine_cfg.precision == "fp32"
        self._grad_norm: torch.Tensor | None = None
        for p in self.module.parameters():
            if p.requires_grad:
                p.register_hook(self._grad_hook)

    def _grad_hook(self, g):
        if self._bad is not None:  # where, not a product: a NaN gradient times 0 is still NaN
            return torch.where(self._bad, torch.zeros((), dtype=g.dtype, device=g.device), g)
        return torch.zeros_like(g) if self._zero_grads else None

    def _to_device(self, batch: dict) -> dict:
        nb = self.device.type == "cuda"
        out = {k: v.to(self.device, non_blocking=nb) for k, v in batch.items() if k != "meta"}
        meta = batch.get("meta")
        fixed = isinstance(meta, dict) and meta.get("fixed_shape")
        if self.cfg.compile and "pair_ids" in out and not fixed:  # packed rows vary in number: one dynamic graph
            for k in ("input_ids", "token_type_ids", "position_ids", "pair_ids", "cu_seqlens"):
                torch._dynamo.maybe_mark_dynamic(out[k], 0)
        return out

    @staticmethod
    def _tokens(mb: dict) -> tuple[float, float, float]:
        """(real tokens, token slots, sum of squared sequence lengths) of a micro-batch: from its meta when the
        collator counted them. The last is what attention computes on (each pair attends within itself)."""
        meta = mb.get("meta")  # a dict from the pretraining loader; finetuning's is a tensor of feature indices
        if isinstance(meta, dict) and "tokens" in meta:
            return float(meta["tokens"]), float(meta["slots"]), float(meta.get("sq_tokens", 0))
        lens = mb["attention_mask"].sum(1).double()
        return float(lens.sum()), float(mb["attention_mask"].numel()), float((lens * lens).sum())

    def _nonfinite_anywhere(self, loss: torch.Tensor) -> bool:
        return bool(all_reduce_max((~torch.isfinite(loss.detach())).float().reshape(1)).item())

    def train_step(self, micro_batches: list[dict], inject_nan: bool = False) -> tuple[dict, dict]:
        """One optimizer step over the accumulation window.

        The model's forward returns a dict with ``loss`` and any other scalar tensors (losses, counts); this returns
        their sums over the micro-batches that were used (plus ``tokens``, ``slots``, ``samples``, ``skipped_micro``)
        and info.

        A micro-batch whose loss is not finite on any rank adds nothing: all ranks agree (collectives stay matched),
        its gradients are zeroed, and the step uses the rest of the window. If every micro-batch is non-finite, no
        optimizer step is taken at all.
        """
        if not self.cfg.lean_step:
            return self._train_step_synced(micro_batches, inject_nan)
        self.ds.train()
        n = len(micro_batches)
        acc, flags, keys = None, [], None
        try:
            for i, mb in enumerate(micro_batches):
                out = self._forward(**self._to_device(mb))
                loss = out["loss"] * float("nan") if inject_nan else out["loss"]
                if self.nan_check:  # an all-reduce of a device flag: no host sync (NCCL queues it on the stream)
                    bad = all_reduce_max((~torch.isfinite(loss.detach())).float().reshape(1))[0] > 0
                else:
                    bad = torch.zeros((), dtype=torch.bool, device=loss.device)
                vals = torch.stack([v.detach().float().reshape(()) for v in out.values()])
                vals = torch.where(bad, torch.zeros_like(vals), vals)
                acc, keys = (vals if acc is None else acc + vals), list(out.keys())
                flags.append(bad)
                last = i == n - 1
                if last:
                    # The one host read of the step, after the last forward: the sums and which micro-batches were
                    # bad. If all were, the boundary (reduction + optimizer step) must not happen at all.
                    host = torch.cat([acc, torch.stack(flags).float()]).cpu().tolist()
                    bad_flags = host[len(keys) :]
                    if all(bad_flags):
                        break
                self._bad = bad if self.nan_check else None
                self.ds.set_gradient_accumulation_boundary(last)
                self.ds.backward(loss)
                if last and self._own_grad_norm:
                    self._grad_norm = self._reduced_grad_norm()  # a device tensor: read when logged
                self.ds.step()
        finally:
            self._bad = None
        sums = dict(zip(keys, host[: len(keys)]))
        sums.update(tokens=0.0, slots=0.0, sq_tokens=0.0, samples=0.0, skipped_micro=float(sum(bad_flags)))
        for mb, b in zip(micro_batches, bad_flags):
            if not b:
                t, slots, sq = self._tokens(mb)
                sums["tokens"] += t
                sums["slots"] += slots
                sums["sq_tokens"] += sq
                sums["samples"] += mb["input_ids"].shape[0] if "cls_positions" not in mb else len(mb["nsp_labels"])
        self._count_graphs()
        return sums, {"good_micro": n - int(sum(bad_flags)), "bad_micro": [bool(b) for b in bad_flags]}

    def _train_step_synced(self, micro_batches: list[dict], inject_nan: bool = False) -> tuple[dict, dict]:
        """The previous step (engine.lean_step=false): the non-finite agreement and the sums read per micro-batch.
        A bad micro-batch gets no backward, except the last one when others were good: its backward runs with
        gradients zeroed so that the boundary reduction still happens."""
        self.ds.train()
        sums: dict[str, float] = {"tokens": 0.0, "slots": 0.0, "sq_tokens": 0.0, "samples": 0.0, "skipped_micro": 0.0}
        n, good, flags = len(micro_batches), 0, []
        for i, mb in enumerate(micro_batches):
            out = self._forward(**self._to_device(mb))
            loss = out["loss"] * float("nan") if inject_nan else out["loss"]
            bad = self.nan_check and self._nonfinite_anywhere(loss)
            flags.append(bool(bad))
            last = i == n - 1
            if bad:
                sums["skipped_micro"] += 1
                if not (last and good):
                    continue
                self._zero_grads = True
            self.ds.set_gradient_accumulation_boundary(last)
            self.ds.backward(loss)
            if last and self._own_grad_norm:
                self._grad_norm = self._reduced_grad_norm()
            self.ds.step()
            self._zero_grads = False
            if bad:
                continue
            good += 1
            vals = torch.stack([v.detach().float().reshape(()) for v in out.values()]).cpu().tolist()
            for k, v in zip(out.keys(), vals):
                sums[k] = sums.get(k, 0.0) + v
            t, slots, sq = self._tokens(mb)
            sums["tokens"] += t
            sums["slots"] += slots
            sums["sq_tokens"] += sq
            sums["samples"] += mb["input_ids"].shape[0] if "cls_positions" not in mb else len(mb["nsp_labels"])
        self._count_graphs()
        return sums, {"good_micro": good, "bad_micro": flags}

    def _count_graphs(self) -> None:
        if self.cfg.compile:  # graphs dynamo has compiled so far: constant once warm unless something recompiles
            from torch._dynamo.utils import counters

            self.compiled_graphs = int(counters["stats"]["unique_graphs"])

    @torch.no_grad()
    def eval_step(self, batch: dict) -> dict:
        """The model's outputs for one batch (scalars as floats, other tensors kept, e.g. for predictions)."""
        self.ds.eval()
        out = self._forward(**self._to_device(batch))
        return {k: (float(v) if v.numel() == 1 else v.detach().cpu()) for k, v in out.items()}

    def lr(self) -> float:
        return float(self.ds.get_lr()[0])

    def _reduced_grad_norm(self) -> torch.Tensor | None:
        """The L2 norm of the gradients as the optimizer sees them (averaged over ranks, before clipping)."""
        grads = [p.grad.detach().float() for p in self.module.parameters() if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else None

    def grad_norm(self) -> float | None:
        g = self.ds.get_global_grad_norm()
        if g is None and self._own_grad_norm and self._grad_norm is not None:
            g = self._grad_norm
        return None if g is None else float(g)

    def loss_scale(self) -> float | None:
        return float(self.ds.loss_scale()) if self.cfg.precision == "fp16" else None

    def overflow_skips(self) -> int:
        return int(getattr(self.ds, "skipped_steps", 0))

    def save(self, ckpt_root: Path, tag: str, client_state: dict) -> None:
        """Collective: every rank calls it. DeepSpeed's own 'latest' file is never written (see checkpoint.py)."""
        self.ds.save_checkpoint(str(ckpt_root), tag=tag, client_state=client_state, save_latest=False)

    def load(self, ckpt_root: Path, tag: str) -> dict:
        root, name = (Path(ckpt_root) / tag, UNIVERSAL) if self.load_universal else (Path(ckpt_root), tag)
        path, client_state = self.ds.load_checkpoint(
            str(root), tag=name, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {root}/{name}")
        if self.load_universal:  # later saves and loads are ordinary ones at this size
            self.ds._config.load_universal_checkpoint = False
            self.load_universal = False
        return client_state or {}

    def load_optimizer_from(self, ckpt_root: Path, tag: str, universal: Path | None) -> None:
        """Another run's optimizer state (its moments and step count; not its schedule, step counter, learning rate
        or other hyperparameters: this run has its own). ``universal``: that checkpoint converted by
        ``convert_to_universal``, needed when it was written partitioned (ZeRO 1-3, bf16, fp16).

        A partitioned optimizer here loads it by DeepSpeed's universal route (any stage and world size on either
        side; the engine must have been built with ``load_universal``), which also restores the weights (the values
        the caller loaded already) and that run's param-group values, clip value and counters: those are put back.
        A plain optimizer (ZeRO-0 fp32) takes the state parameter by parameter, by name."""
        if isinstance(self.optimizer, torch.optim.Optimizer):  # not a DeepSpeed wrapper
            names = {id(p): n for n, p in self.module.named_parameters()}
            order = [names[id(p)] for g in self.optimizer.param_groups for p in g["params"]]
            states, step = optimizer_state_by_name(ckpt_root, tag, universal, order)
            for name, p in self.module.named_parameters():
                if name in states:
                    moments = {k: v.to(p.device, torch.float32).reshape(p.shape) for k, v in states[name].items()}
                    step_t = torch.tensor(float(step), dtype=torch.float32, device=p.device)
                    self.optimizer.state[p] = {"step": step_t, **moments}
            return
        if universal is None or not self.load_universal:
            raise RuntimeError("a partitioned optimizer loads another run's state from its universal checkpoint")
        opt = self.ds.optimizer
        groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        clip = getattr(opt, "clip_grad", None)
        path, _ = self.ds.load_checkpoint(
            str(universal.parent), tag=universal.name, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load {universal}")
        for g, own in zip(opt.param_groups, groups):
            g.update(own)
        if clip is not None:
            opt.clip_grad = clip
        self.ds.global_steps = self.ds.global_samples = self.ds.skipped_steps = 0
        self.ds._config.load_universal_checkpoint = False  # later saves and loads are this run's own
        self.load_universal = False

    def memory(self) -> dict:
        if self.device.type == "cuda":
            return {"mem_gb": torch.cuda.max_memory_allocated(self.device) / 2**30}
        import psutil

        return {"mem_gb": psutil.Process().memory_info().rss / 2**30}


UNIVERSAL = "universal"  # step_N/universal/: the cached universal form of step_N


def partitioned(folder: Path) -> bool:
    """Whether a checkpoint holds optimizer state partitioned per rank (ZeRO 1-3, or bf16's optimizer at stage 0),
    which only loads at another data-parallel size through DeepSpeed's universal checkpoint."""
    return any(Path(folder).glob("*optim_states.pt"))


def convert_to_universal(ckpt_root: Path, tag: str, out: Path | None = None) -> Path:
    """``step_N/universal/`` (or ``out``) from ``step_N`` (DeepSpeed's ds_to_universal), built once and cached: rank 0.

    It is built in a temporary folder and renamed when complete, so a failed or killed conversion leaves the original
    checkpoint as it was and is simply redone next time. Checkpoints lack the ``universal_checkpoint_info`` client
    state the converter asks for; ``inject_missing_state`` adds it to its own copy. ``out``: somewhere else than
    beside the checkpoint (another run's checkpoint, which this run only reads).
    """
    import argparse
    import shutil
    import time

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    folder = Path(ckpt_root) / tag
    out = Path(out) if out is not None else folder / UNIVERSAL
    tmp = out.with_name(f".{out.name}.tmp")
    if (out / "COMPLETE").is_file():
        return out
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    args = argparse.Namespace(
        input_folder=str(folder),
        output_folder=str(tmp),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,
    )
    try:
        ds_to_universal(args)
        (tmp / "COMPLETE").write_text(tag + "\n")
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(
            f"converting {folder} to a universal checkpoint failed ({type(e).__name__}: {e}); the checkpoint is "
            f"untouched. Resume with the world size it was written with, or report this with the log."
        ) from e
    finally:
        (tmp.parent / "latest_universal").unlink(missing_ok=True)  # the converter's own pointer, next to its output
    tmp.rename(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log.info("converted %s to a universal checkpoint in %.1fs (%.1f MB, cached in %s)", tag, time.perf_counter() - t0,
             size / 1e6, out)  # fmt: skip
    return out


def optimizer_state_by_name(
    ckpt_root: Path, tag: str, universal: Path | None, order: list[str]
) -> tuple[dict[str, dict[str, torch.Tensor]], float]:
    """A checkpoint's optimizer state per parameter name (fp32 ``exp_avg``, ``exp_avg_sq``) and its step count: from
    ``universal`` (the checkpoint converted by ``convert_to_universal``) when it was written partitioned, else from
    its model file, where ZeRO-0 keeps the optimizer's own state dict (parameters numbered in ``order``)."""
    keys = ("exp_avg", "exp_avg_sq")
    if universal is not None:
        zero, states, step = Path(universal) / "zero", {}, 0.0
        for name in order:
            folder = zero / name
            if not (folder / f"{keys[0]}.pt").is_file():  # no state for it (an optimizer that never stepped)
                continue
            states[name] = {k: torch.load(folder / f"{k}.pt", weights_only=True)["param"].float() for k in keys}
            if (folder / "step.pt").is_file():
                step = float(torch.load(folder / "step.pt", weights_only=True))
        return states, step
    model = torch.load(Path(ckpt_root) / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
    sd = model.get("optimizer")
    if not sd or not sd.get("state"):
        raise RuntimeError(f"{Path(ckpt_root) / tag} holds no optimizer state")
    ids = [i for g in sd["param_groups"] for i in g["params"]]
    if len(ids) != len(order):
        raise RuntimeError(f"{Path(ckpt_root) / tag}: {len(ids)} optimizer parameters, this model has {len(order)}")
    states = {
        order[k]: {key: sd["state"][i][key].float() for key in keys} for k, i in enumerate(ids) if i in sd["state"]
    }
    step = next((float(st["step"]) for st in sd["state"].values() if "step" in st), 0.0)
    return states, step


def consolidated_state_dict(ckpt_root: Path, tag: str) -> dict[str, torch.Tensor]:
    """fp32 weights of a checkpoint of any ZeRO stage (DeepSpeed's own consolidation); stage 0 reads the model file."""
    folder = Path(ckpt_root) / tag
    if any(folder.glob("*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_root), tag)
    else:
        states = torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
        sd = dict(states["module"])
        for alias, target in (states.get("shared_params") or {}).items():
            sd.setdefault(alias, sd[target])
    return {k: v.float().contiguous() for k, v in sd.items()}


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True))
