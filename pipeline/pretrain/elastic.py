"""The rest of an epoch after a resume on another data layout (world size, loader streams or micro-batch).

The epoch plan (streams.py) gives each of ``world * streams`` streams a slice of the epoch. When the layout changes
mid-epoch, the new streams cannot continue the old slices, so what the old streams had not yet read is gathered
(in stream order) and cut again into equal slices, one per new stream: no sample of the epoch is repeated or skipped
(apart from the plan's usual remainder of fewer than one batch per stream). The order then differs from an
uninterrupted run's; the next epoch is planned as usual for the new layout.

A stream has read whole blocks up to the current one and the first part of the current one (blocks are shuffled and
length-bucketed, so which samples is data-dependent): the current block is served again here, with the old layout,
to learn its order. Everything is a pure function of the layouts and positions recorded in ``TrainState.resplits``,
so every rank computes the same plan with no communication, and a later resume (even on yet another layout)
recomputes it.
"""

from __future__ import annotations

import logging

from pipeline.pretrain.streams import Piece, PretrainStreams, StreamSettings

log = logging.getLogger(__name__)


def _pieces_of(keys: list[tuple[int, int]]) -> list[Piece]:
    """Sorted (shard, index) keys as pieces, runs of consecutive indices coalesced."""
    out: list[Piece] = []
    for shard, i in sorted(keys):
        if out and out[-1].shard == shard and out[-1].stop == i:
            out[-1] = Piece(shard, out[-1].start, i + 1)
        else:
            out.append(Piece(shard, i, i + 1))
    return out


def _positions(pieces: list[Piece], lo: int, hi: int) -> list[Piece]:
    """Positions lo..hi of a stream (its pieces laid end to end) as pieces."""
    out, pos = [], 0
    for p in pieces:
        n = p.stop - p.start
        a, b = max(lo, pos), min(hi, pos + n)
        if a < b:
            out.append(Piece(p.shard, p.start + a - pos, p.start + b - pos))
        pos += n
    return out


def unread(old: list[PretrainStreams], batches_per_rank: int) -> list[Piece]:
    """What the streams of ``old`` (one object per old rank) had not read after each rank served ``batches_per_rank``
    micro-batches of the epoch, stream after stream."""
    rest: list[Piece] = []
    for ds in old:
        w, mbs = ds.w, ds.mbs
        bsz = -(-ds.block // mbs) * mbs if ds.shuffle and ds.block > 0 else mbs
        for local in range(w):
            pieces = ds.pieces[ds.rank * w + local]
            length = sum(p.stop - p.start for p in pieces)
            read = (batches_per_rank - local + w - 1) // w * mbs  # this stream's share of the rank's batches
            block = read // bsz * bsz
            if read > block:  # inside a block: serve it again to learn which of its samples came first
                first = block // mbs
                seen: list[tuple[int, int]] = []
                for b in ds._stream_batches(local, first):
                    seen.extend(b["meta"]["samples"])
                    if len(seen) >= read - block:
                        break
                names = {s.name: i for i, s in enumerate(ds.shards)}
                taken = {(names[n], i) for n, i in seen[: read - block]}
                end = min(block + bsz, length)
                keys = [(p.shard, i) for p in _positions(pieces, block, end) for i in range(p.start, p.stop)]
                rest.extend(_pieces_of([k for k in keys if k not in taken]))
                block = end
            rest.extend(_positions(pieces, max(block, read), length))
    return rest


def split(pieces: list[Piece], n_streams: int) -> tuple[list[list[Piece]], int]:
    """Cut pieces laid end to end into ``n_streams`` equal slices (the remainder is dropped, as in plan_epoch)."""
    total = sum(p.stop - p.start for p in pieces)
    per = total // n_streams
    return [_positions(pieces, s * per, (s + 1) * per) for s in range(n_streams)], per


def _identity_only(samples, rng) -> dict:
    """Re-splitting needs which samples a stream served, not their masked tokens: skip the collation."""
    return {}


def epoch_plan(shards, settings: StreamSettings, epoch: int, resplits: list[dict], world: int, streams: int):
    """The plan of the current epoch for the layout (world, streams) after the recorded re-splits; None: the usual."""
    plan = None
    layouts = [*resplits[1:], {"world": world, "streams": streams}]
    for r, new in zip(resplits, layouts):
        old = [
            PretrainStreams(
                shards,
                _identity_only,
                settings,
                rank=rank,
                world=r["world"],
                streams_per_rank=r["streams"],
                micro_batch=r["micro"],
                epoch=epoch,
                plan=plan,
            )
            for rank in range(r["world"])
        ]
        plan = split(unread(old, r["batches"]), new["world"] * new["streams"])
    return plan


def note_layout(state, world: int, streams: int, micro: int) -> None:
    """After loading a checkpoint: if the data layout changed mid-epoch, record the old one (the rest of the epoch is
    re-split, see epoch_plan) and restart the position count for the new plan."""
    old = {"world": state.world_size, "streams": state.streams_per_rank, "micro": state.micro_batch}
    if (old["world"], old["streams"], old["micro"]) != (world, streams, micro) and state.batch_in_epoch > 0:
        state.resplits = [*state.resplits, {**old, "batches": state.batch_in_epoch}]
        state.batch_in_epoch = 0
        log.warning(
            "the data layout changed mid-epoch (%d ranks x %d streams, micro-batch %d -> %d x %d, %d): the samples "
            "the old streams had not read are re-split among the new ones; no sample of epoch %d is repeated or "
            "skipped, but their order differs from an uninterrupted run's",
            old["world"], old["streams"], old["micro"], world, streams, micro, state.epoch,
        )  # fmt: skip
    state.world_size, state.streams_per_rank, state.micro_batch = world, streams, micro
