"""Submit one pretraining or finetuning job to Slurm with submitit (no sweep).

    python -m launch.submit --nodes 2 --tasks-per-node 8 --gpus-per-node 8 --partition gpu --time 1440 -- \\
        data.path=/data/wiki model=bert-base engine=gpu run_dir=checkpoints/base

Everything after ``--`` is a Hydra override of the stage's config (conf/pretrain.yaml or conf/finetune.yaml).
One task per GPU; the tasks find each other through Slurm's variables (pipeline/dist.py). Defaults come from
conf/hydra/launcher/slurm.yaml, the Hydra launcher's preset. On the time-limit
warning (USR2, ``--signal-delay`` seconds before the limit) every rank finishes its step, all save, and the job is
requeued; it resumes from run_dir. ``--local`` runs the same job with submitit's LocalExecutor (no Slurm).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import submitit
import yaml
from submitit.slurm.slurm import SlurmExecutor

from launch.job import TrainJob
from launch.resources import LaunchError, check_capacity, check_slurm_request
from pipeline.config import ConfigError
from pipeline.preflight import check_job, path_warnings
from pipeline.stages import LAUNCHABLE

PRESET = Path(__file__).resolve().parents[1] / "conf" / "hydra" / "launcher" / "slurm.yaml"


def preset() -> dict:
    """The Slurm defaults, shared with the Hydra launcher preset (conf/hydra/launcher/slurm.yaml)."""
    return yaml.safe_load(PRESET.read_text())


class _Given(argparse.Action):
    """Stores the value and records that the user gave this option: a refusal then tells the values the user typed
    from those that came from the preset."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = getattr(namespace, "given", frozenset()) | {self.dest}


def build_parser() -> argparse.ArgumentParser:
    d = preset()
    p = argparse.ArgumentParser(
        prog="python -m launch.submit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--stage", choices=LAUNCHABLE, default="pretrain")
    p.add_argument("--nodes", action=_Given, type=int, default=d["nodes"])
    p.add_argument("--tasks-per-node", action=_Given, type=int, default=d["tasks_per_node"], help="one per GPU")
    p.add_argument("--gpus-per-node", action=_Given, type=int, default=d["gpus_per_node"])
    p.add_argument("--cpus-per-task", action=_Given, type=int, default=d["cpus_per_task"])
    p.add_argument("--mem-gb", action=_Given, type=int, default=d["mem_gb"])
    p.add_argument("--time", type=int, default=d["timeout_min"], help="time limit in minutes")
    p.add_argument("--partition", default=d["partition"])
    p.add_argument("--account", default=d["account"])
    p.add_argument("--qos", default=d["qos"])
    p.add_argument("--constraint", default=d["constraint"])
    p.add_argument("--exclusive", action="store_true")
    p.add_argument(
        "--signal-delay", type=int, default=d["signal_delay_s"], help="seconds before the limit that USR2 arrives"
    )
    p.add_argument(
        "--max-timeouts", type=int, default=d["max_num_timeout"], help="requeues after reaching the time limit"
    )
    p.add_argument("--extra", action="append", default=[], metavar="KEY=VALUE", help="more sbatch parameters")
    p.add_argument("--folder", default=None, help="submitit logs (default: <run_dir>/submitit)")
    p.add_argument("--local", action="store_true", help="submitit LocalExecutor instead of Slurm")
    p.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    p.add_argument(
        "--dry-run", action="store_true", help="run every check, print the sbatch script submitit would submit"
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides for the stage, after --")
    p.set_defaults(given=frozenset())
    return p


def _option(name: str, value) -> str:
    return f"--{name.replace('_', '-')} {value}"


def submit(args: argparse.Namespace) -> submitit.Job | str:
    """Check, then submit; a dry run returns what would be submitted (the sbatch script, or a line for --local)."""
    run_dir = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("run_dir=")), None)
    if not run_dir:
        raise LaunchError("give run_dir=... among the overrides: a requeued job resumes from it")
    # The job's config first, composed and checked here: a typo must not wait hours in the queue to fail on a node,
    # and it is the mistake to fix first (a resource refusal before it would only be followed by it).
    cfg = check_job(args.stage, list(args.overrides), args.tasks_per_node * (1 if args.local else args.nodes))
    for line in path_warnings(args.stage, cfg):
        print(f"warning: {line}", file=sys.stderr)
    if not args.local:
        check_slurm_request(
            args.partition, args.time, args.signal_delay, args.max_timeouts, args.tasks_per_node, args.gpus_per_node
        )
        preset = {"nodes", "tasks_per_node", "cpus_per_task", "mem_gb", "gpus_per_node"} - set(args.given)
        check_capacity(
            args.partition, args.nodes, args.tasks_per_node, args.cpus_per_task, args.mem_gb, args.gpus_per_node,
            preset=preset, spell=_option,
        )  # fmt: skip
    folder = Path(args.folder or Path(run_dir) / "submitit") / "%j"
    if args.local:
        if args.dry_run:
            return f"dry run: submitit's LocalExecutor would start {args.tasks_per_node} task(s) here, logs in {folder}"
        executor = submitit.AutoExecutor(folder=folder, cluster="local")
        executor.update_parameters(
            timeout_min=args.time, tasks_per_node=args.tasks_per_node, gpus_per_node=args.gpus_per_node or 0
        )
    else:
        params = slurm_parameters(args, run_dir)
        if args.dry_run:
            return sbatch_script(folder, args.max_timeouts, params)
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=args.max_timeouts)
        executor.update_parameters(**params)
    try:
        return executor.submit(TrainJob(args.stage), list(args.overrides))
    except submitit.core.utils.FailedJobError as e:
        raise LaunchError(f"Slurm refused the job: {str(e).strip().splitlines()[-1]}") from e


def slurm_parameters(args: argparse.Namespace, run_dir: str) -> dict:
    """submitit AutoExecutor parameters (generic names, Slurm ones prefixed ``slurm_``) for the request in ``args``."""
    extra = dict(kv.split("=", 1) for kv in args.extra)
    if args.exclusive:
        extra["exclusive"] = True
    params = {
        "timeout_min": args.time,
        "nodes": args.nodes,
        "tasks_per_node": args.tasks_per_node,
        "slurm_signal_delay_s": args.signal_delay,
        "name": f"{args.stage}-{Path(run_dir).name}",
    }
    optional = {
        "gpus_per_node": args.gpus_per_node,
        "cpus_per_task": args.cpus_per_task,
        "mem_gb": args.mem_gb,
        "slurm_partition": args.partition,
        "slurm_account": args.account,
        "slurm_qos": args.qos,
        "slurm_constraint": args.constraint,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    # A requeued job may be given fewer or more nodes (scontrol update NumNodes=...), but the batch script keeps
    # the task count of its first submission in its environment, and srun would start that many tasks on what is
    # left. Derive it from the allocation the script actually runs in; the trainer resumes on any world size.
    k = args.tasks_per_node
    params["slurm_setup"] = [
        f"export SLURM_NNODES=$SLURM_JOB_NUM_NODES SLURM_NTASKS=$((SLURM_JOB_NUM_NODES * {k}))",
        "export SLURM_NPROCS=$SLURM_NTASKS",
    ]
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


class _RenderingExecutor(SlurmExecutor):
    """submitit's Slurm executor, allowed where srun is missing (its constructor refuses then): a dry run renders the
    sbatch script on any machine, and submits nothing."""

    @classmethod
    def affinity(cls) -> int:
        return 2


def sbatch_script(folder: Path, max_num_timeout: int, params: dict) -> str:
    """The sbatch script submitit would write for these AutoExecutor parameters, rendered by submitit itself:
    generic names converted by the Slurm executor (timeout_min -> time, mem_gb -> mem...), ``slurm_`` ones unprefixed,
    as AutoExecutor does before it submits."""
    executor = _RenderingExecutor(folder, max_num_timeout=max_num_timeout)
    generic = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    specific = {k.removeprefix("slurm_"): v for k, v in params.items() if k.startswith("slurm_")}
    executor.update_parameters(**executor._convert_parameters(generic), **specific)
    return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        job = submit(args)
    except ConfigError as e:  # LaunchError too: one line, nothing submitted
        print(f"error: {e}", file=sys.stderr)
        return 2
    if isinstance(job, str):
        print(job if args.local else f"dry run: the sbatch script submitit would submit:\n{job}")
        same = f"python -m pipeline.{args.stage} {' '.join(args.overrides)}"
        print(f"each task runs launch.job.TrainJob({args.stage!r}) on the overrides: the same run as `{same}`")
        print("dry run: every check passed; nothing submitted")
        return 0
    print(f"submitted job {job.job_id}; logs: {job.paths.stdout}")
    if args.wait:
        results = job.results()  # one per task; rank 0's first
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
