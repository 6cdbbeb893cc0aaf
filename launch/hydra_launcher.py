"""hydra-submitit-launcher's launchers, with failures that look like failures (conf/hydra/launcher/*.yaml; Hydra
loads launchers only from the ``hydra_plugins`` package, so hydra_plugins/bertrun_launcher names these classes).

Upstream, Hydra's ``run_job`` catches the task's exception and returns it inside a JobReturn; submitit then pickles
that as a successful result, logs "Job completed successfully", and Slurm records the failed job as COMPLETED 0:0.
Here the job raises instead (the step and the array task end FAILED, the log shows the traceback), and the
submitting side reports the failed jobs in one line, pointing at their logs and at ``launch.collect``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

from launch.checks import LaunchError


class FailLoudly:
    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        ret = super().__call__(*args, **kwargs)
        if ret.status == JobStatus.FAILED:
            raise ret._return_value  # the task's own exception, with its traceback, in the job's log
        return ret

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        try:
            return super().launch(job_overrides, initial_job_idx)
        except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as e:
            sweep = Path(str(self.config.hydra.sweep.dir))
            m = re.search(r"Job (\S+) \(task", str(e))
            job = m.group(1) if m else "?"
            logs = sorted(sweep.glob(f".submitit/{job}/*_0_log.err"))
            raise LaunchError(
                f"sweep job {job} failed (the first to be waited for); its log: {logs[0] if logs else sweep}. "
                f"Every failed or missing job: python -m launch.collect {sweep}"
            ) from e
