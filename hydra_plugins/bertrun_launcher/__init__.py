"""Hydra finds launchers only in the hydra_plugins namespace: bertrun's submitit launchers, whose failed jobs end
FAILED in Slurm (the behaviour lives in launch/hydra_launcher.py)."""

from hydra_plugins.hydra_submitit_launcher import submitit_launcher as upstream

from launch.hydra_launcher import FailLoudly


class SlurmLauncher(FailLoudly, upstream.SlurmLauncher):
    pass


class LocalLauncher(FailLoudly, upstream.LocalLauncher):
    pass
