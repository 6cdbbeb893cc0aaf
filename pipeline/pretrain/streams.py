"""The batches of one rank for one epoch, from data_prep's shards: an exact epoch plan, streams that read it, and
the DataLoader around them. ``data.py`` (the trainer's loader across epochs) and ``elastic.py`` (re-splitting an
epoch after a resume on another layout) build on this module; it imports neither.

The plan (why not webdataset's ``split_by_node``): the manifest knows how many samples each shard holds, so every
rank can compute the same plan with no communication. Each epoch, shards are shuffled (seeded by epoch) and
concatenated; the sequence is cut into ``world_size * streams_per_rank`` equal slices, one per stream (a loader
worker reads one stream). Every rank therefore gets exactly the same number of batches, whatever the shard sizes
(uneven shards never hang a collective), and a shard may be split between two streams, so even a single shard feeds
every rank. The remainder (fewer than one sample per stream, plus incomplete batches) is dropped and counted.

Inside a stream, samples are shuffled in blocks of ``data.shuffle_block`` (seeded by epoch, stream and block), then
batched and collated (masked, and packed when asked) with a generator seeded by (seed, epoch, stream, batch): the
batches are a pure function of the seed and the position, so resuming at batch k reproduces the uninterrupted run
exactly. Resuming opens the shard that holds the block of batch k directly: only that one shard is read from its
start.

Shards are read with webdataset's tar iterators; samples are decoded by data_prep/format.py only (never pickle).
"""

from __future__ import annotations

import logging
import signal
import tarfile
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset import gopen
from webdataset.tariterators import group_by_keys, tar_file_expander

from data_prep import format as records
from data_prep.format import DataError, Shard
from pipeline.pretrain.blend import Piece, Plan, blend_order, pass_order

log = logging.getLogger(__name__)

# A collate function: the samples of a micro-batch (ids, a_len, nsp_label) and the batch's own generator -> a batch
# dict (pipeline/pretrain/masking.py's Masker, or packing.py's PackingCollator, which masks and then packs).
Collate = Callable[[list, np.random.Generator], dict]


@dataclass(frozen=True)
class StreamSettings:
    """How streams order and read samples: the part of the config the plan and the streams depend on."""

    seed: int
    shuffle: bool  # shards shuffled per epoch, and samples inside shuffle blocks
    shuffle_block: int  # samples shuffled together inside a stream (0: no shuffle)
    length_buckets: bool  # inside a shuffle block, batch sequences of similar length
    on_bad: str  # a bad sample or shard: "skip" (replaced, counted) or "error"

    @classmethod
    def of(cls, cfg) -> StreamSettings:
        d = cfg.data
        return cls(int(cfg.seed), d.shuffle_shards, d.shuffle_block, d.length_buckets, str(d.on_bad_shard))

    def in_order(self) -> StreamSettings:
        """Validation: every sample once, in shard order."""
        return replace(self, shuffle=False, shuffle_block=0, length_buckets=False)


# ---------------------------------------------------------------------------------------------------------------
# The plan (of one source; blend.py plans several, in the same way)


def plan_epoch(sizes: list[int], n_streams: int, epoch: int, seed: int, shuffle: bool) -> tuple[list[list[Piece]], int]:
    """Split one epoch into ``n_streams`` slices of equal sample count. Returns (pieces per stream, samples each)."""
    order = pass_order(len(sizes), epoch, seed, shuffle)
    per_stream = sum(sizes) // n_streams
    streams: list[list[Piece]] = [[] for _ in range(n_streams)]
    s, room = 0, per_stream
    if per_stream == 0:
        return streams, 0
    for idx in order:
        pos, size = 0, sizes[idx]
        while pos < size and s < n_streams:
            take = min(room, size - pos)
            streams[s].append(Piece(int(idx), pos, pos + take))
            pos += take
            room -= take
            if room == 0:
                s, room = s + 1, per_stream
    return streams, per_stream


# ---------------------------------------------------------------------------------------------------------------
# Streams


def read_samples(shard: Shard, start: int, on_bad: str):
    """Yield (ids, a_len, nsp_label) for the samples of ``shard`` from ``start`` on; ``None`` for a bad sample.

    A tar that breaks off mid-way yields ``None`` for each sample it still owed (the plan's counts stay exact).
    """
    produced = 0
    try:
        stream = gopen(shard.url, "rb")
        try:
            for sample in group_by_keys(tar_file_expander([{"url": shard.url, "stream": stream}], eof_value=None)):
                if produced < start:
                    produced += 1
                    continue
                why = records.check_sample(sample)
                if why is None:
                    try:
                        meta = records.decode_meta(sample[records.META_KEY])
                        item = (
                            records.decode_ids(sample[records.IDS_KEY]),
                            int(meta["a_len"]),
                            int(meta["next_sentence_label"]),
                        )
                    except (ValueError, KeyError, TypeError, OSError) as e:
                        why, item = f"undecodable ({e})", None
                if why is not None:
                    if on_bad == "error":
                        raise DataError(f"shard {shard.url}: sample {sample.get('__key__')} is bad: {why}")
                    item = None
                produced += 1
                yield item
        finally:
            stream.close()
    except (tarfile.TarError, OSError, EOFError) as e:
        if on_bad == "error":
            raise DataError(
                f"shard {shard.url} is unreadable after {produced} samples ({type(e).__name__}: {e}). "
                f"Re-run data_prep into the same output, or set data.on_bad_shard=skip"
            ) from e
        log.warning("shard %s broke off after %d samples (%s): the rest counts as bad", shard.url, produced, e)
    while produced < shard.samples:
        produced += 1
        yield None


class PretrainStreams(IterableDataset):
    """The batches of one rank for one epoch, from batch ``start_batch`` on, in a fixed order, collated by ``collate``.

    Batch k of the rank comes from the rank's stream ``k % W`` (W streams, one per loader worker) as that stream's
    batch ``k // W``. Starting at k0, loader worker p serves stream ``(k0 + p) % W``, so the DataLoader's
    round-robin over workers yields k0, k0+1, ... exactly.

    ``plan``: the epoch's plan when it is not the single-source default (blend.py's, or the rest of an epoch re-split
    by elastic.py): per stream, per source, its pieces. A stream reads each source's pieces in order, interleaved by
    ``blend_order``, so a position in a stream is a position in each of its sources.
    """

    def __init__(
        self,
        shards: list[Shard],
        collate: Collate,
        settings: StreamSettings,
        *,
        rank: int,
        world: int,
        streams_per_rank: int,
        micro_batch: int,
        epoch: int,
        start_batch: int = 0,
        tag: int = 0,
        plan: Plan | tuple | None = None,
    ):
        self.shards, self.collate, self.settings = shards, collate, settings
        self.rank, self.world, self.w = rank, world, streams_per_rank
        self.mbs, self.epoch, self.start, self.tag = micro_batch, epoch, start_batch, tag
        self.seed, self.shuffle, self.block = settings.seed, settings.shuffle, settings.shuffle_block
        if plan is None:
            plan = plan_epoch([s.samples for s in shards], world * self.w, epoch, self.seed + 1000 * tag, self.shuffle)
        streams, self.per_stream = (plan.streams, plan.per_stream) if isinstance(plan, Plan) else plan
        # One source's plan (plan_epoch's, or a caller's from before blends): a list of pieces per stream.
        self.pieces = [st if not st or isinstance(st[0], list) else [st] for st in streams]
        self.n_sources = max((len(st) for st in self.pieces), default=1)
        self.owner = np.zeros(len(shards), dtype=np.int64)  # each shard's source, for per-source counts
        for st in self.pieces:
            for src, pieces in enumerate(st):
                for p in pieces:
                    self.owner[p.shard] = src
        self.batches_per_stream = self.per_stream // micro_batch
        self.batches_per_epoch = self.batches_per_stream * self.w  # per rank

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start)

    def _source_samples(self, pieces: list[Piece], pos: int):
        """((shard, index), sample or None) of one source's pieces from position ``pos`` on. A reader stays open
        across pieces that go forward in the same shard (a re-split plan has many one-sample pieces)."""
        cum = np.cumsum([0] + [p.stop - p.start for p in pieces])
        i = bisect_right(cum, pos) - 1
        gen, at = None, (-1, 0)
        try:
            while i < len(pieces):
                p = pieces[i]
                local_start = p.start + (pos - cum[i])
                if gen is None or at[0] != p.shard or at[1] > local_start:
                    if gen is not None:
                        gen.close()
                    gen = read_samples(self.shards[p.shard], local_start, self.settings.on_bad)
                    at = (p.shard, local_start)
                for _ in range(local_start - at[1]):
                    next(gen)
                for k in range(local_start, p.stop):
                    yield (p.shard, k), next(gen)
                at = (p.shard, p.stop)
                i, pos = i + 1, cum[i + 1]
        finally:
            if gen is not None:
                gen.close()

    def _samples_from(self, stream: int, pos: int):
        """((shard, index), sample or None) from position ``pos`` of a stream on: its sources interleaved."""
        sources = self.pieces[stream]
        if len(sources) == 1:
            yield from self._source_samples(sources[0], pos)
            return
        order = self.order(stream)
        gens = [self._source_samples(p, int(np.count_nonzero(order[:pos] == s))) for s, p in enumerate(sources)]
        try:
            for s in order[pos:].tolist():  # Python ints: a numpy scalar per sample costs more than the lookup
                yield next(gens[s])
        finally:
            for g in gens:
                g.close()

    def order(self, stream: int) -> np.ndarray:
        """The source of each position of a stream."""
        return blend_order(tuple(sum(p.stop - p.start for p in src) for src in self.pieces[stream]))

    def _stream_batches(self, local: int, first_batch: int):
        """Yield batches ``first_batch..`` of this rank's stream ``local``."""
        stream = self.rank * self.w + local
        # Blocks are whole batches, so that resuming at a batch starts at a batch boundary of its block.
        bsz = -(-self.block // self.mbs) * self.mbs if self.shuffle and self.block > 0 else self.mbs
        offset = first_batch * self.mbs
        block_idx = offset // bsz
        skip_in_block = offset - block_idx * bsz
        total = sum(p.stop - p.start for src in self.pieces[stream] for p in src)

        def samples_from(pos: int):
            return self._samples_from(stream, pos)

        src = samples_from(block_idx * bsz)
        fallback = None
        pending: list = []  # (sample, was_bad)
        batch_idx, pos = first_batch, block_idx * bsz
        while batch_idx < self.batches_per_stream:
            block = [next(src) for _ in range(min(bsz, total - pos))]
            pos += len(block)
            good = [x for x in block if x[1] is not None]
            if len(good) < len(block):
                if not good:  # a whole block unreadable: fill from the stream's first readable samples
                    good = fallback = fallback if fallback is not None else self._first_good(samples_from, bsz, stream)
                # A bad sample is replaced by a good one of its block, so every rank keeps its batch count.
                fill = np.random.default_rng([self.seed, self.epoch, stream, block_idx, 99])
                block = [(x, False) if x[1] is not None else (good[fill.integers(len(good))], True) for x in block]
            else:
                block = [(x, False) for x in block]
            if self.shuffle and self.block > 0:
                order = np.random.default_rng([self.seed, self.tag, self.epoch, stream, block_idx]).permutation(
                    len(block)
                )
                block = [block[j] for j in order]
                if self.settings.length_buckets:  # batches of similar lengths (less padding), in a random order
                    block = sorted(block, key=lambda item: len(item[0][1][0]))
                    chunks = [block[i : i + self.mbs] for i in range(0, len(block), self.mbs)]
                    rng = np.random.default_rng([self.seed, self.tag, self.epoch, stream, block_idx, 2])
                    block = [x for j in rng.permutation(len(chunks)) for x in chunks[j]]
            if skip_in_block:
                block, skip_in_block = block[skip_in_block:], 0
            pending.extend(block)
            while len(pending) >= self.mbs and batch_idx < self.batches_per_stream:
                chunk, pending = pending[: self.mbs], pending[self.mbs :]
                rng = np.random.default_rng([self.seed, self.tag, self.epoch, stream, batch_idx, 1])
                batch = self.collate([x[1] for x, _ in chunk], rng)
                owner = self.owner[[x[0][0] for x, _ in chunk]]
                batch["meta"] = {
                    **batch.get("meta", {}),
                    "epoch": self.epoch,
                    "stream": stream,
                    "batch": batch_idx,
                    "bad_samples": sum(b for _, b in chunk),  # replaced by a good sample of the block
                    "samples": [(self.shards[x[0][0]].name, x[0][1]) for x, _ in chunk],  # identity: (shard, index)
                    # Per source: samples and real tokens (a sample's token count is its length).
                    "source_samples": np.bincount(owner, minlength=self.n_sources).tolist(),
                    "source_tokens": np.bincount(owner, [len(x[1][0]) for x, _ in chunk], self.n_sources)
                    .astype(np.int64)
                    .tolist(),
                }
                yield batch
                batch_idx += 1
            block_idx += 1
            if pos >= total and batch_idx < self.batches_per_stream:
                raise AssertionError(f"stream {stream} ran out at batch {batch_idx} of {self.batches_per_stream}")

    def _first_good(self, samples_from, n: int, stream: int) -> list:
        """Up to n readable samples from the start of the stream (history-free, so a resumed run fills alike)."""
        good = []
        for x in samples_from(0):
            if x[1] is not None:
                good.append(x)
                if len(good) == n:
                    break
        if not good:
            names = sorted({self.shards[p.shard].name for src in self.pieces[stream] for p in src})
            raise DataError(f"no readable sample in stream {stream} (shards {', '.join(names)}); rerun data_prep")
        return good

    def __iter__(self):
        info = get_worker_info()
        p, n_workers = (info.id, info.num_workers) if info else (0, 1)
        if n_workers == 1 and self.w > 1:
            yield from self._round_robin()
            return
        if n_workers != self.w:
            raise RuntimeError(f"{n_workers} loader workers for {self.w} streams")
        local = (self.start + p) % self.w
        yield from self._stream_batches(local, (self.start + p) // self.w)

    def _round_robin(self):
        gens = [self._stream_batches((self.start + p) % self.w, (self.start + p) // self.w) for p in range(self.w)]
        while gens:
            alive = []
            for g in gens:
                try:
                    yield next(g)
                    alive.append(g)
                except StopIteration:
                    pass
            gens = alive


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """Loader workers ignore TERM/USR2/INT: Slurm signals every process of a job step, and a worker killed mid-step
    would take the trainer down before it could finish the step and save. The trainer stops them itself."""
    for s in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)


def make_loader(ds: PretrainStreams, workers: int, prefetch_factor: int, pin_memory: bool) -> DataLoader:
    """``workers`` must equal the dataset's streams per rank (or be 0: one process serves them all in order)."""
    kw = {"prefetch_factor": prefetch_factor, "worker_init_fn": ignore_stop_signals} if workers > 0 else {}
    # An explicit generator: otherwise creating the iterator draws from the global torch RNG, which drives dropout,
    # and a resumed run (which creates its iterator at another time) would draw different dropout masks.
    gen = torch.Generator().manual_seed(0)
    return DataLoader(ds, batch_size=None, num_workers=workers, pin_memory=pin_memory, generator=gen, **kw)
