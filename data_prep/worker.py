"""One chunk of documents to one shard: clean -> sentences -> tokens -> NSP instances -> tar (in a worker).

The random generator is seeded from (seed, split, chunk index) only, and the chunk's documents and their
order are fixed by the reader, so a shard's bytes do not depend on how many workers or parts there are.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from data_prep import tokenizer as tokenization
from data_prep.format import encode_sample, ids_dtype, sample_key
from data_prep.instances import create_instances
from data_prep.readers import WIKI
from data_prep.shards import read_sidecar, shard_name, sidecar_path, verified, write_json_atomic, write_shard
from data_prep.text import sentences
from data_prep.wiki import wikitext_to_text


@dataclass(frozen=True)
class WorkerParams:
    out_dir: str
    tokenizer_dir: str
    tokenizer_sha256: str
    vocab_size: int
    cls_id: int
    sep_id: int
    seq_len: int
    short_seq_prob: float
    dupe_factor: int
    seed: int
    min_sentences: int


@dataclass
class Chunk:
    split: str
    index: int
    docs: list  # [(doc_id, text, kind)]
    digest: str  # of the documents' ids and contents: a kept shard must come from the same documents
    raw_bytes: int


_state: tuple | None = None


def init_worker(params: WorkerParams) -> None:
    global _state
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already; numbers are per core
    _state = (params, tokenization.SentenceEncoder(tokenization.load(params.tokenizer_dir)))


def chunk_seed(seed: int, split: str, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{split}/{index}".encode()).digest()[:8], "little")


def process_chunk(chunk: Chunk) -> dict:
    params, encoder = _state
    name = shard_name(chunk.split, chunk.index)
    old = read_sidecar(params.out_dir, name)
    if (
        old is not None
        and old.get("chunk_digest") == chunk.digest
        and old.get("tokenizer_sha256") == params.tokenizer_sha256
        and verified(params.out_dir, name, old)
    ):
        return {**old, "reused": True}

    timings = Counter()
    t0 = time.perf_counter()
    skipped: Counter = Counter()
    doc_ids: list[str] = []
    doc_sents: list[list[str]] = []
    text_bytes = 0
    for doc_id, text, kind in chunk.docs:
        try:
            if kind == WIKI:
                t = time.perf_counter()
                text = wikitext_to_text(text)
                timings["wiki_s"] += time.perf_counter() - t
            sents = sentences(text)
        except Exception as e:  # noqa: BLE001 - one bad document never ends the run
            skipped[f"error_{type(e).__name__}"] += 1
            continue
        if not sents:
            skipped["empty_text"] += 1
        elif len(sents) < params.min_sentences:
            skipped["too_few_sentences"] += 1
        else:
            doc_ids.append(doc_id)
            doc_sents.append(sents)
            text_bytes += sum(len(s.encode()) for s in sents)
    timings["sentences_s"] += time.perf_counter() - t0 - timings["wiki_s"]

    t = time.perf_counter()
    flat, lengths = encoder.encode([s for sents in doc_sents for s in sents])
    timings["tokenize_s"] += time.perf_counter() - t

    t = time.perf_counter()
    docs, off, kept_ids = _documents(doc_sents, lengths, params.min_sentences, skipped, doc_ids)
    rng = random.Random(chunk_seed(params.seed, chunk.split, chunk.index))
    instances = create_instances(docs, off, params.seq_len, params.short_seq_prob, params.dupe_factor, rng)
    timings["instances_s"] += time.perf_counter() - t

    t = time.perf_counter()
    dtype = ids_dtype(params.vocab_size)
    flat = flat.astype(dtype)
    cls, sep = np.array([params.cls_id], dtype), np.array([params.sep_id], dtype)
    counts = {"tokens": 0, "random_next": 0}

    def samples():
        for i, inst in enumerate(instances):
            ids = np.concatenate((cls, flat[inst.a_lo : inst.a_hi], sep, flat[inst.b_lo : inst.b_hi], sep))
            counts["tokens"] += len(ids)
            counts["random_next"] += inst.is_random_next
            key = sample_key(chunk.split, chunk.index, i)
            yield encode_sample(key, ids, inst.a_hi - inst.a_lo, int(inst.is_random_next), kept_ids[inst.doc])

    sha, size = write_shard(params.out_dir, name, samples())
    record = {
        "name": name,
        "split": chunk.split,
        "index": chunk.index,
        "samples": len(instances),
        "tokens": counts["tokens"],
        "random_next": counts["random_next"],
        "bytes": size,
        "sha256": sha,
        "chunk_digest": chunk.digest,
        "tokenizer_sha256": params.tokenizer_sha256,
        "raw_bytes": chunk.raw_bytes,
        "text_bytes": text_bytes,
        "documents": {"in": len(chunk.docs), "used": len(docs), "skipped": dict(sorted(skipped.items()))},
    }
    write_json_atomic(sidecar_path(params.out_dir, name), record)
    timings["write_s"] += time.perf_counter() - t
    return {**record, "reused": False, "timings": dict(timings)}


def _documents(doc_sents, lengths: np.ndarray, min_sentences: int, skipped: Counter, doc_ids: list[str]):
    """Sentence index ranges per document and token offsets per sentence, dropping sentences that encode to
    no tokens (and documents left with too few sentences)."""
    docs: list[tuple[int, int]] = []
    kept_ids: list[str] = []
    keep = lengths > 0
    all_kept = bool(keep.all())
    off = np.concatenate(([0], np.cumsum(lengths))).tolist()
    if not all_kept:  # rare: rebuild offsets over the non-empty sentences only
        off = np.concatenate(([0], np.cumsum(lengths[keep]))).tolist()
    pos = kept = 0
    for doc_id, sents in zip(doc_ids, doc_sents):
        n = len(sents)
        n_kept = n if all_kept else int(keep[pos : pos + n].sum())
        pos += n
        if n_kept < min_sentences or n_kept == 0:
            skipped["too_few_sentences"] += 1
            kept += n_kept  # their tokens stay in the flat array, unused
            continue
        docs.append((kept, kept + n_kept))
        kept_ids.append(doc_id)
        kept += n_kept
    return docs, off, kept_ids
