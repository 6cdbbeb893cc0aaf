"""Small local task files for the finetune tests (words of tests/synth.py's tokenizer: w0..w119, ##s0..##s119),
and tiny pretraining run_dirs shared by the export and finetune tests within a session."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from tests.conftest import TINY, run_module

FILLER = [f"w{i}" for i in range(10, 60)]


def pretrained_run(base: Path, zero_stage: int = 0, nproc: int = 1, steps: int = 12) -> Path:
    """A bert-tiny pretraining run_dir (built once per session and ZeRO stage, reused by every test module)."""
    from tests.synth import make_shards

    run = base / f"pretrain_z{zero_stage}_n{nproc}"
    if (run / "checkpoints" / "latest.json").is_file():
        return run
    data = base / "shards"
    if not (data / "manifest.json").is_file():
        make_shards(data, [300, 200], [64], seq_len=64)
    run_module(
        "pipeline.pretrain",
        [
            f"data.path={data}",
            f"run_dir={run}",
            *TINY,
            f"engine.zero_stage={zero_stage}",
            f"max_steps={steps}",
            "global_batch_size=8",
            "optim.lr=1e-3",
        ],
        nproc=nproc,
    )
    return run


def separable(n: int, seed: int) -> list[dict]:
    """The label is decided by which word appears: w1 -> pos, w2 -> neg, among random filler words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        pos = rng.random() < 0.5
        toks = rng.choices(FILLER, k=8)
        toks[rng.randrange(8)] = "w1" if pos else "w2"
        rows.append({"text": " ".join(toks), "label": "pos" if pos else "neg"})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pairs(n: int, seed: int) -> list[dict]:
    """MRPC-like: 'equivalent' (1) when both sentences carry the marker w1 (each does with probability 0.7)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = ("w1" if rng.random() < 0.7 else "w2" for _ in range(2))
        rows.append(
            {
                "sentence1": " ".join(rng.choices(FILLER, k=5) + [a]),
                "sentence2": " ".join([b] + rng.choices(FILLER, k=5)),
                "label": int(a == b == "w1"),
            }
        )
    return rows


def scores(n: int, seed: int) -> list[dict]:
    """STS-B-like: the score counts the w1 words in the pair (0..4)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k1, k2 = rng.randint(0, 2), rng.randint(0, 2)
        s1 = rng.choices(FILLER, k=6 - k1) + ["w1"] * k1
        s2 = rng.choices(FILLER, k=6 - k2) + ["w1"] * k2
        rng.shuffle(s1)
        rng.shuffle(s2)
        rows.append({"sentence1": " ".join(s1), "sentence2": " ".join(s2), "label": float(k1 + k2)})
    return rows


def conll(path: Path, n: int, seed: int) -> Path:
    """Sentences with PER (w1, one word of two subwords: w1s3) and LOC (w2 w3) entities in BIO tags."""
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- O O", ""]
    for _ in range(n):
        words = [(w, "O") for w in rng.choices(FILLER, k=6)]
        at = rng.randrange(len(words))
        ent = [("w1s3", "B-PER")] if rng.random() < 0.5 else [("w2", "B-LOC"), ("w3", "I-LOC")]
        words[at:at] = ent
        lines += [f"{w} NN O {t}" for w, t in words] + [""]
    path.write_text("\n".join(lines))
    return path


def squad(path: Path, n: int, seed: int, context_words: int = 40) -> Path:
    """SQuAD v1.1 JSON; the answer is the two words after the marker w3, somewhere in a long context."""
    rng = random.Random(seed)
    paras = []
    for i in range(n):
        words = rng.choices(FILLER, k=context_words)
        at = rng.randrange(0, context_words - 3)
        words[at] = "w3"
        context = " ".join(words)
        answer = " ".join(words[at + 1 : at + 3])
        start = len(" ".join(words[: at + 1])) + 1
        assert context[start : start + len(answer)] == answer
        paras.append(
            {
                "context": context,
                "qas": [
                    {"id": f"q{i}", "question": "w4 w5 w6", "answers": [{"text": answer, "answer_start": start}] * 2}
                ],
            }
        )
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paras}]}))
    return path
