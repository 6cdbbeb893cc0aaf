"""Hydra finds launchers only in the hydra_plugins namespace: bertrun's submitit launchers, which check every job
before queueing it and whose failed jobs end FAILED in Slurm (the behaviour lives in launch/hydra_launcher.py).

Hydra imports every module of this namespace on every run, the trainer's included (its plugin scan): launch code is
imported only when a sweep is launched, so that ``python -m pipeline.pretrain`` never loads it.
"""

from hydra_plugins.hydra_submitit_launcher import submitit_launcher as upstream


class _Checked:
    def launch(self, job_overrides, initial_job_idx):
        from launch.hydra_launcher import launch_checked

        return launch_checked(self, super().launch, job_overrides, initial_job_idx)

    def __call__(self, *args, **kwargs):
        from launch.hydra_launcher import raise_failed

        return raise_failed(super().__call__(*args, **kwargs))


class SlurmLauncher(_Checked, upstream.SlurmLauncher):
    pass


class LocalLauncher(_Checked, upstream.LocalLauncher):
    pass
