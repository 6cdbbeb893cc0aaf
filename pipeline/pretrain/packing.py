"""Packed NSP batches: the sentence pairs of a micro-batch share rows of up to ``seq_len`` tokens.

Packing is a step after masking, inside collation: the :class:`PackingCollator` masks a micro-batch exactly as the
unpacked loader does (same samples, same RNG, same masked tokens), then moves each pair into a row with room
(first-fit decreasing, deterministic). So a packed run sees the same samples per micro-batch and per epoch as an
unpacked one, its losses are the same quantities (means over the same masked tokens and pairs), and exact resume
needs nothing new: the loader's position is still a batch index.

Each pair keeps its own [CLS], token types and position ids (restarting at 0). ``pair_ids`` numbers the pairs of a
row from 1 (0: padding); the model attends within equal ids only (block-diagonal), and ``cu_seqlens`` gives the same
segments (padding tails included as segments of their own) for varlen attention kernels. ``cls_positions`` index the
flattened rows at each pair's [CLS], in the original sample order, so ``nsp_labels`` are unchanged; ``mlm_positions``
are remapped into the packed rows.

With fixed shapes every micro-batch has the same shapes, so that torch.compile captures one graph: rows ``seq_len``
wide, a fixed number of rows (empty ones are all padding: no [CLS], no masked position, so no loss or count sees
them) and a fixed number of varlen segments (``cu_seqlens`` padded by repeating its end: empty segments).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

IGNORE = -100  # label of a padded masked-position slot (fixed shapes): cross_entropy's ignore_index


def first_fit_decreasing(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Row index of each item: longest first, each into the first row with room (ties by original order)."""
    rows: list[int] = []  # room left per row
    where = np.empty(len(lengths), dtype=np.int64)
    for i in np.argsort(-lengths, kind="stable"):
        n = int(lengths[i])
        for r, room in enumerate(rows):
            if room >= n:
                rows[r] -= n
                where[i] = r
                break
        else:
            rows.append(capacity - n)
            where[i] = len(rows) - 1
    return where


def pack_batch(
    batch: dict[str, torch.Tensor],
    seq_len: int,
    width_multiple: int = 8,
    fixed: bool = False,
    pad_id: int = 0,
    rows: int | None = None,
) -> dict:
    """A masked unpacked batch (input_ids, token_type_ids, attention_mask, mlm_*, nsp_labels) -> a packed batch.

    ``fixed``: rows are ``seq_len`` wide (else the fullest row, rounded up to ``width_multiple``), there are ``rows``
    of them (default: one per sample, which always suffices) and ``cu_seqlens`` has one entry per sample and row.
    """
    ids_u = batch["input_ids"].numpy()
    tt_u = batch["token_type_ids"].numpy()
    lens = batch["attention_mask"].numpy().sum(1)
    b, width_u = ids_u.shape
    row = first_fit_decreasing(lens, seq_len)
    used = int(row.max()) + 1
    n_rows = used
    if fixed:
        n_rows = rows or b
        if used > n_rows:  # a rare extra shape rather than a dropped sample
            log.warning(
                "a packed micro-batch needs %d rows, more than data.packed_rows=%d: it gets %d (one more compiled "
                "graph); raise data.packed_rows", used, n_rows, max(b, used),
            )  # fmt: skip
            n_rows = max(b, used)
    offset = np.zeros(b, dtype=np.int64)
    fill = np.zeros(n_rows, dtype=np.int64)
    pair = np.zeros(b, dtype=np.int64)
    count = np.zeros(n_rows, dtype=np.int64)
    for i in range(b):  # inside a row, pairs keep their sample order
        r = row[i]
        offset[i], fill[r], count[r] = fill[r], fill[r] + lens[i], count[r] + 1
        pair[i] = count[r]
    width = seq_len if fixed else min(seq_len, -(-int(fill.max()) // width_multiple) * width_multiple)
    ids = np.full((n_rows, width), pad_id, dtype=np.int64)
    tt = np.zeros_like(ids)
    pos = np.zeros_like(ids)
    pair_ids = np.zeros_like(ids)
    for i in range(b):
        r, o, n = row[i], offset[i], lens[i]
        ids[r, o : o + n] = ids_u[i, :n]
        tt[r, o : o + n] = tt_u[i, :n]
        pos[r, o : o + n] = np.arange(n)
        pair_ids[r, o : o + n] = pair[i]
    start = row * width + offset  # flat index of each pair's [CLS]
    labels = batch["mlm_labels"].numpy()
    p = batch["mlm_positions"].numpy()
    live = labels != IGNORE
    positions = np.zeros_like(p)
    positions[live] = start[p[live] // width_u] + p[live] % width_u
    # Segments of the flattened rows for varlen kernels: every pair, and each row's padding tail as its own segment.
    seg = [0]
    for r in range(used):
        members = np.sort(offset[row == r])
        ends = list(members[1:]) + [fill[r]] + ([width] if fill[r] < width else [])
        seg.extend(r * width + int(e) for e in ends)
    seg.extend(r * width + width for r in range(used, n_rows))  # empty rows: one padding segment each
    if fixed:  # a pair per sample and a tail per row at most: pad with empty segments to that many
        seg.extend([seg[-1]] * (b + n_rows + 1 - len(seg)))
    sq = int((lens.astype(np.int64) ** 2).sum())  # attention computes on each pair's own length (MFU)
    return {
        "input_ids": torch.from_numpy(ids),
        "token_type_ids": torch.from_numpy(tt),
        "position_ids": torch.from_numpy(pos),
        "pair_ids": torch.from_numpy(pair_ids),
        "cls_positions": torch.from_numpy(start),
        "cu_seqlens": torch.tensor(seg, dtype=torch.int32),
        "mlm_positions": torch.from_numpy(positions),
        "mlm_labels": batch["mlm_labels"],
        "nsp_labels": batch["nsp_labels"],
        "meta": {"tokens": int(lens.sum()), "slots": int(ids.size), "sq_tokens": sq, "fixed_shape": fixed},
    }


class PackingCollator:
    """Masks a micro-batch with ``masker`` (as unpacked), then packs it into rows of ``seq_len`` (``rows`` of them
    with fixed shapes; None: one per sample)."""

    def __init__(self, masker, seq_len: int, width_multiple: int = 8, fixed: bool = False, rows: int | None = None):
        self.masker, self.seq_len, self.width_multiple, self.fixed = masker, seq_len, width_multiple, fixed
        self.rows = rows

    def __call__(self, samples, rng: np.random.Generator) -> dict:
        batch = self.masker(samples, rng)
        return pack_batch(batch, self.seq_len, self.width_multiple, self.fixed, self.masker.sp["pad"], self.rows)
