"""Dynamic masking and collation of pretraining batches (BERT's 80/10/10, optional whole-word masking), seeded by the
caller so that a batch is a pure function of its position in the epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data_prep.format import DataError, DataSpec


class Masker:
    """Dynamic masking (BERT: 15% of non-special tokens, 80% [MASK] / 10% random / 10% kept) and padding."""

    def __init__(
        self,
        spec: DataSpec,
        mlm_probability: float,
        max_predictions: int | None,
        pad_multiple: int,
        whole_word: bool,
        continuation: np.ndarray | None = None,
        fixed_width: int | None = None,
    ):
        self.sp = spec.special_ids
        # Fixed shapes (for torch.compile / CUDA graphs): every batch is fixed_width wide and holds a fixed number of
        # masked-position slots (padded with label -100, ignored by the loss).
        self.fixed_width = fixed_width
        self.vocab_size = spec.vocab_size
        self.p = mlm_probability
        self.max_pred = max_predictions
        self.pad_multiple = max(1, pad_multiple)
        self.special = np.zeros(max(spec.vocab_size, max(self.sp.values()) + 1), dtype=bool)
        for v in self.sp.values():
            self.special[v] = True
        # Random replacements never inject [CLS]/[SEP]/[PAD]/[MASK] (which would corrupt the segment structure).
        self.replacements = np.flatnonzero(~self.special[: spec.vocab_size])
        self.continuation = continuation if whole_word else None
        if whole_word and continuation is None:
            raise DataError("data.whole_word_masking=true needs the tokenizer's '##' continuation table")

    def __call__(self, samples: list[tuple[np.ndarray, int, int]], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        b = len(samples)
        lens = np.fromiter((len(s[0]) for s in samples), dtype=np.int64, count=b)
        natural = int(-(-lens.max() // self.pad_multiple) * self.pad_multiple)
        width = max(self.fixed_width or 0, natural)
        ids = np.full((b, width), self.sp["pad"], dtype=np.int64)
        tt = np.zeros((b, width), dtype=np.int64)
        for i, (x, a_len, _) in enumerate(samples):
            ids[i, : len(x)] = x
            tt[i, a_len + 2 : len(x)] = 1
        am = np.arange(width)[None, :] < lens[:, None]
        cand = am & ~self.special[ids]
        n_cand = cand.sum(1)
        n_mask = np.maximum(1, np.rint(n_cand * self.p).astype(np.int64))
        if self.max_pred:
            n_mask = np.minimum(n_mask, self.max_pred)
        n_mask = np.minimum(n_mask, n_cand)
        if self.continuation is None:
            keys = rng.random((b, natural))  # drawn at the natural width: fixed shapes mask the same tokens
            keys = np.pad(keys, ((0, 0), (0, width - natural)), constant_values=2.0)
            keys[~cand] = 2.0
            kth = np.take_along_axis(np.sort(keys, axis=1), np.maximum(n_mask - 1, 0)[:, None], axis=1)
            selected = (keys <= kth) & cand & (n_mask[:, None] > 0)
        else:
            selected = self._whole_words(ids, cand, n_mask, rng)
        positions = np.flatnonzero(selected)
        labels = ids.reshape(-1)[positions].copy()
        r = rng.random(len(positions))
        flat = ids.reshape(-1)
        flat[positions[r < 0.8]] = self.sp["mask"]
        rand_pos = positions[(r >= 0.8) & (r < 0.9)]
        flat[rand_pos] = self.replacements[rng.integers(0, len(self.replacements), len(rand_pos))]
        nsp = np.fromiter((s[2] for s in samples), dtype=np.int64, count=b)
        if self.fixed_width:
            positions, labels = self._pad_predictions(positions, labels, b)
        return {
            "input_ids": torch.from_numpy(ids),
            "token_type_ids": torch.from_numpy(tt),
            "attention_mask": torch.from_numpy(am.astype(np.int64)),
            "mlm_positions": torch.from_numpy(positions),
            "mlm_labels": torch.from_numpy(labels),
            "nsp_labels": torch.from_numpy(nsp),
            # real tokens, token slots incl. padding, and what attention computes on (each row its own length)
            "meta": {"tokens": int(lens.sum()), "slots": int(ids.size), "sq_tokens": int((lens * lens).sum())},
        }

    def predictions_per_seq(self) -> int:
        """An upper bound of the masked tokens of one sequence (whole words may overrun n_mask by one word)."""
        cap = max(1, int(np.rint(self.fixed_width * self.p)))
        cap = min(cap, self.max_pred) if self.max_pred else cap
        return cap + (8 if self.continuation is not None else 0)

    def _pad_predictions(self, positions: np.ndarray, labels: np.ndarray, b: int):
        k = b * self.predictions_per_seq()
        if len(positions) > k:  # a whole word longer than the slack: a rare extra shape, never a dropped label
            k = -(-len(positions) // 64) * 64
        pad = k - len(positions)
        return np.concatenate([positions, np.zeros(pad, np.int64)]), np.concatenate([labels, np.full(pad, -100)])

    def _whole_words(self, ids, cand, n_mask, rng) -> np.ndarray:
        cont = self.continuation[ids] & cand
        selected = np.zeros_like(cand)
        for i in range(ids.shape[0]):
            starts = np.flatnonzero(cand[i] & ~cont[i])
            if len(starts) == 0:
                continue
            ends = np.append(starts[1:], ids.shape[1])
            got = 0
            for w in rng.permutation(len(starts)):
                span = np.arange(starts[w], ends[w])
                span = span[cand[i, span] & ((span == starts[w]) | cont[i, span])]
                if got + len(span) > n_mask[i] and got > 0:
                    continue
                selected[i, span] = True
                got += len(span)
                if got >= n_mask[i]:
                    break
        return selected


def continuation_table(tokenizer_dir: Path, vocab_size: int) -> np.ndarray:
    """True for WordPiece continuation tokens ('##xx'), for whole-word masking."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    table = np.zeros(vocab_size, dtype=bool)
    for token, idx in tok.get_vocab().items():
        if idx < vocab_size and token.startswith("##"):
            table[idx] = True
    return table
