"""What pretraining buys downstream, against pretraining time: one pretraining run on the real corpus with a
checkpoint every --every steps, then each checkpoint and the same architecture with random weights finetuned on a
real labelled set over seeds. Prints one table: step, tokens, pretraining minutes, validation MLM/NSP accuracy,
finetuned accuracy (median and spread over seeds), and the difference to random init with its 95% Welch interval.

    python bench/cpu_downstream.py [--steps 8000] [--every 1000] [--task rotten_tomatoes] [--seeds 1,2,3]
                                   [--run-dir DIR] [--at 1000,4000,8000] [--threads 1] [--train-samples N]
                                   [--ft epochs=3 ...] [pretrain overrides...]

--run-dir reuses a finished (or still running) pretraining run: only its complete checkpoints are evaluated.
The recipe defaults to the CPU profile's (launch/demo_profiles.py). Numbers only; the machine is shared, so read the
minutes as this run's, and the accuracies against the random-init column of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def env(threads: int, real: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "BERTRUN_REAL_DATA": str(real)}


def pretrain(data: Path, run_dir: Path, steps: int, every: int, extra: list[str], e: dict) -> None:
    from launch.demo_profiles import CPU

    recipe = [o for o in CPU.pretrain if not o.startswith(("max_steps=", "eval.every", "checkpoint.", "logger."))]
    args = [f"data.path={data}", f"run_dir={run_dir}", "engine=cpu", *recipe, f"max_steps={steps}"]
    args += [
        f"eval.every_steps={every}",
        f"checkpoint.every_steps={every}",
        f"checkpoint.keep_last={steps // every + 1}",
    ]
    args += ["logger.every_steps=50", "logger.progress=false", *extra]
    subprocess.run([sys.executable, "-m", "pipeline.pretrain", *args], check=True, env=e)


def finetune(
    run_dir: Path, step: int | None, random_init: bool, seed: int, task: str, out: Path, e: dict, extra: list[str]
) -> float:
    from launch.demo_profiles import CPU

    res = out / "results.json"
    if not res.is_file():
        src = [f"model.path={run_dir}", f"model.random_init={str(random_init).lower()}"]
        src += [f"model.step={step}"] if step is not None else []
        recipe = [o for o in CPU.finetune if not o.startswith("logger.")]
        args = [
            "engine=cpu",
            f"task={task}",
            f"seed={seed}",
            f"run_dir={out}",
            *recipe,
            *src,
            *extra,
            "logger.progress=false",
        ]
        subprocess.run([sys.executable, "-m", "pipeline.finetune", *args], check=True, env=e, capture_output=True)
    r = json.loads(res.read_text())
    return float(r["validation"][r["main_metric"]])


def spread(xs: list[float]) -> str:
    from pipeline.results import seed_sd

    return f"{statistics.median(xs):.3f} +- {seed_sd(xs):.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--every", type=int, default=1000)
    p.add_argument("--at", default="", help="evaluate only these checkpoint steps (default: every complete one)")
    p.add_argument("--task", default="rotten_tomatoes")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-samples", type=int, help="finetune on the first N training examples only")
    p.add_argument("--ft", action="append", default=[], help="a finetune override for both arms (repeatable): epochs=3")
    p.add_argument("--work", type=Path, default=Path("/tmp/bertrun-cpu-downstream"))
    p.add_argument("--data", type=Path, help="a data_prep output (default: prepared under --work)")
    p.add_argument("--run-dir", type=Path, help="an existing pretraining run to evaluate (no pretraining)")
    a, extra = p.parse_known_args()
    from bench.cpu_recipe import prepare, read_run
    from data_prep.fetch import fetch_one
    from pipeline.results import welch_ci

    real = a.work / "real"
    fetch_one(a.task, real)
    e = env(a.threads, real)
    run_dir = a.run_dir
    t_pre = None
    if run_dir is None:
        run_dir = a.work / "pretrain"
        t = time.perf_counter()
        pretrain(a.data or prepare(a.work), run_dir, a.steps, a.every, extra, e)
        t_pre = time.perf_counter() - t
    recs, rate = read_run(run_dir)
    val = {r["step"]: r for r in recs if "val_mlm_acc" in r}
    train = {r["step"]: r for r in recs if "tokens" in r}
    ckpts = sorted(
        int(d.name.removeprefix("step_")) for d in (run_dir / "checkpoints").glob("step_*") if (d / "COMPLETE").exists()
    )
    if a.at:
        ckpts = [s for s in ckpts if s in {int(x) for x in a.at.split(",")}]
    seeds = [int(s) for s in a.seeds.split(",")]
    ft_extra = ([f"max_train_samples={a.train_samples}"] if a.train_samples else []) + a.ft
    slug = ([f"n{a.train_samples}"] if a.train_samples else []) + [o.replace("=", "") for o in a.ft]
    ft = a.work / "-".join(["finetune", *slug])
    n = f", first {a.train_samples} training examples" if a.train_samples else ""
    n += f", finetune {' '.join(a.ft)}" if a.ft else ""
    print(f"run {run_dir}: median {rate or 0:.0f} tokens/s, {a.threads} thread(s); task {a.task}{n}, seeds {seeds}")
    base = [finetune(run_dir, ckpts[-1], True, s, a.task, ft / f"random-s{s}", e, ft_extra) for s in seeds]
    print(f"random init: {spread(base)} ({', '.join(f'{x:.3f}' for x in base)})")
    print("| step | tokens | pretrain min | val MLM acc | val NSP acc | pretrained acc | diff | 95% CI |")
    print("|---|---|---|---|---|---|---|---|")
    for step in ckpts:
        accs = [finetune(run_dir, step, False, s, a.task, ft / f"step{step}-s{s}", e, ft_extra) for s in seeds]
        diff, lo, hi = welch_ci(accs, base)
        v, tr = val.get(step, {}), train.get(step, {})
        tokens = tr.get("tokens")
        minutes = tokens / rate / 60 if tokens and rate else float("nan")
        print(
            f"| {step} | {tokens or 0:,} | {minutes:.1f} | {v.get('val_mlm_acc', float('nan')):.3f} | "
            f"{v.get('val_nsp_acc', float('nan')):.3f} | {spread(accs)} | {diff:+.3f} | [{lo:+.3f}, {hi:+.3f}] |"
        )
        sys.stdout.flush()
    if t_pre:
        print(f"pretraining wall time: {t_pre / 60:.1f} min")


if __name__ == "__main__":
    main()
