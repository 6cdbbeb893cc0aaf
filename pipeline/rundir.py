"""A run_dir holds one run: the same command resumes it; a change to what the run *is* is refused before any work;
a change to how long or how fast it runs continues, said in the log and kept in the run_dir.

The run's recorded values are read from its latest complete checkpoint's ``config.yaml``: that is what the weights
and the optimizer state are. The run_dir's own ``config.yaml`` says only what the last start asked for, which may
have died before its first checkpoint (nothing trained to contradict; the next start is a fresh one) or, in run_dirs
from before this check, have been rewritten by a command that then failed. A finished finetune has no checkpoints
left (``cleanup``): its ``results.json`` came from the last start, whose values are in ``config.yaml``.

Every start keeps its config in ``configs/start-N.yaml`` (with a comment saying what it resumed and what changed)
and in ``config.yaml``; an older run_dir's ``config.yaml`` (from before ``configs/`` was kept) becomes
``configs/start-1.yaml`` first. Nothing is written before the check passes, so the record never says something the
checkpoints contradict.

``check_run_dir`` runs in every process before the stage starts (pipeline/run.py ``run_stage``); ``record_start`` on
rank 0 once the run_dir is locked (``start_run``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import typing
from enum import Enum
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.checkpoint import CheckpointManager
from pipeline.config import ConfigError
from pipeline.storage import storage_error

log = logging.getLogger(__name__)

# What a change to a key does when a run_dir already holds a run.
FIXED = "fixed"  # the checkpoints hold it (weight shapes, the optimizer's state and layout): refused, always
DEFINES = "defines"  # what the run is: refused unless allow_config_change=true
COURSE = "course"  # how long, and the schedule it learns on from here: continues (a finished finetune refuses it)
RUNTIME = "runtime"  # how fast it runs, how it reports and saves: continues
DATA = "data"  # the data: continues here, checked by the data's fingerprint (pretrain/loop.py, data.allow_data_change)
IGNORED = "ignored"  # switches and places: where the run_dir is, when to stop this time

# One table for every stage: a key, or a prefix ending in "."; the longest match wins. A key it does not name,
# including any key added to a schema later, DEFINES the run: a refusal costs one more command (another run_dir or
# allow_config_change=true), a silent continue mixes two runs in one run_dir, which nothing afterwards can undo.
RULES: dict[str, str] = {
    **dict.fromkeys(
        ("model.hidden_size", "model.num_layers", "model.num_heads", "model.intermediate_size", "model.vocab_size",
         "model.vocab_multiple_of", "model.max_position_embeddings", "model.type_vocab_size", "task.type",
         "lora.enabled", "lora.r", "lora.target_modules", "optim.name", "engine.zero_stage", "engine.precision"),
        FIXED,
    ),
    **dict.fromkeys(
        ("max_steps", "epochs", "optim.lr", "optim.warmup_steps", "optim.warmup_ratio", "optim.schedule",
         "optim.decay_ratio", "optim.min_lr_ratio", "optim.betas", "optim.eps", "optim.weight_decay",
         "optim.grad_clip", "eval.every_steps", "eval.max_batches", "eval.at_end", "eval.patience", "eval.min_delta"),
        COURSE,
    ),
    **dict.fromkeys(
        ("engine.micro_batch_size", "engine.max_micro_batch_size", "engine.loader_workers", "engine.prefetch_factor",
         "engine.activation_checkpointing", "engine.compile", "engine.compile_backend", "engine.lean_step",
         "engine.backend", "engine.accelerator", "engine.timeout_s", "engine.fp16_initial_scale_power",
         "engine.fp16_loss_scale_window", "engine.tf32", "eval.batch_size", "model.attention", "data.packing",
         "data.fixed_shapes", "data.packed_rows",
         "data.pad_to_multiple_of", "data.verify", "data.on_bad_shard", "logger.", "checkpoint.", "preempt.", "nan.",
         "name", "cleanup"),
        RUNTIME,
    ),
    **dict.fromkeys(("data.path", "data.weights", "data.names"), DATA),
    # Where a phase starts from: read once, when the run has no checkpoint of its own (pretrain/phase.py).
    **dict.fromkeys(
        ("run_dir", "stop_after_steps", "allow_config_change", "data.allow_data_change", "hydra.", "init_from_run",
         "init_from_run_step", "init_optimizer"),
        IGNORED,
    ),
}  # fmt: skip


def kind(key: str) -> str:
    """The table's class for ``key`` (DEFINES when no entry names it)."""
    for i in range(key.count(".") + 1):
        head = key.rsplit(".", i)[0]
        if head in RULES:
            return RULES[head]
        if f"{head}." in RULES:
            return RULES[f"{head}."]
    return DEFINES


@dataclasses.dataclass(frozen=True)
class Change:
    key: str
    old: object
    new: object

    @property
    def kind(self) -> str:
        return kind(self.key)

    def __str__(self) -> str:
        return f"{self.key} {_show(self.old)} -> {_show(self.new)}"


def _show(v) -> str:
    if v is None:
        return "null"
    if v == "":
        return "''"
    if isinstance(v, bool):
        return str(v).lower()
    return json.dumps(v) if isinstance(v, list | dict) else str(v)


_GONE, _FREE = object(), object()  # no default (a key the schema no longer has); an entry of a free-form dict


def schema_default(schema: type | None, key: str):
    """The schema's own default for ``key`` through nested dataclasses; _GONE for a key no field names, _FREE for an
    entry of a dict-valued field (engine.deepspeed_overrides.*)."""
    node: object = schema
    for part in key.split("."):
        if isinstance(node, dict):
            if part not in node:
                return _FREE
            node = node[part]
            continue
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return _GONE
        field = next((f for f in dataclasses.fields(node) if f.name == part), None)
        if field is None:
            return _GONE
        if field.default_factory is not dataclasses.MISSING:
            node = field.default_factory()
        elif field.default is not dataclasses.MISSING and field.default != "???":
            node = field.default
        else:  # a group without a default (model, engine, task): its schema class
            node = typing.get_type_hints(node).get(part)
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            node = type(node)
    return _GONE if isinstance(node, type) else _plain(node)


def _plain(v):
    if isinstance(v, Enum):
        return v.name
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    return v


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = _plain(v)
    return out


def changes(cfg, recorded: dict) -> list[Change]:
    """The keys whose value differs between ``recorded`` (a config.yaml) and ``cfg``. A key the recorded config lacks
    was added to the schema since: compared with the schema's default (the behaviour the run had then). A key only
    the recorded config holds was removed from the schema (engine.seed_workers_by_rank): not compared."""
    new = flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    old = flatten(recorded)
    schema = OmegaConf.get_type(cfg)
    schema = schema if dataclasses.is_dataclass(schema) else None
    out = []
    for key in sorted(set(new) | set(old)):
        if kind(key) == IGNORED:
            continue
        default = schema_default(schema, key) if schema else _GONE
        if key not in new and default is not _FREE:
            continue  # removed from the schema (or a field that turned into a group): nothing to compare it with
        before = old.get(key, None if default is _GONE or default is _FREE else default)
        after = new.get(key)
        if before != after:
            out.append(Change(key, before, after))
    return out


def recorded_config(run_dir: Path) -> tuple[dict | None, str]:
    """The values the run in ``run_dir`` holds, and where they were read: the latest complete checkpoint's config,
    else a finished finetune's config.yaml; (None, "") for a run_dir with neither (nothing to contradict)."""
    run_dir = Path(run_dir)
    tag = CheckpointManager(run_dir, 1, 0, None).latest()
    if tag and (run_dir / "checkpoints" / tag / "config.yaml").is_file():
        return _load(run_dir / "checkpoints" / tag / "config.yaml"), f"checkpoints/{tag}"
    if (run_dir / "results.json").is_file() and (run_dir / "config.yaml").is_file():
        return _load(run_dir / "config.yaml"), "results.json"
    return None, ""


def _load(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}


def check_run_dir(cfg, run_dir: Path) -> None:
    """Refuse, before any work, a command that would change what the run in ``run_dir`` is: one line naming each
    key (old -> new) and the ways out. A finished finetune refuses any change its results would not reflect."""
    run_dir = Path(run_dir)
    recorded, where = recorded_config(run_dir)
    if recorded is None:
        return
    found = changes(cfg, recorded)
    if (run_dir / "results.json").is_file():  # the stage hands these results back as they are (finetune)
        refused = [c for c in found if c.kind not in (RUNTIME, DATA)]
        if refused:
            raise ConfigError(
                f"run_dir={run_dir} holds a finished run (results.json) with other values: {_list(refused)}; its "
                f"results stay as they are: use another run_dir (or remove {run_dir} to run it again there)"
            )
        return
    fixed = [c for c in found if c.kind == FIXED]
    refused = [c for c in found if c.kind == FIXED or (c.kind == DEFINES and not cfg.get("allow_config_change"))]
    if not refused:
        return
    if fixed:
        out = f"the checkpoints cannot take another {', '.join(c.key for c in fixed)}: use another run_dir"
    else:
        out = "use another run_dir, or allow_config_change=true to continue this run with the new values"
    raise ConfigError(
        f"run_dir={run_dir} holds a run with other values ({where}): {_list(refused)}; a run_dir holds one run: {out}"
    )


def _list(found: list[Change]) -> str:
    return ", ".join(map(str, found))


def record_start(cfg, run_dir: Path, config_yaml: str) -> None:
    """Rank 0, once the run_dir is locked and checked: log what changed since the recorded values, and keep this
    start's config in ``configs/start-N.yaml`` and ``config.yaml``."""
    run_dir = Path(run_dir)
    recorded, where = recorded_config(run_dir)
    last = run_dir / "config.yaml"
    if recorded is None and last.is_file():  # no checkpoint: nothing trained to contradict, a fresh start
        found = changes(cfg, _load(last))
        head = "no checkpoint to resume from: a fresh start"
        if found:
            head += f"; changed since the last start: {_list(found)}"
            log.info("%s", head)
    elif recorded is not None:
        found = changes(cfg, recorded)
        allowed = " (allow_config_change=true)" if any(c.kind == DEFINES for c in found) else ""
        head = f"resumed from {where}" + (f"; changed on resume{allowed}: {_list(found)}" if found else "")
        if found:  # a warning, so that it reaches the console of every stage (finetune's shows warnings only)
            log.warning("changed on resume%s: %s", allowed, _list(found))
    else:
        head = "a fresh start"
    configs = run_dir / "configs"
    try:
        configs.mkdir(exist_ok=True)
        starts = sorted(int(p.stem.split("-")[1]) for p in configs.glob("start-*.yaml") if p.stem[6:].isdigit())
        if not starts and last.is_file():  # a run_dir from before configs/ was kept: its last start's config first
            _write(configs / "start-1.yaml", "# found as config.yaml (written before configs/ was kept)\n"
                   + last.read_text())  # fmt: skip
            starts = [1]
        n = (starts[-1] if starts else 0) + 1
        _write(configs / f"start-{n}.yaml", f"# start {n}: {head}\n{config_yaml}")
        _write(last, config_yaml)
    except OSError as e:
        raise storage_error(f"writing {configs}", run_dir, e, "nothing was trained; free space and run again") from e


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
