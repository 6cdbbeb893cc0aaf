"""Corpora -> cleaned documents -> sentences -> WordPiece tokens -> BERT NSP instances -> webdataset shards.

python -m data_prep input=CORPUS output=DIR          # see data_prep/README.md
from data_prep import prepare; manifest = prepare(DataPrepConfig(input=..., output=...))

The names below load on first use: training imports ``data_prep.format`` (the on-disk format) without pulling in
the corpus readers (blingfire, mwparserfromhell, zstandard) that ``prepare`` needs.
"""

from importlib import import_module

_EXPORTS = {
    "DataPrepConfig": "data_prep.config",
    "TokenizerConfig": "data_prep.config",
    "prepare": "data_prep.run",
    "merge": "data_prep.manifest",
    "format_summary": "data_prep.manifest",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'data_prep' has no attribute {name!r}")
