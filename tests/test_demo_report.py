"""The main job (launch.demo) on a tiny budget, and the reports it writes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TINY, child_env, run_module

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_demo_runs_every_stage_and_prints_the_headline(tmp_path):
    out = tmp_path / "demo"
    args = [
        f"out={out}",
        "nproc=2",
        "seeds=1,2",
        "prep:tokenizer.vocab_size=2000",
        "pretrain:model=bert-tiny",
        "pretrain:max_steps=6",
        "pretrain:global_batch_size=8",
        "pretrain:eval.every_steps=6",
        "finetune:epochs=1",
        "finetune:model.hidden_dropout=0",
    ]
    p = subprocess.run(
        [sys.executable, "-m", "launch.demo", *args],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "pretrained **" in p.stdout and "random init **" in p.stdout
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["documents"]["used"] > 100 and manifest["splits"]["train"]["samples"] > 1000
    summary = json.loads((out / "pretrain" / "summary.json").read_text())
    assert summary["step"] == 6 and "val_mlm_acc" in summary
    assert (out / "hf" / "model.safetensors").is_file() and (out / "hf" / "tokenizer.json").is_file()
    results = [json.loads(f.read_text()) for f in (out / "finetune").glob("*/results.json")]
    assert sorted((r["source"]["random_init"], r["seed"]) for r in results) == [
        (False, 1),
        (False, 2),
        (True, 1),
        (True, 2),
    ]
    assert all(r["validation_examples"] == 46 for r in results)  # the fixed 75/25 split of the 200 sentences
    text = (out / "demo_summary.md").read_text()
    assert "polarity accuracy" in text and str(out / "hf") in text
    assert (out / "pretrain" / "report" / "loss.png").read_bytes()[:8] == PNG
    assert (out / "finetune" / "report" / "sweep.png").read_bytes()[:8] == PNG
    # A rerun finds every stage done and only redoes the export and the reports.
    p = subprocess.run(
        [sys.executable, "-m", "launch.demo", *args],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0 and "== pretrain" not in p.stdout and "== data_prep" not in p.stdout


def test_demo_refuses_a_typo_before_any_work(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "launch.demo", f"out={tmp_path / 'd'}", "pretrain:optim.lrr=1"],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode != 0 and "error: pretrain:" in p.stderr and "lrr" in p.stderr
    assert not (tmp_path / "d" / "data").exists()


def test_pretrain_report_has_plots_and_the_final_numbers(synth_data, tmp_path):
    run = tmp_path / "run"
    run_module(
        "pipeline.pretrain",
        [
            f"data.path={synth_data}",
            f"run_dir={run}",
            *TINY,
            "max_steps=6",
            "global_batch_size=8",
            "eval.every_steps=3",
        ],
    )
    run_module("pipeline.report", [f"run_dir={run}"])
    md = (run / "report" / "report.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert "| steps | 6 of 6 |" in md and f"| val_loss | {summary['val_loss']:.4g} |" in md
    for png in ("loss.png", "accuracy.png", "lr.png", "throughput.png"):
        assert (run / "report" / png).read_bytes()[:8] == PNG and f"![{png}]({png})" in md


def test_report_names_what_it_cannot_read(tmp_path):
    p = run_module("pipeline.report", [f"run_dir={tmp_path}"], check=False, timeout=120)
    assert p.returncode != 0 and "neither a run" in p.stderr
