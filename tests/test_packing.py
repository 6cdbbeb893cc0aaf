"""Packed NSP batches: the same losses and gradients as unpacked, no attention across pairs, exact resume, export."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pipeline.pretrain.masking import Masker
from pipeline.pretrain.packing import IGNORE, PackingCollator, first_fit_decreasing, pack_batch
from tests.conftest import TINY, read_metrics, run_module, train_losses

SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
VOCAB = 60


def make_model(attention: str = "sdpa"):
    from pipeline.pretrain.config import ModelConfig
    from pipeline.pretrain.model import build_model

    cfg = ModelConfig(
        name="t", hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, hidden_dropout=0.0,
        attention_dropout=0.0, max_position_embeddings=64, attention=attention,
    )  # fmt: skip
    torch.manual_seed(0)
    return build_model(OmegaConf.structured(cfg), VOCAB).eval()


def pairs(n: int, seed: int = 0) -> list[tuple[np.ndarray, int, int]]:
    """n sentence pairs [CLS] A [SEP] B [SEP] of random lengths, as the loader reads them."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = int(rng.integers(2, 12)), int(rng.integers(2, 12))
        body = rng.integers(5, VOCAB, a + b)
        ids = np.concatenate([[2], body[:a], [3], body[a:], [3]]).astype(np.int64)
        out.append((ids, a, int(rng.integers(0, 2))))
    return out


def masked(samples, fixed_width=None, seed=1):
    spec = SimpleNamespace(special_ids=SPECIAL, vocab_size=VOCAB)
    m = Masker(spec, 0.3, None, 8, False, fixed_width=fixed_width)
    return m(samples, np.random.default_rng(seed))


def only_pair(batch: dict, j: int, width: int) -> dict:
    """Labels of pair j only (the rest ignored): the losses are then pair j's own."""
    b = dict(batch)
    owner = batch["mlm_positions"] // width if "cls_positions" not in batch else None
    if owner is None:  # packed: a position belongs to the pair whose [CLS] is the last one at or before it
        cls = batch["cls_positions"]
        owner = torch.tensor([int(torch.argmax(torch.where(cls <= p, cls, torch.full_like(cls, -1)))) for p in
                              batch["mlm_positions"]])  # fmt: skip
    b["mlm_labels"] = torch.where(owner == j, batch["mlm_labels"], torch.full_like(batch["mlm_labels"], IGNORE))
    nsp = torch.full_like(batch["nsp_labels"], IGNORE)
    nsp[j] = batch["nsp_labels"][j]
    b["nsp_labels"] = nsp
    return b


def forward(model, batch):
    return model(**{k: v for k, v in batch.items() if k != "meta"})


def test_first_fit_decreasing_fills_rows_and_keeps_every_item():
    lengths = np.array([30, 10, 60, 25, 5, 34, 64])
    rows = first_fit_decreasing(lengths, 64)
    fill = np.bincount(rows, weights=lengths)
    assert fill.max() <= 64 and len(fill) == 4  # 228 tokens: 4 rows of 64 is the least possible
    assert (first_fit_decreasing(lengths, 64) == rows).all()  # deterministic


@pytest.mark.parametrize("attention", ["sdpa", "varlen"])
def test_packed_batch_gives_the_unpacked_losses_and_gradients(attention):
    model = make_model(attention)
    samples = pairs(9)
    unpacked = masked(samples)
    packed = pack_batch(unpacked, 64, 8, pad_id=0)
    width = unpacked["input_ids"].shape[1]
    assert packed["input_ids"].shape[0] < len(samples)  # several pairs share a row
    assert packed["meta"]["tokens"] == int(unpacked["attention_mask"].sum())
    # Each pair: its own position ids from 0, its [CLS] where cls_positions say.
    flat_pos = packed["position_ids"].reshape(-1)
    assert (flat_pos[packed["cls_positions"]] == 0).all()
    assert (packed["input_ids"].reshape(-1)[packed["cls_positions"]] == SPECIAL["cls"]).all()
    # Whole batch: the same losses and the same gradients.
    outs = []
    for batch in (unpacked, packed):
        model.zero_grad()
        out = forward(model, {k: v for k, v in batch.items()})
        out["loss"].backward()
        outs.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (ou, gu), (op, gp) = outs
    for k in ("loss", "mlm_loss", "nsp_loss", "mlm_correct", "mlm_count", "nsp_correct"):
        assert torch.allclose(ou[k].double(), op[k].double(), atol=1e-5), k
    assert set(gu) == set(gp)
    for n in gu:
        assert torch.allclose(gu[n], gp[n], atol=1e-5), n
    # Pair by pair: the same MLM and NSP losses.
    with torch.no_grad():
        for j in range(len(samples)):
            u, p = forward(model, only_pair(unpacked, j, width)), forward(model, only_pair(packed, j, width))
            assert torch.allclose(u["nsp_loss"], p["nsp_loss"], atol=1e-5), j
            if u["mlm_count"] > 0:
                assert torch.allclose(u["mlm_loss"], p["mlm_loss"], atol=1e-5), j


@pytest.mark.parametrize("attention", ["sdpa", "varlen"])
def test_no_pair_attends_across_its_boundary(attention):
    model = make_model(attention)
    samples = pairs(6, seed=3)
    packed = pack_batch(masked(samples), 64, 8, pad_id=0)
    rows = packed["cls_positions"] // packed["input_ids"].shape[1]
    # Two pairs sharing a row: perturb the tokens of one (not its masked ones), the other's losses stay.
    r = int(next(r for r in rows.unique() if (rows == r).sum() >= 2))
    a, b = [int(j) for j in torch.nonzero(rows == r).flatten()[:2]]
    perturbed = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in packed.items()}
    flat = perturbed["input_ids"].view(-1)
    start, n = int(packed["cls_positions"][a]), len(samples[a][0])
    span = torch.arange(start + 1, start + n - 1)
    span = span[~torch.isin(span, packed["mlm_positions"])]
    flat[span] = (flat[span] + 7) % (VOCAB - 5) + 5
    with torch.no_grad():
        before_b, after_b = forward(model, only_pair(packed, b, 0)), forward(model, only_pair(perturbed, b, 0))
        before_a, after_a = forward(model, only_pair(packed, a, 0)), forward(model, only_pair(perturbed, a, 0))
    assert torch.equal(before_b["nsp_loss"], after_b["nsp_loss"])
    assert torch.allclose(before_b["loss"], after_b["loss"], atol=1e-6, rtol=0)
    assert not torch.allclose(before_a["loss"], after_a["loss"])  # the perturbation itself matters


def test_fixed_shapes_give_the_same_losses_and_one_shape():
    model = make_model()
    shapes = set()
    for seed in range(3):
        samples = pairs(5, seed)
        free, fixed = masked(samples, seed=seed), masked(samples, fixed_width=64, seed=seed)
        shapes.add((tuple(fixed["input_ids"].shape), tuple(fixed["mlm_positions"].shape)))
        assert (fixed["mlm_labels"] == IGNORE).any()  # padded slots exist and are ignored
        with torch.no_grad():
            a, b = forward(model, free), forward(model, fixed)
        for k in ("loss", "mlm_count", "mlm_correct"):
            assert torch.allclose(a[k].double(), b[k].double(), atol=1e-9), k
    assert len(shapes) == 1


def test_packed_fixed_shapes_give_one_shape_and_the_unpacked_losses(caplog):
    """With fixed shapes every packed micro-batch has the same shapes (rows, width, varlen segments, masked slots),
    whatever its pairs, so torch.compile captures one graph; the empty rows change no loss or count."""
    model = make_model()
    masker = Masker(SimpleNamespace(special_ids=SPECIAL, vocab_size=VOCAB), 0.3, None, 8, False, fixed_width=64)
    shapes: dict = {}
    for seed in range(4):
        samples = pairs(6, seed)
        unpacked = masker(samples, np.random.default_rng(seed))
        for rows in (None, 4):  # one row per sample (the default), or data.packed_rows=4
            packed = PackingCollator(masker, 64, 8, fixed=True, rows=rows)(samples, np.random.default_rng(seed))
            shapes.setdefault(rows, set()).add(tuple((k, tuple(v.shape)) for k, v in packed.items() if k != "meta"))
            n_rows, used = packed["input_ids"].shape[0], int(packed["cls_positions"].max()) // 64 + 1
            assert n_rows == (rows or 6) and used < n_rows  # some rows are empty: padding only
            assert (packed["input_ids"][used:] == SPECIAL["pad"]).all() and (packed["pair_ids"][used:] == 0).all()
            cu = packed["cu_seqlens"]
            assert len(cu) == 6 + n_rows + 1 and (cu[1:] >= cu[:-1]).all() and int(cu[-1]) == n_rows * 64
            assert packed["meta"]["tokens"] == unpacked["meta"]["tokens"] and packed["meta"]["fixed_shape"]
            with torch.no_grad():
                a, b = forward(model, unpacked), forward(model, packed)
            for k in ("loss", "mlm_loss", "nsp_loss", "mlm_count", "mlm_correct", "nsp_count", "nsp_correct"):
                assert torch.allclose(a[k].double(), b[k].double(), atol=1e-5), (rows, k)
    assert {rows: len(s) for rows, s in shapes.items()} == {None: 1, 4: 1}, shapes
    # Rows too few for a micro-batch: it gets one row per sample (a rare extra shape), never a dropped pair.
    packed = PackingCollator(masker, 64, 8, fixed=True, rows=1)(pairs(6, 0), np.random.default_rng(0))
    assert packed["input_ids"].shape == (6, 64) and len(packed["cls_positions"]) == 6
    assert "raise data.packed_rows" in caplog.text


def test_varlen_refuses_attention_dropout():
    from pipeline.config import ConfigError
    from pipeline.pretrain.config import ModelConfig
    from pipeline.pretrain.model import check_model_config

    cfg = ModelConfig(name="t", hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64, attention="varlen")
    with pytest.raises(ConfigError, match="model.attention_dropout=0"):
        check_model_config(cfg)


def pretrain(data, run_dir, *extra, check=True):
    return run_module("pipeline.pretrain", [f"data.path={data}", f"run_dir={run_dir}", *TINY, *extra], check=check)


@pytest.mark.slow
def test_packed_training_resumes_exactly_and_exports_as_bert_for_pretraining(synth_data, tmp_path):
    args = [
        "data.packing=true",
        "max_steps=10",
        "global_batch_size=16",
        "engine.micro_batch_size=8",
        "checkpoint.every_steps=4",
        "engine.loader_workers=2",
        "model.hidden_dropout=0",  # the unpacked twin below draws no dropout masks to compare; the resume of the
        "model.attention_dropout=0",  # dropout RNG is tested in test_pretrain.py (packing does not touch it)
    ]
    pretrain(synth_data, tmp_path / "a", *args)
    pretrain(synth_data, tmp_path / "b", *args, "stop_after_steps=5")
    assert max(train_losses(tmp_path / "b")) == 5
    pretrain(synth_data, tmp_path / "b", *args)
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for k in ("loss", "mlm_loss", "nsp_loss", "grad_norm", "real_token_frac"):
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], abs=1e-6), (ra["step"], k)
    # The same run unpacked: the same samples in the same order and the same math, so the same losses and tokens.
    pretrain(synth_data, tmp_path / "u", *[x for x in args if x != "data.packing=true"])
    u = read_metrics(tmp_path / "u")
    for ra, ru in zip(a, u):
        if "loss" in ra:
            assert ru["loss"] == pytest.approx(ra["loss"], abs=1e-5), ra["step"]
            assert ru["tokens"] == ra["tokens"] and 0 < ru["real_token_frac"] <= 1 and 0 < ra["real_token_frac"] <= 1
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["samples"] == 10 * 16

    from transformers import BertForPreTraining

    from pipeline.export import export

    out = export(tmp_path / "b", None, tmp_path / "hf")
    hf, info = BertForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
