"""The loader with a blend of 3 sources against 1 source holding the same data, on the CPU.

    python bench/blend_loader.py [--samples 30000] [--batches 400] [--repeats 3]

The same 30,000 synthetic samples (seq 128, tests/synth.py's generator) are prepared once as one data_prep-format
directory (3 shards of 10,000) and once split into three directories of 18,000 (3 shards), 9,000 and 3,000 samples,
blended at 0.6/0.3/0.1 (their sizes, so each makes one pass per epoch). For each, the trainer's loader
(``pipeline.pretrain.data.Batches``: plan, shard reading, shuffle blocks, length buckets, masking, collation) serves
``--batches`` micro-batches of 32 in one process (``engine.loader_workers=0``) and with 2 loader workers; plus the
time to plan the first epoch. Prints samples/s (median of the repeats) and the ratio blend / single; asserts
nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prepare(cache: Path, total: int) -> tuple[list[Path], list[Path]]:
    from tests.synth import make_shards

    third = total // 3
    one = cache / f"one-{total}"
    parts = [cache / f"part{i}-{total}" for i in range(3)]
    if not (one / "manifest.json").is_file():
        make_shards(one, [third] * 3, [64], seq_len=128, seed=1)
    sizes = ([total * 6 // 30] * 3, [total * 9 // 30], [total * 3 // 30])
    for path, sz, seed in zip(parts, sizes, (2, 3, 4)):
        if not (path / "manifest.json").is_file():
            make_shards(path, sz, [64], seq_len=128, seed=seed)
    return [one], parts


def rate(paths: list[Path], weights: list[float] | None, batches: int, workers: int) -> tuple[float, float]:
    """(samples/s over ``batches`` micro-batches of 32, seconds to plan and open the first epoch)."""
    from pipeline.checkpoint import TrainState
    from pipeline.pretrain.data import Batches
    from pipeline.pretrain.masking import Masker
    from pipeline.pretrain.sources import load_blend
    from pipeline.pretrain.streams import StreamSettings

    blend = load_blend([str(p) for p in paths] if len(paths) > 1 else str(paths[0]), weights)
    masker = Masker(blend.first, 0.15, None, 8, False)
    settings = StreamSettings(seed=1, shuffle=True, shuffle_block=2048, length_buckets=True, on_bad="skip")
    b = Batches(blend, masker, settings, rank=0, world=1, micro=32, workers=workers, prefetch=4, pin=False,
                position=TrainState())  # fmt: skip
    t0 = time.perf_counter()
    b._open()
    plan_s = time.perf_counter() - t0
    b.next()  # the workers' start-up is not the loader's rate
    t0 = time.perf_counter()
    n = sum(b.next()["input_ids"].shape[0] for _ in range(batches))
    dt = time.perf_counter() - t0
    b.close()
    return n / dt, plan_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=30000)
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "bertrun-bench" / "blend"))
    args = ap.parse_args()
    one, parts = prepare(Path(args.cache), args.samples)
    print(f"{args.samples} samples (seq 128), micro-batch 32, {args.batches} micro-batches, {args.repeats} repeats")
    print("| loader | workers | samples/s (median) | plan + open (s) | ratio to 1 source |")
    print("|---|---|---|---|---|")
    for workers in (0, 2):
        single, blend = [], []
        for _ in range(args.repeats):  # interleaved, so that the machine's load hits both alike
            single.append(rate(one, None, args.batches, workers))
            blend.append(rate(parts, [0.6, 0.3, 0.1], args.batches, workers))
        s = statistics.median(r for r, _ in single)
        b = statistics.median(r for r, _ in blend)
        print(f"| 1 source | {workers} | {s:,.0f} | {statistics.median(p for _, p in single):.3f} | 1.00 |")
        print(f"| 3 sources 0.6/0.3/0.1 | {workers} | {b:,.0f} | {statistics.median(p for _, p in blend):.3f} | "
              f"{b / s:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
