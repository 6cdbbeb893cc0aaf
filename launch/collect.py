"""Collect a sweep's results into a table: printed, and written as Markdown and CSV in the sweep directory.

    python -m launch.collect checkpoints/sweeps/pretrain-20261128-120000
    python -m launch.collect checkpoints/suite      # a folder of sweeps (suite/five, suite/wnut16): one table

Pretraining sweeps: one row per job (its overrides, final step, validation metrics from summary.json).
Finetuning sweeps (results.json): per task, the median, stdev, min and max of the main validation metric over
seeds at the best learning rate (by median), the median task score (the mean of the task's metrics, as GLUE
scores MRPC, QQP and STS-B), then the GLUE-style average of the tasks' scores. A sweep over
``model.random_init=false,true`` (the downstream suite, conf/task/README.md) gets the suite table instead (suite.md,
suite.csv): per task the metric's median and stdev over seeds, pretrained vs random init, the difference, and the
average. Jobs without results (failed, still running, or never started) are named on stderr with their logs, and the
exit code is 1 unless ``--allow-missing``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

from pipeline.results import expected_jobs, finetune_results, job_dirs, overrides, read_json, seed_sd, sweeps_in

PRETRAIN_METRICS = ("step", "val_loss", "val_mlm_acc", "val_nsp_acc", "val_mlm_loss", "val_nsp_loss")


def problems(sweep: Path, result_file: str) -> list[str]:
    """Jobs without results: failed (or still running) ones, and jobs that never started (no folder)."""
    out = []
    dirs = {j.name: j for j in job_dirs(sweep)}
    n = expected_jobs(sweep)
    names = [str(i) for i in range(n)] if n is not None else list(dirs)
    for name in names:
        if name not in dirs:
            out.append(f"job {name}: missing (never started)")
        elif not (dirs[name] / result_file).is_file():
            logs = sorted(sweep.glob(f".submitit/*_{name}/*_0_log.err"))
            log = f"; log: {logs[-1]}" if logs else ""
            out.append(f"job {name}: no {result_file} (failed or still running){log}")
    return out


def pretrain_rows(jobs: list[Path]) -> tuple[list[str], list[list]]:
    ovs = [overrides(j) for j in jobs]
    # Only the overrides that vary between jobs get a column; the shared ones are the same for every row.
    keys = sorted({k for o in ovs for k in o if len({x.get(k) for x in ovs}) > 1})
    header = ["job", *keys, *PRETRAIN_METRICS, "status"]
    rows = []
    for j in jobs:
        ov = overrides(j)
        summary = read_json(j / "summary.json")
        status = "missing" if not summary else ("stopped" if summary.get("stopped_by_signal") else "done")
        if summary and summary.get("step", 0) < summary.get("max_steps", 0) and status == "done":
            status = "incomplete"
        rows.append([j.name, *(ov.get(k, "") for k in keys), *(summary.get(m, "") for m in PRETRAIN_METRICS), status])
    return header, rows


def _num(v) -> float | None:
    return float(v) if isinstance(v, int | float) and v == v else None  # None and NaN (undefined) are left out


def finetune_rows(results: list[dict]) -> tuple[list[str], list[list]]:
    """Per task: the learning rate with the best median main metric over seeds (ties: the smaller lr), and at that
    lr the median, stdev, min and max over seeds, and the median task score (GLUE's mean of the task's metrics);
    then the average of the tasks' median scores (the GLUE-style average)."""
    runs: dict[str, dict[float, list[tuple[float, float]]]] = {}
    metric_name: dict[str, str] = {}
    for r in results:
        main = _num(r["validation"].get(r["main_metric"]))
        if main is None:
            continue
        score = _num(r["validation"].get("score"))
        lr = float(r["hyperparameters"]["lr"])
        runs.setdefault(r["task"], {}).setdefault(lr, []).append((main, main if score is None else score))
        metric_name[r["task"]] = r["main_metric"]
    header = ["task", "metric", "best_lr", "lrs", "seeds", "median", "stdev", "min", "max", "score"]
    rows = []
    for task in sorted(runs):
        lr = max(sorted(runs[task]), key=lambda k: statistics.median(m for m, _ in runs[task][k]))
        mains = [m for m, _ in runs[task][lr]]
        score = statistics.median(s for _, s in runs[task][lr])
        spread = seed_sd(mains)
        median = statistics.median(mains)
        rows.append(
            [task, metric_name[task], lr, len(runs[task]), len(mains), median, spread, min(mains), max(mains), score]
        )
    if rows:
        rows.append(["average", "score", "", "", "", "", "", "", "", statistics.mean(r[-1] for r in rows)])
    return header, rows


def suite_rows(results: list[dict]) -> tuple[list[str], list[list]] | None:
    """The downstream suite, pretrained vs baseline (random init): per task, the main metric's median over seeds and
    its spread (stdev) for each, the difference of the medians, and the seeds' count; then the average over tasks.
    None unless the sweep ran both ``model.random_init=false`` and ``true``. Several learning rates: each side at its
    best lr by median, as the finetune table picks it."""
    runs: dict[tuple[str, bool], dict[float, list[float]]] = {}
    metric_name: dict[str, str] = {}
    for r in results:
        main = _num(r["validation"].get(r["main_metric"]))
        if main is None:
            continue
        key = (r["task"], bool(r.get("source", {}).get("random_init")))
        runs.setdefault(key, {}).setdefault(float(r["hyperparameters"]["lr"]), []).append(main)
        metric_name[r["task"]] = r["main_metric"]
    if {ri for _, ri in runs} != {False, True}:
        return None
    best = {k: max(sorted(v.items()), key=lambda kv: statistics.median(kv[1]))[1] for k, v in runs.items()}
    header = ["task", "metric", "seeds", "pretrained", "pretrained_sd", "random_init", "random_init_sd", "difference"]
    rows = []
    for task in sorted(metric_name):
        pre, rnd = best.get((task, False), []), best.get((task, True), [])
        if not pre or not rnd:
            continue
        mp, mr = statistics.median(pre), statistics.median(rnd)
        rows.append([task, metric_name[task], f"{len(pre)}/{len(rnd)}", mp, seed_sd(pre), mr, seed_sd(rnd), mp - mr])
    if rows:
        avg = [statistics.mean(r[i] for r in rows) for i in (3, 5)]
        rows.append(["average", "", "", avg[0], "", avg[1], "", avg[0] - avg[1]])
    return header, rows


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if 0 < abs(v) < 1e-3 else f"{v:.4f}"  # learning rates stay readable: 2e-05, not 0.0000
    return str(v)


def write_tables(sweep: Path, header: list[str], rows: list[list], stem: str = "sweep") -> str:
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    text = "\n".join(md) + "\n"
    (sweep / f"{stem}.md").write_text(text)
    with open(sweep / f"{stem}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return text


def is_finetune(jobs: list[Path]) -> bool:
    return any((j / "results.json").is_file() for j in jobs)


def collect(folder: str | Path) -> str:
    folder = Path(folder)
    sweeps = sweeps_in(folder)
    if not sweeps:
        raise FileNotFoundError(
            f"{folder}: no sweep jobs found (folders with .hydra/overrides.yaml, here or in its subfolders)"
        )
    jobs = [j for s in sweeps for j in job_dirs(s)]
    if is_finetune(jobs):
        results = finetune_results(jobs)
        suite = suite_rows(results)
        if suite:  # pretrained vs random init: the per-task table would mix the two, so the suite's table replaces it
            return write_tables(folder, *suite, stem="suite")
        return write_tables(folder, *finetune_rows(results))
    return write_tables(folder, *pretrain_rows(jobs))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m launch.collect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("sweep_dir", help="a sweep folder, or a folder of sweeps (collected into one table)")
    p.add_argument(
        "--allow-missing", action="store_true", help="exit 0 even when jobs failed, are running or never started"
    )
    args = p.parse_args(argv)
    try:
        table = collect(args.sweep_dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sweeps = sweeps_in(Path(args.sweep_dir))
    result_file = "results.json" if is_finetune([j for s in sweeps for j in job_dirs(s)]) else "summary.json"
    bad = [f"{s}: {line}" if len(sweeps) > 1 else line for s in sweeps for line in problems(s, result_file)]
    sweep = Path(args.sweep_dir)
    print(table, end="")
    stem = "suite" if (sweep / "suite.md").is_file() else "sweep"
    print(f"written: {sweep / stem}.md and {stem}.csv")
    for line in bad:
        print(line, file=sys.stderr)
    if bad and not args.allow_missing:
        print(f"error: {len(bad)} jobs have no results (listed above); --allow-missing to accept", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
