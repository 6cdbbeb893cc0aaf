"""A stage's config composed and checked without running anything: what a submitting machine does before a job is
queued (launch.submit, the bertrun Hydra launchers, launch.check in the sbatch script), so that a typo fails in
seconds here instead of after hours in the queue.

Checks only what needs no data, model or process group: composition (unknown keys, values outside a choice, missing
presets), required values left at ``???``, interpolations, and the batch plan for the job's world size. The input
paths the job will read are looked for on this machine too, but a missing one is a warning (``path_warnings``).
"""

from __future__ import annotations

import difflib
import itertools
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from pipeline.config import ConfigError
from pipeline.stages import CONF_DIR, LAUNCHABLE, schema


def compose(stage: str, overrides: list[str]) -> DictConfig:
    """The stage's config as its entry point would compose it (conf/<stage>.yaml plus overrides)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    if stage not in LAUNCHABLE:
        raise ValueError(f"unknown stage {stage!r}: expected one of {', '.join(LAUNCHABLE)}")
    schema(stage)  # importing the schema's module registers it (and its groups' schemas) in Hydra's ConfigStore
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=stage, overrides=list(overrides))


def check_config(stage: str, cfg: DictConfig, world_size: int) -> None:
    """Raise ConfigError (one line, the key and the fix) for what would fail at the start of the job."""
    from pipeline.engine import check_engine_config, plan_batch

    job = cfg
    if "hydra" in cfg:  # a sweep job's config, as Hydra's launcher builds it: only the job's own keys count here
        job = cfg.copy()
        with open_dict(job):
            del job["hydra"]
    missing = sorted(OmegaConf.missing_keys(job))
    if missing:
        raise ConfigError(f"{missing[0]} is required and has no value: give {missing[0]}=...")
    try:
        OmegaConf.to_container(job, resolve=True)
    except Exception as e:  # an interpolation that cannot resolve; the message names the key
        raise ConfigError(" ".join(str(e).split("\n")[0:1])) from e
    check_engine_config(cfg.engine)
    plan_batch(cfg.global_batch_size, world_size, cfg.engine)
    if cfg.max_steps is not None and cfg.max_steps <= 0:
        raise ConfigError(f"max_steps={cfg.max_steps} must be positive")
    if stage == "finetune" and cfg.epochs <= 0:
        raise ConfigError(f"epochs={cfg.epochs} must be positive")
    if job.get("run_dir"):  # a changed command in an existing run_dir is refused here, before the job is queued
        from pathlib import Path

        from pipeline.rundir import check_run_dir

        check_run_dir(job, Path(job.run_dir))


def check_job(stage: str, overrides: list[str], world_size: int) -> DictConfig:
    """Compose and check one job; every failure is a ConfigError with the one line the entry points would print."""
    from pipeline.cli import one_line

    try:
        cfg = compose(stage, overrides)
    except Exception as e:
        line = one_line(e)
        if line is None:
            raise
        raise ConfigError(line) from e
    check_config(stage, cfg, world_size)
    return cfg


def _looks_like_path(value: str) -> bool:
    """A finetune model.path may also be a hub id (``bert-base-uncased``, ``google/bert_uncased_L-2_H-128_A-2``)."""
    return value.startswith(("/", "./", "../", "~")) or Path(value).exists()


def _entries(folder: Path, most: int = 10_000) -> list[str]:
    """Names in ``folder`` (none if it cannot be read), at most ``most``: a shared data folder can be huge."""
    try:
        return [e.name for e in itertools.islice(folder.iterdir(), most)]
    except OSError:
        return []


def path_warnings(stage: str, cfg: DictConfig) -> list[str]:
    """One line per input path of the job that this machine does not see, with the folder's closest entry.

    Warnings, not errors: a cluster's data often sits on a filesystem mounted only on the compute nodes, and the
    submitting machine cannot tell. But it is usually the same filesystem, and then a missing path is a typo that
    would otherwise be found only after the job waited in the queue.
    """
    wanted: list[tuple[str, str, str]] = []  # (key, path, "dir" or "file")
    if stage == "pretrain":
        wanted.append(("data.path", str(cfg.data.path), "dir"))
    elif stage == "finetune":
        if _looks_like_path(str(cfg.model.path)):
            wanted.append(("model.path", str(cfg.model.path), "dir"))
        wanted += [(f"task.data_files.{k}", str(v), "file") for k, v in (cfg.task.data_files or {}).items() if v]
    out = []
    for key, value, kind in wanted:
        path = Path(value).expanduser()
        if path.is_dir() if kind == "dir" else path.is_file():
            if key == "data.path" and not (path / "manifest.json").is_file():
                out.append(f"{key}={value}: no manifest.json in it here (data_prep writes it last): the job will fail")
            continue
        close = difflib.get_close_matches(path.name, _entries(path.parent), n=1)
        hint = f" (did you mean {path.parent / close[0]}?)" if close else ""
        out.append(f"{key}={value}: no such {'directory' if kind == 'dir' else 'file'} on this machine{hint}; "
                   f"the job will fail unless its nodes see it")  # fmt: skip
    return out
