"""Hydra callback: refuse a Slurm multirun that cannot requeue or names a partition that does not exist,
before any job is submitted (configured in conf/pretrain.yaml and conf/finetune.yaml)."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from launch.checks import check_slurm_request


class LaunchChecks(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = config.hydra.launcher
        if "SlurmLauncher" not in str(launcher.get("_target_", "")):
            return
        check_slurm_request(
            partition=launcher.get("partition"),
            timeout_min=int(launcher.timeout_min),
            signal_delay_s=int(launcher.signal_delay_s),
            max_num_timeout=int(launcher.max_num_timeout),
            tasks_per_node=int(launcher.tasks_per_node),
            gpus_per_node=launcher.get("gpus_per_node"),
        )
