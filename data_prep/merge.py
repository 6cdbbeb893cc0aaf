"""python -m data_prep.merge DIR [--verify]: write DIR/manifest.json from the records of every part."""

from __future__ import annotations

import argparse
import logging
import sys

from data_prep.manifest import MergeError, format_summary, merge


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.merge", description=__doc__)
    parser.add_argument("output", help="the output directory that every part wrote into")
    parser.add_argument("--num-parts", type=int, default=None, help="default: the newest complete set of parts")
    parser.add_argument("--verify", action="store_true", help="also recompute every shard's sha256")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    try:
        manifest = merge(args.output, num_parts=args.num_parts, verify=args.verify)
    except MergeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(manifest))
    print(f"manifest: {args.output}/manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
