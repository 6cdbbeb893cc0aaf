"""Weighted data sources: several data_prep outputs blended by shares of training samples, in a plan that every rank
computes alike from the config and the trainer state, with no communication and no random draws.

**A source** is a data_prep output with a weight: the share of the *training samples* it supplies (normalised; by
default its size, as if the sources had been prepared together). Weights are never applied to dataset sizes, the
mistake behind NVIDIA/Megatron-LM#547. Sources must share one tokenizer and seq_len.

**A source's sequence.** Each source is read as an endless sequence of passes: pass q is its train shards in an
order shuffled by (seed, q), laid end to end, less its last samples when they are fewer than one per stream (the
single-source epoch's remainder rule). A position in a source is (pass, offset). A source that runs out simply goes
on to its next pass, reshuffled.

**An epoch** holds as many samples as the sources together (per stream, the sum of each source's size // streams),
so that at the natural weights every source makes one pass per epoch. Its samples per stream are apportioned by
weight (largest remainders); each source's *claim*, streams x its count, is taken from its sequence at its recorded
position and cut into equal contiguous slices, one per stream, so every stream still reads runs of consecutive
samples of each shard. With one source the claim is exactly one pass: the plan of a single ``data.path`` is the
plan it always was. Inside a stream the sources are interleaved in a fixed order (:func:`blend_order`): the k-th
sample of a source that supplies c of the stream's n samples sits near (k + 1/2) n / c, so every stretch of a stream
holds each source's share to within a sample or two (Megatron-LM's blended index reaches the same with a greedy
"furthest behind its share" pass; a sort does it in numpy).

**Positions are recorded, never derived from the weights.** Each source's position at the start of the current epoch
is trainer state (``TrainState.blend``) and advances by what the epoch claimed, so the same state gives the same
plan on any machine, and a change of weights (``data.allow_data_change``) moves no source back or forth. Megatron-LM
rebuilds its index from the new weights, which silently repeats or skips samples (NVIDIA/Megatron-LM#457, PR #725).
What happens to the rest of an epoch after such a change, or after a change of layout, is ``elastic.py``'s; the
sources themselves (loading, checks, what a checkpoint records of the mix) are ``sources.py``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from data_prep.format import DataError

# A source asked for more passes than this in one epoch is almost surely a mistake (a weight for another source, a
# tiny directory), and its plan would grow with every pass: refused with the numbers.
MAX_PASSES_PER_EPOCH = 1000


@dataclass(frozen=True)
class Piece:
    shard: int  # index into the run's list of train shards (every source's, in source order)
    start: int  # first sample (inclusive) inside the shard
    stop: int  # end (exclusive)


def positions(pieces: list[Piece], lo: int, hi: int) -> list[Piece]:
    """Positions lo..hi of pieces laid end to end, as pieces."""
    out, pos = [], 0
    for p in pieces:
        n = p.stop - p.start
        a, b = max(lo, pos), min(hi, pos + n)
        if a < b:
            out.append(Piece(p.shard, p.start + a - pos, p.start + b - pos))
        pos += n
        if pos >= hi:
            break
    return out


def length(pieces: list[Piece]) -> int:
    return sum(p.stop - p.start for p in pieces)


# ---------------------------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Seq:
    """A source as the plan sees it: its train shards' sample counts, and the index of its first shard in the run."""

    sizes: list[int]
    offset: int

    def usable(self, n_streams: int) -> int:
        """Samples of a pass that are read: the rest of fewer than one per stream is left out."""
        total = sum(self.sizes)
        return total - total % n_streams

    def pass_order(self, q: int, seed: int, shuffle: bool) -> np.ndarray:
        return pass_order(len(self.sizes), q, seed, shuffle)


def pass_order(n_shards: int, q: int, seed: int, shuffle: bool) -> np.ndarray:
    """The shard order of pass (single-source: epoch) ``q``. Every source uses the same rule, so a source's order
    never depends on which other sources run beside it (sources with as many shards get the same permutation:
    harmless, their data are unrelated)."""
    return np.random.default_rng([seed, q, 7]).permutation(n_shards) if shuffle else np.arange(n_shards)


def apportion(total: int, weights: list[float]) -> list[int]:
    """``total`` split in proportion to ``weights`` into integers (largest remainders; ties to the earlier one)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * total
    base = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - base), kind="stable")
    base[order[: total - int(base.sum())]] += 1
    return [int(x) for x in base]


@lru_cache(maxsize=8)
def blend_order(counts: tuple[int, ...]) -> np.ndarray:
    """The source of each position of a stream that reads ``counts[s]`` samples of source s: the k-th of source s at
    (k + 1/2) / c_s of the way (ties to the earlier source), so every prefix holds each share to within one sample."""
    n = sum(counts)
    if sum(1 for c in counts if c) <= 1:
        return np.full(n, next((s for s, c in enumerate(counts) if c), 0), dtype=np.uint16)
    keys = np.concatenate([(np.arange(c) + 0.5) / c for c in counts if c])
    ids = np.concatenate([np.full(c, s, dtype=np.uint16) for s, c in enumerate(counts) if c])
    order = ids[np.argsort(keys, kind="stable")]
    order.flags.writeable = False
    return order


def normalize(pos, seq: Seq, n_streams: int) -> tuple[int, int]:
    """A position at or past the read part of its pass is the start of the next pass."""
    q, k = int(pos[0]), int(pos[1])
    return (q + 1, 0) if k >= seq.usable(n_streams) else (q, k)


def advance(pos, seq: Seq, count: int, n_streams: int) -> list[int]:
    """The position ``count`` samples after ``pos`` (what an epoch planned for ``n_streams`` streams claimed)."""
    q, k = normalize(pos, seq, n_streams)
    usable = seq.usable(n_streams)
    if usable == 0:
        return [q, k]
    k += count
    return [q + k // usable, k % usable]


def take(seq: Seq, pos, count: int, n_streams: int, seed: int, shuffle: bool) -> list[Piece]:
    """``count`` samples of a source's sequence of passes from ``pos`` on."""
    q, k = normalize(pos, seq, n_streams)
    usable = seq.usable(n_streams)
    out: list[Piece] = []
    if count > 0 and usable == 0:
        raise DataError(f"a source of {sum(seq.sizes)} samples cannot feed {n_streams} streams")
    while count > 0:
        order = seq.pass_order(q, seed, shuffle)
        whole = [Piece(seq.offset + int(i), 0, seq.sizes[i]) for i in order if seq.sizes[i] > 0]
        hi = min(usable, k + count)
        out.extend(positions(whole, k, hi))
        count -= hi - k
        q, k = q + 1, 0
    return out


@dataclass
class Plan:
    """One epoch's plan: per stream, per source, the pieces it reads (interleaved by ``blend_order`` of their
    lengths); ``taken``: per source, what the epoch claimed from its sequence (its position advances by that at the
    end of the epoch); ``n0``: the streams of the layout that claimed it."""

    streams: list[list[list[Piece]]]
    per_stream: int
    taken: list[int]
    n0: int


def claim(
    seqs: list[Seq],
    weights: list[float] | None,
    starts: list,
    carried: list[list[Piece]] | None,
    n_streams: int,
    seed: int,
    shuffle: bool,
    names: list[str] | None = None,
) -> Plan:
    """The plan of an epoch for ``n_streams`` streams: each source's claim from ``starts`` (after ``carried``, the
    rest of an epoch a change of mix interrupted, which goes first), cut into one equal slice per stream."""
    names = names or [f"source {i}" for i in range(len(seqs))]
    sizes = [seq.usable(n_streams) // n_streams for seq in seqs]
    per = sum(sizes)
    carried = carried or [[] for _ in seqs]
    owed = [length(c) for c in carried]
    counts = _counts(per, weights, sizes, owed, n_streams)
    for seq, c, name in zip(seqs, counts, names):
        usable = seq.usable(n_streams)
        if usable == 0 and len(seqs) > 1:  # (one source alone: the loader says the data cannot make a batch)
            raise DataError(
                f"{name} holds {sum(seq.sizes)} train samples, fewer than the {n_streams} loader streams "
                f"(ranks x engine.loader_workers): give it more data, or run with fewer streams"
            )
        if usable and c * n_streams / usable > MAX_PASSES_PER_EPOCH:
            raise DataError(
                f"{name} holds {sum(seq.sizes)} train samples and its weight asks for {c * n_streams} per epoch "
                f"({c * n_streams / usable:.0f} passes): lower its data.weights entry or give it more data"
            )
    claims = [
        carried[s] + take(seq, starts[s], counts[s] * n_streams - owed[s], n_streams, seed, shuffle)
        for s, seq in enumerate(seqs)
    ]
    streams = [[positions(claims[s], j * c, (j + 1) * c) for s, c in enumerate(counts)] for j in range(n_streams)]
    return Plan(streams, sum(counts), [c * n_streams - o for c, o in zip(counts, owed)], n_streams)


def _counts(per: int, weights: list[float] | None, sizes: list[int], owed: list[int], n_streams: int) -> list[int]:
    """Samples per stream of each source: by weight (or by size); an epoch that owes a carried rest is lengthened
    until every source's claim holds its rest."""
    share = weights if weights is not None else sizes
    if sum(share) == 0:
        return [0 for _ in sizes]
    counts = list(sizes) if weights is None else apportion(per, share)
    total = sum(share)
    while any(c * n_streams < o for c, o in zip(counts, owed)):
        need = max(math.ceil(o * total / (w * n_streams)) if w else 0 for o, w in zip(owed, share))
        per = max(per + 1, need)
        counts = apportion(per, share)
    return counts


def where(seqs: list[Seq], starts: list, n_streams: int) -> list[float]:
    """Each source's passes so far, as a number (2.25: a quarter into its third pass)."""
    out = []
    for seq, pos in zip(seqs, starts):
        q, k = normalize(pos, seq, n_streams)
        out.append(q + k / max(seq.usable(n_streams), 1))
    return out


def plan_summary(names: list[str], plan: Plan, seqs: list[Seq], starts: list) -> str:
    """'wiki 600 (pass 1.25), books 300 (pass 3.50)': samples per stream per epoch, and where each source is."""
    counts = [sum(length(s) for s in (st[i] for st in plan.streams)) // max(len(plan.streams), 1) for i in
              range(len(names))]  # fmt: skip
    at = where(seqs, starts, plan.n0)
    return ", ".join(f"{n} {c} (pass {a:.2f})" for n, c, a in zip(names, counts, at))
