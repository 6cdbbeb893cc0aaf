"""Corpora -> cleaned documents -> sentences -> WordPiece tokens -> BERT NSP instances -> webdataset shards.

python -m data_prep input=CORPUS output=DIR          # see data_prep/README.md
from data_prep import prepare; manifest = prepare(DataPrepConfig(input=..., output=...))
"""

from data_prep.config import DataPrepConfig, TokenizerConfig
from data_prep.manifest import format_summary, merge
from data_prep.run import prepare

__all__ = ["DataPrepConfig", "TokenizerConfig", "prepare", "merge", "format_summary"]
