"""``prepare(cfg)``: corpora in, shards + manifest out. The orchestration; the work is in worker.py.

The main process reads every document in a fixed order, drops exact duplicates, routes each to ``train``
or ``val`` by a hash of its id, and cuts each split into chunks of about ``shard_mb`` of raw text (whole
documents). Chunk k of a split becomes shard ``<split>-<k:06d>.tar``, made by a worker seeded from
(seed, split, k). This part's chunks (k % num_parts == part) go to at most ``in_flight`` workers at once.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import logging
import multiprocessing
import os
import re
import shutil
import time
from collections import Counter

from tqdm import tqdm

from data_prep import tokenizer as tokenization
from data_prep.config import (
    ConfigError,
    DataPrepConfig,
    config_dict,
    config_hash,
    output_config,
    resolve_workers,
    to_config,
)
from data_prep.format import ids_dtype
from data_prep.manifest import PARTS, MergeError, merge, part_path
from data_prep.readers import WIKI, ReadStats, Source, read_documents
from data_prep.shards import DONE, sidecar_path, write_json_atomic
from data_prep.sources import expand_inputs
from data_prep.text import paragraphs
from data_prep.wiki import wikitext_to_text
from data_prep.worker import Chunk, WorkerParams, init_worker, process_chunk

log = logging.getLogger("data_prep")

SPLITS = ("train", "val")
_SHARD_RE = re.compile(r"^(train|val)-(\d{6})\.tar$")


def prepare(cfg: DataPrepConfig | dict) -> dict:
    """Prepare shards for `cfg` and return the manifest (this part's, until every part is done)."""
    cfg = to_config(cfg)
    started = time.time()
    out = cfg.output
    sources = expand_inputs(cfg)  # a bad input fails here, before anything is written
    fresh = not os.path.exists(out)
    os.makedirs(os.path.join(out, DONE, PARTS), exist_ok=True)
    try:
        _check_state(cfg, out)
        return _prepare(cfg, sources, out, started)
    except BaseException:
        if cfg.num_parts == 1:  # with parts, others may be writing here: leave the record to them
            _unclaim(out, fresh)
        raise


def _unclaim(out: str, fresh: bool) -> None:
    """A run that failed before writing any shard or tokenizer leaves no record of its config: the fixed rerun then
    needs no overwrite=true. A directory this run created is removed when nothing else is in it."""
    if any(_SHARD_RE.match(n) for n in os.listdir(out)) or os.path.exists(os.path.join(out, "tokenizer")):
        return
    shutil.rmtree(os.path.join(out, DONE), ignore_errors=True)
    if fresh and not os.listdir(out):
        os.rmdir(out)


def _prepare(cfg: DataPrepConfig, sources: list[Source], out: str, started: float) -> dict:
    # manifest.json is written last: while any part runs there is none, and this part is not done.
    for path in (os.path.join(out, "manifest.json"), part_path(out, cfg.part, cfg.num_parts)):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    workers = resolve_workers(cfg)

    t = time.perf_counter()
    tok_timings: dict[str, float] = {}
    tok_info = _ensure_tokenizer(cfg, sources, out, workers, tok_timings)  # says where it came from
    tokenizer_s = time.perf_counter() - t

    params = WorkerParams(
        out_dir=out,
        tokenizer_dir=os.path.join(out, "tokenizer"),
        tokenizer_sha256=tok_info["sha256"],
        vocab_size=tok_info["vocab_size"],
        cls_id=tok_info["special_ids"]["cls"],
        sep_id=tok_info["special_ids"]["sep"],
        seq_len=cfg.seq_len,
        short_seq_prob=cfg.short_seq_prob,
        dupe_factor=cfg.dupe_factor,
        seed=cfg.seed,
        min_sentences=cfg.min_sentences,
    )
    t = time.perf_counter()
    records, stats, n_chunks, stage_s = _make_shards(cfg, sources, params, workers)
    shards_s = time.perf_counter() - t
    reused = sum(r.get("reused", False) for r in records)
    if reused:  # a rerun that took a second should say why
        log.info(
            "reused %d of %d shards from an earlier run in %s (same input chunk, tokenizer and config; each checked "
            "against its recorded sha256); overwrite=true makes them again", reused, len(records), out,
        )  # fmt: skip
    _remove_orphans(out, n_chunks, cfg.part, cfg.num_parts)

    part = {
        "schema_version": 1,
        "part": cfg.part,
        "num_parts": cfg.num_parts,
        "config": config_dict(cfg),
        "output_config_sha256": config_hash(output_config(cfg)),
        "tokenizer": tok_info,
        "seq_len": cfg.seq_len,
        "ids_dtype": ids_dtype(tok_info["vocab_size"]).name,
        "chunks": n_chunks,
        "reader": {
            "documents": stats.documents,
            "bytes": stats.bytes,
            "skipped": dict(sorted(stats.skipped.items())),
            "files": stats.files,
            "file_bytes": stats.file_bytes,
            "files_skipped": dict(sorted(stats.files_skipped.items())),
        },
        "shards": sorted(records, key=lambda r: r["name"]),
        "timings": {
            "workers": workers,
            "tokenizer_s": round(tokenizer_s, 3),
            **{k: round(v, 3) for k, v in tok_timings.items()},
            "shards_s": round(shards_s, 3),
            "total_s": round(time.time() - started, 3),
            "worker_stage_s": {k: round(v, 3) for k, v in sorted(stage_s.items())},
            "shards_reused": reused,
        },
    }
    for r in part["shards"]:
        r.pop("timings", None)
        r.pop("reused", None)
    write_json_atomic(part_path(out, cfg.part, cfg.num_parts), part)
    done = [os.path.exists(part_path(out, i, cfg.num_parts)) for i in range(cfg.num_parts)]
    if all(done):
        if cfg.num_parts == 1:
            return merge(out, num_parts=1)
        try:
            return merge(out, num_parts=cfg.num_parts)
        except MergeError as e:  # another part is being rerun: it merges when it is done
            log.info("not merged yet: %s", e)
            return part
    log.info(
        "part %d/%d done; the manifest is written when every part is (or run: python -m data_prep.merge %s)",
        cfg.part,
        cfg.num_parts,
        out,
    )
    return part


# ------------------------------------------------------------------------------------------ output directory


def _check_state(cfg: DataPrepConfig, out: str) -> None:
    """Refuse to mix two configs in one directory (unless overwrite=true, which clears it first)."""
    path = os.path.join(out, DONE, "config.json")
    want = output_config(cfg)
    have = _read_json(path)
    leftovers = any(_SHARD_RE.match(n) for n in os.listdir(out)) or os.path.exists(os.path.join(out, "manifest.json"))
    if have is None and not leftovers:
        write_json_atomic(path, want)
        return
    if have == want:
        return
    if have is None:
        diff = "the directory holds shards without a data_prep record of their config"
    else:
        diff = "; ".join(f"{k}: {have_v!r} -> {want_v!r}" for k, have_v, want_v in _diff(have, want))
    if not cfg.overwrite:
        raise ConfigError(
            f"output {out!r} was prepared with a different config ({diff}). Use another output directory, "
            "or pass overwrite=true to delete its shards, manifest and tokenizer and start again"
        )
    log.warning("overwrite=true: clearing %s (%s)", out, diff)
    _clear(out)
    os.makedirs(os.path.join(out, DONE, PARTS), exist_ok=True)
    write_json_atomic(path, want)


def _diff(a: dict, b: dict, prefix: str = ""):
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            yield from _diff(x, y, f"{prefix}{key}.")
        elif x != y:
            yield prefix + key, x, y


def _clear(out: str) -> None:
    for name in os.listdir(out):
        path = os.path.join(out, name)
        if _SHARD_RE.match(name) or name == "manifest.json" or (name.startswith(".") and name.endswith(".tmp")):
            os.remove(path)
        elif name in (DONE, "tokenizer") or name.startswith(".tokenizer.tmp"):
            shutil.rmtree(path)


def _remove_orphans(out: str, n_chunks: dict, part: int, num_parts: int) -> None:
    """Shards of an earlier run past this run's last chunk, and temporary files of this part's chunks."""
    for name in os.listdir(out):
        m = _SHARD_RE.match(name.removeprefix(".").removesuffix(".tmp"))
        if not m or int(m.group(2)) % num_parts != part:
            continue
        if name.endswith(".tmp") or int(m.group(2)) >= n_chunks[m.group(1)]:
            os.remove(os.path.join(out, name))
            if not name.endswith(".tmp") and os.path.exists(sidecar_path(out, name)):
                os.remove(sidecar_path(out, name))


def _read_json(path: str):
    import json

    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


# ------------------------------------------------------------------------------------------------- the reader


class Router:
    """Drops exact duplicates and sends each document to a split, the same way in every part and run."""

    def __init__(self, cfg: DataPrepConfig, stats: ReadStats):
        self.threshold = int(cfg.val_fraction * 2**64)
        self.need_val = cfg.val_fraction > 0  # the first document goes to val: a tiny corpus still has one
        self.seen: set[bytes] = set()  # 8-byte digests: about 70 bytes per unique document
        self.stats = stats

    def route(self, doc_id: str, text: str) -> tuple[str | None, bytes, int]:
        """(split or None for a duplicate, content digest, UTF-8 size)."""
        data = text.encode("utf-8")
        digest = hashlib.blake2b(data, digest_size=8).digest()
        if digest in self.seen:
            self.stats.skipped["duplicate"] += 1
            return None, digest, len(data)
        self.seen.add(digest)
        h = int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")
        if self.need_val or h < self.threshold:
            self.need_val = False
            return "val", digest, len(data)
        return "train", digest, len(data)


class _OpenChunk:
    def __init__(self):
        self.docs, self.bytes, self.sha = [], 0, hashlib.blake2b(digest_size=16)

    def add(self, doc_id: str, text: str, kind: int, digest: bytes, size: int) -> None:
        self.docs.append((doc_id, text, kind))
        self.bytes += size
        self.sha.update(doc_id.encode() + b"\0" + digest)


def _make_shards(cfg: DataPrepConfig, sources: list[Source], params: WorkerParams, workers: int):
    stats = ReadStats()
    router = Router(cfg, stats)
    limit = cfg.shard_mb * 1e6
    open_chunks = {s: _OpenChunk() for s in SPLITS}
    n_chunks = dict.fromkeys(SPLITS, 0)
    records: list[dict] = []
    stage_s: Counter = Counter()
    bar = tqdm(
        desc="data_prep", unit="B", unit_scale=True, unit_divisor=1000, disable=not cfg.progress, mininterval=1.0
    )
    started = time.perf_counter()

    def collect(record: dict) -> None:
        records.append(record)
        stage_s.update(record.get("timings", {}))

    def report(size: int) -> None:
        elapsed = max(time.perf_counter() - started, 1e-6)
        bar.set_postfix_str(f"{stats.documents / elapsed:,.0f} docs/s, {len(records)} shards done", refresh=False)
        bar.update(size)

    max_in_flight = cfg.in_flight or 2 * workers
    pending: set[cf.Future] = set()

    def submit(split: str) -> None:
        chunk = open_chunks[split]
        index = n_chunks[split]
        n_chunks[split] += 1
        open_chunks[split] = _OpenChunk()
        if index % cfg.num_parts != cfg.part:
            return  # another part's chunk: read, not processed
        task = Chunk(split, index, chunk.docs, chunk.sha.hexdigest(), chunk.bytes)
        if executor is None:
            collect(process_chunk(task))
            return
        while len(pending) >= max_in_flight:
            _wait(pending, collect)
        pending.add(executor.submit(process_chunk, task))

    executor = None
    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        if workers > 1:
            stack.enter_context(_tokenizers_single_threaded())
            ctx = multiprocessing.get_context("fork")
            executor = cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker, initargs=(params,))
            stack.callback(executor.shutdown, wait=True, cancel_futures=True)
        else:
            init_worker(params)
        unreported = 0
        for doc_id, text, kind in read_documents(sources, cfg, stats):
            split, digest, size = router.route(doc_id, text)
            unreported += size
            if unreported > 1 << 20:
                report(unreported)
                unreported = 0
            if split is None:
                continue
            chunk = open_chunks[split]
            chunk.add(doc_id, text, kind, digest, size)
            if chunk.bytes >= limit:
                submit(split)
        report(unreported)
        for split in SPLITS:
            if open_chunks[split].docs:
                submit(split)
        while pending:
            _wait(pending, collect)
        report(0)
    return records, stats, n_chunks, stage_s


def _wait(pending: set, collect) -> None:
    done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
    for future in done:
        pending.discard(future)
        collect(future.result())


# ---------------------------------------------------------------------------------------------- the tokenizer


def _ensure_tokenizer(cfg: DataPrepConfig, sources: list[Source], out: str, workers: int, timings: dict) -> dict:
    """OUTPUT/tokenizer: kept from an earlier run, copied from tokenizer.path, or trained (by part 0 only)."""
    dst = os.path.join(out, "tokenizer")
    tmp = os.path.join(out, f".tokenizer.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    # One line on where the tokenizer came from; what it is (size, special ids) is in the closing summary.
    existed = os.path.isdir(dst)
    if cfg.tokenizer.path:
        tokenization.copy_pretrained(cfg.tokenizer.path, tmp)
    elif existed:
        log.info("reusing the tokenizer in %s (from an earlier run in this output)", dst)
        return tokenization.info(dst)
    elif cfg.part != 0:
        return _wait_for_tokenizer(dst, cfg.tokenizer.wait_s)
    else:
        t = time.perf_counter()
        texts = _training_sample(cfg, sources, workers)
        timings["tokenizer_sample_s"] = time.perf_counter() - t
        log.info("training a WordPiece tokenizer on %.1f MB of text", sum(len(x) for x in texts) / 1e6)
        t = time.perf_counter()
        tok = tokenization.train(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.lowercase, cfg.tokenizer.strip_accents)
        del texts
        timings["tokenizer_train_s"] = time.perf_counter() - t
        tokenization.save(tok, cfg.tokenizer.lowercase, tmp, cfg.tokenizer.strip_accents)
        train_s, sample_s = timings["tokenizer_train_s"], timings["tokenizer_sample_s"]
        log.info("  trained in %.1f s (the sample read and cleaned in %.1f s)", train_s, sample_s)
    try:
        os.rename(tmp, dst)
    except OSError:  # another part (or an earlier run) published it first
        same = tokenization.sha256_dir(tmp) == tokenization.sha256_dir(dst)
        shutil.rmtree(tmp)
        if not same:
            raise ConfigError(
                f"{dst} differs from tokenizer.path {cfg.tokenizer.path!r}: the tokenizer changed since this output "
                "was started. Use another output directory or overwrite=true"
            ) from None
    if cfg.tokenizer.path and existed:
        log.info("reusing the tokenizer in %s (the same as tokenizer.path)", dst)
    elif cfg.tokenizer.path:
        log.info("copied the tokenizer of tokenizer.path=%s", cfg.tokenizer.path)
    return tokenization.info(dst)


def _wait_for_tokenizer(dst: str, wait_s: float) -> dict:
    log.info("waiting for part 0 to train the tokenizer into %s (up to %.0f s)", dst, wait_s)
    deadline = time.monotonic() + wait_s
    while not os.path.isdir(dst):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no tokenizer at {dst} after {wait_s:.0f} s: part 0 trains it. Check part 0, or train it first "
                "(run part 0 alone) or give tokenizer.path"
            )
        time.sleep(max(0.0, min(5.0, deadline - time.monotonic())))
    return tokenization.info(dst)


def _training_sample(cfg: DataPrepConfig, sources: list[Source], workers: int) -> list[str]:
    """Cleaned text of the first `train_sample_mb` of training documents (same dedup and routing as the shards)."""
    limit = cfg.tokenizer.train_sample_mb * 1e6
    stats = ReadStats()
    router = Router(cfg, stats)
    docs, size = [], 0
    reader = read_documents(sources, cfg, stats)
    for doc_id, text, kind in reader:
        split, _, n = router.route(doc_id, text)
        if split != "train":
            continue
        docs.append((text, kind))
        size += n
        if size >= limit:
            break
    reader.close()
    if not docs:
        skipped = sum(stats.skipped.values())
        to_val = stats.documents - skipped  # every usable document was routed to validation
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(stats.skipped.items())) or "none"
        hint = (
            " The first document always goes to validation when val_fraction > 0: give val_fraction=0 (or more text)."
            if to_val
            else " See the warnings above, if any, for unreadable files."
        )
        raise ConfigError(
            f"no training documents to train a tokenizer on: {stats.documents} read, {skipped} skipped ({reasons}), "
            f"{to_val} in the validation split.{hint}"
        )
    if workers > 1 and any(kind == WIKI for _, kind in docs):
        ctx = multiprocessing.get_context("fork")
        with _tokenizers_single_threaded(), cf.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            return list(ex.map(_training_text, docs, chunksize=16))
    return [_training_text(d) for d in docs]


def _training_text(doc: tuple[str, int]) -> str:
    text, kind = doc
    try:
        return "\n".join(paragraphs(wikitext_to_text(text) if kind == WIKI else text))
    except Exception:  # noqa: BLE001 - counted when the shards are made
        return ""


@contextlib.contextmanager
def _tokenizers_single_threaded():
    """TOKENIZERS_PARALLELISM=false around a fork: children inherit it (and tokenizers prints no fork warning)."""
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
