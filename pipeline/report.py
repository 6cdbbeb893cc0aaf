"""python -m pipeline.report run_dir=DIR [out=DIR]

PNG plots and a Markdown summary of a pretraining run, a finetuning run, or a sweep (a folder of either), from the
files every run writes (metrics.jsonl, summary.json, results.json, .hydra/overrides.yaml): for users without W&B.
Written to ``<run_dir>/report/`` (report.md next to the plots). A finetuning sweep's plot has a panel per task and a
row per arm (pretrained / random init, from each results.json) and group (what else varies), with every seed as a
dot and the median and spread written out, on an axis zoomed to the data: 0.69 and 0.75 must not look alike.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pipeline.config import ConfigError  # noqa: E402
from pipeline.results import job_dirs, overrides, read_json, seed_sd  # noqa: E402

ARM_COLORS = {"pretrained": "tab:blue", "random init": "tab:orange"}


class ReportError(ConfigError):
    """A run_dir that is not a run or sweep: reported in one line (pipeline/cli.py)."""


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def series(recs: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in recs if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def step_axis(ax) -> None:
    """Steps are whole numbers: ticks at 7.6, 7.7... (a run of a few steps, or one evaluation) read as a bug."""
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def zoom(lo: float, hi: float, room_right: float = 0.0) -> tuple[float, float]:
    """Axis limits around the data, not from 0: 0.69 and 0.75 must look different. ``room_right`` (a fraction of the
    span) leaves space for the values written beside the points."""
    span = hi - lo or max(abs(hi), 1.0) * 0.05
    return lo - 0.15 * span, hi + (0.15 + room_right) * span


def curves_figure(title: str, panels: list[tuple[str, list[tuple[str, list, list]]]], logy: bool = False) -> Figure:
    """One panel per (y label, lines) against the step. A line of a single point (a run with one evaluation) gets its
    value written beside it and an x range of whole steps around it: alone, it was a dot on an unlabeled range."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
    for ax, (ylabel, lines) in zip(axes[0], panels):
        single = [xs[0] for _, xs, _ in lines if len(xs) == 1]
        for label, xs, ys in lines:
            if not xs:
                continue
            (line,) = ax.plot(xs, ys, marker="o" if len(xs) < 12 else None, ms=3 if len(xs) > 1 else 6, label=label)
            if len(xs) == 1:
                ax.annotate(f"{label} {ys[0]:.4g}", (xs[0], ys[0]), xytext=(8, 0), textcoords="offset points",
                            va="center", fontsize=8, color=line.get_color())  # fmt: skip
        step_axis(ax)
        if single and all(len(xs) <= 1 for _, xs, _ in lines):
            ax.set_xlim(min(single) - 1, max(single) + 2)  # room on the right for the values
            ax.set_title(f"one evaluation, at step {single[0]}" if len(set(single)) == 1 else "", fontsize=9)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if logy:
            ax.set_yscale("log")
        if any(xs for _, xs, _ in lines):
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: Path) -> str:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot(path: Path, title: str, panels: list[tuple[str, list[tuple[str, list, list]]]], logy: bool = False) -> str:
    return save(curves_figure(title, panels, logy), path)


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(rows: list[tuple[str, object]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {fmt(v)} |" for k, v in rows)]


def pretrain_report(run: Path, out: Path) -> list[str]:
    recs = read_jsonl(run / "metrics.jsonl")
    train = [r for r in recs if "loss" in r]
    summary = read_json(run / "summary.json")
    s = lambda k: series(recs, k)  # noqa: E731
    figs = [
        plot(
            out / "loss.png",
            f"{run.name}: losses",
            [
                ("loss", [("train", *s("loss")), ("val", *s("val_loss"))]),
                ("MLM loss", [("train", *s("mlm_loss")), ("val", *s("val_mlm_loss"))]),
                ("NSP loss", [("train", *s("nsp_loss")), ("val", *s("val_nsp_loss"))]),
            ],
        ),
        plot(
            out / "accuracy.png",
            f"{run.name}: accuracy",
            [
                ("MLM accuracy", [("train", *s("mlm_acc")), ("val", *s("val_mlm_acc"))]),
                ("NSP accuracy", [("train", *s("nsp_acc")), ("val", *s("val_nsp_acc"))]),
            ],
        ),
        plot(
            out / "lr.png",
            f"{run.name}: learning rate and gradient norm",
            [("learning rate", [("lr", *s("lr"))]), ("gradient norm", [("grad_norm", *s("grad_norm"))])],
        ),
        plot(
            out / "throughput.png",
            f"{run.name}: throughput",
            [
                ("tokens/s", [("tokens/s", *s("tokens_per_s"))]),
                ("fraction of time waiting for data", [("data wait", *s("data_wait_frac"))]),
            ],
        ),
    ]
    rates = [r["tokens_per_s"] for r in train[1:]] or [r["tokens_per_s"] for r in train]
    last = train[-1] if train else {}
    rows = [
        ("steps", f"{summary.get('step', last.get('step'))} of {summary.get('max_steps', '?')}"),
        ("final train loss (MLM + NSP)", last.get("loss")),
        ("final MLM accuracy (train)", last.get("mlm_acc")),
        *((k, summary[k]) for k in ("val_loss", "val_mlm_acc", "val_nsp_acc") if k in summary),
        ("tokens seen", summary.get("tokens", last.get("tokens"))),
        ("median tokens/s", statistics.median(rates) if rates else None),
        (
            "median MFU",
            statistics.median([r["mfu"] for r in train if "mfu" in r])
            if any("mfu" in r for r in train)
            else "n/a (no peak FLOP/s known for this device)",
        ),
        ("skipped steps (non-finite loss)", summary.get("skipped_steps", last.get("skipped_steps"))),
        ("bad samples replaced", summary.get("bad_samples")),
        ("skipped shards", summary.get("skipped_shards")),
        ("latest checkpoint", summary.get("checkpoint")),
    ]
    for name, src in (summary.get("sources") or {}).items():  # a blend: what each source supplied
        seen = f"{src.get('samples')} samples, {src.get('tokens')} tokens, {fmt(src.get('passes', 0.0))} passes"
        rows.append((f"source {name}", f"{seen}, weight {fmt(src.get('weight', '-'))}"))
    if start := summary.get("init_from"):
        rows.append(("started from", f"{start['run']} at step {start['step']} ({start['tokens']} tokens)"))
        figs.append(phases_plot(run, out, recs, start))
    return [f"# Pretraining run `{run}`", "", *table(rows), "", *(f"![{f}]({f})" for f in figs if f)]


def phases_plot(run: Path, out: Path, recs: list[dict], start: dict) -> str | None:
    """Both phases' training loss on one token axis: the run it started from up to its starting step, then this run
    (its tokens counted from there)."""
    before = [r for r in read_jsonl(Path(start["run"]) / "metrics.jsonl") if r.get("step", 0) <= start["step"]]
    lines = []
    for label, rs, offset in (
        (f"phase 1: {Path(start['run']).name}", before, 0),
        (f"phase 2: {run.name}", recs, start["tokens"]),
    ):
        pts = [(r["tokens"] + offset, r["loss"]) for r in rs if isinstance(r.get("loss"), float) and "tokens" in r]
        lines.append((label, [p[0] for p in pts], [p[1] for p in pts]))
    if not lines[0][1]:
        return None  # the first run's metrics are gone: nothing to join
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for label, xs, ys in lines:
        ax.plot(xs, ys, label=label)
    ax.axvline(start["tokens"], color="grey", ls=":", lw=1)
    ax.set_xlabel("tokens")
    ax.set_ylabel("train loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"{run.name}: both phases")
    fig.tight_layout()
    fig.savefig(out / "phases.png", dpi=110)
    plt.close(fig)
    return "phases.png"


def finetune_report(run: Path, out: Path) -> list[str]:
    res = json.loads((run / "results.json").read_text())
    recs = read_jsonl(run / "metrics.jsonl")
    main = res["main_metric"]
    val_keys = sorted({k for r in recs for k in r if k.startswith("val_") and k != "val_loss"})
    figs = [
        plot(
            out / "finetune.png",
            f"{run.name}: {res['task']}",
            [
                ("train loss", [("loss", *series(recs, "loss"))]),
                ("validation", [(k[4:], *series(recs, k)) for k in val_keys]),
            ],
        )
    ]
    best = f"{res.get('best_step')} of {res.get('steps')}"
    rows = [
        ("task", res["task"]),
        ("main metric", main),
        ("best step", best),
        *((f"validation {k}", v) for k, v in res["validation"].items()),
        *((f"test {k}", v) for k, v in (res.get("test") or {}).items()),
        ("seed", res.get("seed")),
        ("learning rate", res["hyperparameters"].get("lr")),
        ("source", res.get("source", {}).get("path")),
        ("random init", res.get("source", {}).get("random_init", False)),
    ]
    return [f"# Finetuning run `{run}`", "", *table(rows), "", *(f"![{f}]({f})" for f in figs)]


def sweep_rows(sweep: Path) -> tuple[list[dict], list[str]]:
    """One row per job (its label, and for finetuning the task, metric, arm and seed; the value is None for a job
    without results) and the table's lines."""
    jobs = job_dirs(sweep)
    ovs = {j: overrides(j) for j in jobs}
    varying = sorted({k for o in ovs.values() for k in o if len({x.get(k) for x in ovs.values()}) > 1})
    # What sets a job apart besides its seed and arm: a finetune sweep's points are grouped by it.
    grouping = [k for k in varying if k not in ("seed", "model.random_init", "task")]
    finetune = any((j / "results.json").is_file() for j in jobs)
    lines = [
        f"# Sweep `{sweep}`: {len(jobs)} jobs",
        "",
        "| job | " + " | ".join(varying) + " | result |",
        "|---|" + "---|" * (len(varying) + 1),
    ]
    rows = []
    for j in jobs:
        row = {"job": j, "label": " ".join(f"{k}={ovs[j].get(k, '')}" for k in varying) or j.name}
        if finetune:
            res = read_json(j / "results.json")
            metric = res.get("main_metric", "?")
            row |= {
                "task": res.get("task", ovs[j].get("task", "?")),
                "arm": "random init" if res.get("source", {}).get("random_init") else "pretrained",
                "seed": res.get("seed"),
                "group": " ".join(f"{k}={ovs[j].get(k, '')}" for k in grouping),
                "value": res["validation"][metric] if res else None,
            }
        else:
            metric, row["value"] = "val_loss", read_json(j / "summary.json").get("val_loss")
        row["metric"] = metric
        rows.append(row)
        cells = " | ".join(ovs[j].get(k, "") for k in varying)
        lines.append(f"| {j.name} | {cells} | {metric} {fmt(row['value'])} |")
    return rows, lines


def finetune_sweep_figure(name: str, rows: list[dict]) -> Figure:
    """Per task a panel; per group (what varies besides seed and arm) and arm a row: every seed's value as a dot,
    the median as a bar with its value and the spread over seeds written beside it, the range as a line, and the axis
    zoomed to the data. Pretrained and random init (results.json source.random_init) in two colours."""
    rows = [r for r in rows if r["value"] is not None]
    if not rows:
        fig = plt.figure(figsize=(6, 1.5))
        fig.suptitle(f"{name}: no job has finished (results.json)")
        return fig
    tasks = sorted({r["task"] for r in rows})
    arms = [a for a in ARM_COLORS if any(r["arm"] == a for r in rows)]
    groups = sorted({r["group"] for r in rows})
    per_task = len(groups) * len(arms)
    fig, axes = plt.subplots(len(tasks), 1, figsize=(8, 1.4 + 0.55 * per_task * len(tasks)), squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        mine = [r for r in rows if r["task"] == task]
        labels = []
        for g in groups:
            for arm in arms:
                vals = sorted(r["value"] for r in mine if r["group"] == g and r["arm"] == arm)
                if not vals:
                    continue
                y, color = len(labels), ARM_COLORS[arm]
                labels.append(f"{g}  {arm}" if g else arm)
                med = statistics.median(vals)
                ax.plot([vals[0], vals[-1]], [y, y], color=color, lw=1.2, alpha=0.6)
                # Each seed a little above the last: seeds with the same value (a majority-class plateau) stay visible.
                jitter = [y + 0.12 * (i - (len(vals) - 1) / 2) for i in range(len(vals))]
                ax.plot([med], [y], marker="|", ms=22, mew=2, color=color, alpha=0.8, zorder=3)
                ax.scatter(vals, jitter, color=color, s=24, edgecolors="white", linewidths=0.6, zorder=4)
                text = f"median {med:.3f} (sd {seed_sd(vals):.3f}, {len(vals)} seeds)" if vals[1:] else f"{med:.3f}"
                ax.annotate(text, (vals[-1], y), xytext=(8, 0), textcoords="offset points", va="center", fontsize=8)
        values = [r["value"] for r in mine]
        ax.set_xlim(*zoom(min(values), max(values), room_right=0.8))
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylim(len(labels) - 0.5, -0.5)  # the first row on top
        ax.set_xlabel(f"validation {mine[0]['metric']} (axis zoomed to the data)")
        ax.set_title(task, fontsize=10, loc="left")
        ax.set_title("dot: a seed, bar: median, line: range", fontsize=8, loc="right", color="dimgray")
        ax.grid(axis="x", alpha=0.3)
    seeds, metrics = {r["seed"] for r in rows}, {r["metric"] for r in rows}
    metric = metrics.pop() if len(metrics) == 1 else "main metric"
    fig.suptitle(f"{name}: validation {metric}, {' vs '.join(arms)} ({len(seeds)} seeds)", fontsize=11)
    fig.tight_layout()
    return fig


def pretrain_sweep_figure(name: str, rows: list[dict]) -> Figure:
    """Each job's validation loss as a dot on a zoomed axis (a bar from 0 hides the differences), and the training
    loss curves."""
    done = [r for r in rows if r["value"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.6 + 0.4 * max(len(done), 3)), squeeze=False)
    ax = axes[0][0]
    ax.scatter([r["value"] for r in done], range(len(done)), s=30, zorder=3)
    for y, r in enumerate(done):
        ax.annotate(f"{r['value']:.4g}", (r["value"], y), xytext=(8, 0), textcoords="offset points", va="center",
                    fontsize=8)  # fmt: skip
    if done:
        ax.set_xlim(*zoom(min(r["value"] for r in done), max(r["value"] for r in done), room_right=0.5))
    ax.set_yticks(range(len(done)), [r["label"] for r in done])
    ax.set_ylim(len(done) - 0.5, -0.5)
    ax.set_xlabel("validation loss (axis zoomed to the data)")
    ax.grid(axis="x", alpha=0.3)
    for r in rows:
        axes[0][1].plot(*series(read_jsonl(r["job"] / "metrics.jsonl"), "loss"), label=r["label"])
    step_axis(axes[0][1])
    axes[0][1].set_ylabel("train loss")
    axes[0][1].legend(fontsize=7)
    fig.suptitle(f"{name}: {len(rows)} pretraining jobs")
    fig.tight_layout()
    return fig


def sweep_report(sweep: Path, out: Path) -> list[str]:
    rows, lines = sweep_rows(sweep)
    finetune = any("task" in r for r in rows)
    fig = (finetune_sweep_figure if finetune else pretrain_sweep_figure)(sweep.name, rows)
    save(fig, out / "sweep.png")
    return [*lines, "", "![sweep](sweep.png)"]


def report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run = Path(run_dir)
    if not run.is_dir():
        raise ReportError(f"run_dir={run}: no such directory")
    dest = Path(out) if out else run / "report"
    dest.mkdir(parents=True, exist_ok=True)
    if (run / "results.json").is_file():
        lines = finetune_report(run, dest)
    elif (run / "metrics.jsonl").is_file():
        lines = pretrain_report(run, dest)
    elif job_dirs(run):
        lines = sweep_report(run, dest)
    else:
        raise ReportError(f"{run}: neither a run (metrics.jsonl, results.json) nor a sweep (jobs with .hydra/)")
    (dest / "report.md").write_text("\n".join(lines) + "\n")
    return dest / "report.md"


def main() -> None:
    import hydra

    from pipeline.cli import run, user_errors

    @hydra.main(config_path="../conf", config_name="report", version_base="1.3")
    def _run(cfg) -> None:
        with user_errors():
            print(report(cfg.run_dir, cfg.out))

    run(_run, "report")


if __name__ == "__main__":
    main()
