"""What bertrun's Hydra launchers (conf/hydra/launcher/*.yaml; the classes are in hydra_plugins/bertrun_launcher)
add to hydra-submitit-launcher's: every job checked before anything is queued, and failures that look like failures.

- Before submitting, the launcher holds every job's overrides: each job's config is composed as the node will compose
  it and checked for the job's world size (pipeline/preflight.py), and a Slurm request that cannot requeue, names a
  partition that does not exist, or that no node can hold is refused (launch/resources.py). One line, exit 2, no job
  queued.
- Upstream, Hydra's ``run_job`` catches the task's exception and returns it inside a JobReturn; submitit then pickles
  that as a successful result, logs "Job completed successfully", and Slurm records the failed job as COMPLETED 0:0.
  Here the job raises instead (the step and the array task end FAILED, the log shows the traceback), and the
  submitting side reports the failed jobs in one line, pointing at their logs and at ``launch.collect``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus

from launch.resources import LaunchError, check_capacity, check_slurm_request


def raise_failed(ret: JobReturn) -> JobReturn:
    """On the node: a failed job raises its own exception (with its traceback, in the job's log)."""
    if ret.status == JobStatus.FAILED:
        raise ret._return_value
    return ret


def check_jobs(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> None:
    """Every job's config for the job's world size (a LaunchError names the job), then the Slurm request: a typo is
    the first thing to fix, and a refusal of the request would only be followed by it."""
    from pipeline.cli import one_line
    from pipeline.config import ConfigError
    from pipeline.preflight import check_config

    p, config = launcher.params, launcher.config
    stage, world = str(config.hydra.job.config_name), int(p.get("nodes") or 1) * int(p["tasks_per_node"])
    loader = launcher.hydra_context.config_loader
    for num, overrides in enumerate(job_overrides, start=initial_job_idx):
        try:
            check_config(stage, loader.load_sweep_config(config, list(overrides)), world)
        except Exception as e:
            line = one_line(e) or (str(e) if isinstance(e, ConfigError | ValueError) else None)
            if line is None:
                raise
            raise LaunchError(f"sweep job #{num} ({' '.join(overrides)}): {line}; nothing was submitted") from e
    if launcher._EXECUTOR == "slurm":
        check_slurm_request(
            partition=p.get("partition"),
            timeout_min=int(p["timeout_min"]),
            signal_delay_s=int(p["signal_delay_s"]),
            max_num_timeout=int(p["max_num_timeout"]),
            tasks_per_node=int(p["tasks_per_node"]),
            gpus_per_node=p.get("gpus_per_node"),
        )
        given = {
            o.lstrip("+").split("=", 1)[0].removeprefix("hydra.launcher.")
            for o in config.hydra.overrides.hydra
            if o.lstrip("+").startswith("hydra.launcher.")
        }
        check_capacity(
            p.get("partition"),
            int(p["nodes"]),
            int(p["tasks_per_node"]),
            p.get("cpus_per_task"),
            p.get("mem_gb"),
            p.get("gpus_per_node"),
            preset={"nodes", "tasks_per_node", "cpus_per_task", "mem_gb", "gpus_per_node"} - given,
            spell=lambda key, value: f"hydra.launcher.{key}={value}",
        )


def launch_checked(
    launcher, launch: Callable, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> Sequence[JobReturn]:
    """Check every job, launch them, and turn the first failed job into one line naming its log."""
    import submitit

    check_jobs(launcher, job_overrides, initial_job_idx)
    try:
        return launch(job_overrides, initial_job_idx)
    except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as e:
        sweep = Path(str(launcher.config.hydra.sweep.dir))
        m = re.search(r"Job (\S+) \(task", str(e))
        job = m.group(1) if m else "?"
        logs = sorted(sweep.glob(f".submitit/{job}/*_0_log.err"))
        raise LaunchError(
            f"sweep job {job} failed (the first to be waited for); its log: {logs[0] if logs else sweep}. "
            f"Every failed or missing job: python -m launch.collect {sweep}"
        ) from e
