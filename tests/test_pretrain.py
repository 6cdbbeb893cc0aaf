"""The pretraining trainer end to end: real DeepSpeed on gloo, one or two CPU processes."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from tests.conftest import TINY, read_metrics, run_module, train_losses
from tests.finetune_synth import separable
from tests.wandb_records import config, history


def pretrain(data, run_dir, *extra, nproc=1, check=True, timeout=600, env=None):
    return run_module(
        "pipeline.pretrain",
        [f"data.path={data}", f"run_dir={run_dir}", *TINY, *extra],
        nproc=nproc,
        check=check,
        timeout=timeout,
        env=env,
    )


def test_model_forward_equals_hf_bert_for_pretraining():
    from transformers import BertForPreTraining

    from pipeline.pretrain.config import ModelConfig
    from pipeline.pretrain.model import build_model

    cfg = OmegaConf.structured(ModelConfig(name="t", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128))
    torch.manual_seed(0)
    ours = build_model(cfg, vocab_size=100).eval()
    ref = BertForPreTraining(ours.config).eval()
    ref.load_state_dict(ours.state_dict())
    ids = torch.randint(5, 100, (3, 12))
    tt = torch.zeros_like(ids)
    tt[:, 6:] = 1
    am = torch.ones_like(ids)
    am[2, 9:] = 0
    positions = torch.tensor([1, 4, 13, 20, 30])
    labels = ids.reshape(-1)[positions]
    nsp = torch.tensor([0, 1, 0])
    with torch.no_grad():
        out = ours(ids, tt, am, positions, labels, nsp)
        full_labels = torch.full_like(ids, -100)
        full_labels.view(-1)[positions] = labels
        r = ref(input_ids=ids, token_type_ids=tt, attention_mask=am, labels=full_labels, next_sentence_label=nsp)
    ref_mlm = torch.nn.functional.cross_entropy(
        r.prediction_logits.view(-1, r.prediction_logits.shape[-1])[positions], labels
    )
    assert torch.allclose(out["mlm_loss"], ref_mlm, atol=1e-6)
    assert torch.allclose(out["loss"], r.loss, atol=1e-6)
    assert set(ours.state_dict()) == set(ref.state_dict())


def test_loss_falls_and_outputs_land_in_run_dir(synth_data, tmp_path):
    run = tmp_path / "run"
    pretrain(
        synth_data,
        run,
        "max_steps=60",
        "global_batch_size=16",
        "optim.lr=2e-3",
        "optim.warmup_steps=5",
        "logger.every_steps=10",
        "logger.peak_tflops=0.05",
        "eval.every_steps=30",
        "model.hidden_dropout=0",
        "model.attention_dropout=0",
    )
    losses = train_losses(run)
    assert losses[60] < losses[10] - 0.5, losses
    val = [r for r in read_metrics(run) if "val_loss" in r]
    assert [r["step"] for r in val] == [30, 60] and val[1]["val_loss"] < val[0]["val_loss"]
    rec = read_metrics(run)[-2]
    for key in (
        "mlm_loss",
        "nsp_loss",
        "mlm_acc",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "samples_per_s",
        "data_wait_frac",
        "mem_gb",
        "mfu",
    ):
        assert key in rec, key
    ds = json.loads((run / "deepspeed_config.json").read_text())
    assert ds["train_batch_size"] == 16 and ds["zero_optimization"]["stage"] == 2
    assert (run / "checkpoints" / "step_00000060" / "COMPLETE").is_file()
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 60
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 60 and summary["val_loss"] == val[1]["val_loss"]


@pytest.mark.slow
def test_exact_resume_matches_an_uninterrupted_run_even_from_a_moved_run_dir(synth_data, tmp_path):
    """Stop at step 7; move the run_dir and take the data away: export and finetune still work from it alone; with
    the data back in place, the same command on the moved run_dir continues exactly as an uninterrupted run."""
    args = [
        "max_steps=16",
        "global_batch_size=16",
        "engine.micro_batch_size=4",
        "engine.zero_stage=2",
        "eval.every_steps=8",
        "checkpoint.every_steps=5",
        "checkpoint.keep_last=2",
        "engine.loader_workers=2",
    ]
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    pretrain(synth_data, tmp_path / "a", *args, nproc=2)
    # A relative data.path, run from tmp_path: the moved run_dir must not depend on the cwd either.
    run_module(
        "pipeline.pretrain",
        ["data.path=data", f"run_dir={tmp_path / 'b'}", *TINY, *args, "stop_after_steps=7"],
        nproc=2,
        cwd=tmp_path,
    )
    b_steps = train_losses(tmp_path / "b")
    assert max(b_steps) == 7
    # Only the newest k complete checkpoints are kept: step 5 and the stop at step 7.
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").glob("step_*")) == ["step_00000005", "step_00000007"]
    kept = json.loads((tmp_path / "b" / "data.json").read_text())
    assert kept["fingerprint"] == json.loads((data / "manifest.json").read_text())["fingerprint"]
    assert (tmp_path / "b" / "tokenizer" / "tokenizer.json").is_file()

    elsewhere = tmp_path / "elsewhere"
    moved = elsewhere / "run"
    elsewhere.mkdir()
    shutil.move(tmp_path / "b", moved)
    shutil.move(data, tmp_path / "data_away")
    # Export and finetune from the moved run_dir, with no data directory anywhere it could look.
    run_module("pipeline.export", [f"run_dir={moved}", f"output={elsewhere / 'hf'}"], cwd=elsewhere)
    from transformers import AutoTokenizer, BertForPreTraining

    _, info = BertForPreTraining.from_pretrained(elsewhere / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert AutoTokenizer.from_pretrained(elsewhere / "hf").cls_token_id == kept["special_ids"]["cls"]
    files = {}
    for split, n, seed in (("train", 64, 1), ("validation", 32, 2)):
        files[split] = elsewhere / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in separable(n, seed)))
    run_module(
        "pipeline.finetune",
        [
            f"model.path={moved}",
            "task=custom_classification",
            f"task.data_files.train={files['train']}",
            f"task.data_files.validation={files['validation']}",
            "task.text_columns=[text]",
            f"run_dir={elsewhere / 'ft'}",
            "engine=cpu",
            "logger.progress=false",
            "max_steps=4",
            "global_batch_size=16",
        ],
        cwd=elsewhere,
    )
    assert json.loads((elsewhere / "ft" / "results.json").read_text())["source"]["kind"] == "run_dir"

    # The data back in place (the original relative path), the same command again on the moved run_dir: resumes.
    shutil.move(tmp_path / "data_away", data)
    run_module("pipeline.pretrain", ["data.path=data", f"run_dir={moved}", *TINY, *args], nproc=2, cwd=tmp_path)
    a, b = read_metrics(tmp_path / "a"), read_metrics(moved)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r["step"] for r in a if "loss" in r] == list(range(1, 17))
    for ra, rb in zip(a, b):
        for k in ("loss", "mlm_loss", "nsp_loss", "val_loss", "grad_norm", "lr"):
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], abs=1e-6), (ra["step"], k)
        assert ra.get("tokens") == rb.get("tokens")
    # Counters are over all ranks: 16 steps of a global batch of 16.
    assert json.loads((moved / "summary.json").read_text())["samples"] == 16 * 16


def test_resume_refuses_another_model_or_other_data_and_keeps_each_start_of_a_longer_run(synth_data, tmp_path, capsys):
    """A run_dir holds one run: another model is refused in one line before any work; other data is refused unless
    asked for; a longer run with another learning rate continues, says so, and keeps both starts' configs."""
    from tests.synth import make_shards

    run, common = tmp_path / "run", ["global_batch_size=8", "optim.schedule=constant", "optim.warmup_steps=0"]
    pretrain(synth_data, run, "max_steps=2", *common)

    def files():  # the run's own files (not Hydra's record of the last command line, .hydra/, and its log)
        return {f: f.stat().st_mtime_ns for f in run.rglob("*") if f.is_file() and ".hydra" not in f.parts[-2:]
                and f.suffix != ".log"}  # fmt: skip

    before = files()
    config = (run / "config.yaml").read_text()
    p = pretrain(synth_data, run, "max_steps=2", *common, "model=bert-mini", check=False)
    lines = [x for x in (p.stdout + p.stderr).splitlines() if x.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stdout + p.stderr
    head = f"error: run_dir={run} holds a run with other values (checkpoints/step_00000002): model.hidden_size 128"
    assert lines[0].startswith(head) and "model.name bert-tiny -> bert-mini" in lines[0], lines[0]
    assert lines[0].endswith("the checkpoints cannot take another model.hidden_size, model.intermediate_size, "
                             "model.num_heads, model.num_layers: use another run_dir")  # fmt: skip
    # Before any work: no checkpoint loaded, nothing in the run_dir written (config.yaml still says bert-tiny).
    assert files() == before
    # And before a Slurm job is queued: the pre-submit check (launch.submit, the sbatch script) says the same.
    from launch.check import main as check

    capsys.readouterr()
    assert check(["--", f"data.path={synth_data}", f"run_dir={run}", *TINY, *common, "model=bert-mini"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(head) and files() == before, err
    other = make_shards(tmp_path / "other", [300, 300], [64], seq_len=64, seed=9)
    p = pretrain(other, run, "max_steps=4", *common, check=False)
    assert p.returncode != 0 and "differs from the data this checkpoint was trained on" in p.stderr + p.stdout
    assert (run / "config.yaml").read_text() == config and sorted(os.listdir(run / "configs")) == ["start-1.yaml"]
    p = pretrain(other, run, "max_steps=4", *common, "optim.lr=1e-3", "data.allow_data_change=true")
    assert re.search(r"changed on resume: .*max_steps 2 -> 4, optim.lr 0.0001 -> 0.001\n", p.stdout + p.stderr)
    lrs = {r["step"]: r["lr"] for r in read_metrics(run) if "lr" in r}
    assert lrs == pytest.approx({1: 1e-4, 2: 1e-4, 3: 1e-3, 4: 1e-3})  # the checkpoint's lr no longer wins
    starts = [yaml.safe_load((run / "configs" / f"start-{n}.yaml").read_text()) for n in (1, 2)]
    assert [s["max_steps"] for s in starts] == [2, 4] and starts[1] == yaml.safe_load((run / "config.yaml").read_text())


@pytest.mark.slow
def test_uneven_shards_across_ranks_do_not_hang(tmp_path):
    from tests.synth import make_shards

    data = make_shards(tmp_path / "uneven", [700, 9, 2], [33], seq_len=32)
    run = tmp_path / "run"
    # 3 epochs' worth of steps with 2 ranks x 2 loader workers each: epoch ends must line up on both ranks.
    pretrain(
        data,
        run,
        "max_steps=30",
        "global_batch_size=32",
        "engine.micro_batch_size=8",
        "engine.loader_workers=2",
        "eval.every_steps=15",
        nproc=2,
        timeout=300,
    )
    recs = read_metrics(run)
    assert max(train_losses(run)) == 30 and max(r.get("epoch", 0) for r in recs) >= 1


def test_corrupted_shard_is_skipped_and_counted_or_fails_by_name(synth_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    victim = data / "train-000002.tar"
    victim.write_bytes(victim.read_bytes()[:3000])
    pretrain(data, tmp_path / "skip", "max_steps=3", "global_batch_size=8")
    summary = json.loads((tmp_path / "skip" / "summary.json").read_text())
    assert summary["skipped_shards"] == ["train-000002.tar"] and summary["step"] == 3
    p = pretrain(data, tmp_path / "err", "max_steps=3", "global_batch_size=8", "data.on_bad_shard=error", check=False)
    assert p.returncode != 0 and "train-000002.tar" in p.stderr


def test_nan_steps_are_skipped_then_stop_the_run_and_the_lean_step_matches_the_previous_one(synth_data, tmp_path):
    run = tmp_path / "run"
    args = ["max_steps=6", "global_batch_size=16", "engine.micro_batch_size=8", "nan.inject_at_steps=[3]"]
    pretrain(synth_data, run, *args, "checkpoint.every_steps=1", "checkpoint.keep_last=10")  # the lean step (default)
    recs = {r["step"]: r for r in read_metrics(run) if "loss" in r}
    assert recs[2]["skipped_steps"] == 0 and recs[3]["skipped_steps"] == 1 and recs[6]["skipped_steps"] == 1
    assert recs[3]["skipped_micro"] == 2
    # The previous step (non-finite flags and sums read per micro-batch) logs the same numbers.
    pretrain(synth_data, tmp_path / "prev", *args, "engine.lean_step=false")
    for step, prev in {r["step"]: r for r in read_metrics(tmp_path / "prev") if "loss" in r}.items():
        for k in ("loss", "mlm_acc", "nsp_acc", "grad_norm", "tokens", "skipped_steps", "skipped_micro"):
            if prev.get(k) is not None or recs[step].get(k) is not None:
                assert recs[step][k] == pytest.approx(prev[k], abs=1e-6), (step, k)
    # The skipped step changed no weight.
    from pipeline.engine import consolidated_state_dict

    w2 = consolidated_state_dict(run / "checkpoints", "step_00000002")
    w3 = consolidated_state_dict(run / "checkpoints", "step_00000003")
    w4 = consolidated_state_dict(run / "checkpoints", "step_00000004")
    assert all(torch.equal(w2[k], w3[k]) for k in w2)
    assert not all(torch.equal(w3[k], w4[k]) for k in w3)
    p = pretrain(
        synth_data,
        tmp_path / "div",
        "max_steps=10",
        "global_batch_size=8",
        "nan.inject_at_steps=[2,3,4]",
        "nan.max_consecutive=3",
        check=False,
    )
    assert p.returncode != 0 and "3 steps in a row had a non-finite loss" in p.stderr


def test_wandb_offline_run_holds_the_metrics_and_resumes_the_same_run(synth_data, tmp_path):
    run = tmp_path / "run"
    wb = [
        "logger.wandb.mode=offline",
        "logger.wandb.project=test",
        "logger.wandb.tags=[ci]",
        "max_steps=3",
        "global_batch_size=8",
    ]
    pretrain(synth_data, run, *wb, "stop_after_steps=2")
    first_id = (run / "wandb_id").read_text()
    pretrain(synth_data, run, *wb)
    assert (run / "wandb_id").read_text() == first_id
    runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(p.name.endswith(first_id) for p in runs)  # `wandb sync --id` joins them
    first = history(next(runs[0].glob("run-*.wandb")))
    second = history(next(runs[1].glob("run-*.wandb")))
    assert [r["_step"] for r in first] == [1, 2] and [r["_step"] for r in second] == [3]
    losses = train_losses(run)
    assert [r["loss"] for r in first + second] == pytest.approx([losses[1], losses[2], losses[3]])
    assert "val_loss" in second[0]
    cfg = config(next(runs[1].glob("run-*.wandb")))
    assert cfg["model"]["name"] == "bert-tiny" and cfg["global_batch_size"] == 8


@pytest.mark.parametrize(
    "args, message",
    [
        (["engine.zero_stage=5"], "ZeRO stages are 0, 1, 2 and 3"),
        (["global_batch_size=10", "engine.micro_batch_size=4"], "does not divide the per-rank batch"),
        (["model=bert-huge"], "error: model=bert-huge: no such preset in conf/model/; available: bert-base"),
        (["engine.zero_stag=2"], "zero_stag"),
        (["engine.precision=fp8"], "expected one of [fp32, bf16, fp16]"),
    ],
)
def test_bad_config_fails_before_any_work(synth_data, tmp_path, args, message):
    p = pretrain(synth_data, tmp_path / "run", *args, check=False, timeout=120)
    assert p.returncode != 0 and message in p.stderr + p.stdout
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_data_dir_is_named(tmp_path):
    p = pretrain(tmp_path / "nowhere", tmp_path / "run", check=False, timeout=120)
    assert p.returncode != 0 and f"data.path={tmp_path / 'nowhere'}: no such directory" in p.stderr


def test_activation_checkpointing_gives_the_same_losses(synth_data, tmp_path):
    args = ["max_steps=3", "global_batch_size=8", "model.hidden_dropout=0", "model.attention_dropout=0"]
    pretrain(synth_data, tmp_path / "plain", *args)
    pretrain(synth_data, tmp_path / "ckpt", *args, "engine.activation_checkpointing=true")
    assert train_losses(tmp_path / "ckpt") == pytest.approx(train_losses(tmp_path / "plain"), abs=1e-5)
