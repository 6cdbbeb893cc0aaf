"""The rest of an epoch after its plan changed mid-way: a resume on another data layout (world size, loader streams or
micro-batch), or with another mix of sources (``data.allow_data_change``).

**Another layout.** The epoch plan gives each of ``world * streams`` streams a slice of the epoch. When the layout
changes mid-epoch, the new streams cannot continue the old slices, so what the old streams had not yet read is
gathered (in stream order, source by source) and cut again into equal slices, one per new stream: no sample of the
epoch is repeated or skipped (apart from the plan's usual remainder of fewer than one sample per stream and the
incomplete batches). Each source's rest is cut on its own, so every new stream keeps the blend's shares. The order
then differs from an uninterrupted run's; the next epoch is planned as usual for the new layout.

**Another mix.** The epoch ends at the resume step; what its plan had not yet read is carried into the next epoch,
planned with the new weights, where each source's rest comes first in that source's claim (the epoch is lengthened
if a rest is larger than the new weight would claim). So nothing is repeated or skipped here either, and every
source goes on from where it was: a change of weights is never a change of position. A removed source's rest is
dropped; a source added starts at its first pass.

A stream has read whole blocks up to the current one and the first part of the current one (blocks are shuffled and
length-bucketed, so which samples is data-dependent): the current block is served again here, with the old layout,
to learn its order. Everything is a pure function of what ``TrainState`` records (``resplits``: the layouts this
epoch was re-split from; ``blend``: the mix, each source's position at the start of the epoch, and the epoch a mix
change interrupted), so every rank computes the same plan with no communication, and a later resume (even on yet
another layout or mix) recomputes it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from data_prep.format import DataSpec, Shard
from pipeline.pretrain.blend import Piece, Plan, Seq, advance, claim, length, plan_summary, positions
from pipeline.pretrain.sources import Blend, Source, match_sources, mix_changes, new_state
from pipeline.pretrain.streams import PretrainStreams, StreamSettings

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


def unread(old: list[PretrainStreams], batches_per_rank: int, exact: bool = True) -> list[list[Piece]]:
    """Per source, what the streams of ``old`` (one object per old rank) had not read after each rank served
    ``batches_per_rank`` micro-batches of the epoch, stream after stream. ``exact=False`` (a source of the old plan
    is gone, so its blocks cannot be served again): the current block counts as unread, its read part included."""
    rest: list[list[Piece]] = [[] for _ in range(old[0].n_sources)]
    for ds in old:
        w, mbs = ds.w, ds.mbs
        bsz = -(-ds.block // mbs) * mbs if ds.shuffle and ds.block > 0 else mbs
        for local in range(w):
            sources = ds.pieces[ds.rank * w + local]
            order = ds.order(ds.rank * w + local)

            def at(pos: int, s: int, order=order) -> int:  # position in source s of position ``pos`` of the stream
                return int(np.count_nonzero(order[:pos] == s))

            read = (batches_per_rank - local + w - 1) // w * mbs  # this stream's share of the rank's batches
            block = read // bsz * bsz
            if read > block and exact:  # inside a block: serve it again to learn which of its samples came first
                seen: list[tuple[str, int]] = []
                for b in ds._stream_batches(local, block // mbs):
                    seen.extend(b["meta"]["samples"])
                    if len(seen) >= read - block:
                        break
                names = {s.name: i for i, s in enumerate(ds.shards)}
                taken = {(names[n], i) for n, i in seen[: read - block]}
                end = min(block + bsz, len(order))
                for s, pieces in enumerate(sources):
                    keys = [
                        (p.shard, i)
                        for p in positions(pieces, at(block, s), at(end, s))
                        for i in range(p.start, p.stop)
                    ]
                    rest[s].extend(_pieces_of([k for k in keys if k not in taken]))
                block = end
            lo = max(block, read) if exact else block
            for s, pieces in enumerate(sources):
                rest[s].extend(positions(pieces, at(lo, s), length(pieces)))
    return rest


def split(rest: list[list[Piece]] | list[Piece], n_streams: int) -> tuple[list[list[list[Piece]]], int]:
    """Cut each source's rest into ``n_streams`` equal slices. What is left of each source (fewer than one sample per
    stream) is dealt out together, so that the streams stay equal and fewer than one sample per stream is dropped
    in all, as in plan_epoch. Returns (per stream, per source, its pieces; samples per stream)."""
    if rest and isinstance(rest[0], Piece):  # one source's pieces
        rest = [rest]
    quota = [length(r) // n_streams for r in rest]
    streams = [[positions(r, j * q, (j + 1) * q) for r, q in zip(rest, quota)] for j in range(n_streams)]
    left = [(s, p) for s, r in enumerate(rest) for p in positions(r, quota[s] * n_streams, length(r))]
    extra = sum(p.stop - p.start for _, p in left) // n_streams
    pos = 0
    for s, p in left:
        for j in range(pos // extra if extra else n_streams, n_streams):
            a, b = max(p.start, p.start + j * extra - pos), min(p.stop, p.start + (j + 1) * extra - pos)
            if a < b:
                streams[j][s].append(Piece(p.shard, a, b))
        pos += p.stop - p.start
    return streams, sum(quota) + extra


def _identity_only(samples, rng) -> dict:
    """Re-splitting needs which samples a stream served, not their masked tokens: skip the collation."""
    return {}


def _sources_of(blend: Blend, rec: dict) -> tuple[list[Seq], list[Shard], list[str], bool]:
    """The recorded mix ``rec`` in terms of the run's sources: their sequences, the shard list (the run's, plus a
    stand-in for each source that is gone), names, and whether every source is still there."""
    seqs, shards, names = list(blend.seqs), list(blend.shards), blend.names
    out_seqs, out_names, exact = [], [], True
    for r, j in zip(rec["sources"], match_sources(rec["sources"], blend.record())):
        if j is not None:
            out_seqs.append(seqs[j])
            out_names.append(names[j])
        else:  # gone: its counts still shape the old plan; its samples are never read
            out_seqs.append(Seq([r["samples"]], len(shards)))
            shards.append(Shard(f"{r['name']}/(removed)", "", r["samples"], -1, ""))
            out_names.append(r["name"])
            exact = False
    return out_seqs, shards, out_names, exact


def _replay(blend: Blend, settings: StreamSettings, epoch: int, rec: dict, resplits: list[dict], final: dict | None):
    """The plan of epoch ``epoch`` (mix ``rec``) for the layout ``final`` after the layouts it was re-split from; with
    ``final=None``, what it had not read where the last of ``resplits`` stopped (per source of ``rec``: the rest of an
    epoch a mix change interrupted). Returns that and the epoch's first claim (what it took from each source)."""
    seqs, shards, names, exact = _sources_of(blend, rec)
    carried = None
    if rec.get("carry"):  # the rest of the epoch before, which the new mix serves first
        c = rec["carry"]
        owner = np.full(len(shards), -1)
        for s, seq in enumerate(seqs):
            owner[seq.offset : seq.offset + len(seq.sizes)] = s
        carried = [[] for _ in seqs]
        for pieces in _replay(blend, settings, c["epoch"], c["blend"], c["resplits"], None)[0]:
            for p in pieces:
                if p.shard < len(owner) and owner[p.shard] >= 0:  # a source gone since: its rest is dropped
                    carried[owner[p.shard]].append(p)
    layouts = [*resplits, final] if final is not None else list(resplits)
    weights = None if rec["sources"][0]["weight"] is None else [r["weight"] for r in rec["sources"]]
    n0 = layouts[0]["world"] * layouts[0]["streams"]
    base = claim(seqs, weights, rec["start"], carried, n0, settings.seed, settings.shuffle, names)
    plan = base
    for i, r in enumerate(resplits):
        old = [
            PretrainStreams(shards, _identity_only, settings, rank=rank, world=r["world"],
                            streams_per_rank=r["streams"], micro_batch=r["micro"], epoch=epoch, plan=plan)
            for rank in range(r["world"])
        ]  # fmt: skip
        rest = unread(old, r["batches"], exact)
        if i + 1 == len(layouts):  # final is None: the rest itself
            return rest, base
        nxt = layouts[i + 1]
        streams, per = split(rest, nxt["world"] * nxt["streams"])
        plan = Plan(streams, per, base.taken, base.n0)
    return plan, base


def current_plan(blend: Blend, settings: StreamSettings, state, world: int, streams: int) -> Plan:
    """The plan of the current epoch for this layout: its claim, re-split as its recorded layouts and mixes say."""
    layout = {"world": world, "streams": streams}
    return _replay(blend, settings, state.epoch, state.blend, state.resplits, layout)[0]


def epoch_plan(shards: list[Shard], settings: StreamSettings, epoch: int, resplits: list[dict], world: int,
               streams: int) -> Plan:  # fmt: skip
    """One source's epoch for the layout (world, streams) after the recorded re-splits."""
    blend = Blend([Source("data", DataSpec(Path("."), {}, shards, [], 0, 0, {}, "", ""), None)])
    state = _Position(epoch, new_state(blend, epoch), resplits)
    return current_plan(blend, settings, state, world, streams)


class _Position:
    def __init__(self, epoch: int, blend: dict, resplits: list[dict]):
        self.epoch, self.blend, self.resplits = epoch, blend, resplits


def next_epoch(state, blend: Blend, plan: Plan) -> None:
    """At the end of an epoch: each source's position advances by what the epoch claimed of it."""
    seqs = blend.seqs
    rec = state.blend
    rec["start"] = [advance(pos, seqs[s], plan.taken[s], plan.n0) for s, pos in enumerate(rec["start"])]
    rec["carry"] = None
    state.epoch, state.batch_in_epoch, state.resplits = state.epoch + 1, 0, []


def note_layout(state, world: int, streams: int, micro: int) -> None:
    """After loading a checkpoint: if the data layout changed mid-epoch, record the old one (the rest of the epoch is
    re-split, see current_plan) and restart the position count for the new plan."""
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


def note_mix(state, blend: Blend, settings: StreamSettings) -> list[str]:
    """After loading a checkpoint (whose mix the resume check allowed): if the run's mix differs from the recorded
    one, end the epoch here and carry its unread rest into the next (see the module's docstring). Returns what
    changed. Run before note_layout: the interrupted epoch keeps the layout it was read with."""
    rec = state.blend
    new = blend.record()
    changes = mix_changes(rec["sources"], new)
    mapping = match_sources(rec["sources"], new)
    seen = dict(rec.get("seen") or {})
    for o, j in zip(rec["sources"], mapping):  # counts follow a source that was renamed
        if j is not None and o["name"] != new[j]["name"] and o["name"] in seen:
            seen[new[j]["name"]] = seen.pop(o["name"])
    if not changes:
        state.blend = {**rec, "sources": new, "seen": seen}
        return []
    ends, carry = rec["start"], rec.get("carry")
    if state.batch_in_epoch > 0 or state.resplits:  # mid-epoch: the epoch ends here, its rest is carried
        stop = {"world": state.world_size, "streams": state.streams_per_rank, "micro": state.micro_batch,
                "batches": state.batch_in_epoch}  # fmt: skip
        old = {k: rec[k] for k in ("sources", "start", "carry")}
        carry = {"epoch": state.epoch, "blend": old, "resplits": [*state.resplits, stop]}
        seqs = _sources_of(blend, rec)[0]
        first = state.resplits[0] if state.resplits else stop
        base = _replay(blend, settings, state.epoch, rec, [], first)[1]  # what the interrupted epoch claimed
        ends = [advance(pos, seqs[s], base.taken[s], base.n0) for s, pos in enumerate(rec["start"])]
        when = f"epoch {state.epoch} ends here; what it had planned but not read comes first in epoch {state.epoch + 1}"
        state.epoch, state.batch_in_epoch, state.resplits = state.epoch + 1, 0, []
    else:
        when = f"epoch {state.epoch} starts with it"
    start = [[0, 0] for _ in new]
    for i, j in enumerate(mapping):
        if j is not None:
            start[j] = list(ends[i])
    state.blend = {"sources": new, "start": start, "carry": carry, "seen": seen}
    log.warning(
        "the data mix differs from the checkpoint's (%s); data.allow_data_change=true: the new mix applies from step "
        "%d on, each source continues from where it was, and the per-source counts carry on (%s)",
        "; ".join(changes), state.step, when,
    )  # fmt: skip
    return changes


def describe(blend: Blend, state, plan: Plan) -> str:
    """The epoch's blend in one line, for the log."""
    return plan_summary(blend.names, plan, blend.seqs, state.blend["start"])
