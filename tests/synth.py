"""Small synthetic shard sets in data_prep's format, for trainer tests that must not depend on data_prep's speed.

Sequences are learnable (each document uses 3 words of its topic) so MLM and NSP losses fall quickly; B shares
A's topic when the label is 0. Integration tests use real data_prep output instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import webdataset as wds
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from data_prep import format as records

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_tokenizer(out: Path, n_words: int = 120) -> dict:
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for i in range(n_words):
        vocab[f"w{i}"] = len(vocab)
        vocab[f"##s{i}"] = len(vocab)
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "BertTokenizerFast",
                "do_lower_case": True,
                "model_max_length": 512,
                "pad_token": "[PAD]",
                "unk_token": "[UNK]",
                "cls_token": "[CLS]",
                "sep_token": "[SEP]",
                "mask_token": "[MASK]",
            }
        )
    )
    (out / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n")
    return vocab


def make_shards(
    root: Path,
    sizes_train: list[int],
    sizes_val: list[int] = (64,),
    seq_len: int = 64,
    seed: int = 0,
    n_words: int = 120,
) -> Path:
    root = Path(root)
    vocab = write_tokenizer(root / "tokenizer", n_words)
    v = len(vocab)
    rng = np.random.default_rng(seed)
    shards = []

    def segment(topic: int, n: int) -> list[int]:
        # A document draws its tokens from 3 words of its topic: masked tokens are guessable from the context,
        # and B "follows" A when it shares A's topic (so NSP is learnable too).
        return [5 + (topic * 3 + int(j)) % (v - 5) for j in rng.integers(0, 3, n)]

    for split, sizes in (("train", sizes_train), ("val", sizes_val)):
        for k, n in enumerate(sizes):
            name = f"{split}-{k:06d}.tar"
            tokens = 0
            with wds.TarWriter(str(root / name), mtime=0) as w:
                for i in range(n):
                    total = int(rng.integers(seq_len // 2, seq_len - 3)) if rng.random() < 0.3 else seq_len - 3
                    a_len = int(rng.integers(1, total))
                    start = int(rng.integers(0, v))
                    label = int(rng.random() < 0.5)
                    a = segment(start, a_len)
                    b = segment(int(rng.integers(0, v)) if label else start, total - a_len)
                    ids = np.array([2] + a + [3] + b + [3], dtype=records.ids_dtype(v))
                    tokens += len(ids)
                    w.write(records.encode_sample(records.sample_key(split, k, i), ids, a_len, label, f"doc{k}-{i}"))
            data = (root / name).read_bytes()
            shards.append(
                {
                    "name": name,
                    "split": split,
                    "samples": n,
                    "tokens": tokens,
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
    tok_sha = hashlib.sha256((root / "tokenizer" / "tokenizer.json").read_bytes()).hexdigest()
    fp = hashlib.sha256((tok_sha + "".join(sorted(s["sha256"] for s in shards))).encode()).hexdigest()
    manifest = {
        "schema_version": 1,
        "tokenizer": {
            "path": "tokenizer",
            "sha256": tok_sha,
            "vocab_size": v,
            "lowercase": True,
            "special_ids": {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4},
        },
        "seq_len": seq_len,
        "ids_dtype": str(records.ids_dtype(v)),
        "shards": shards,
        "splits": {
            s: {
                "shards": sum(x["split"] == s for x in shards),
                "samples": sum(x["samples"] for x in shards if x["split"] == s),
            }
            for s in ("train", "val")
        },
        "documents": {"read": 0, "used": 0, "skipped": {}},
        "fingerprint": fp,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root
