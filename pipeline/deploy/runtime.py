"""A deployed model at run time: tokenize, pad, run onnxruntime, turn logits into labels, scores and entities.

Shared by the server and by the deploy's own offline evaluation, so that both decode alike. Light on purpose: numpy,
``tokenizers`` and onnxruntime, no torch and no transformers, so the server starts in about a second and holds only
what it serves. The encoder reproduces pipeline.finetune.tasks.featurize (the same tokenizer.json, truncation to
``max_seq_len``, the first subword of each word carrying its tag); deploy checks the two agree on the validation split.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WORD = re.compile(r"\S+")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def cores() -> int:
    """The cores this process may use (a Slurm or taskset mask counts, not the machine's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class Item:
    ids: list[int]
    type_ids: list[int]
    truncated: bool
    words: list[str] = field(default_factory=list)  # token classification: the text split on whitespace
    spans: list[tuple[int, int]] = field(default_factory=list)  # each word's characters in the text
    word_starts: list[int] = field(default_factory=list)  # each word's first token, -1 when truncated away


class Encoder:
    """Texts to token ids the way finetuning featurized them; NER texts are split into words on whitespace."""

    def __init__(self, tokenizer_file: Path, max_len: int, words: bool):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(tokenizer_file))
        self.tok.no_padding()  # some tokenizer.json files pad to a fixed length; batches are padded here instead
        self.tok.enable_truncation(max_len)
        self.words = words
        self.pad_id = self.tok.padding["pad_id"] if self.tok.padding else (self.tok.token_to_id("[PAD]") or 0)

    def encode(self, texts: list[str]) -> list[Item]:
        if not self.words:
            return [Item(e.ids, e.type_ids, bool(e.overflowing)) for e in self.tok.encode_batch(texts)]
        split = [[(m.group(), m.span()) for m in WORD.finditer(t)] for t in texts]
        encs = self.tok.encode_batch([[w for w, _ in s] for s in split], is_pretokenized=True)
        return [self.item(e, [w for w, _ in s], [sp for _, sp in s]) for e, s in zip(encs, split)]

    def encode_words(self, words: list[list[str]]) -> list[Item]:
        return [self.item(e, w, []) for e, w in zip(self.tok.encode_batch(words, is_pretokenized=True), words)]

    @staticmethod
    def item(e, words: list[str], spans: list) -> Item:
        first: dict[int, int] = {}
        for pos, w in enumerate(e.word_ids):
            if w is not None and w not in first:
                first[w] = pos
        starts = [first.get(w, -1) for w in range(len(words))]
        return Item(e.ids, e.type_ids, bool(e.overflowing) or -1 in starts, words, spans, starts)


def pad(seqs: list[tuple[list[int], list[int]]], pad_id: int, multiple: int = 8) -> dict[str, np.ndarray]:
    """(ids, type_ids) pairs padded to the longest, rounded up to ``multiple`` (8 as finetuning's collate; the server
    pads to the longest exactly, which is faster on a CPU)."""
    n = max(len(ids) for ids, _ in seqs)
    n = (n + multiple - 1) // multiple * multiple
    out = {k: np.zeros((len(seqs), n), dtype=np.int64) for k in INPUTS}
    out["input_ids"][:] = pad_id
    for i, (ids, types) in enumerate(seqs):
        out["input_ids"][i, : len(ids)] = ids
        out["attention_mask"][i, : len(ids)] = 1
        out["token_type_ids"][i, : len(types)] = types
    return out


def length_groups(lengths: list[int], waste: float = 0.15) -> list[list[int]]:
    """Indices in sub-batches of similar length, each padded to at most ``1 + waste`` times its real tokens. On a
    CPU, padding a batch of short texts to its longest costs more than the batch saves (measured in the server:
    texts of 8-32 tokens, 17 on average, padded to 32 in batches of 32, made batching slower than none)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    cur: list[int] = []
    real = 0
    for i in order:
        if cur and lengths[i] * (len(cur) + 1) > (1 + waste) * (real + lengths[i]):
            groups.append(cur)
            cur, real = [], 0
        cur.append(i)
        real += lengths[i]
    return [*groups, cur] if cur else groups


def session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # onnxruntime's own warnings (unused initializers...) stay out of the console
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OrtModel:
    def __init__(self, path: Path, threads: int):
        self.sess = session(path, threads)
        self.inputs = [i.name for i in self.sess.get_inputs()]

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self.sess.run(["logits"], {k: batch[k] for k in self.inputs})[0]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def word_tags(logits: np.ndarray, starts: list[int]) -> tuple[list[int], list[float]]:
    """Per word: the tag index at its first token (-1: truncated away, predicted outside) and its probability."""
    p = softmax(logits.astype(np.float64))
    at = np.maximum(np.asarray(starts, dtype=np.int64), 0)
    tags = np.where(np.asarray(starts) >= 0, p[at].argmax(-1), -1) if starts else np.zeros(0, dtype=np.int64)
    return [int(t) for t in tags], [float(p[a, t]) if t >= 0 else 1.0 for a, t in zip(at, tags)]


def tag_names(tags: list[int], names: list[str]) -> list[str]:
    outside = "O" if "O" in names else names[0]  # as finetuning's evaluation: words cut off are outside
    return [names[t] if t >= 0 else outside for t in tags]


def entities(tags: list[str], scores: list[float], words: list[str], spans: list, text: str) -> list[dict]:
    """BIO tags to spans, as seqeval reads them (an I- after another type or O starts an entity)."""
    out: list[dict] = []
    cur: dict | None = None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, kind = tag.partition("-") if "-" in tag else ("O", "", "")
        if cur is not None and (prefix in ("O", "B") or kind != cur["type"]):
            a, b = spans[cur["first"]][0], spans[cur["last"]][1]
            s = scores[cur["first"] : cur["last"] + 1]
            out.append({"type": cur["type"], "text": text[a:b], "start": a, "end": b, "score": sum(s) / len(s)})
            cur = None
        if prefix in ("B", "I") and cur is None:
            cur = {"type": kind, "first": i, "last": i}
        elif cur is not None:
            cur["last"] = i
    return out


class Predictor:
    """One variant of a deploy folder: texts in, results out (one model call for the whole list)."""

    def __init__(self, deploy_dir: Path, variant: str | None = None, threads: int | None = None):
        deploy_dir = Path(deploy_dir)
        self.info = json.loads((deploy_dir / "deploy.json").read_text())
        self.variant = variant or self.info["serve"]
        v = self.info["variants"].get(self.variant)
        if v is None or not v.get("file", "").endswith(".onnx"):
            onnx = [k for k, x in self.info["variants"].items() if str(x.get("file")).endswith(".onnx")]
            raise ValueError(f"variant={self.variant}: not an ONNX variant of {deploy_dir}; choose one of {onnx}")
        task = self.info["task"]
        self.names, self.type = task["labels"], task["type"]
        self.max_len = task["max_seq_len"]
        self.encoder = Encoder(deploy_dir / "tokenizer.json", self.max_len, self.type == "token_classification")
        self.threads = threads or cores()
        self.model = OrtModel(deploy_dir / v["file"], self.threads)

    def predict(self, texts: list[str]) -> list[dict]:
        items = self.encoder.encode(texts)
        out: list[dict] = [{}] * len(items)
        for group in length_groups([len(it.ids) for it in items]):
            logits = self.model(pad([(items[i].ids, items[i].type_ids) for i in group], self.encoder.pad_id, 1))
            for j, i in enumerate(group):
                out[i] = self.result(texts[i], items[i], logits[j])
        return out

    def result(self, text: str, it: Item, logits: np.ndarray) -> dict:
        if self.type == "classification":
            p = softmax(logits.astype(np.float64))
            k = int(p.argmax())
            scores = {n: float(x) for n, x in zip(self.names, p)}
            return {"label": self.names[k], "score": float(p[k]), "scores": scores, "truncated": it.truncated}
        tags, scores = word_tags(logits, it.word_starts)
        named = tag_names(tags, self.names)
        return {
            "entities": entities(named, scores, it.words, it.spans, text),
            "tags": named,
            "truncated": it.truncated,
        }
