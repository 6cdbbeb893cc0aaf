"""data_prep inputs: every source type, bad documents counted with reasons, bad paths failing at once."""

from __future__ import annotations

import bz2
import gzip
import json
import os
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from test_data_prep_helpers import WIKI_XML, config, lee_docs, read_samples, wiki_page

from data_prep import format_summary, prepare
from data_prep.config import ConfigError, TextFormat
from data_prep.readers import ReadStats, SourceError, read_documents
from data_prep.sources import expand_inputs

DOCS = lee_docs()[:40]


def _write_all_formats(d) -> dict[str, dict]:
    """The same 40 documents as every source type; each entry: the config overrides that read it."""
    d.mkdir()
    lines = "".join(doc + "\n" for doc in DOCS).encode()
    jsonl = "".join(json.dumps({"id": i, "text": doc}) + "\n" for i, doc in enumerate(DOCS)).encode()
    (d / "line.txt").write_bytes(lines)
    (d / "blank.txt").write_text("\n\n".join(DOCS) + "\n", encoding="utf-8")
    (d / "docs.jsonl").write_bytes(jsonl)
    pq.write_table(pa.table({"body": DOCS, "n": list(range(len(DOCS)))}), d / "docs.parquet")
    (d / "docs.jsonl.gz").write_bytes(gzip.compress(jsonl))
    (d / "line.txt.bz2").write_bytes(bz2.compress(lines))
    (d / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl))
    (d / "hfdata").mkdir()
    (d / "hfdata" / "train.jsonl").write_bytes(jsonl)
    line = {"text_format": TextFormat.line}
    return {
        "line.txt": line,
        "blank.txt": {},
        "docs.jsonl": {},
        "docs.parquet": {"text_column": "body"},
        "docs.jsonl.gz": {},
        "line.txt.bz2": line,
        "docs.jsonl.zst": {},
        "hf:" + str(d / "hfdata"): {},
    }


def test_every_source_type_gives_the_same_instances(tmp_path):
    """The same documents as .txt (both formats), .jsonl, .parquet, .gz, .bz2, .zst and a local hf: dataset
    make exactly the same token ids (one chunk, no val split, fixed seed)."""
    sources = _write_all_formats(tmp_path / "in")
    results = {}
    for i, (name, overrides) in enumerate(sources.items()):
        path = name if name.startswith("hf:") else str(tmp_path / "in" / name)
        m = prepare(config(tmp_path, path, out=f"out{i}", val_fraction=0.0, shard_mb=100, **overrides))
        assert m["documents"]["read"] == len(DOCS), name
        assert m["documents"]["used"] == len(DOCS), name
        assert m["documents"]["skipped"] == {}, name
        samples = read_samples(m["config"]["output"])
        assert len(samples) == m["splits"]["train"]["samples"] > len(DOCS)
        results[name] = [s["ids"].tolist() for s in samples]
        assert {s["doc_id"].rsplit(":", 1)[0] for s in samples} == {
            os.path.basename(name) if not name.startswith("hf:") else "hf:hfdata"
        }
    reference = results["line.txt"]
    for name, ids in results.items():
        assert ids == reference, f"{name} differs from line.txt"


def test_files_of_one_name_get_the_same_ids_and_shards_in_any_folder(tmp_path):
    """The main job's corpora are wikitext2/documents.jsonl, news/documents.jsonl, ...: their document ids (which
    pick each document's split) once held the absolute path, so two clones of the project made different validation
    splits from the same text. The ids now use the fewest trailing folders that tell the files apart."""
    from test_data_prep_helpers import shard_files

    docs = lee_docs()
    outs = []
    for i, root in enumerate((tmp_path / "a", tmp_path / "b" / "deeper" / "clone")):
        paths = []
        for name, part in (("wiki", docs[:150]), ("news", docs[150:])):
            (root / name).mkdir(parents=True)
            (root / name / "documents.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
            paths.append(str(root / name / "documents.jsonl"))
        cfg = config(tmp_path, paths, out=f"out{i}", val_fraction=0.2, shard_mb=0.05)
        assert [src.name for src in expand_inputs(cfg)] == ["wiki/documents.jsonl", "news/documents.jsonl"]
        m = prepare(cfg)
        outs.append(m["config"]["output"])
        assert 0 < m["splits"]["val"]["samples"] < m["splits"]["train"]["samples"]
    assert shard_files(outs[0]) == shard_files(outs[1])
    ids = {s["doc_id"].rsplit(":", 1)[0] for s in read_samples(outs[0])}
    assert ids == {"wiki/documents.jsonl", "news/documents.jsonl"}


def test_inputs_mixed_globs_and_lists_keep_the_given_order(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("b.jsonl", "a.jsonl"):
        (d / name).write_text(json.dumps({"text": "x"}) + "\n")
    (d / "z.txt").write_text("y\n")
    cfg = config(tmp_path, [str(d / "z.txt"), str(d / "*.jsonl")])
    sources = expand_inputs(cfg)
    assert [s.name for s in sources] == ["z.txt", "a.jsonl", "b.jsonl"]  # list order, glob matches sorted
    assert [s.kind for s in sources] == ["text", "jsonl", "jsonl"]


def test_wiki_xml_markup_stripped_redirects_and_other_namespaces_skipped(tmp_path):
    article = (
        "{{Infobox city|name=Testville|population=1000}}\n"
        "'''Testville''' is a small [[town]] in the [[Example County|county of Example]].<ref>{{cite web|url=x}}</ref> "
        "It was founded in 1850 by farmers.\n\n"
        "== History ==\n"
        "[[File:Testville.jpg|thumb|The old mill]]\n"
        "The town grew quickly after the railway arrived. Its mill closed in 1950.<!-- hidden note -->\n"
        '{| class="wikitable"\n| cell one || cell two\n|}\n'
        "[[Category:Towns]]"
    )
    second = "Another article about rivers. Rivers flow into the sea. Some rivers are very long indeed."
    pages = [
        wiki_page("Testville", 1, article),
        wiki_page("Old name", 2, "#REDIRECT [[Testville]]", redirect="Testville"),
        wiki_page("User:Someone", 3, "A user page. It has two sentences.", ns=2),
        wiki_page("Rivers", 4, second),
    ]
    xml = WIKI_XML.format(pages="\n".join(pages))
    (tmp_path / "dump.xml.bz2").write_bytes(bz2.compress(xml.encode()))
    m = prepare(config(tmp_path, str(tmp_path / "dump.xml.bz2"), val_fraction=0.0))
    assert m["documents"] == {"read": 4, "used": 2, "skipped": {"wiki_non_article": 1, "wiki_redirect": 1}}
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(m["config"]["output"], "tokenizer", "tokenizer.json"))
    samples = read_samples(m["config"]["output"])
    text = " ".join(tok.decode(s["ids"].tolist()) for s in samples if s["doc_id"] == "dump.xml.bz2:1")
    for word in ("testville", "small town", "county of example", "founded in 1850", "railway", "mill closed"):
        assert word in text
    for junk in ("infobox", "cite", "thumb", "wikitable", "cell", "category", "history", "hidden", "{", "[", "|", "="):
        assert junk not in text, junk
    assert {s["doc_id"] for s in samples} == {"dump.xml.bz2:1", "dump.xml.bz2:4"}


def test_bad_documents_are_counted_with_reasons_and_never_stop_the_run(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    good = DOCS[:10]
    body = [*good, good[0], "Just one sentence here.", "x" * 20000]  # duplicate, one sentence, enormous line
    data = "".join(doc + "\n" for doc in body).encode()
    data += b"Bad bytes \xff\xfe in this one. Second sentence.\n"
    data += ("Fine text. " * 900).encode() + b"NUL\x00 inside after 8 KiB. More.\n"
    (d / "a.txt").write_bytes(data)
    (d / "empty.txt").write_bytes(b"")
    (d / "blank.txt").write_bytes(b"\n\n  \n")
    (d / "binary.txt").write_bytes(b"\x00\x01\x02garbage" * 100)
    records = [
        json.dumps({"text": DOCS[20]}),
        "{not json",
        json.dumps({"title": "no text key"}),
        json.dumps({"text": ""}),
    ]
    (d / "b.jsonl").write_text(json.dumps({"text": DOCS[21]}) + "\n" + "\n".join(records) + "\n")
    cfg = config(tmp_path, [str(d / "*.txt"), str(d / "b.jsonl")], text_format=TextFormat.line, max_line_bytes=16384)
    m = prepare(cfg)
    docs = m["documents"]
    assert docs["skipped"] == {
        "bad_json": 1,
        "duplicate": 1,
        "empty_text": 1,
        "invalid_utf8": 1,
        "line_too_long": 1,
        "no_text": 1,
        "nul_bytes": 1,
        "too_few_sentences": 1,
    }
    assert docs["used"] == 12  # 10 + 2 from the jsonl
    assert docs["read"] == docs["used"] + sum(docs["skipped"].values())
    assert m["files"]["skipped"] == {"binary_file": 1, "empty_file": 1, "no_documents": 1}
    summary = format_summary(m)
    for reason in (*docs["skipped"], *m["files"]["skipped"]):
        assert reason in summary


@pytest.mark.parametrize("ext, compress", [("gz", gzip.compress), ("zst", zstandard.ZstdCompressor().compress)])
def test_a_truncated_compressed_file_keeps_what_was_read(tmp_path, caplog, ext, compress):
    docs = lee_docs()  # 360 KB: several zstd blocks, so the first half has whole blocks to decode
    data = compress("".join(json.dumps({"text": doc}) + "\n" for doc in docs).encode())
    (tmp_path / f"cut.jsonl.{ext}").write_bytes(data[: len(data) // 2])
    (tmp_path / "next.txt").write_text(DOCS[0] + "\n\n" + DOCS[1] + "\n")
    m = prepare(config(tmp_path, [str(tmp_path / f"cut.jsonl.{ext}"), str(tmp_path / "next.txt")]))
    assert m["files"]["skipped"] == {"read_error": 1}
    assert f"cut.jsonl.{ext}" in caplog.text
    assert 50 < m["documents"]["read"] < len(docs)  # about the first half, and the next file


def test_blank_line_documents_too_long_are_skipped(tmp_path):
    doc = "\n".join(f"Line {i} of a long document. It keeps going." for i in range(200))  # ~9 KB
    (tmp_path / "a.txt").write_text(doc + "\n\n" + DOCS[0] + "\n\n" + DOCS[1] + "\n")
    m = prepare(config(tmp_path, str(tmp_path / "a.txt"), max_doc_bytes=4096))
    assert m["documents"]["skipped"] == {"doc_too_long": 1}
    assert m["documents"]["used"] == 2


def test_an_enormous_line_is_never_held_in_memory(tmp_path):
    path = tmp_path / "huge.txt"
    with open(path, "wb") as f:
        f.write(b"A normal line. Another one.\n")
        for _ in range(64):
            f.write(b"y" * (1 << 20))  # a 64 MiB line
        f.write(b"\nA last line. With two sentences.\n")
    cfg = config(tmp_path, str(path), text_format=TextFormat.line, max_line_bytes=1 << 20)
    stats = ReadStats()
    tracemalloc.start()
    docs = list(read_documents(expand_inputs(cfg), cfg, stats))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [text for _, text, _ in docs] == ["A normal line. Another one.", "A last line. With two sentences."]
    assert stats.skipped == {"line_too_long": 1}
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB while skipping a 64 MiB line"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: str(d / "nope.txt"), "input not found: '{d}/nope.txt'"),
        (lambda d: str(d / "*.nothing"), "matched no files"),
        (
            lambda d: (d / "paper.pdf").write_bytes(b"%PDF") and str(d / "paper.pdf"),
            "unknown source type: '{d}/paper.pdf'",
        ),
        (lambda d: (d / "x.jsonl").write_text('{"body": "b"}\n') and str(d / "x.jsonl"), "has no key 'text'"),
        (
            lambda d: pq.write_table(pa.table({"body": ["b"]}), d / "x.parquet") or str(d / "x.parquet"),
            "has no column 'text' (columns: body); set text_column=",
        ),
    ],
)
def test_bad_paths_fail_at_once_naming_the_path(tmp_path, make, message):
    d = tmp_path / "in"
    d.mkdir()
    good = d / "good.txt"
    good.write_text(DOCS[0] + "\n")
    cfg = config(tmp_path, [str(good), make(d)])
    with pytest.raises(SourceError) as e:
        prepare(cfg)
    assert message.format(d=d) in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing written before the inputs are known good


def test_invalid_config_values_fail_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="val_fraction"):
        prepare(config(tmp_path, "x.txt", val_fraction=1.5))
    with pytest.raises(ConfigError, match="part < num_parts"):
        prepare(config(tmp_path, "x.txt", part=2, num_parts=2))
    assert not (tmp_path / "out").exists()


def test_tiny_corpus_still_gets_a_validation_shard(tmp_path):
    (tmp_path / "a.txt").write_text("".join(doc + "\n" for doc in DOCS[:3]))
    m = prepare(config(tmp_path, str(tmp_path / "a.txt"), text_format=TextFormat.line, val_fraction=0.01))
    assert m["splits"]["val"]["shards"] == 1 and m["splits"]["val"]["samples"] > 0
    assert m["splits"]["train"]["samples"] > 0
    assert np.all([s["doc_id"] == "a.txt:0" for s in read_samples(m["config"]["output"], "val")])
