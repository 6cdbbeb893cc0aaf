"""The data a pretraining run starts from, before the loader (data.py) reads it.

- :func:`verify_shards`: the shards checked against the manifest (existence and size, or sha256 split across ranks)
  before the first step; bad ones are skipped and counted, or fail the run by name (``data.on_bad_shard``).
- :func:`keep_in_run_dir`: what a run_dir keeps of its data (the tokenizer and ``data.json``: vocabulary, special
  ids, fingerprints, the manifest's summary), so export, finetune and report read the run_dir alone and the data
  directory may move; :func:`run_data` reads it back.

Light on purpose (no torch, no webdataset): export imports it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from data_prep.format import DataError, DataSpec

log = logging.getLogger(__name__)


def verify_shards(spec: DataSpec, mode: str, on_bad: str, rank: int = 0, world: int = 1, gather=None) -> list[str]:
    """Check shards before training; returns the names of bad ones (the same list on every rank).

    ``size`` checks existence and byte size on every rank (cheap); ``sha256`` hashes each shard once, split across
    ranks, and ``gather`` (a function merging per-rank lists) shares the verdicts.
    """
    if mode not in ("none", "size", "sha256"):
        raise DataError(f"data.verify={mode}: expected none, size or sha256")
    bad: list[str] = []
    if mode != "none":
        for i, s in enumerate(spec.train + spec.val):
            if "://" in s.url or s.url.startswith("pipe:"):
                continue
            p = Path(s.url)
            if not p.is_file():
                bad.append(f"{s.name}: missing")
            elif s.bytes >= 0 and p.stat().st_size != s.bytes:
                bad.append(f"{s.name}: {p.stat().st_size} bytes, manifest says {s.bytes} (truncated?)")
            elif mode == "sha256" and i % world == rank and s.sha256:
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        h.update(block)
                if h.hexdigest() != s.sha256:
                    bad.append(f"{s.name}: sha256 differs from the manifest")
        if gather is not None:
            bad = gather(bad)
    bad = sorted(set(bad))
    if bad and on_bad == "error":
        raise DataError(
            f"bad shards in {spec.root}: {'; '.join(bad)}. Re-run data_prep into the same output to redo "
            f"them, or set data.on_bad_shard=skip to train without them."
        )
    names = {b.split(":")[0] for b in bad}
    for b in bad:
        log.warning("skipping shard %s", b)
    spec.train = [s for s in spec.train if s.name not in names]
    spec.val = [s for s in spec.val if s.name not in names]
    spec.skipped_shards = sorted(names)
    if not spec.train:
        raise DataError(f"every train shard in {spec.root} is bad: {'; '.join(bad)}")
    return spec.skipped_shards


RUN_DATA = "data.json"
RUN_TOKENIZER = "tokenizer"


def keep_in_run_dir(spec: DataSpec, run_dir: Path, sources: list[dict] | None = None) -> None:
    """Rank 0, at the start of a run: copy the tokenizer into ``run_dir/tokenizer/`` and write ``run_dir/data.json``
    (vocabulary size, special ids, seq_len, fingerprints, the manifest's summary, and ``sources`` of a blend: the
    top-level fields are then the first source's), so the data directory may move."""
    record = {
        "path": str(spec.root.resolve()),
        "seq_len": spec.seq_len,
        "vocab_size": spec.vocab_size,
        "special_ids": spec.special_ids,
        "fingerprint": spec.fingerprint,
        "tokenizer_sha256": spec.tokenizer_sha256,
        "splits": spec.manifest.get("splits", {}),
        "documents": spec.manifest.get("documents", {}),
        "tokenizer": {k: v for k, v in spec.manifest.get("tokenizer", {}).items() if k != "path"},
    }
    if sources:
        record["sources"] = sources
    tok = Path(run_dir) / RUN_TOKENIZER
    old = run_data(run_dir)
    if not (tok.is_dir() and old and old.get("tokenizer_sha256") == spec.tokenizer_sha256):
        tmp = tok.with_name(f".{RUN_TOKENIZER}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(spec.tokenizer_dir, tmp)
        shutil.rmtree(tok, ignore_errors=True)
        tmp.rename(tok)
    path = Path(run_dir) / RUN_DATA
    tmp = path.with_name(f".{RUN_DATA}.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)


def run_data(run_dir: Path) -> dict | None:
    """``run_dir/data.json`` (None for a run_dir written before it existed)."""
    path = Path(run_dir) / RUN_DATA
    return json.loads(path.read_text()) if path.is_file() else None
