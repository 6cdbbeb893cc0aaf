"""What a resume on another world size costs at demo scale: bert-mini, ZeRO-2, a vocabulary of 8,192 (the demo's),
seq 128, a checkpoint written by 2 ranks. Resumed on 2 ranks (the baseline: no conversion) and on 1 rank (converts to
a universal checkpoint first, cached), each for one step; prints wall times, the conversion's own time from the log,
and the disk space of the checkpoint and of its universal copy.

    python bench/elastic_resume.py [--model bert-mini] [--zero 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def train(data: Path, run: Path, nproc: int, args: list[str]) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "pipeline.pretrain", f"data.path={data}", f"run_dir={run}", *args]
    if nproc > 1:
        cmd[1:3] = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "-m", "pipeline.pretrain"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stdout[-3000:] + p.stderr[-5000:])
    return time.perf_counter() - t0, p.stdout + p.stderr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bert-mini")
    ap.add_argument("--zero", type=int, default=2)
    a = ap.parse_args()
    from tests.synth import make_shards

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_shards(tmp / "data", [512, 512], [64], seq_len=128, n_words=4094)  # 8,193 tokens
        common = [
            f"model={a.model}", "engine=cpu", f"engine.zero_stage={a.zero}", "global_batch_size=32", "max_steps=4",
            "logger.progress=false", "eval.every_steps=1000", "eval.at_end=false", "checkpoint.every_steps=1000",
        ]  # fmt: skip
        base = tmp / "base"
        train(data, base, 2, [*common, "stop_after_steps=2"])
        ckpt = base / "checkpoints" / "step_00000002"
        for n in (2, 1, 1):  # baseline; with conversion; again (the conversion is cached)
            run = tmp / f"on{n}-{time.monotonic_ns()}"
            shutil.copytree(base, run)
            wall, log = train(data, run, n, [*common, "stop_after_steps=3"])
            m = re.search(r"to a universal checkpoint in ([\d.]+)s \(([\d.]+) MB", log)
            conv = f"conversion {m.group(1)} s, {m.group(2)} MB" if m else "no conversion"
            print(f"resume on {n} rank(s), one step: {wall:.1f} s wall ({conv})")
            if m:  # the next copy of base carries the cached conversion
                shutil.copytree(run / "checkpoints" / "step_00000002" / "universal", ckpt / "universal")
        print(f"checkpoint written by 2 ranks: {du(ckpt) / 1e6 - du(ckpt / 'universal') / 1e6:.1f} MB")
        print(f"its universal copy: {du(ckpt / 'universal') / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
