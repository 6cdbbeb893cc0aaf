"""Export to Hugging Face: what transformers loads equals what the trainer computes, for ZeRO 0 and ZeRO 3."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import run_module
from tests.finetune_synth import pretrained_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, object]:
    base = tmp_path_factory.getbasetemp()
    return {0: pretrained_run(base, zero_stage=0, nproc=1), 3: pretrained_run(base, zero_stage=3, nproc=2)}


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 240, (3, 16), generator=g)
    ids[:, 0], ids[:, 8], ids[:, 15] = 2, 3, 3
    tt = torch.zeros_like(ids)
    tt[:, 9:] = 1
    am = torch.ones_like(ids)
    am[2, 12:] = 0
    return ids, tt, am


@pytest.mark.parametrize("stage", [0, 3])
def test_export_loads_in_transformers_with_the_trainers_logits(runs, tmp_path, stage):
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, BertForPreTraining

    from pipeline.engine import consolidated_state_dict
    from pipeline.export import export, find_checkpoint
    from pipeline.pretrain.model import BertPretrainer

    run = runs[stage]
    out = export(run, None, tmp_path / "hf")
    hf, info = BertForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info

    # The trainer's own model, from DeepSpeed's consolidated fp32 weights (ZeRO-3: gathered from 2 ranks' shards).
    root, tag = find_checkpoint(run, None)
    assert tag == "step_00000012"
    ours = BertPretrainer(hf.config)
    missing, unexpected = ours.load_state_dict(consolidated_state_dict(root, tag), strict=False)
    assert not unexpected and set(missing) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    hf.eval(), ours.eval()
    ids, tt, am = _batch()
    with torch.no_grad():
        r = hf(input_ids=ids, token_type_ids=tt, attention_mask=am)
        enc = ours.bert(input_ids=ids, token_type_ids=tt, attention_mask=am)
        mlm = ours.cls.predictions(enc.last_hidden_state)
        nsp = ours.cls.seq_relationship(enc.pooler_output)
        # The training forward (MLM at chosen positions + NSP) gives the loss of the exported logits.
        positions = torch.tensor([1, 5, 20, 33, 40])
        labels = ids.reshape(-1)[positions]
        nsp_labels = torch.tensor([0, 1, 0])
        train_out = ours(ids, tt, am, positions, labels, nsp_labels)
    assert torch.allclose(r.prediction_logits, mlm, atol=1e-5, rtol=0)
    assert torch.allclose(r.seq_relationship_logits, nsp, atol=1e-5, rtol=0)
    ref_loss = torch.nn.functional.cross_entropy(r.prediction_logits.flatten(0, 1)[positions], labels)
    ref_loss = ref_loss + torch.nn.functional.cross_entropy(r.seq_relationship_logits, nsp_labels)
    assert torch.allclose(train_out["loss"], ref_loss, atol=1e-5)

    # Encoder-only and classification loaders: nothing of the encoder or pooler missing, like bert-base-uncased.
    base, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and all(k.startswith("cls.") for k in info["unexpected_keys"]), info
    with torch.no_grad():
        assert torch.allclose(
            base(input_ids=ids, token_type_ids=tt, attention_mask=am).last_hidden_state,
            enc.last_hidden_state,
            atol=1e-5,
        )
    _, info = AutoModelForSequenceClassification.from_pretrained(out, num_labels=3, output_loading_info=True)
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}, info
    assert all(k.startswith("cls.") for k in info["unexpected_keys"]), info

    tok = AutoTokenizer.from_pretrained(out)
    enc_t = tok("w7 w8s3", "w9")
    assert tok.convert_ids_to_tokens(enc_t["input_ids"]) == ["[CLS]", "w7", "w8", "##s3", "[SEP]", "w9", "[SEP]"]
    assert enc_t["token_type_ids"] == [0, 0, 0, 0, 0, 1, 1]


def test_export_errors_name_the_problem(runs, tmp_path):
    from pipeline.export import ExportError, export

    with pytest.raises(ExportError, match=r"no complete checkpoint for step 7 .*complete: \['step_00000012'\]"):
        export(runs[0], 7, tmp_path / "x")
    (tmp_path / "notarun").mkdir()
    with pytest.raises(ExportError, match="is not a pretraining run directory"):
        export(tmp_path / "notarun", None, tmp_path / "y")
    p = run_module("pipeline.export", [f"run_dir={tmp_path / 'notarun'}", f"output={tmp_path / 'z'}"], check=False)
    assert p.returncode != 0 and "is not a pretraining run directory" in p.stderr + p.stdout
    assert not (tmp_path / "z").exists()


def test_the_export_console_shows_our_lines_only(runs, tmp_path):
    """DeepSpeed's accelerator guess, zero_to_fp32's own prints and bars, and transformers' "Writing model shards"
    bar stay off the console: what is left says what was exported where, and what comes next."""
    out = tmp_path / "hf"
    p = run_module("pipeline.export", [f"run_dir={runs[3]}", f"output={out}"])
    ckpt = runs[3] / "checkpoints" / "step_00000012"
    assert p.stdout.splitlines() == [
        f"exported step 12 ({ckpt}) to {out}: 528,122 parameters, tokenizer, README.md",
        f"  next: python -m pipeline.finetune model.path={out} task=NAME (the tasks: conf/task/README.md)",
    ]
    assert p.stderr == "" and (out / "model.safetensors").is_file()
