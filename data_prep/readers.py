"""Streaming documents out of each input format, in a fixed order, with stable ids.

Everything here runs in the main process and is cheap per byte: decompression, line reading with a byte
cap, UTF-8 decoding, JSON, Parquet batches, XML pages. Markup stripping, sentence splitting and
tokenization happen later, in the workers. A bad document is counted (``ReadStats.skipped``) and never
stops the run. Finding the inputs, and failing fast on a bad one, is ``data_prep.sources``.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import json
import logging
import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import zstandard

from data_prep.config import ConfigError, DataPrepConfig, TextFormat

log = logging.getLogger(__name__)

PLAIN, WIKI = 0, 1  # document kinds: plain text, or wikitext still to be stripped by a worker


class SourceError(ConfigError):
    """An input that cannot be read at all: a missing path, an unknown type, a missing column."""


@dataclass(frozen=True)
class Source:
    kind: str  # text | jsonl | parquet | wiki | hf
    path: str  # file path, or the dataset name/dir for hf
    name: str  # stable prefix of document ids
    compression: str | None = None
    hf_config: str | None = None


@dataclass
class ReadStats:
    documents: int = 0  # documents seen, skipped ones included
    bytes: int = 0  # UTF-8 bytes of the documents handed on
    skipped: Counter = field(default_factory=Counter)
    files: int = 0
    file_bytes: int = 0  # on disk (compressed)
    files_skipped: Counter = field(default_factory=Counter)

    def skip(self, reason: str) -> None:
        self.documents += 1
        self.skipped[reason] += 1


READ_ERRORS = (OSError, EOFError, ValueError, ET.ParseError, zstandard.ZstdError)


def open_hf(src: Source, cfg: DataPrepConfig):
    import datasets

    try:
        return datasets.load_dataset(src.path, src.hf_config, split=cfg.hf_split, streaming=True)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; all mean "cannot open"
        raise SourceError(
            f"cannot open Hugging Face dataset {src.path!r} (config {src.hf_config}, split {cfg.hf_split!r}): "
            f"{type(e).__name__}: {e}. Without network access use a local dataset directory: hf:/path/to/dir"
        ) from e


# ------------------------------------------------------------------------------------------------------ reading


def open_binary(src: Source):
    if src.compression == "gz":
        return gzip.open(src.path, "rb")
    if src.compression == "bz2":
        return bz2.open(src.path, "rb")
    if src.compression == "zst":
        return io.BufferedReader(_ZstdReader(src.path), 1 << 20)
    return open(src.path, "rb", buffering=1 << 20)


class _ZstdReader(io.RawIOBase):
    """A .zst file as a stream, frame after frame, that raises EOFError when the file ends inside a frame
    (zstandard's stream_reader returns what it has and stops: a truncated file would look complete)."""

    def __init__(self, path: str):
        self.f = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.zstd = zstandard.ZstdDecompressor()
        self.frame = None
        self.buf, self.pos = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self.pos == len(self.buf):
            data = self.f.read(1 << 20)
            if not data:
                if self.frame is not None and not self.frame.eof:
                    raise EOFError(f"{self.f.name}: the file ends inside a zstd frame (truncated?)")
                return 0
            out = []
            while data:
                if self.frame is None or self.frame.eof:
                    self.frame = self.zstd.decompressobj()
                out.append(self.frame.decompress(data))
                data = self.frame.unused_data if self.frame.eof else b""
            self.buf, self.pos = b"".join(out), 0
        n = min(len(b), len(self.buf) - self.pos)
        b[:n] = self.buf[self.pos : self.pos + n]
        self.pos += n
        return n

    def close(self) -> None:
        self.f.close()
        super().close()


def capped_lines(f, cap: int) -> Iterator[bytes | None]:
    """Lines as bytes (newline kept); None for a line longer than `cap`, which is skipped, never held whole."""
    readline = f.readline
    while True:
        line = readline(cap + 1)
        if not line:
            return
        if len(line) > cap and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = readline(1 << 20)
            yield None
        else:
            yield line


def _decode(data: bytes) -> tuple[str | None, str | None]:
    """(text, None), or (None, reason) for bytes that are not text."""
    if b"\0" in data:
        return None, "nul_bytes"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, "invalid_utf8"


def read_documents(sources: list[Source], cfg: DataPrepConfig, stats: ReadStats) -> Iterator[tuple[str, str, int]]:
    """Every usable document as (doc_id, text, kind), in input order; skips are counted in `stats`."""
    for src in sources:
        stats.files += 1
        if src.kind != "hf":
            stats.file_bytes += os.path.getsize(src.path)
        before = stats.documents
        try:
            if src.kind == "hf":
                yield from _read_records(src, open_hf(src, cfg), cfg, stats)
                continue
            with open_binary(src) as f:
                head = f.peek(8192)[:8192] if hasattr(f, "peek") else b""
                if not head:
                    stats.files_skipped["empty_file"] += 1
                    continue
                if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) and src.kind != "parquet":
                    # UTF-16 with a byte-order mark (gensim's Bulgarian Wikipedia dump is one): XML parsers read
                    # it as is; text and JSONL readers get it re-encoded as UTF-8.
                    if src.kind != "wiki":
                        f = codecs.EncodedFile(f, "utf-8", "utf-16")
                elif b"\0" in head and src.kind != "parquet":
                    stats.files_skipped["binary_file"] += 1
                    log.warning("skipped %s: NUL bytes in its first 8 KiB (binary, or UTF-16 text?)", src.path)
                    continue
                if src.kind == "text":
                    yield from _read_text(src, f, cfg, stats)
                elif src.kind == "jsonl":
                    yield from _read_records(src, _json_records(f, cfg, stats), cfg, stats)
                elif src.kind == "wiki":
                    yield from _read_wiki(src, f, cfg, stats)
            if src.kind == "parquet":
                yield from _read_records(src, _parquet_records(src, cfg), cfg, stats)
        except READ_ERRORS as e:
            stats.files_skipped["read_error"] += 1
            log.warning(
                "stopped reading %s after %d documents: %s: %s", src.path, stats.documents - before, type(e).__name__, e
            )
            continue
        if stats.documents == before:
            stats.files_skipped["no_documents"] += 1
            log.warning("no documents in %s", src.path)


def _read_text(src: Source, f, cfg: DataPrepConfig, stats: ReadStats) -> Iterator[tuple[str, str, int]]:
    cap, doc_cap, name = cfg.max_line_bytes, cfg.max_doc_bytes, src.name
    index = 0
    if cfg.text_format is TextFormat.line:
        for line in capped_lines(f, cap):
            if line is None:
                stats.skip("line_too_long")
                index += 1
                continue
            if line.isspace():
                continue
            yield from _emit(f"{name}:{index}", line.strip(), stats)
            index += 1
        return
    lines: list[bytes] = []
    size, reason = 0, None
    for line in capped_lines(f, cap):
        if line is not None and line.isspace():
            if lines or reason:
                if reason:
                    stats.skip(reason)
                else:
                    yield from _emit(f"{name}:{index}", b"".join(lines), stats)
                index += 1
            lines, size, reason = [], 0, None
            continue
        if reason:
            continue  # the rest of a skipped document: read, not kept
        if line is None:
            lines, reason = [], "line_too_long"
            continue
        size += len(line)
        if size > doc_cap:
            lines, reason = [], "doc_too_long"
            continue
        lines.append(line)
    if lines or reason:
        if reason:
            stats.skip(reason)
        else:
            yield from _emit(f"{name}:{index}", b"".join(lines), stats)


def _emit(doc_id: str, data: bytes, stats: ReadStats) -> Iterator[tuple[str, str, int]]:
    text, reason = _decode(data)
    if reason:
        stats.skip(reason)
        return
    stats.documents += 1
    stats.bytes += len(data)
    yield doc_id, text, PLAIN


def _json_records(f, cfg: DataPrepConfig, stats: ReadStats) -> Iterator[object]:
    """Decoded JSONL records; a string reason instead of a record for a line that is not one."""
    for line in capped_lines(f, cfg.max_line_bytes):
        if line is None:
            yield _Skip("line_too_long")
            continue
        if line.isspace():
            continue
        if b"\0" in line:
            yield _Skip("nul_bytes")
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            yield _Skip("invalid_utf8")
            continue
        try:
            yield json.loads(text)
        except ValueError:
            yield _Skip("bad_json")


class _Skip(str):
    """A reason in place of a record."""


def _parquet_records(src: Source, cfg: DataPrepConfig) -> Iterator[dict]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(src.path)
    for batch in pf.iter_batches(batch_size=256, columns=[cfg.text_column]):
        for value in batch.column(0).to_pylist():
            yield {cfg.text_column: value}


def _read_records(src: Source, records, cfg: DataPrepConfig, stats: ReadStats) -> Iterator[tuple[str, str, int]]:
    column, doc_cap, name = cfg.text_column, cfg.max_doc_bytes, src.name
    for index, record in enumerate(records):
        if isinstance(record, _Skip):
            stats.skip(str(record))
            continue
        text = record.get(column) if isinstance(record, dict) else None
        if not isinstance(text, str):
            stats.skip("no_text")
            continue
        if not text or text.isspace():
            stats.skip("empty_text")
            continue
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from JSON escapes
            stats.skip("invalid_utf8")
            continue
        if len(data) > doc_cap:
            stats.skip("doc_too_long")
            continue
        if "\0" in text:
            stats.skip("nul_bytes")
            continue
        stats.documents += 1
        stats.bytes += len(data)
        yield f"{name}:{index}", text, PLAIN


def _read_wiki(src: Source, f, cfg: DataPrepConfig, stats: ReadStats) -> Iterator[tuple[str, str, int]]:
    """Pages of a MediaWiki XML dump: articles (namespace 0) that are not redirects, as raw wikitext."""
    doc_cap, name = cfg.max_doc_bytes, src.name
    events = ET.iterparse(f, events=("start", "end"))
    _, root = next(events)
    for event, el in events:
        if event != "end" or not el.tag.endswith("page"):
            continue
        ns = page_id = text = None
        redirect = False
        for child in el:
            tag = child.tag.rpartition("}")[2]
            if tag == "ns":
                ns = child.text
            elif tag == "id":
                page_id = child.text
            elif tag == "redirect":
                redirect = True
            elif tag == "revision":
                for sub in child:
                    if sub.tag.rpartition("}")[2] == "text":
                        text = sub.text
        root.clear()  # pages already read: drop them, memory stays flat
        if ns is not None and ns.strip() != "0":
            stats.skip("wiki_non_article")
        elif redirect or (text and text.lstrip()[:9].upper() == "#REDIRECT"):
            stats.skip("wiki_redirect")
        elif not text or text.isspace():
            stats.skip("empty_text")
        else:
            data_len = len(text.encode("utf-8"))
            if data_len > doc_cap:
                stats.skip("doc_too_long")
                continue
            stats.documents += 1
            stats.bytes += data_len
            yield f"{name}:{page_id}", text, WIKI
