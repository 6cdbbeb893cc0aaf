"""The pretraining loader: equal batches per rank, exact positions, masking statistics, bad shards."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from data_prep.format import DataError, load_data_spec
from pipeline.pretrain.masking import Masker, continuation_table
from pipeline.pretrain.shards import verify_shards
from pipeline.pretrain.streams import PretrainStreams, StreamSettings, make_loader, plan_epoch


def streams(spec, rank=0, world=1, w=1, mbs=8, epoch=0, start=0, seed=3, shuffle=True, block=32, tag=0, buckets=False):
    masker = Masker(spec, 0.15, None, 8, False)
    return PretrainStreams(
        spec.train,
        masker,
        StreamSettings(seed, shuffle, block, buckets, "skip"),
        rank=rank,
        world=world,
        streams_per_rank=w,
        micro_batch=mbs,
        epoch=epoch,
        start_batch=start,
        tag=tag,
    )


def batches(ds, workers=0):
    return list(make_loader(ds, workers, 2, False))


def test_plan_gives_every_stream_the_same_count_and_never_repeats():
    sizes = [500, 3, 1, 77, 0, 260]
    for n_streams in (1, 2, 3, 8):
        pieces, per = plan_epoch(sizes, n_streams, epoch=1, seed=5, shuffle=True)
        assert per == sum(sizes) // n_streams
        assert all(sum(p.stop - p.start for p in s) == per for s in pieces)
        covered = Counter((p.shard, i) for s in pieces for p in s for i in range(p.start, p.stop))
        assert max(covered.values()) == 1  # no sample twice in an epoch
        assert all(0 <= p.start < p.stop <= sizes[p.shard] for s in pieces for p in s)
    # A single shard still feeds every stream.
    pieces, per = plan_epoch([10], 4, 0, 0, True)
    assert per == 2 and all(len(s) == 1 for s in pieces)


def test_uneven_shards_give_ranks_equal_batches(synth_data):
    spec = load_data_spec(synth_data)
    counts = [len(batches(streams(spec, rank=r, world=3, w=2))) for r in range(3)]
    assert len(set(counts)) == 1 and counts[0] > 0
    assert counts[0] == streams(spec, world=3, w=2).batches_per_epoch


@pytest.mark.parametrize("buckets", [False, True])
def test_resume_position_reproduces_the_same_batches(synth_data, buckets):
    spec = load_data_spec(synth_data)
    full = batches(streams(spec, w=2, epoch=1, buckets=buckets), workers=2)
    for start in (1, 5, 6, len(full) - 1):
        part = batches(streams(spec, w=2, epoch=1, start=start, buckets=buckets), workers=2)
        assert len(part) == len(full) - start
        for a, b in zip(full[start:], part):
            for k in ("input_ids", "mlm_positions", "mlm_labels", "nsp_labels"):
                assert torch.equal(a[k], b[k]), (start, k)
            assert a["meta"] == b["meta"], start
    # Two loader workers and zero give the same stream of batches.
    zero = batches(streams(spec, w=2, epoch=1, buckets=buckets))
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(full, zero))
    # Another epoch is another order.
    other = batches(streams(spec, w=2, epoch=2, buckets=buckets), workers=0)
    assert not torch.equal(full[0]["input_ids"], other[0]["input_ids"])


def test_masking_statistics(synth_data):
    spec = load_data_spec(synth_data)
    sp = spec.special_ids
    n_mask = n_cand = n_replaced_mask = n_random = n_kept = 0
    for b in batches(streams(spec, mbs=16, seed=11)):
        ids, labels, pos = b["input_ids"], b["mlm_labels"], b["mlm_positions"]
        flat = ids.reshape(-1)
        orig_special = torch.isin(labels, torch.tensor([sp["cls"], sp["sep"], sp["pad"]]))
        assert not orig_special.any(), "special tokens were masked"
        assert b["attention_mask"].reshape(-1)[pos].all(), "padding was masked"
        n_mask += len(pos)
        n_cand += int(b["attention_mask"].sum()) - 3 * ids.shape[0]
        n_replaced_mask += int((flat[pos] == sp["mask"]).sum())
        n_kept += int((flat[pos] == labels).sum())
        n_random += int(((flat[pos] != sp["mask"]) & (flat[pos] != labels)).sum())
        # token types: 0 up to and including the first [SEP], 1 after it up to the last token, 0 on padding.
        for row, tt, am in zip(ids, b["token_type_ids"], b["attention_mask"]):
            seps = (row == sp["sep"]).nonzero().flatten().tolist()
            assert len(seps) == 2 and row[0] == sp["cls"] and seps[1] == int(am.sum()) - 1
            expect = torch.zeros_like(tt)
            expect[seps[0] + 1 : seps[1] + 1] = 1
            assert torch.equal(tt, expect)
    assert 0.14 < n_mask / n_cand < 0.16
    assert 0.77 < n_replaced_mask / n_mask < 0.83
    assert 0.07 < n_random / n_mask < 0.13 and 0.07 < n_kept / n_mask < 0.13


def test_whole_word_masking_masks_whole_words(synth_data):
    spec = load_data_spec(synth_data)
    table = continuation_table(spec.tokenizer_dir, spec.vocab_size)
    masker = Masker(spec, 0.15, None, 8, True, table)
    rng = np.random.default_rng(0)
    # words: "w1 ##s1 ##s2" "w2" "w3 ##s3"
    vocab = {t: i for i, t in enumerate((spec.tokenizer_dir / "vocab.txt").read_text().split())}
    x = np.array(
        [
            vocab["[CLS]"],
            vocab["w1"],
            vocab["##s1"],
            vocab["##s2"],
            vocab["w2"],
            vocab["w3"],
            vocab["##s3"],
            vocab["[SEP]"],
            vocab["w4"],
            vocab["[SEP]"],
        ]
    )
    for _ in range(50):
        b = masker([(x, 6, 0)], rng)
        picked = set(b["mlm_positions"].tolist())
        for word in ({1, 2, 3}, {5, 6}):
            assert not picked & word or word <= picked, picked


def test_truncated_shard_is_skipped_or_named(synth_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    victim = data / "train-000001.tar"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    spec = load_data_spec(data)
    assert verify_shards(spec, "size", "skip") == ["train-000001.tar"]
    assert [s.name for s in spec.train] == ["train-000000.tar", "train-000002.tar"]
    with pytest.raises(DataError, match="train-000001.tar"):
        verify_shards(load_data_spec(data), "size", "error")


def test_corrupt_bytes_inside_a_shard_are_counted_not_fatal(synth_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    victim = data / "train-000000.tar"
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 4096] = b"\x00" * 4096  # same size: only sha256 catches it up front
    victim.write_bytes(bytes(raw))
    spec = load_data_spec(data)
    assert verify_shards(spec, "size", "skip") == []
    ds = streams(spec, shuffle=False)
    got = batches(ds)
    assert len(got) == ds.batches_per_epoch  # same number of batches as planned: ranks cannot hang
    assert sum(b["meta"]["bad_samples"] for b in got) > 0  # the bad samples were counted
    assert verify_shards(load_data_spec(data), "sha256", "skip") == ["train-000000.tar"]


def test_missing_data_gives_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such directory.*python -m data_prep"):
        load_data_spec(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="manifest.json is missing"):
        load_data_spec(tmp_path / "empty")


def test_length_buckets_cut_padding_and_keep_every_sample(synth_data):
    spec = load_data_spec(synth_data)
    plain = batches(streams(spec, mbs=8, block=64))
    bucketed = batches(streams(spec, mbs=8, block=64, buckets=True))
    real = lambda bs: sum(int(b["attention_mask"].sum()) for b in bs)  # noqa: E731
    padded = lambda bs: sum(b["input_ids"].numel() for b in bs)  # noqa: E731
    # The same samples batched differently (only the few dropped at the very end of the epoch may differ).
    assert len(plain) == len(bucketed) and abs(real(plain) - real(bucketed)) <= 8 * 64
    waste = lambda bs: padded(bs) - real(bs)  # noqa: E731
    assert waste(bucketed) < 0.7 * waste(plain)
