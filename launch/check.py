"""Check a job's config for a given number of ranks without running or submitting anything.

    python -m launch.check --world-size 16 -- data.path=/data/wiki model=bert-base engine=gpu run_dir=ckpt/base

The same checks as ``launch.submit`` and the bertrun Hydra launchers run before submitting (pipeline/preflight.py):
launch/pretrain.sbatch calls it first, so a typo ends the job in seconds, before srun starts any rank. Exit 0 and
one ``ok:`` line (after a ``warning:`` line per input path not seen on this machine), or one ``error:`` line
and exit 2.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.config import ConfigError
from pipeline.preflight import check_job, path_warnings
from pipeline.stages import LAUNCHABLE


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.check", description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=LAUNCHABLE, default="pretrain")
    p.add_argument("--world-size", type=int, default=1, help="ranks the job will run (nodes x tasks per node)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for the stage, after --")
    args = p.parse_args(argv)
    try:
        cfg = check_job(args.stage, args.overrides, args.world_size)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    warnings = path_warnings(args.stage, cfg)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    seen = f" ({len(warnings)} warning{'s' * (len(warnings) > 1)} above)" if warnings else ""
    print(f"ok: {args.stage} config for {args.world_size} ranks{seen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
