"""One metrics interface: ``log(metrics, step)`` and ``close()``.

``metrics.jsonl`` always (rank 0), W&B as one more sink, nothing at all on other ranks. The loop never asks
which sinks exist.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from pathlib import Path

from pipeline.storage import storage_error

log = logging.getLogger(__name__)


class Sink:
    def log(self, metrics: dict, step: int) -> None:  # noqa: B027 - a do-nothing default on purpose
        pass

    def close(self) -> None:  # noqa: B027
        pass


class JsonlSink(Sink):
    def __init__(self, path: Path, resume_step: int | None):
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self.f = open(self.path, "a", buffering=1)  # noqa: SIM115 - open for the life of the run

    def _truncate_after(self, step: int) -> None:
        """Records logged after the checkpoint we resume from are logged again by the resumed run."""
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, self.path)

    def log(self, metrics: dict, step: int) -> None:
        rec = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        try:
            self.f.write(json.dumps(rec) + "\n")
        except OSError as e:
            raise storage_error(
                f"writing {self.path} (step {step})", self.path.parent, e,
                "the run stopped; free space and run the same command again: it resumes from its last complete "
                "checkpoint",
            ) from e  # fmt: skip

    def close(self) -> None:
        self.f.close()


def last_validation(run_dir: Path) -> dict:
    """The val_* metrics of the last evaluation in ``run_dir/metrics.jsonl``, and its step as ``val_step`` ({} when
    none). The file holds the run's whole history up to now (a resume drops what came after its checkpoint), so a
    start that evaluated nothing (a finished run run again, eval.at_end=false) still reports the run's last one."""
    path = Path(run_dir) / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in reversed(lines):
        if '"val_' in line:
            rec = json.loads(line)
            return {**{k: v for k, v in rec.items() if k.startswith("val_")}, "val_step": rec["step"]}
    return {}


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class WandbSink(Sink):
    """W&B run whose id is kept in ``run_dir/wandb_id`` so a resumed or requeued job continues the same run."""

    def __init__(self, run_dir: Path, cfg, config: dict, default_group: str | None):
        import wandb

        id_file = Path(run_dir) / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id)
        self.run = wandb.init(
            id=run_id,
            resume="allow",
            mode=cfg.mode,
            project=cfg.project,
            entity=cfg.entity,
            name=cfg.name or Path(run_dir).name,
            group=cfg.group or default_group,
            tags=list(cfg.tags),
            config=config,
            dir=str(run_dir),
        )
        self.run_id = run_id

    def log(self, metrics: dict, step: int) -> None:
        self.run.log({k: v for k, v in metrics.items() if isinstance(v, int | float)}, step=step)

    def close(self) -> None:
        self.run.finish()


class Metrics(Sink):
    def __init__(self, sinks: list[Sink]):
        self.sinks = sinks

    def log(self, metrics: dict, step: int) -> None:
        for s in self.sinks:
            s.log(metrics, step)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def build_metrics(
    rank: int, run_dir: Path, logger_cfg, config: dict, resume_step: int | None, default_group: str | None = None
) -> Metrics:
    if rank != 0:
        return Metrics([])
    sinks: list[Sink] = [JsonlSink(Path(run_dir) / "metrics.jsonl", resume_step)]
    if logger_cfg.wandb.mode != "disabled":
        sinks.append(WandbSink(run_dir, logger_cfg.wandb, config, default_group))
    return Metrics(sinks)
