"""manifest.json: merged from the part records in ``.done/parts/`` once every part is done.

A run with ``num_parts=1`` merges at its end. With several parts (a Slurm job array), the part that
finishes last merges; ``python -m data_prep.merge DIR`` does the same by hand, and fails clearly when a
part or a shard is missing.
"""

from __future__ import annotations

import datetime
import glob
import hashlib
import json
import logging
import os
import re
from collections import Counter

from data_prep.shards import DONE, file_sha256, shard_name, write_json_atomic

log = logging.getLogger("data_prep")

PARTS = "parts"
SCHEMA_VERSION = 1
_PART_RE = re.compile(r"part-(\d{5})-of-(\d{5})\.json$")


def part_path(out: str, part: int, num_parts: int) -> str:
    return os.path.join(out, DONE, PARTS, f"part-{part:05d}-of-{num_parts:05d}.json")


class MergeError(RuntimeError):
    pass


def _load_parts(out: str, num_parts: int | None) -> list[dict]:
    found: dict[int, dict[int, str]] = {}
    for path in glob.glob(os.path.join(out, DONE, PARTS, "part-*-of-*.json")):
        m = _PART_RE.search(path)
        if m:
            found.setdefault(int(m.group(2)), {})[int(m.group(1))] = path
    if not found:
        raise MergeError(f"no part records in {os.path.join(out, DONE, PARTS)}: run python -m data_prep first")
    if num_parts is None:  # the newest complete set (an earlier run may have used another num_parts)
        complete = [n for n, parts in found.items() if len(parts) == n]
        if not complete:
            n, parts = max(found.items(), key=lambda kv: len(kv[1]))
            missing = sorted(set(range(n)) - set(parts))
            raise MergeError(f"{out}: parts {missing} of {n} have not finished (rerun them with part=i num_parts={n})")
        num_parts = max(complete, key=lambda n: max(os.path.getmtime(p) for p in found[n].values()))
    paths = found.get(num_parts, {})
    missing = sorted(set(range(num_parts)) - set(paths))
    if missing:
        raise MergeError(f"{out}: parts {missing} of {num_parts} have not finished")
    parts = []
    for i in range(num_parts):
        with open(paths[i]) as f:
            parts.append(json.load(f))
    return parts


def merge(out: str, num_parts: int | None = None, verify: bool = False) -> dict:
    """Check the parts agree and every shard is there, then write and return manifest.json."""
    parts = _load_parts(out, num_parts)
    first = parts[0]
    for p in parts[1:]:
        for key in ("output_config_sha256", "tokenizer", "chunks", "reader"):
            if p[key] != first[key]:
                raise MergeError(
                    f"part {p['part']} disagrees with part 0 on {key!r}: were the parts run with different configs, "
                    "tokenizers or inputs? Rerun the odd part"
                )
    shards = sorted((s for p in parts for s in p["shards"]), key=lambda s: s["name"])
    by_name = {s["name"]: s for s in shards}
    for split, n in first["chunks"].items():
        missing = [shard_name(split, k) for k in range(n) if shard_name(split, k) not in by_name]
        if missing:
            raise MergeError(f"{out}: shards missing from the part records: {', '.join(missing[:5])}")
    for s in shards:
        path = os.path.join(out, s["name"])
        if not os.path.exists(path) or os.path.getsize(path) != s["bytes"]:
            raise MergeError(f"{path} is missing or has the wrong size: rerun its part to redo it")
        if verify and file_sha256(path) != s["sha256"]:
            raise MergeError(f"{path} does not match its sha256: rerun its part to redo it")

    reader = first["reader"]
    skipped = Counter(reader["skipped"])
    for s in shards:
        skipped.update(s["documents"]["skipped"])
    used = sum(s["documents"]["used"] for s in shards)
    if used + sum(skipped.values()) != reader["documents"]:
        log.warning(
            "document counts do not add up: %d read, %d used, %d skipped",
            reader["documents"],
            used,
            sum(skipped.values()),
        )
    splits = {}
    for split in first["chunks"]:
        mine = [s for s in shards if s["split"] == split]
        splits[split] = {
            "shards": len(mine),
            "samples": sum(s["samples"] for s in mine),
            "tokens": sum(s["tokens"] for s in mine),
            "random_next": sum(s["random_next"] for s in mine),
        }
    tok = first["tokenizer"]
    fingerprint = hashlib.sha256(tok["sha256"].encode())
    for sha in sorted(s["sha256"] for s in shards):
        fingerprint.update(sha.encode())
    config = dict(first["config"])
    if len(parts) > 1:
        config["part"] = None
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": config,
        "tokenizer": tok,
        "seq_len": first["seq_len"],
        "ids_dtype": first["ids_dtype"],
        "shards": [{k: s[k] for k in ("name", "split", "samples", "tokens", "bytes", "sha256")} for s in shards],
        "splits": splits,
        "documents": {"read": reader["documents"], "used": used, "skipped": dict(sorted(skipped.items()))},
        "input_bytes": reader["bytes"],
        "text_bytes": sum(s["text_bytes"] for s in shards),
        "files": {"read": reader["files"], "bytes": reader["file_bytes"], "skipped": reader["files_skipped"]},
        "num_parts": len(parts),
        "fingerprint": fingerprint.hexdigest(),
        "timings": [p["timings"] for p in parts],
    }
    write_json_atomic(os.path.join(out, "manifest.json"), manifest)
    for split, want in (("val", first["config"]["val_fraction"] > 0), ("train", True)):
        if want and splits.get(split, {}).get("samples", 0) == 0:
            log.warning("the %s split has no samples (documents too few or too short?): see manifest.json", split)
    warn_small_val(first["config"]["val_fraction"], splits)
    return manifest


MIN_VAL_SAMPLES = 64  # below this, validation losses are noise: one or two micro-batches at most


def warn_small_val(val_fraction: float, splits: dict) -> str | None:
    """Warn (and return the message) when the validation split is small, naming a val_fraction that would do."""
    val = splits.get("val", {}).get("samples", 0)
    total = val + splits.get("train", {}).get("samples", 0)
    if val_fraction <= 0 or val >= MIN_VAL_SAMPLES or total == 0:
        return None
    want = min(0.2, MIN_VAL_SAMPLES / total)
    msg = (
        f"the validation split has {val} samples (fewer than {MIN_VAL_SAMPLES}): its metrics will be noisy, and "
        f"missing when it is smaller than the number of ranks; val_fraction={want:.2g} would give about "
        f"{int(want * total)} of the {total} samples (val_fraction={val_fraction} now)"
    )
    log.warning("%s", msg)
    return msg


def format_summary(m: dict) -> str:
    """What a user reads at the end of a run."""
    d = m["documents"]
    lines = [
        f"documents: {d['read']:,} read, {d['used']:,} used, {sum(d['skipped'].values()):,} skipped",
        *(f"  skipped {reason}: {n:,}" for reason, n in sorted(d["skipped"].items(), key=lambda kv: -kv[1])),
    ]
    f = m["files"]
    lines.append(f"files: {f['read']:,} read ({f['bytes'] / 1e6:,.1f} MB on disk)")
    lines += [f"  skipped {reason}: {n:,}" for reason, n in sorted(f["skipped"].items())]
    for split, s in m["splits"].items():
        nsp = s["random_next"] / s["samples"] if s["samples"] else 0.0
        lines.append(
            f"{split}: {s['shards']} shards, {s['samples']:,} samples, {s['tokens']:,} tokens, {nsp:.1%} random-next"
        )
    t = m["tokenizer"]
    lines.append(f"tokenizer: {t['vocab_size']:,} tokens, lowercase={t['lowercase']}, special ids {t['special_ids']}")
    lines.append(
        f"input: {m['input_bytes'] / 1e6:,.1f} MB of raw text -> {m['text_bytes'] / 1e6:,.1f} MB of clean text"
    )
    lines.append(f"fingerprint: {m['fingerprint']}")
    return "\n".join(lines)
