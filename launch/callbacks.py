"""Hydra callback: before a submitit multirun submits anything, compose and check every job's config (a typo in one
sweep point fails here, not on a node after hours in the queue), and refuse a Slurm request that cannot requeue,
names a partition that does not exist, or that no node of the partition can hold (configured in conf/pretrain.yaml
and conf/finetune.yaml)."""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from launch.checks import LaunchError, check_capacity, check_slurm_request


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """Each job's overrides, expanded from the command line as Hydra's basic sweeper expands them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def check_sweep_configs(config: DictConfig, world_size: int) -> None:
    """Compose every job's config with Hydra's own loader (as the launcher will on the node) and check it."""
    from hydra.core.global_hydra import GlobalHydra

    from pipeline.cli import one_line
    from pipeline.preflight import check_config

    stage = str(config.hydra.job.config_name)
    loader = GlobalHydra.instance().config_loader()
    for num, overrides in enumerate(sweep_jobs(config)):
        try:
            cfg = loader.load_sweep_config(config, list(overrides))
            check_config(stage, cfg, world_size)
        except Exception as e:
            line = one_line(e) or (str(e) if isinstance(e, ValueError) else None)
            if line is None:
                raise
            raise LaunchError(f"sweep job #{num} ({' '.join(overrides)}): {line}; nothing was submitted") from e


class LaunchChecks(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns an exception raised by a callback into a warning and goes on to submit: exit instead.
        from pipeline.cli import USER_ERROR, report
        from pipeline.config import ConfigError

        try:
            self.check(config)
        except ConfigError as e:
            report(str(e))
            sys.exit(USER_ERROR)

    def check(self, config: DictConfig) -> None:
        launcher = config.hydra.launcher
        target = str(launcher.get("_target_", ""))
        if not target.endswith(("SlurmLauncher", "LocalLauncher")):
            return  # the basic launcher runs jobs here, one by one: each fails at its own start
        if "Slurm" in target:
            check_slurm_request(
                partition=launcher.get("partition"),
                timeout_min=int(launcher.timeout_min),
                signal_delay_s=int(launcher.signal_delay_s),
                max_num_timeout=int(launcher.max_num_timeout),
                tasks_per_node=int(launcher.tasks_per_node),
                gpus_per_node=launcher.get("gpus_per_node"),
            )
            check_capacity(
                launcher.get("partition"),
                int(launcher.nodes),
                int(launcher.tasks_per_node),
                launcher.get("cpus_per_task"),
                launcher.get("mem_gb"),
                launcher.get("gpus_per_node"),
            )
        check_sweep_configs(config, int(launcher.get("nodes") or 1) * int(launcher.tasks_per_node))
