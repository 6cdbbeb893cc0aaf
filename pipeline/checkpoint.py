"""Checkpoints: one manager owns the folder names, the 'latest' pointer and keep-last-k.

Layout in ``run_dir/checkpoints/``::

    step_00001000/          DeepSpeed's files (model, optimizer, scheduler; any ZeRO stage)
        rank_00000.pt       per-rank RNG states (torch, CUDA, Python) — loaded with weights_only=True
        trainer_state.json  step, data position, counters, data fingerprint (written by rank 0)
        config.yaml         the resolved config
        COMPLETE            written last, after every rank finished (barrier)
    latest.json             {"tag": ..., "step": ...}, replaced atomically after COMPLETE exists

DeepSpeed's own ``latest`` file is never written (``save_latest=False``): DeepSpeed writes it with a plain write
before its final barrier, so a crash could leave it naming a partial checkpoint. A folder without ``COMPLETE`` is
never loaded; it is removed when the next save starts.

Testing aid: ``BERTRUN_PAUSE_IN_SAVE=STEP:SECONDS[:RELEASE_FILE]`` makes rank 0 sleep inside the save of step STEP,
after every rank has written its files and before ``COMPLETE``, so a test can ``kill -9`` the run inside that window.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pipeline.storage import remove_quietly, storage_error, write_failed

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this rank consumed in the current epoch
    samples: int = 0
    tokens: int = 0
    skipped_steps: int = 0  # optimizer steps with every micro-batch non-finite
    skipped_micro: int = 0  # micro-batches dropped for a non-finite loss
    consecutive_bad: int = 0
    bad_samples: int = 0
    world_size: int = 1
    streams_per_rank: int = 1
    micro_batch: int = 0  # 0: not recorded (older checkpoints)
    resplits: list = field(default_factory=list)  # layouts this epoch was re-split from (pretrain/elastic.py)
    data_fingerprint: str = ""
    tokenizer_sha256: str = ""
    best: dict = field(default_factory=dict)
    blend: dict = field(default_factory=dict)  # data sources: mix, positions, counts (pretrain/blend.py, elastic.py)
    init_from: dict = field(default_factory=dict)  # the run, step and tokens this run started from (pretrain/phase.py)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            if hasattr(self, k):
                setattr(self, k, v)


def rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in st["python"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _pause_for_tests(step: int) -> None:
    """``STEP:SECONDS[:RELEASE_FILE]``: the pause ends early once RELEASE_FILE exists (a test that needs the window
    open for as long as another process takes to start, and no longer)."""
    aid = os.environ.get("BERTRUN_PAUSE_IN_SAVE", "")
    if aid and int(aid.split(":")[0]) == step:
        log.warning("BERTRUN_PAUSE_IN_SAVE: pausing inside the save of step %d", step)
        parts = aid.split(":", 2)
        deadline = time.monotonic() + float(parts[1])
        release = Path(parts[2]) if len(parts) > 2 else None
        while time.monotonic() < deadline and not (release is not None and release.exists()):
            time.sleep(0.2)


class CheckpointManager:
    def __init__(self, run_dir: Path, keep_last: int, rank: int, barrier):
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last = max(1, keep_last)
        self.rank = rank
        self.barrier = barrier

    @staticmethod
    def tag(step: int) -> str:
        return f"step_{step:08d}"

    def complete_tags(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.glob("step_*") if (p / "COMPLETE").is_file())

    def latest(self) -> str | None:
        """The newest complete checkpoint: the pointer's, or (pointer lost) the newest folder with COMPLETE."""
        pointer = self.root / "latest.json"
        if pointer.is_file():
            try:
                tag = json.loads(pointer.read_text())["tag"]
                if (self.root / tag / "COMPLETE").is_file():
                    return tag
                log.warning("latest.json names %s, which is not complete; falling back to a scan", tag)
            except (ValueError, KeyError) as e:
                log.warning("unreadable %s (%s); falling back to a scan", pointer, e)
        tags = self.complete_tags()
        return tags[-1] if tags else None

    def trainer_state(self, tag: str) -> dict:
        return json.loads((self.root / tag / "trainer_state.json").read_text())

    def save(self, engine, state: TrainState, config_yaml: str) -> str:
        tag = self.tag(state.step)
        folder = self.root / tag
        previous = self.latest()
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if folder.exists():  # an earlier save of this step that did not complete
                shutil.rmtree(folder)
        self.barrier()
        try:
            engine.save(self.root, tag, client_state={"trainer": state.state_dict()})
            torch.save(rng_state(), folder / f"rank_{self.rank:05d}.pt")
            self.barrier()
            if self.rank == 0:
                _pause_for_tests(state.step)
                _atomic_write(folder / "trainer_state.json", json.dumps(state.state_dict(), indent=2))
                _atomic_write(folder / "config.yaml", config_yaml)
                _atomic_write(folder / "COMPLETE", tag + "\n")
                _atomic_write(self.root / "latest.json", json.dumps({"tag": tag, "step": state.step}))
        except (OSError, RuntimeError) as e:
            if not write_failed(e):
                raise
            # latest.json still names the previous complete checkpoint: nothing is lost but the steps since.
            if self.rank == 0:
                remove_quietly(folder)
            resume = f"step {int(previous[5:])} ({self.root / previous})" if previous else "step 0 (no checkpoint yet)"
            raise storage_error(
                f"saving checkpoint {tag} (step {state.step}) in {self.root}", self.root, e,
                f"the run stopped and resumes from {resume} when the same command runs again, once space is freed "
                f"(or point run_dir elsewhere)",
            ) from e  # fmt: skip
        if self.rank == 0:
            self._prune(keep=tag)
        self.barrier()
        return tag

    def _prune(self, keep: str) -> None:
        tags = [t for t in self.complete_tags() if t != keep]
        for old in tags[: max(0, len(tags) - (self.keep_last - 1))]:
            shutil.rmtree(self.root / old, ignore_errors=True)
        for p in self.root.glob("step_*"):
            if p.name != keep and not (p / "COMPLETE").exists():
                shutil.rmtree(p, ignore_errors=True)

    def load(self, engine, tag: str, state: TrainState) -> None:
        client = engine.load(self.root, tag)
        state.load_state_dict(client.get("trainer") or self.trainer_state(tag))
        rng_file = self.root / tag / f"rank_{self.rank:05d}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=True))
        else:
            log.warning("%s missing: RNG not restored (dropout masks will differ from the original run)", rng_file)
