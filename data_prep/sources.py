"""Finding the input files: every input as a ``Source``, in the order given, with stable names; fails fast.

A bad path, an unknown source type or a missing text column stops the run here, before any work: the first record
of each JSONL file and Hugging Face dataset is read through the same readers the run uses (``data_prep.readers``).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
from pathlib import Path

from data_prep.config import DataPrepConfig
from data_prep.readers import READ_ERRORS, Source, SourceError, capped_lines, open_binary, open_hf

COMPRESSIONS = {".gz": "gz", ".bz2": "bz2", ".zst": "zst", ".zstd": "zst"}
FORMATS = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".xml": "wiki",
}
_WIKI_SPLIT = re.compile(r"\.xml-p\d+p\d+")  # split dumps: enwiki-...-pages-articles1.xml-p1p41242.bz2
SUPPORTED = (
    ".txt, .jsonl, .parquet, .xml (MediaWiki dump), each optionally .gz/.bz2/.zst (not .parquet), or hf:NAME[:CONFIG]"
)


def expand_inputs(cfg: DataPrepConfig) -> list[Source]:
    """Every input as a Source, in the order given (glob and directory matches sorted); fails fast."""
    specs = [cfg.input] if isinstance(cfg.input, str) else list(cfg.input)
    entries: list[tuple[str, str] | Source] = []  # (path, name relative to where it was found), or an hf Source
    for spec in specs:
        if spec.startswith("hf:"):
            entries.append(_hf_source(spec, cfg))
        elif glob.has_magic(spec):
            paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not paths:
                raise SourceError(f"input pattern {spec!r} matched no files (patterns are relative to {os.getcwd()})")
            root = _glob_root(spec)
            entries += [(p, os.path.relpath(p, root)) for p in paths]
        elif os.path.isdir(spec):
            paths = sorted(os.path.join(d, f) for d, _, files in os.walk(spec) for f in files if not f.startswith("."))
            if not paths:
                raise SourceError(f"input directory {spec!r} holds no files")
            entries += [(p, os.path.relpath(p, spec)) for p in paths]
        elif os.path.isfile(spec):
            entries.append((spec, os.path.basename(spec)))
        else:
            raise SourceError(
                f"input not found: {spec!r} (relative to {os.getcwd()}). Give a file, a directory, a glob pattern "
                "in quotes, or hf:NAME[:CONFIG]"
            )
    names = iter(unique_names([e for e in entries if isinstance(e, tuple)]))
    seen: dict[str, str] = {}
    sources = []
    for e in entries:
        if isinstance(e, Source):
            sources.append(e)
            continue
        path, name = e[0], next(names)
        real = os.path.realpath(path)
        if real in seen:
            raise SourceError(
                f"input {path!r} is given twice (also as {seen[real]!r}): its documents would all be duplicates"
            )
        seen[real] = path
        sources.append(_file_source(path, name, cfg))
    return sources


def unique_names(files: list[tuple[str, str]]) -> list[str]:
    """Each (path, name relative to where it was found) file's name in document ids, which also pick each document's
    split: relative, so moving the corpus keeps them. Names that clash (``a/documents.jsonl``, ``b/documents.jsonl``
    given as files) take the fewest trailing path components that tell them apart, never the absolute path, so the
    same corpus in another folder or on another machine gives the same ids, splits and shards."""
    clashes: dict[str, list[int]] = {}
    for i, (_, name) in enumerate(files):
        clashes.setdefault(name, []).append(i)
    out = [name for _, name in files]
    for group in (g for g in clashes.values() if len(g) > 1):  # only clashing names are compared: a few files each
        parts = {i: Path(os.path.abspath(files[i][0])).parts for i in group}
        for i in group:
            k = 2
            while k < len(parts[i]) and any(parts[j][-k:] == parts[i][-k:] for j in group if j != i):
                k += 1
            out[i] = "/".join(parts[i][-k:])
    return out


def _glob_root(pattern: str) -> str:
    parts = pattern.split(os.sep)
    fixed = []
    for p in parts:
        if glob.has_magic(p):
            break
        fixed.append(p)
    return os.sep.join(fixed) or "."


def _file_source(path: str, name: str, cfg: DataPrepConfig) -> Source:
    base = path.lower()
    compression = None
    for ext, comp in COMPRESSIONS.items():
        if base.endswith(ext):
            compression, base = comp, base[: -len(ext)]
            break
    kind = FORMATS.get(os.path.splitext(base)[1])
    if kind is None and _WIKI_SPLIT.search(os.path.basename(base)):
        kind = "wiki"
    if kind is None or (kind == "parquet" and compression):
        raise SourceError(
            f"unknown source type: {path!r}. Supported: {SUPPORTED}. Rename the file or select files with a glob"
        )
    src = Source(kind, path, name, compression)
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            columns = pq.ParquetFile(path).schema_arrow.names
        except Exception as e:  # noqa: BLE001 - any reader error means the same to the user
            raise SourceError(f"cannot read parquet file {path!r}: {e}") from e
        if cfg.text_column not in columns:
            raise SourceError(
                f"parquet file {path!r} has no column {cfg.text_column!r} (columns: {', '.join(columns)}); "
                "set text_column="
            )
    elif kind == "jsonl":
        _check_first_record(src, cfg)
    return src


def _check_first_record(src: Source, cfg: DataPrepConfig) -> None:
    first = None
    with contextlib.suppress(*READ_ERRORS), open_binary(src) as f:  # read errors: counted when read
        first = next((line for line in capped_lines(f, cfg.max_line_bytes) if line and line.strip()), None)
    try:
        record = json.loads(first) if first else None
    except ValueError:
        return  # counted as bad_json later
    if isinstance(record, dict) and cfg.text_column not in record:
        raise SourceError(
            f"first record of {src.path!r} has no key {cfg.text_column!r} (keys: {', '.join(record)}); set text_column="
        )


def _hf_source(spec: str, cfg: DataPrepConfig) -> Source:
    rest = spec[3:]
    name, _, config = rest.partition(":") if not os.path.exists(rest) else (rest, "", "")
    if not name:
        raise SourceError(f"empty dataset name in {spec!r}: use hf:NAME[:CONFIG]")
    label = "hf:" + (os.path.basename(os.path.normpath(name)) if os.path.exists(name) else name)
    src = Source("hf", name, label + (f":{config}" if config else ""), hf_config=config or None)
    first = next(iter(open_hf(src, cfg)), None)
    if first is not None and cfg.text_column not in first:
        raise SourceError(
            f"dataset {spec!r} has no column {cfg.text_column!r} (columns: {', '.join(first)}); set text_column="
        )
    return src
