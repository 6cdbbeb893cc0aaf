"""Weighted data sources at the plan level (no training): shares, order, re-split and mix changes, refusals."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from data_prep.format import DataError
from pipeline.checkpoint import TrainState
from pipeline.config import ConfigError
from pipeline.pretrain import elastic, mix
from pipeline.pretrain.blend import apportion, blend_order, where
from pipeline.pretrain.data import Batches
from pipeline.pretrain.sources import load_blend, new_state
from pipeline.pretrain.streams import PretrainStreams, StreamSettings
from tests.synth import make_shards


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    """Three sources of very different sizes (seq 32, one tokenizer): 2,000, 210 and 45 train samples."""
    root = tmp_path_factory.mktemp("sources")
    return [
        make_shards(root / "big", [700, 800, 500], [16], seq_len=32, seed=1),
        make_shards(root / "mid", [120, 90], [16], seq_len=32, seed=2),
        make_shards(root / "small", [45], [16], seq_len=32, seed=3),
    ]


def _identity(samples, rng) -> dict:
    return {}


def _settings(seed: int = 3, block: int = 64) -> StreamSettings:
    return StreamSettings(seed=seed, shuffle=True, shuffle_block=block, length_buckets=True, on_bad="skip")


def _batches(blend, state, seed=3, world=1, rank=0, micro=8, workers=0) -> Batches:
    return Batches(blend, _identity, _settings(seed), rank=rank, world=world, micro=micro, workers=workers, prefetch=2,
                   pin=False, position=state)  # fmt: skip


def test_apportion_and_blend_order_keep_every_prefix_near_its_share():
    assert apportion(10, [0.6, 0.3, 0.1]) == [6, 3, 1] and sum(apportion(997, [1, 1, 1])) == 997
    counts = (600, 300, 97)
    order = blend_order(counts)
    assert [int((order == s).sum()) for s in range(3)] == list(counts)
    for t in range(1, len(order) + 1, 7):  # every prefix holds each source's share to within 1.5 samples
        for s, c in enumerate(counts):
            assert abs(int((order[:t] == s).sum()) - t * c / sum(counts)) <= 1.5, (t, s)


def test_over_1000_steps_each_source_has_its_share_within_a_point(sources):
    """The plan of 1,000 steps of 32 samples (2 ranks x 2 streams x 8) from sources of 2,000, 210 and 45 samples at
    0.6, 0.3, 0.1: each source's share of the samples served is within 1 point of its weight, though the small
    sources repeat (the 45 samples make about 70 passes) and the epochs end at different points of each source's
    passes. (Plan-level: the positions each stream serves; a shuffle block serves its samples in another order,
    never others.)"""
    blend = load_blend([str(p) for p in sources], [0.6, 0.3, 0.1])
    world, streams, micro, steps = 2, 2, 8, 1000  # a step: 2 micro-batches per rank (accumulation 2), 32 samples
    state = TrainState()
    state.blend = new_state(blend)
    seen, left, epochs = np.zeros(3), steps * 2, 0
    while left:
        plan = elastic.current_plan(blend, _settings(), state, world, streams)
        per_rank = plan.per_stream // micro * streams
        now = min(left, per_rank)
        for stream in range(world * streams):
            order = PretrainStreams(blend.shards, _identity, _settings(), rank=0, world=world, streams_per_rank=streams,
                                    micro_batch=micro, epoch=state.epoch, plan=plan).order(stream)  # fmt: skip
            served = -(-(now - stream % streams) // streams) * micro  # this stream's share of the rank's batches
            seen += np.bincount(order[:served], minlength=3)
        left -= now
        if now == per_rank:
            elastic.next_epoch(state, blend, plan)
            epochs, at_end = epochs + 1, seen.copy()
    assert seen.sum() == steps * 32 and epochs >= 10
    # Each source's recorded position (passes so far, at the last epoch's end) is what it served (but for the
    # incomplete batches at the end of each epoch): the big one is part-way into a pass at each epoch's end and goes
    # on from there; the small one repeats, reshuffled per pass.
    at = where(blend.seqs, state.blend["start"], world * streams)
    served = [n / seq.usable(world * streams) for n, seq in zip(at_end, blend.seqs)]
    assert at[0] == pytest.approx(served[0], abs=0.15) and at[0] % 1 > 0.05
    assert at[1] == pytest.approx(served[1], rel=0.03) and at[2] == pytest.approx(served[2], rel=0.03) and at[2] > 50
    for s, w in enumerate([0.6, 0.3, 0.1]):
        assert abs(seen[s] / seen.sum() - w) < 0.01, (s, seen / seen.sum())


def test_two_runs_with_one_seed_give_the_same_order_and_another_seed_another(sources):
    blend = load_blend([str(p) for p in sources], [0.5, 0.3, 0.2])

    def order(seed):
        b = _batches(blend, TrainState(), seed=seed)
        return [tuple(x) for _ in range(40) for x in b.next()["meta"]["samples"]]

    first = order(3)
    assert first == order(3)
    assert first != order(4)
    assert {name.split("/")[0] for name, _ in first} == {"big", "mid", "small"}  # every source, named by source


def _claimed(blend, settings, world, streams):
    """The samples the plan of epoch 0 gives its streams (served, but for the incomplete batches), as a multiset."""
    state = TrainState()
    state.blend = new_state(blend)
    plan = elastic.current_plan(blend, settings, state, world, streams)
    names = [s.name for s in blend.shards]
    return Counter(
        (names[p.shard], i) for st in plan.streams for src in st for p in src for i in range(p.start, p.stop)
    )


@pytest.mark.parametrize("old, new", [(2, 1), (1, 3)])
def test_resume_on_another_world_size_with_a_blend_serves_the_rest_of_the_epoch_exactly_once(sources, old, new):
    """``old`` ranks read 7 micro-batches each of a blend; the rest of epoch 0 is re-split for ``new`` ranks: old +
    new serve the uninterrupted epoch's samples (a small source's repeats included) once each, but for fewer than
    one sample per stream and the incomplete batches; and every new stream keeps the blend's shares."""
    blend = load_blend([str(p) for p in sources], [0.6, 0.3, 0.1])
    st, micro = _settings(block=20), 8
    epoch = _claimed(blend, st, old, 1)
    seen = Counter()
    for rank in range(old):
        state = TrainState(world_size=old, micro_batch=micro)
        b = _batches(blend, state, world=old, rank=rank, micro=micro)
        for _ in range(7):
            seen.update(tuple(x) for x in b.next()["meta"]["samples"])
    rest = Counter()
    for rank in range(new):
        state = TrainState(world_size=old, micro_batch=micro, batch_in_epoch=7)
        state.blend = new_state(blend)
        elastic.note_layout(state, new, 1, micro)
        assert state.resplits == [{"world": old, "streams": 1, "micro": micro, "batches": 7}]
        b = _batches(blend, state, world=new, rank=rank, micro=micro)
        first = []
        while state.epoch == 0:
            batch = [tuple(x) for x in b.next()["meta"]["samples"]]
            rest.update(batch)
            first += batch if state.batch_in_epoch <= 20 else []
        # The stream keeps the shares at every stretch (its first 20 batches here), not only in the whole.
        by_source = Counter(name.split("/")[0] for name, _ in first)
        assert abs(by_source["small"] / len(first) - 0.1) < 0.04, (rank, by_source)
        assert abs(by_source["mid"] / len(first) - 0.3) < 0.06, (rank, by_source)
    served = seen + rest
    assert sum(seen.values()) == old * 7 * micro
    assert not served - epoch  # nothing beyond the plan: no sample more often than the plan has it
    left_out = sum((epoch - served).values())
    assert left_out < new * (1 + micro)  # the remainder (< 1 per stream) and the incomplete batches (< 1 per stream)


def test_a_mix_change_mid_epoch_carries_the_rest_and_moves_no_source(sources):
    """Weights 0.6/0.3/0.1 for 5 batches, then 0.6/0.25/0.15 (data.allow_data_change): epoch 0 ends there; what it
    had planned and not read is served in epoch 1, the new mix, with no sample of it repeated or skipped; the counts
    per source carry on; each source's sequence continues where epoch 0's claim ended."""
    blend = load_blend([str(p) for p in sources], [0.6, 0.3, 0.1])
    st, micro = _settings(block=20), 8
    epoch0 = _claimed(blend, st, 1, 1)
    state = TrainState(micro_batch=micro)
    b = _batches(blend, state, micro=micro)
    before = Counter()
    for _ in range(5):
        batch = b.next()
        before.update(tuple(x) for x in batch["meta"]["samples"])
        mix.add_counts(state, blend, [*batch["meta"]["source_samples"], *batch["meta"]["source_tokens"]])
    counts = {k: list(v) for k, v in state.blend["seen"].items()}
    saved = state.state_dict()
    new = load_blend([str(p) for p in sources], [0.6, 0.25, 0.15])
    with pytest.raises(
        ConfigError, match=r"the mix differs .*weights big 0.6, mid 0.3, small 0.1 -> big 0.6, mid 0.25"
    ):
        mix.check_resume(saved, new, allow_change=False)
    mix.check_resume(saved, new, allow_change=True)
    resumed = TrainState()
    resumed.load_state_dict(saved)
    changes = elastic.note_mix(resumed, new, st)
    assert changes and resumed.epoch == 1 and resumed.batch_in_epoch == 0 and resumed.blend["carry"]["epoch"] == 0
    assert resumed.blend["seen"] == counts  # the per-source counts carry on
    b = _batches(new, resumed, micro=micro)
    after = Counter()
    while resumed.epoch == 1:
        after.update(tuple(x) for x in b.next()["meta"]["samples"])
    rest0 = epoch0 - before
    assert not before - epoch0
    assert sum((rest0 - after).values()) < micro  # every sample epoch 0 had planned and not read comes in epoch 1
    # (but for the last incomplete batch of epoch 1)...
    # ...once: what epoch 1 serves beyond it is each source's continuation. The big source (2,000 samples, under
    # one pass per epoch) continues in its first pass past epoch 0's claim: none of it was in epoch 0. (The small
    # sources make several passes per epoch: their samples recur in every pass.)
    beyond_big = {k for k in after - rest0 if k[0].startswith("big/")}
    assert len(beyond_big) > 200 and not beyond_big & set(epoch0)
    shares = Counter(name.split("/")[0] for name, _ in after.elements())
    assert shares["small"] / sum(shares.values()) == pytest.approx(0.15, abs=0.01)  # the new mix (0.1 before)


def test_sources_must_share_a_tokenizer_and_seq_len_and_differ(tmp_path, sources):
    other_vocab = make_shards(tmp_path / "vocab", [40], [8], seq_len=32, n_words=90)
    with pytest.raises(DataError, match=r"sources big \(.*\) and vocab \(.*\) differ in tokenizer \(sha256"):
        load_blend([str(sources[0]), str(other_vocab)])
    longer = make_shards(tmp_path / "s64", [40], [8], seq_len=64)
    with pytest.raises(DataError, match=r"sources big .* and s64 .* differ in seq_len \(32 vs 64\)"):
        load_blend([str(sources[0]), str(longer)])
    with pytest.raises(DataError, match="hold the same data"):
        load_blend([str(sources[0]), str(sources[0])], [1, 1], ["a", "b"])
    with pytest.raises(ConfigError, match="data.weights has 1 values for 2"):
        load_blend([str(sources[0]), str(sources[1])], [1.0])
    with pytest.raises(ConfigError, match="every weight must be positive"):
        load_blend([str(sources[0]), str(sources[1])], [1.0, 0.0])


def test_a_source_added_or_removed_is_refused_naming_it(sources):
    two = load_blend([str(p) for p in sources[:2]], [0.7, 0.3])
    state = TrainState(step=12)
    state.blend = new_state(two)
    three = load_blend([str(p) for p in sources], [0.6, 0.3, 0.1])
    with pytest.raises(ConfigError, match=r"small added.*apply the new mix from step 12"):
        mix.check_resume(state.state_dict(), three, allow_change=False)
    one = load_blend(str(sources[0]))
    with pytest.raises(ConfigError, match=r"mid removed"):
        mix.check_resume(state.state_dict(), one, allow_change=False)
    mix.check_resume(state.state_dict(), two, allow_change=False)  # the same mix


# plan_epoch([400, 300, 250], 4 streams, epoch, seed 5) as the code before blends gave it: (shard, start, stop) pieces.
BEFORE = {
    0: [[(1, 0, 237)], [(1, 237, 300), (0, 0, 174)], [(0, 174, 400), (2, 0, 11)], [(2, 11, 248)]],
    1: [[(0, 0, 237)], [(0, 237, 400), (1, 0, 74)], [(1, 74, 300), (2, 0, 11)], [(2, 11, 248)]],
    2: [[(0, 0, 237)], [(0, 237, 400), (2, 0, 74)], [(2, 74, 250), (1, 0, 61)], [(1, 61, 298)]],
}


def test_one_source_plans_as_before(synth_data):
    """A single data.path: the blend plan is the plan before blends, epoch after epoch (so a single-source run reads
    the same samples in the same order as before, and its checkpoints resume alike)."""
    blend = load_blend(str(synth_data))
    assert [s.samples for s in blend.shards] == [400, 300, 250]
    state = TrainState()
    state.blend = new_state(blend)
    for epoch in range(3):
        plan = elastic.current_plan(blend, _settings(seed=5), state, 2, 2)
        assert [[(p.shard, p.start, p.stop) for p in st[0]] for st in plan.streams] == BEFORE[epoch]
        assert plan.per_stream == 237
        elastic.next_epoch(state, blend, plan)
        assert state.blend["start"] == [[epoch + 1, 0]]


def test_a_bad_shard_of_a_source_is_skipped_and_named_with_its_source(sources, tmp_path):
    """data.verify and bad-shard skipping work per source: the shard is named with its source and left out of the
    plan; the other sources and the rest of its own are read as usual."""
    from pipeline.pretrain.shards import verify_shards

    mid = tmp_path / "mid"
    shutil.copytree(sources[1], mid)
    victim = mid / "train-000001.tar"
    victim.write_bytes(victim.read_bytes()[:2000])
    blend = load_blend([str(sources[0]), str(mid), str(sources[2])], [0.6, 0.3, 0.1])
    assert [verify_shards(s.spec, "size", "skip") for s in blend.sources] == [[], ["mid/train-000001.tar"], []]
    assert "mid/train-000001.tar" not in {s.name for s in blend.shards} and blend.sources[1].samples == 120
    served = Counter()
    b = _batches(blend, TrainState())
    for _ in range(30):
        served.update(name for name, _ in b.next()["meta"]["samples"])
    assert served["mid/train-000000.tar"] > 0 and "mid/train-000001.tar" not in served
