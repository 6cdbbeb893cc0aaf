"""NSP instances, after google-research/bert ``create_pretraining_data.py`` (``create_instances_from_document``).

Tokens of a chunk are one flat array; sentence ``s`` spans ``off[s]:off[s + 1]``. Segment A is always a run
of consecutive sentences, B is the true continuation or a run from another document, and truncation only
cuts tokens off the ends: so an instance is four offsets into the flat array, never a copied token list.

Differences from the original, each deliberate:
- the random document for B is drawn from the other documents of the same chunk (the original draws from
  all documents in memory), uniformly, never the same document;
- a chunk with a single document takes B from a non-adjacent part of the same document (neither the
  sentence before A nor A's true continuation); if the document is too short for that, the instance uses
  the true continuation when A has one, or is not made;
- truncation draws how many tokens come off the front of each side at once (a binomial, the same law as
  the original's one coin per token) instead of looping token by token.
"""

from __future__ import annotations

import random
from typing import NamedTuple


class Instance(NamedTuple):
    doc: int  # index of the document A comes from
    a_lo: int
    a_hi: int
    b_lo: int
    b_hi: int
    is_random_next: bool


def create_instances(
    docs: list[tuple[int, int]],
    off: list[int],
    seq_len: int,
    short_seq_prob: float,
    dupe_factor: int,
    rng: random.Random,
) -> list[Instance]:
    """Instances of every document (`docs`: sentence index ranges [first, last)), shuffled."""
    out: list[Instance] = []
    for _ in range(dupe_factor):
        for d in range(len(docs)):
            _from_document(d, docs, off, seq_len - 3, short_seq_prob, rng, out)
    rng.shuffle(out)
    return out


def _from_document(d, docs, off, max_num_tokens, short_seq_prob, rng, out) -> None:
    first, last = docs[d]
    # As the original: one target length for the whole document, sometimes shorter to match fine-tuning.
    target = max_num_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_num_tokens)
    start, length, i = first, 0, first  # the current chunk is sentences [start, i]
    while i < last:
        length += off[i + 1] - off[i]
        if i == last - 1 or length >= target:
            n = i - start + 1
            a_end = start + (rng.randint(1, n - 1) if n >= 2 else 1)  # A = sentences [start, a_end)
            a_lo, a_hi = off[start], off[a_end]
            is_random = n == 1 or rng.random() < 0.5
            b = None
            if is_random:
                b = _random_b(d, docs, off, first, last, start, a_end, target - (a_hi - a_lo), rng)
                if b is None and n >= 2:
                    is_random = False  # a one-document chunk too short for a random B
                elif b is None:
                    start, length, i = i + 1, 0, i + 1
                    continue
                else:
                    i = a_end - 1  # sentences after A go back to the pool, as the original
            if not is_random:
                b = off[a_end], off[i + 1]
            out.append(Instance(d, *_truncate(a_lo, a_hi, b[0], b[1], max_num_tokens, rng), is_random))
            start, length = i + 1, 0
        i += 1


def _random_b(d, docs, off, first, last, start, a_end, target_b, rng) -> tuple[int, int] | None:
    if len(docs) > 1:
        r = rng.randrange(len(docs) - 1)
        r += r >= d
        r_first, r_last = docs[r]
        j = rng.randint(r_first, r_last - 1)
        stop = r_last
    else:
        # Same document, away from A: starts in [first, start - 2] (B ends before the sentence preceding A)
        # or in [a_end + 1, last - 1] (after A's true continuation).
        below = max(0, start - 1 - first)
        above = max(0, last - a_end - 1)
        if below + above == 0:
            return None
        r = rng.randrange(below + above)
        j, stop = (first + r, start - 1) if r < below else (a_end + 1 + r - below, last)
    b_lo = off[j]
    while j < stop:
        j += 1
        if off[j] - b_lo >= target_b:
            break
    return b_lo, off[j]


def _binomial_half(n: int, rng: random.Random) -> int:
    return bin(rng.getrandbits(n)).count("1") if n > 0 else 0


def _truncate(a_lo, a_hi, b_lo, b_hi, max_num_tokens, rng) -> tuple[int, int, int, int]:
    """The original's truncate_seq_pair: drop a token from the longer side (B on ties), front or back by a
    coin, until the pair fits. Which side loses how many is fixed by the lengths; only front/back is random."""
    la, lb = a_hi - a_lo, b_hi - b_lo
    excess = la + lb - max_num_tokens
    if excess <= 0:
        return a_lo, a_hi, b_lo, b_hi
    ra = rb = 0
    if la > lb:
        ra = min(excess, la - lb)
    elif lb > la:
        rb = min(excess, lb - la)
    excess -= ra + rb
    rb += (excess + 1) // 2
    ra += excess // 2
    fa, fb = _binomial_half(ra, rng), _binomial_half(rb, rng)
    return a_lo + fa, a_hi - (ra - fa), b_lo + fb, b_hi - (rb - fb)
