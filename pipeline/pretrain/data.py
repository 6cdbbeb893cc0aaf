"""The trainer's micro-batches: this rank's batches from a position on, across epochs (streams.py plans and reads
each epoch; elastic.py re-splits the rest of an epoch after a resume on another layout), and the collate function a
run's config asks for (masking, then packing when ``data.packing``)."""

from __future__ import annotations

import json
import logging
import os
import time

from data_prep.format import DataError, DataSpec
from pipeline.pretrain.elastic import current_plan, describe, next_epoch
from pipeline.pretrain.masking import Masker, continuation_table
from pipeline.pretrain.packing import PackingCollator
from pipeline.pretrain.sources import Blend, Source, new_state
from pipeline.pretrain.streams import Collate, PretrainStreams, StreamSettings, make_loader

log = logging.getLogger(__name__)


def build_collate(cfg, spec: DataSpec, seq_len: int) -> tuple[Masker, Collate]:
    """The masker (validation masks with it) and the training collate function: the masker itself, or packing after
    it (packing is a step of collation, after masking: the loader's plan and positions are the unpacked ones)."""
    d = cfg.data
    cont = continuation_table(spec.tokenizer_dir, spec.vocab_size) if d.whole_word_masking else None
    fixed = seq_len if d.fixed_shapes else None
    masker = Masker(spec, d.mlm_probability, d.max_predictions_per_seq, d.pad_to_multiple_of, d.whole_word_masking,
                    cont, fixed_width=fixed)  # fmt: skip
    if not d.packing:
        return masker, masker
    return masker, PackingCollator(masker, seq_len, d.pad_to_multiple_of, d.fixed_shapes, d.packed_rows)


class Batches:
    """This rank's micro-batches from a position on, across epochs, with the time spent waiting for them.

    ``position`` is any object with ``epoch``, ``batch_in_epoch``, ``resplits`` and ``blend`` (the trainer's state):
    it is advanced in place, so a checkpoint of it resumes at the next batch. ``data`` is one data_prep output or a
    blend of several (sources.py; planned by blend.py).
    """

    def __init__(
        self,
        data: Blend | DataSpec,
        collate: Collate,
        settings: StreamSettings,
        *,
        rank: int,
        world: int,
        micro: int,
        workers: int,
        prefetch: int,
        pin: bool,
        position,
    ):
        self.blend = data if isinstance(data, Blend) else Blend([Source("data", data, None)])
        self.collate, self.settings = collate, settings
        self.rank, self.world, self.micro, self.pin, self.position = rank, world, micro, pin, position
        # One stream per loader worker (0 workers: one stream, read in the trainer's process).
        self.workers, self.prefetch, self.streams = workers, prefetch, max(1, workers)
        self.wait_s = 0.0
        self._it = None
        # Testing aid: BERTRUN_SAMPLE_LOG=PATH appends each micro-batch's sample ids to PATH.rank<r> (JSON lines).
        self._sample_log = os.environ.get("BERTRUN_SAMPLE_LOG")

    def _open(self):
        pos = self.position
        if not pos.blend:  # a run that starts (or a checkpoint from before blends: one source, at pass ``epoch``)
            pos.blend = new_state(self.blend, pos.epoch)
        self.plan = current_plan(self.blend, self.settings, pos, self.world, self.streams)
        ds = PretrainStreams(
            self.blend.shards,
            self.collate,
            self.settings,
            rank=self.rank,
            world=self.world,
            streams_per_rank=self.streams,
            micro_batch=self.micro,
            epoch=pos.epoch,
            start_batch=pos.batch_in_epoch,
            plan=self.plan,
        )
        if ds.batches_per_epoch == 0:
            root = ", ".join(str(s.spec.root) for s in self.blend.sources)
            raise DataError(
                f"{root}: {sum(s.samples for s in self.blend.shards)} train samples cannot "
                f"make one micro-batch of {self.micro} for each of {self.world} ranks x {self.streams} streams. "
                f"Use more data, fewer engine.loader_workers or a smaller engine.micro_batch_size."
            )
        if len(self.blend.sources) > 1 and self.rank == 0 and pos.batch_in_epoch == 0 and not pos.resplits:
            log.info("epoch %d, samples per stream: %s", pos.epoch, describe(self.blend, pos, self.plan))
        self.batches_per_epoch = ds.batches_per_epoch
        self._it = iter(make_loader(ds, self.workers, self.prefetch, self.pin))

    def _new_epoch(self) -> None:
        next_epoch(self.position, self.blend, self.plan)

    def close(self) -> None:
        """Stop the loader workers now: they ignore TERM (see ignore_stop_signals), so multiprocessing's exit-time
        terminate() could not stop them if the iterator outlived the run (an exception holding it, say)."""
        it, self._it = self._it, None
        stop = getattr(it, "_shutdown_workers", None)  # torch's own shutdown: sentinel, join
        if stop is not None:
            stop()

    def next(self) -> dict:
        t0 = time.perf_counter()
        pos = self.position
        if self._it is None:
            self._open()
        batch = next(self._it, None)
        if batch is None:  # end of epoch
            self._new_epoch()
            self._open()
            batch = next(self._it)
        pos.batch_in_epoch += 1
        if self._sample_log:
            with open(f"{self._sample_log}.rank{self.rank}", "a") as f:
                f.write(json.dumps({"epoch": pos.epoch, "samples": batch["meta"]["samples"]}) + "\n")
        if pos.batch_in_epoch == self.batches_per_epoch:
            self._new_epoch()
            self._it = None  # the loader is exhausted; the next call opens the next epoch
        self.wait_s += time.perf_counter() - t0
        return batch
