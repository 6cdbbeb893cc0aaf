"""Finished runs read back, and the statistics over them: one place for the report (pipeline/report.py), the sweep
tables (launch/collect.py), the main job's headline (launch/demo_summary.py) and bench/.

A sweep folder is what Hydra's multirun writes: one folder per job with ``.hydra/overrides.yaml`` and the stage's
outputs (``summary.json`` for pretraining, ``results.json`` for finetuning). Light: no torch.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import yaml

ARMS = ("pretrained", "random_init")  # the two sides of the downstream comparison (model.random_init=false,true)


def job_dirs(sweep: Path) -> list[Path]:
    """The jobs of a sweep folder, in job order (0, 1, ..., 10)."""
    jobs = [p for p in Path(sweep).iterdir() if p.is_dir() and (p / ".hydra" / "overrides.yaml").is_file()]
    return sorted(jobs, key=lambda p: (len(p.name), p.name))


def sweeps_in(folder: Path) -> list[Path]:
    """The sweeps to read: ``folder`` itself when it holds jobs, else its subfolders that do (a folder of sweeps,
    e.g. the suite with WNUT-16 swept apart at more epochs)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    if job_dirs(folder):
        return [folder]
    return [d for d in sorted(folder.iterdir()) if d.is_dir() and job_dirs(d)]


def overrides(job: Path) -> dict[str, str]:
    """A job's command-line overrides, key -> value."""
    items = yaml.safe_load((Path(job) / ".hydra" / "overrides.yaml").read_text()) or []
    return dict(o.split("=", 1) for o in items if "=" in o)


def expected_jobs(sweep: Path) -> int | None:
    """How many jobs the sweep launched, from the multirun.yaml Hydra writes first (None without it)."""
    f = Path(sweep) / "multirun.yaml"
    if not f.is_file():
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = (yaml.safe_load(f.read_text()) or {}).get("hydra", {}).get("overrides", {}).get("task", [])
    parsed = OverridesParser.create().parse_overrides([o for o in task if not o.startswith("hydra")])
    return sum(len(b) for b in BasicSweeper.split_arguments(parsed, None))


def read_json(path: Path) -> dict:
    """A run's JSON output, or {} when it is not there (a job that failed, or is still running)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


def finetune_results(jobs: list[Path]) -> list[dict]:
    return [json.loads((j / "results.json").read_text()) for j in jobs if (j / "results.json").is_file()]


def seed_sd(xs: list[float]) -> float:
    """The spread over seeds: the sample stdev, 0 for a single seed."""
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def welch_ci(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its Welch t confidence interval over the seeds (nan bounds with fewer than 2 each)."""
    diff = statistics.mean(a) - statistics.mean(b)
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, df)) * se
    return diff, diff - half, diff + half


def task_results(*sweeps: Path) -> dict[str, dict]:
    """Per task, each arm's metric over seeds (median, stdev) and the difference with its Welch interval, from the
    jobs of these sweep folders only (not from older runs elsewhere under the finetune folder)."""
    out: dict[str, dict] = {}
    files = [f for sweep in sweeps for f in sorted(Path(sweep).glob("*/results.json"))]
    for r in (json.loads(f.read_text()) for f in files):
        t = out.setdefault(
            r["task"], {"metric": r["main_metric"], "pretrained": [], "random_init": [], "n_val": 0, "seeds": {}}
        )
        arm = "random_init" if r["source"].get("random_init") else "pretrained"
        t[arm].append(r["validation"][r["main_metric"]])
        t["seeds"].setdefault(arm, []).append(r["seed"])
        t["n_val"] = r["validation_examples"]
    for t in out.values():
        for arm in ARMS:
            t[f"{arm}_median"] = statistics.median(t[arm]) if t[arm] else math.nan
            t[f"{arm}_sd"] = seed_sd(t[arm])
        if t["pretrained"] and t["random_init"]:
            t["difference"], t["ci_low"], t["ci_high"] = welch_ci(t["pretrained"], t["random_init"])
    return out


def suite_average(tasks: dict[str, dict]) -> dict | None:
    """The suite's score per seed (the mean over tasks of that seed's metric), for each arm, and the difference with
    its Welch interval over those per-seed scores; None for fewer than 2 tasks. Only seeds that every task has on
    that arm count, so a missing run cannot tilt the average."""
    if len(tasks) < 2:
        return None
    avg: dict = {"n_tasks": len(tasks)}
    for arm in ARMS:
        common = set.intersection(*(set(t["seeds"].get(arm, [])) for t in tasks.values()))
        per_seed = [statistics.mean(t[arm][t["seeds"][arm].index(s)] for t in tasks.values()) for s in sorted(common)]
        avg[arm], avg[f"{arm}_seeds"] = per_seed, sorted(common)
        avg[f"{arm}_median"] = statistics.median(per_seed) if per_seed else math.nan
        avg[f"{arm}_sd"] = seed_sd(per_seed)
    if avg["pretrained"] and avg["random_init"]:
        avg["difference"], avg["ci_low"], avg["ci_high"] = welch_ci(avg["pretrained"], avg["random_init"])
    return avg
