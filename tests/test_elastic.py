"""Resume on another world size or data layout: DeepSpeed's universal checkpoint and the re-split rest of the epoch."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from data_prep.format import load_data_spec
from pipeline.pretrain import elastic
from pipeline.pretrain.masking import Masker
from pipeline.pretrain.streams import PretrainStreams, StreamSettings, make_loader
from tests.conftest import TINY, read_metrics, run_module, train_losses


@pytest.fixture(scope="module")
def epoch_data(tmp_path_factory) -> Path:
    """288 train samples: one epoch is 24 steps of 12 on 1, 2 or 3 ranks, with nothing left over."""
    from tests.synth import make_shards

    return make_shards(tmp_path_factory.mktemp("epoch"), [96, 120, 72], [32], seq_len=32)


def _settings(block: int) -> StreamSettings:
    return StreamSettings(seed=3, shuffle=True, shuffle_block=block, length_buckets=True, on_bad="skip")


def _served(spec, st, masker, rank, world, streams, micro, start, plan=None, stop=None) -> list[tuple[str, int]]:
    ds = PretrainStreams(
        spec.train, masker, st, rank=rank, world=world, streams_per_rank=streams, micro_batch=micro, epoch=0,
        start_batch=start, plan=plan,
    )  # fmt: skip
    out = []
    for i, b in enumerate(make_loader(ds, 0, 2, False)):
        if stop is not None and i >= stop:
            break
        out.extend(tuple(x) for x in b["meta"]["samples"])
    return out


@pytest.mark.parametrize(
    "old, new, block",
    [((2, 1, 6), (3, 1, 4), 2048), ((2, 2, 3), (1, 1, 12), 8), ((1, 1, 12), (2, 2, 3), 10), ((3, 1, 4), (2, 1, 6), 8)],
)
def test_resplit_serves_the_rest_of_the_epoch_exactly_once(epoch_data, old, new, block):
    """(world, streams, micro) old -> new after 7 micro-batches per rank, blocks of `block` samples shuffled and
    length-bucketed (the resume lands inside a block): old batches + new plan = the epoch, each sample once."""
    spec = load_data_spec(epoch_data)
    st, masker = _settings(block), Masker(spec, 0.15, None, 8, False)
    (w0, s0, m0), (w1, s1, m1) = old, new
    seen = [x for r in range(w0) for x in _served(spec, st, masker, r, w0, s0, m0, 0, stop=7)]
    resplits = [{"world": w0, "streams": s0, "micro": m0, "batches": 7}]
    plan = elastic.epoch_plan(spec.train, st, 0, resplits, w1, s1)
    rest = [x for r in range(w1) for x in _served(spec, st, masker, r, w1, s1, m1, 0, plan=plan)]
    epoch = Counter(seen + rest)
    assert max(epoch.values()) == 1, [k for k, n in epoch.items() if n > 1][:5]
    assert len(seen) == 7 * w0 * m0
    # All of the rest, but for the plan's usual remainder (fewer than one batch per new stream).
    n = w1 * s1
    assert len(epoch) == len(seen) + n * ((288 - len(seen)) // n // m1 * m1) > 288 - n * m1
    # The same plan resumed from a position inside it (a second resume on the new layout) continues it exactly.
    tail = _served(spec, st, masker, 0, w1, s1, m1, 2, plan=plan)
    assert tail == _served(spec, st, masker, 0, w1, s1, m1, 0, plan=plan)[2 * m1 :]


def _args(data, run_dir, *extra) -> list[str]:
    args = [f"data.path={data}", f"run_dir={run_dir}", *TINY, "global_batch_size=12", "max_steps=24"]
    args += ["model.hidden_dropout=0", "model.attention_dropout=0", "optim.lr=2e-3", "optim.warmup_steps=3"]
    return [*args, *extra]


def _train(data, run_dir, nproc, *extra, env=None):
    return run_module("pipeline.pretrain", _args(data, run_dir, *extra), nproc=nproc, env=env)


def _epoch_samples(log_base: Path) -> Counter:
    seen: Counter = Counter()
    for f in log_base.parent.glob(log_base.name + ".rank*"):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if rec["epoch"] == 0:
                seen.update(tuple(x) for x in rec["samples"])
    return seen


@pytest.fixture(scope="module")
def trained(epoch_data, tmp_path_factory):
    """Runs several tests only read, each trained once per module: ``trained("ref", precision)`` the uninterrupted
    24 steps on 2 ranks; ``trained("base", zero, precision, ranks)`` the first 10 steps (their samples logged)."""
    root, done = tmp_path_factory.mktemp("trained"), {}

    def get(kind, *key):
        if (kind, *key) not in done:
            run = root / "_".join(map(str, (kind, *key)))
            if kind == "ref":  # ZeRO stages give the same losses (test_multigpu): one reference per precision
                _train(epoch_data, run, 2, f"engine.precision={key[0]}")
            else:
                zero, precision, ranks = key
                stage = [f"engine.zero_stage={zero}", f"engine.precision={precision}", "stop_after_steps=10"]
                _train(epoch_data, run, ranks, *stage, env={"BERTRUN_SAMPLE_LOG": str(run) + "-samples"})
            done[kind, *key] = run
        return done[kind, *key]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(
    "zero, precision, base_ranks, resume_ranks",
    # ZeRO-1 and -2 share DeepSpeed's optimizer: ZeRO-2 runs in the bf16 case; ZeRO-0 fp32 is the unpartitioned path.
    # Each partitioned case goes another way through the universal checkpoint: 2 -> 3, 2 -> 1 and 1 -> 2 ranks.
    [(1, "fp32", 2, (3,)), (3, "fp32", 2, (1,)), (2, "bf16", 1, (2,)), (0, "fp32", 2, (1,))],
)
def test_resume_on_another_world_size_continues_the_run(
    trained, epoch_data, tmp_path, zero, precision, base_ranks, resume_ranks
):
    stage = [f"engine.zero_stage={zero}", f"engine.precision={precision}"]
    # Optimizer state partitioned per rank (ZeRO 1-3; bf16's optimizer at any stage) needs the universal form;
    # ZeRO-0 fp32 keeps it whole in the model file, which every rank loads as it is.
    partitioned = zero > 0 or precision == "bf16"
    ref = trained("ref", precision)
    ref_last = read_metrics(ref)[-2]  # the last train record (the val record follows)
    base = trained("base", zero, precision, base_ranks)
    for n in resume_ranks:
        run = tmp_path / f"on{n}"
        shutil.copytree(base, run)
        log = tmp_path / f"samples{n}"
        for f in base.parent.glob(f"{base.name}-samples.rank*"):  # the first 10 steps' samples, then this resume's
            shutil.copy(f, log.with_name(f"{log.name}.{f.name.split('.')[-1]}-base"))
        p = _train(epoch_data, run, n, *stage, env={"BERTRUN_SAMPLE_LOG": str(log)})
        out = p.stdout + p.stderr
        assert "re-split" in out, out[-3000:]
        converted = (run / "checkpoints" / "step_00000010" / "universal" / "COMPLETE").is_file()  # cached
        assert converted == partitioned == ("converted step_00000010 to a universal checkpoint" in out), out[-3000:]
        last = read_metrics(run)[-2]
        assert last["step"] == ref_last["step"] == 24
        assert last["tokens"] == ref_last["tokens"]  # the whole epoch, whatever the order
        assert last["lr"] == pytest.approx(ref_last["lr"], rel=1e-9)
        assert json.loads((run / "summary.json").read_text())["samples"] == 288
        # Every sample of the epoch exactly once over both segments.
        seen = _epoch_samples(log)
        assert len(seen) == 288 and max(seen.values()) == 1
        # The loss continues near the uninterrupted curve (another sample order: close, not equal). At this size the
        # tiny model learns little in 24 steps, so this guards against a blow-up more than it proves continuity;
        # step, tokens and LR above are the exact checks.
        ref_tail = [r["loss"] for r in read_metrics(ref) if "loss" in r and r["step"] > 19]
        tail = [r["loss"] for r in read_metrics(run) if "loss" in r and r["step"] > 19]
        assert abs(sum(tail) / 5 - sum(ref_tail) / 5) < 0.1 * sum(ref_tail) / 5, (tail, ref_tail)
        assert read_metrics(run)[-1]["val_loss"] == pytest.approx(read_metrics(ref)[-1]["val_loss"], abs=0.1)


def test_zero_stages_give_the_same_losses_without_accumulation(trained):
    """The 2-rank fp32 first segments of ZeRO 0, 1 and 3 equal the ZeRO-2 reference step by step (no gradient
    accumulation here: tests/zero_matrix.py compares stages 0, 2 and 3 with it, in test_multigpu.py)."""
    ref = train_losses(trained("ref", "fp32"))
    for zero in (0, 1, 3):
        got = train_losses(trained("base", zero, "fp32", 2))
        assert sorted(got) == list(range(1, 11)), (zero, got)
        for step, loss in got.items():
            assert loss == pytest.approx(ref[step], abs=2e-5), (zero, step, got, ref)


def test_a_failed_conversion_leaves_the_checkpoint_untouched(trained, epoch_data, tmp_path):
    import hashlib

    run = tmp_path / "run"
    shutil.copytree(trained("base", 1, "fp32", 2), run)  # ZeRO-1 on 2 ranks, stopped at step 10
    ckpt = run / "checkpoints" / "step_00000010"
    victim = ckpt / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    victim.write_bytes(victim.read_bytes()[:1000])  # damaged: the converter cannot read it

    def digest() -> dict:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(ckpt.iterdir())}

    before = digest()
    p = run_module("pipeline.pretrain", _args(epoch_data, run, "engine.zero_stage=1", "engine.precision=fp32"),
                   check=False)  # fmt: skip
    assert p.returncode != 0
    assert "converting" in p.stderr and "failed" in p.stderr and "the checkpoint is untouched" in p.stderr
    assert digest() == before  # no universal/, no temporary folder, no pointer, every file as it was


# ---------------------------------------------------------------------------------------------------------------
# Phases: phase 1 is the reference above (2 ranks, ZeRO-2, 24 steps); phase 2 runs on 1 rank.


def _phase2(run_dir, *extra, env=None):
    args = [f"run_dir={run_dir}", *TINY, "global_batch_size=12", "model.hidden_dropout=0", "model.attention_dropout=0",
            "optim.lr=1e-3", "optim.warmup_steps=2", *extra]  # fmt: skip
    return run_module("pipeline.pretrain", args, env=env)


@pytest.fixture(scope="module")
def phase2(trained, epoch_data, tmp_path_factory):
    """Phase 2 from the reference run with its optimizer, at ZeRO-2 on 1 rank, on a blend of phase 1's data (0.75)
    and a second source from the same generator (0.25), in shuffle blocks of 2 batches: ``full`` runs 6 steps;
    ``part`` stops at step 3 (inside a block) and is run again; ``at3`` is a copy of it at the stop."""
    from tests.synth import make_shards

    root = tmp_path_factory.mktemp("phase2")
    other = make_shards(root / "other", [60], [16], seq_len=32, seed=5)
    blend = [
        f"data.path=[{epoch_data},{other}]",
        "data.names=[epoch,other]",
        "data.weights=[0.75,0.25]",
        "data.shuffle_block=16",
    ]
    start = [f"init_from_run={trained('ref', 'fp32')}", "init_optimizer=true", "max_steps=6"]
    runs = {name: root / name for name in ("full", "part", "at3")}
    _phase2(runs["full"], *blend, *start)
    _phase2(runs["part"], *blend, *start, "stop_after_steps=3")
    shutil.copytree(runs["part"], runs["at3"])
    _phase2(runs["part"], *blend, *start)
    return SimpleNamespace(blend=blend, start=start, **runs)


def _moments(ckpt_root: Path, tag: str, universal: Path | None, order: list[str]) -> tuple[dict, float]:
    """A checkpoint's moments by name; ``universal``: its universal form (made here if it does not exist yet)."""
    from pipeline.engine import convert_to_universal, optimizer_state_by_name, partitioned

    if partitioned(ckpt_root / tag) and not (universal / "COMPLETE").is_file():
        convert_to_universal(ckpt_root, tag, out=universal)
    return optimizer_state_by_name(ckpt_root, tag, universal if partitioned(ckpt_root / tag) else None, order)


def _optimizer_order(run: Path) -> list[str]:
    """Parameter names in the order the run's optimizer numbers them."""
    from omegaconf import OmegaConf

    from pipeline.optim import param_groups
    from pipeline.pretrain.model import build_model

    cfg = OmegaConf.load(run / "config.yaml")
    data = json.loads((run / "data.json").read_text())
    model = build_model(cfg.model, data["vocab_size"], data["special_ids"]["pad"])
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in param_groups(model, cfg.optim.weight_decay) for p in g["params"]]


def _assert_starts_from(phase1: Path, phase2_run: Path, work: Path) -> None:
    """Phase 2's step-0 checkpoint holds phase 1's final weights and optimizer moments and step count, exactly."""
    from pipeline.engine import consolidated_state_dict

    ckpt1, ckpt2 = phase1 / "checkpoints", phase2_run / "checkpoints"
    end = json.loads((ckpt1 / "latest.json").read_text())["tag"]
    w1, w2 = consolidated_state_dict(ckpt1, end), consolidated_state_dict(ckpt2, "step_00000000")
    assert set(w1) == set(w2) and all(torch.equal(w1[k], w2[k]) for k in w1)
    order = _optimizer_order(phase2_run)
    m1, step1 = _moments(ckpt1, end, phase2_run / "init" / "universal", order)  # phase 2 converted it to start
    m2, step2 = _moments(ckpt2, "step_00000000", work / "step0", order)
    assert step1 == step2 == 24 and len(m1) == len(order) and set(m1) == set(m2)
    assert all(torch.equal(m1[n][k], m2[n][k]) for n in m1 for k in ("exp_avg", "exp_avg_sq"))
    assert any(float(m1[n]["exp_avg_sq"].abs().sum()) > 0 for n in m1)  # real moments, not fresh zeros


def test_phase2_starts_from_phase1_weights_and_optimizer_at_zero2(phase2, trained, tmp_path):
    """2 ranks at ZeRO-2 -> 1 rank at ZeRO-2 (DeepSpeed's universal route): weights, moments and step count equal at
    step 0; phase 2 has its own schedule and records where it started."""
    ref = trained("ref", "fp32")
    _assert_starts_from(ref, phase2.full, tmp_path)
    summary = json.loads((phase2.full / "summary.json").read_text())
    ref_summary = json.loads((ref / "summary.json").read_text())
    assert summary["init_from"]["run"] == str(ref.resolve()) and summary["init_from"]["step"] == 24
    assert summary["init_from"]["tokens"] == ref_summary["tokens"] > 0
    first = read_metrics(phase2.full)[0]
    assert first == {"step": 0, "init_from_step": 24, "init_from_tokens": ref_summary["tokens"]}
    train = [r for r in read_metrics(phase2.full) if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 7)) and train[0]["lr"] == pytest.approx(5e-4)  # its warmup
    assert summary["step"] == 6 and summary["samples"] == 72  # its own counters
    from pipeline.report import report  # both phases on one token axis

    md = report(phase2.full, tmp_path / "report").read_text()
    assert "![phases.png](phases.png)" in md and f"started from | {ref.resolve()} at step 24" in md


def test_phase2_starts_from_phase1_optimizer_at_zero0(trained, epoch_data, tmp_path):
    """2 ranks at ZeRO-2 -> 1 rank at ZeRO-0 in fp32 (a plain torch optimizer, moments set by name); its W&B run
    joins phase 1's group."""
    ref = trained("ref", "fp32")
    run = tmp_path / "z0"
    _phase2(run, f"data.path={epoch_data}", f"init_from_run={ref}", "init_optimizer=true", "max_steps=1",
            "engine.zero_stage=0", "logger.wandb.mode=offline", "eval.at_end=false", "checkpoint.at_end=false",
            env={"WANDB_DIR": str(tmp_path)})  # fmt: skip
    _assert_starts_from(ref, run, tmp_path)
    from tests.wandb_records import records

    runs = [r.run for f in run.glob("wandb/offline-run-*/run-*.wandb") for r in records(f) if r.WhichOneof(
        "record_type") == "run"]  # fmt: skip
    assert runs and runs[0].run_group == ref.resolve().name


def test_phase2_first_loss_is_phase1s_model_on_its_first_batch(phase2, trained):
    """The first phase-2 loss is what phase 1's final weights give on phase 2's first batch (recomputed here), and
    within the noise of phase 1's last losses on the same data."""
    from omegaconf import OmegaConf

    from pipeline.checkpoint import TrainState
    from pipeline.engine import consolidated_state_dict
    from pipeline.pretrain.data import Batches, build_collate
    from pipeline.pretrain.model import build_model
    from pipeline.pretrain.sources import load_blend

    cfg = OmegaConf.load(phase2.full / "config.yaml")
    blend = load_blend(cfg.data.path, cfg.data.weights)
    _, collate = build_collate(cfg, blend.first, blend.first.seq_len)
    batch = Batches(blend, collate, StreamSettings.of(cfg), rank=0, world=1, micro=12, workers=0, prefetch=2,
                    pin=False, position=TrainState()).next()  # fmt: skip
    model = build_model(cfg.model, blend.first.vocab_size, blend.first.special_ids["pad"])
    ref = trained("ref", "fp32")
    model.load_state_dict(consolidated_state_dict(ref / "checkpoints", "step_00000024"), strict=False)
    with torch.no_grad():
        loss = float(model(**{k: v for k, v in batch.items() if k != "meta"})["loss"])
    first = train_losses(phase2.full)[1]
    assert first == pytest.approx(loss, abs=1e-5)
    last = [v for step, v in train_losses(ref).items() if step > 16]
    mean = sum(last) / len(last)
    spread = (sum((v - mean) ** 2 for v in last) / len(last)) ** 0.5
    assert abs(first - mean) < 3 * spread + 0.05, (first, last)


def test_exact_resume_mid_blend_and_of_phase2(phase2):
    """Phase 2 on a blend, stopped at step 3 inside a shuffle block and run again: the same losses, gradient norms
    and per-source counts as the uninterrupted run (it resumed from its own checkpoint, not from phase 1)."""
    full, part = read_metrics(phase2.full), read_metrics(phase2.part)
    assert [r["step"] for r in full] == [r["step"] for r in part]
    for a, b in zip(full, part):
        for k in ("loss", "mlm_loss", "nsp_loss", "grad_norm", "lr", "val_loss", "val_loss/other"):
            if k in a:
                assert b[k] == pytest.approx(a[k], abs=1e-6), (a["step"], k)
        for k in ("tokens", "samples/epoch", "samples/other", "tokens/other"):
            assert a.get(k) == b.get(k), (a["step"], k)
    names = [n for n in full[-2] if n.startswith("samples/")]
    assert sorted(names) == ["samples/epoch", "samples/other"]
    assert full[-2]["samples/epoch"] + full[-2]["samples/other"] == 72
    assert abs(full[-2]["samples/other"] / 72 - 0.25) < 0.1
    assert not (phase2.part / "checkpoints" / "step_00000000").exists()  # pruned: resumed from its own step 3


def test_a_changed_mix_continues_with_allow_data_change_and_the_counts_carry_on(phase2):
    run = phase2.at3
    at3 = json.loads((run / "checkpoints" / "step_00000003" / "trainer_state.json").read_text())["blend"]["seen"]
    blend = [x if not x.startswith("data.weights") else "data.weights=[0.5,0.5]" for x in phase2.blend]
    p = _phase2(run, *blend, *phase2.start, "data.allow_data_change=true")
    out = p.stdout + p.stderr
    assert "the new mix applies from step 3 on" in out and "epoch 0 ends here" in out, out[-3000:]
    recs = [r for r in read_metrics(run) if "loss" in r]
    assert recs[2]["samples/epoch"] == at3["epoch"][0] and recs[2]["samples/other"] == at3["other"][0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["sources"]["epoch"]["samples"] + summary["sources"]["other"]["samples"] == summary["samples"] == 72
    assert summary["sources"]["other"]["weight"] == 0.5
    after = summary["sources"]["other"]["samples"] - at3["other"][0]
    assert abs(after / 36 - 0.5) < 0.2  # steps 4-6 at the new weights
