"""data_prep end to end: NSP content, tokenizers, determinism, parts, resume, the CLI, a real Wikipedia dump."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_data_prep_helpers import (
    GENSIM_DATA,
    MINILM,
    MINILM_IDS,
    WIKI_DUMP,
    config,
    contains,
    lee_docs,
    read_samples,
    shard_files,
)

import data_prep.run
from data_prep import format_summary, prepare
from data_prep.config import ConfigError, TextFormat
from data_prep.merge import main as merge_main
from data_prep.text import paragraphs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """gensim's 300 news texts (7 of them duplicates), one per line (~360 KB)."""
    path = tmp_path_factory.mktemp("corpus") / "lee.txt"
    path.write_text("".join(d + "\n" for d in lee_docs()), encoding="utf-8")
    return str(path)


def _lee(tmp_path, corpus, out="out", **kw):
    kw.setdefault("text_format", TextFormat.line)
    kw.setdefault("shard_mb", 0.05)
    kw.setdefault("val_fraction", 0.05)
    return config(tmp_path, corpus, out=out, **kw)


def _mtimes(out):
    return {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in shard_files(out)}


def test_shards_hold_bert_nsp_instances(tmp_path, corpus):
    m = prepare(_lee(tmp_path, corpus, seq_len=128))
    out = m["config"]["output"]
    from data_prep.tokenizer import load

    tok = load(os.path.join(out, "tokenizer"))
    doc_ids = {
        f"lee.txt:{i}": np.array(tok.encode(" ".join(paragraphs(d)), add_special_tokens=False).ids)
        for i, d in enumerate(lee_docs())
    }
    samples = read_samples(out)
    assert len(samples) == m["splits"]["train"]["samples"] + m["splits"]["val"]["samples"]
    assert sum(s["samples"] for s in m["shards"]) == len(samples)
    assert sum(len(s["ids"]) for s in samples) == sum(s["tokens"] for s in m["shards"])
    ids_of = MINILM_IDS
    random_next = continuous = 0
    for s in samples:
        ids, a_len = s["ids"], s["a_len"]
        assert ids.dtype == np.uint16 and len(ids) <= 128
        a, b = ids[1 : 1 + a_len], ids[2 + a_len : -1]
        assert ids[0] == ids_of["cls"] and ids[1 + a_len] == ids_of["sep"] and ids[-1] == ids_of["sep"]
        assert len(a) >= 1 and len(b) >= 1
        assert not np.isin(np.concatenate([a, b]), list(ids_of.values())).any(), "no special ids inside A or B"
        token_type = np.r_[np.zeros(a_len + 2, int), np.ones(len(ids) - a_len - 2, int)]
        assert token_type.sum() == len(b) + 1
        doc = doc_ids[s["doc_id"]]
        assert contains(doc, a), "A is a run of its own document"
        if s["next_sentence_label"] == 0:
            if len(ids) < 128:  # untruncated: A then B read on in the document
                assert contains(doc, np.concatenate([a, b]))
                continuous += 1
            assert contains(doc, b)
        else:
            random_next += 1
            if len(b) >= 8:
                assert not contains(doc, b), "a random B comes from another document"
    # The recipe: B is random half the time, and always when the chunk is a single sentence (frequent at the
    # end of short documents like these), so a little over half.
    assert 0.45 < random_next / len(samples) < 0.65
    assert continuous > 100
    assert random_next == m["splits"]["train"]["random_next"] + m["splits"]["val"]["random_next"]
    assert {s["key"] for s in samples} == {
        f"{sh['split']}-{int(sh['name'][-10:-4]):06d}-{i:07d}" for sh in m["shards"] for i in range(sh["samples"])
    }


def test_trained_tokenizer_loads_as_a_fast_bert_tokenizer(tmp_path, corpus):
    from transformers import AutoTokenizer

    m = prepare(_lee(tmp_path, corpus, tokenizer_path=None, tokenizer_vocab_size=3000))
    out = m["config"]["output"]
    t = m["tokenizer"]
    assert t["special_ids"] == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert t["lowercase"] is True and 1000 < t["vocab_size"] <= 3000 and m["ids_dtype"] == "uint16"
    hf = AutoTokenizer.from_pretrained(os.path.join(out, "tokenizer"))
    assert hf.is_fast and type(hf).__name__.startswith("BertTokenizer")
    assert hf.cls_token_id == 2 and hf.sep_token_id == 3 and hf.pad_token_id == 0 and hf.mask_token_id == 4
    enc = hf("The government said the fire was near Sydney.", "Firefighters worked all night.")
    assert enc["input_ids"][0] == 2 and enc["input_ids"].count(3) == 2
    assert hf.unk_token_id not in enc["input_ids"]
    assert "government" in hf.convert_ids_to_tokens(enc["input_ids"])
    text = hf.decode(read_samples(out)[0]["ids"], skip_special_tokens=True)
    assert len(text.split()) > 10 and text == text.lower()


def test_cased_tokenizer_keeps_case(tmp_path, corpus):
    m = prepare(_lee(tmp_path, corpus, tokenizer_path=None, tokenizer_vocab_size=3000, tokenizer_lowercase=False))
    assert m["tokenizer"]["lowercase"] is False
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(os.path.join(m["config"]["output"], "tokenizer"))
    assert "Sydney" in hf.tokenize("Sydney")


def test_reused_tokenizer_is_copied_and_keeps_its_ids(tmp_path, corpus):
    from transformers import AutoTokenizer

    m = prepare(_lee(tmp_path, corpus))
    out = m["config"]["output"]
    assert m["tokenizer"]["special_ids"] == MINILM_IDS and m["tokenizer"]["vocab_size"] == 30522
    with (
        open(os.path.join(MINILM, "tokenizer.json"), "rb") as a,
        open(os.path.join(out, "tokenizer", "tokenizer.json"), "rb") as b,
    ):
        assert a.read() == b.read()
    hf = AutoTokenizer.from_pretrained(os.path.join(out, "tokenizer"))
    assert hf("hello world")["input_ids"] == [101, 7592, 2088, 102]

    # A directory with only vocab.txt (older BERT releases) is rebuilt as a tokenizers object, never read
    # by BertTokenizerFast(vocab_file=...), which maps everything to [UNK] in transformers 5.
    old = tmp_path / "old_bert"
    old.mkdir()
    shutil.copy(os.path.join(MINILM, "vocab.txt"), old)
    m2 = prepare(_lee(tmp_path, corpus, out="out2", tokenizer_path=str(old)))
    assert m2["tokenizer"]["special_ids"] == MINILM_IDS
    hf2 = AutoTokenizer.from_pretrained(os.path.join(m2["config"]["output"], "tokenizer"))
    assert hf2("Hello World")["input_ids"] == [101, 7592, 2088, 102]
    assert shard_files(out) == shard_files(m2["config"]["output"])


def test_same_seed_is_byte_identical_for_1_or_2_workers(tmp_path, corpus):
    one = prepare(_lee(tmp_path, corpus, out="w1", workers=1))
    two = prepare(_lee(tmp_path, corpus, out="w2", workers=2, in_flight=1))
    again = prepare(_lee(tmp_path, corpus, out="w2b", workers=2))
    assert one["splits"]["train"]["shards"] >= 5
    assert (
        shard_files(one["config"]["output"])
        == shard_files(two["config"]["output"])
        == shard_files(again["config"]["output"])
    )
    assert one["fingerprint"] == two["fingerprint"] == again["fingerprint"]
    other = prepare(_lee(tmp_path, corpus, out="seed2", seed=2))
    assert other["fingerprint"] != one["fingerprint"]
    assert [s["samples"] for s in other["shards"]] != [s["samples"] for s in one["shards"]] or shard_files(
        other["config"]["output"]
    ) != shard_files(one["config"]["output"])


def test_two_parts_merged_equal_one_run(tmp_path, corpus):
    single = prepare(_lee(tmp_path, corpus, out="single"))
    p0 = prepare(_lee(tmp_path, corpus, out="parts", part=0, num_parts=2))
    assert "fingerprint" not in p0  # not the manifest yet: part 1 is missing
    assert not os.path.exists(tmp_path / "parts" / "manifest.json")
    assert {s["name"] for s in p0["shards"]} == {s["name"] for s in single["shards"] if int(s["name"][-10:-4]) % 2 == 0}
    merged = prepare(_lee(tmp_path, corpus, out="parts", part=1, num_parts=2, workers=2))  # the last part merges
    assert merged["fingerprint"] == single["fingerprint"]
    assert shard_files(tmp_path / "parts") == shard_files(tmp_path / "single")
    for key in ("shards", "splits", "documents", "tokenizer", "input_bytes", "seq_len", "ids_dtype"):
        assert merged[key] == single[key], key
    assert merged["num_parts"] == 2 and merged["config"]["part"] is None
    # By hand, as after a Slurm job array: same manifest, and --verify rehashes every shard.
    os.remove(tmp_path / "parts" / "manifest.json")
    assert merge_main([str(tmp_path / "parts"), "--verify"]) == 0
    with open(tmp_path / "parts" / "manifest.json") as f:
        assert json.load(f)["fingerprint"] == single["fingerprint"]


def test_merge_refuses_missing_parts_and_shards(tmp_path, corpus, capsys):
    prepare(_lee(tmp_path, corpus, part=1, num_parts=3))
    assert merge_main([str(tmp_path / "out")]) == 2
    assert "parts [0, 2] of 3 have not finished" in capsys.readouterr().err


def test_rerun_keeps_verified_shards_and_redoes_damaged_ones(tmp_path, corpus, caplog):
    cfg = _lee(tmp_path, corpus)
    caplog.set_level(logging.INFO, logger="data_prep")
    first = prepare(cfg)
    # One line on where the tokenizer came from (what it is: the closing summary); nothing reused the first time.
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == f"copied the tokenizer of tokenizer.path={cfg.tokenizer.path}"
    assert not [m for m in said if m.startswith(("tokenizer", "reus"))], said
    caplog.clear()
    out = cfg.output
    before = _mtimes(out)
    names = sorted(before)
    deleted, corrupted, unrecorded = names[0], names[2], names[3]
    os.remove(os.path.join(out, deleted))
    with open(os.path.join(out, corrupted), "r+b") as f:  # same size, one byte flipped
        f.seek(700)
        byte = f.read(1)
        f.seek(700)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.remove(os.path.join(out, ".done", unrecorded + ".json"))  # a crash between rename and sidecar
    time.sleep(0.01)
    second = prepare(cfg)
    after = _mtimes(out)
    redone = {n for n in names if after[n] != before.get(n)}
    assert redone == {deleted, corrupted, unrecorded}
    assert second["fingerprint"] == first["fingerprint"]
    assert second["timings"][0]["shards_reused"] == len(names) - 3
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == f"reusing the tokenizer in {out}/tokenizer (the same as tokenizer.path)"
    assert f"reused {len(names) - 3} of {len(names)} shards from an earlier run in {out} (same input chunk, " in said[1]


def test_crashed_run_resumes_to_the_same_output(tmp_path, corpus, monkeypatch):
    reference = prepare(_lee(tmp_path, corpus, out="reference"))
    cfg = _lee(tmp_path, corpus)
    real = data_prep.run.process_chunk
    calls = []

    def crash_on_fourth(chunk):
        calls.append(chunk.index)
        if len(calls) == 4:
            raise KeyboardInterrupt("power cut")
        return real(chunk)

    monkeypatch.setattr(data_prep.run, "process_chunk", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg)
    monkeypatch.setattr(data_prep.run, "process_chunk", real)
    out = cfg.output
    assert len(shard_files(out)) == 3 and not os.path.exists(os.path.join(out, "manifest.json"))
    with open(os.path.join(out, ".train-000003.tar.tmp"), "wb") as f:  # what a crash mid-write leaves
        f.write(b"partial")
    kept = _mtimes(out)
    m = prepare(cfg)
    assert m["fingerprint"] == reference["fingerprint"]
    assert all(_mtimes(out)[n] == t for n, t in kept.items())
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def _comparable_manifest(path) -> dict:
    """The manifest minus what legitimately differs between two runs: when, how fast, and where."""
    with open(path) as f:
        m = json.load(f)
    for key in ("created", "timings"):
        m.pop(key, None)
    m["config"] = {k: v for k, v in m["config"].items() if k != "output"}
    return m


@pytest.mark.parametrize("workers", [1, 2])
def test_killed_process_resumes(tmp_path, corpus, workers):
    """SIGKILL every process of a real run (the main one and its workers) mid-run; the same command again finishes
    with every shard and the manifest byte-identical to an uninterrupted run's (a fixed tokenizer: see FACTS.md)."""

    def args(out):
        return [
            sys.executable, "-m", "data_prep", f"input={corpus}", f"output={out}", "text_format=line",
            "shard_mb=0.02", "val_fraction=0.05", f"tokenizer.path={MINILM}", f"workers={workers}", "progress=false",
        ]  # fmt: skip

    reference = tmp_path / "reference"
    subprocess.run(args(reference), cwd=ROOT, check=True, capture_output=True, timeout=300)
    out = tmp_path / "killed"
    proc = subprocess.Popen(args(out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(list((out / ".done").glob("*.tar.json"))) < 2:
        time.sleep(0.01)
    import psutil

    victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for v in victims:
        v.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(victims, timeout=30)
    assert len(victims) >= 1 + (workers > 1), victims  # the pool's worker processes were killed too
    assert not (out / "manifest.json").exists(), "killed before the end"
    done_before = shard_files(out)
    assert 0 < len(done_before) < len(shard_files(reference))
    for name in os.listdir(out):  # whatever exists looks complete only if it is
        if name.endswith(".tar") and os.path.exists(out / ".done" / (name + ".json")):
            with open(out / ".done" / (name + ".json")) as f:
                assert os.path.getsize(out / name) == json.load(f)["bytes"]
    result = subprocess.run(args(out), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert shard_files(out) == shard_files(reference)
    assert _comparable_manifest(out / "manifest.json") == _comparable_manifest(reference / "manifest.json")
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_rerun_with_another_config_is_refused_unless_overwrite(tmp_path, corpus):
    prepare(_lee(tmp_path, corpus, shard_mb=0.02))
    with pytest.raises(ConfigError) as e:
        prepare(_lee(tmp_path, corpus, seq_len=64))
    assert "seq_len: 128 -> 64" in str(e.value) and "shard_mb: 0.02 -> 0.05" in str(e.value)
    assert "overwrite=true" in str(e.value)
    # Only how the work runs changed: accepted, and nothing is redone.
    assert prepare(_lee(tmp_path, corpus, shard_mb=0.02, workers=2))["timings"][0]["shards_reused"] > 0
    m = prepare(_lee(tmp_path, corpus, seq_len=64, overwrite=True))
    assert m["seq_len"] == 64 and max(len(s["ids"]) for s in read_samples(m["config"]["output"])) <= 64
    assert sorted(shard_files(m["config"]["output"])) == [s["name"] for s in m["shards"]], "no stale shards left"


def test_a_part_waits_for_part_0_to_train_the_tokenizer(tmp_path, corpus):
    cfg = _lee(tmp_path, corpus, tokenizer_path=None, part=1, num_parts=2, tokenizer_wait_s=0.2)
    with pytest.raises(TimeoutError, match="part 0 trains it"):
        prepare(cfg)


def test_gensim_wikipedia_dump_end_to_end(tmp_path):
    m = prepare(config(tmp_path, WIKI_DUMP, workers=2, shard_mb=1, tokenizer_path=None, tokenizer_vocab_size=8000))
    docs = m["documents"]
    assert docs["read"] == 206
    assert docs["skipped"]["wiki_redirect"] == 99 and docs["skipped"]["wiki_non_article"] == 1
    assert 90 <= docs["used"] <= 106
    assert m["input_bytes"] > 5_000_000 and 2_000_000 < m["text_bytes"] < m["input_bytes"]
    assert m["splits"]["train"]["shards"] >= 3 and m["splits"]["val"]["samples"] > 0
    samples = read_samples(m["config"]["output"])
    assert len(samples) == sum(s["samples"] for s in m["shards"]) > 5000
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(m["config"]["output"], "tokenizer", "tokenizer.json"))
    text = " ".join(tok.decode(s["ids"].tolist()) for s in samples[:300])
    assert text.count(" the ") > 100
    assert "{{" not in text and "[[" not in text and "thumb" not in text
    print(format_summary(m))


def test_hydra_config_composes_and_rejects_unknown_keys(tmp_path, corpus):
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        cfg = compose("data_prep", overrides=[f"input={corpus}", f"output={tmp_path / 'h'}", "text_format=line",
                                              f"tokenizer.path={MINILM}", "workers=1", "progress=false"])  # fmt: skip
        assert cfg.seq_len == 128 and cfg.shard_mb == 16.0 and cfg.tokenizer.vocab_size == 30522
        m = prepare(cfg)
        docs = lee_docs()
        assert m["documents"] == {
            "read": len(docs),
            "used": len(set(docs)),
            "skipped": {"duplicate": len(docs) - len(set(docs))},
        }
        with pytest.raises(ConfigCompositionException, match="seqlen"):
            compose("data_prep", overrides=["input=x", "output=y", "seqlen=64"])
        with pytest.raises(ConfigCompositionException, match="text_format"):
            compose("data_prep", overrides=["input=x", "output=y", "text_format=lines"])


def test_cli_runs_cleanly_and_fails_clearly(tmp_path, corpus):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": ROOT}
    base = [sys.executable, "-m", "data_prep", f"input={corpus}", "output=out", "text_format=line",
            f"tokenizer.path={MINILM}", "workers=2"]  # fmt: skip
    ok = subprocess.run(base, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    docs = lee_docs()
    assert f"documents: {len(docs)} read, {len(set(docs))} used, {len(docs) - len(set(docs))} skipped" in ok.stdout
    assert "skipped duplicate: 7" in ok.stdout and "fingerprint:" in ok.stdout
    # The default val_fraction=0.01 leaves 293 documents a tiny validation split: said, with a fraction that would do.
    small = next(x for x in (ok.stdout + ok.stderr).splitlines() if "the validation split has" in x)
    assert "(val_fraction=0.01 now)" in small and re.search(r"val_fraction=0\.\d+ would give about \d+ of", small)
    assert sorted(os.listdir(cwd)) == ["out"]  # no outputs/, no .hydra/, no log file
    assert not (cwd / "out" / ".hydra").exists()
    typo = subprocess.run([*base, "seq_lenn=64"], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert typo.returncode != 0 and "seq_lenn" in typo.stderr
    missing = subprocess.run(
        [*base[:3], "input=nope/*.jsonl", "output=out2"], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert (
        missing.returncode == 2 and "input pattern 'nope/*.jsonl' matched no files" in missing.stdout + missing.stderr
    )
    assert not (cwd / "out2").exists()


def test_bulgarian_dump_keeps_its_letters_and_a_failed_run_claims_no_folder(tmp_path):
    """gensim's Bulgarian dump (UTF-16, one article): the default val_fraction sends its only article to validation,
    which fails in one line that says so and leaves no folder; the fixed rerun needs no overwrite=true, and
    lowercase without accent stripping keeps й (BERT's uncased rule would make it и)."""
    bg = os.path.join(GENSIM_DATA, "bgwiki-latest-pages-articles-shortened.xml.bz2")
    env = {**os.environ, "PYTHONPATH": ROOT}
    base = [sys.executable, "-m", "data_prep", f"input={bg}", "output=bg", "tokenizer.strip_accents=false"]
    p = subprocess.run(base, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "1 in the validation split" in p.stdout + p.stderr and "val_fraction=0" in p.stdout
    assert "see the warnings above" not in p.stdout + p.stderr and not (tmp_path / "bg").exists()
    p = subprocess.run([*base, "val_fraction=0", "tokenizer.vocab_size=2000"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tmp_path / "bg" / "tokenizer"))
    assert "григорий" in tok.tokenize("Григорий")
