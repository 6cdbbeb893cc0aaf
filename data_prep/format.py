"""The on-disk format data_prep writes and the trainer reads: the sample record and the manifest reader.

Light on purpose: it imports numpy and the standard library only (no corpus readers), so training imports it
without blingfire, mwparserfromhell or zstandard.

Records.

One webdataset sample per NSP instance:

- ``__key__``: ``<split>-<shard:06d>-<index:07d>`` (no dots: webdataset splits keys on them).
- ``input_ids.npy``: 1-D array, ``[CLS] A [SEP] B [SEP]`` unpadded, in the smallest unsigned dtype that holds the
  vocabulary (uint16 up to 65,536 entries, else uint32). Saved with ``numpy.save``; loaded with
  ``allow_pickle=False``.
- ``json``: ``{"a_len": int, "next_sentence_label": 0|1, "doc_id": str}``. ``a_len`` counts the tokens of segment A
  (without specials), so segment A is ``input_ids[1:1+a_len]`` and token_type_ids are 0 for ``[CLS] A [SEP]``
  and 1 for ``B [SEP]``. ``next_sentence_label`` follows Hugging Face: 0 = B follows A, 1 = B is random.

Only these two decoders are ever applied: never webdataset's default decoders (they include pickle).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IDS_KEY = "input_ids.npy"
META_KEY = "json"
RECORD_SCHEMA_VERSION = 1


def ids_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds every token id of the vocabulary."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def sample_key(split: str, shard: int, index: int) -> str:
    return f"{split}-{shard:06d}-{index:07d}"


def encode_sample(key: str, input_ids: np.ndarray, a_len: int, next_sentence_label: int, doc_id: str) -> dict:
    """A sample as webdataset's TarWriter takes it (values already bytes: no encoder guesses)."""
    buf = io.BytesIO()
    np.save(buf, input_ids, allow_pickle=False)
    meta = {"a_len": int(a_len), "next_sentence_label": int(next_sentence_label), "doc_id": doc_id}
    return {"__key__": key, IDS_KEY: buf.getvalue(), META_KEY: json.dumps(meta, separators=(",", ":")).encode()}


_HEADERS: dict[bytes, tuple[np.dtype, tuple, int]] = {}


def decode_ids(data: bytes) -> np.ndarray:
    """``np.load(..., allow_pickle=False)``, with the parsed .npy header cached (a hot path of the loader)."""
    if data[:6] == b"\x93NUMPY" and data[6] == 1:
        end = 10 + int.from_bytes(data[8:10], "little")
        hit = _HEADERS.get(data[:end])
        if hit is None:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
            if arr.dtype.hasobject or len(_HEADERS) > 4096:
                return arr
            _HEADERS[data[:end]] = hit = (arr.dtype, arr.shape, end)
        dtype, shape, offset = hit
        return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
    return np.load(io.BytesIO(data), allow_pickle=False)


def decode_meta(data: bytes) -> dict:
    return json.loads(data)


def check_sample(sample: dict) -> str | None:
    """Why a raw sample cannot be used (None when it can): partial samples come out of truncated tars."""
    missing = [k for k in (IDS_KEY, META_KEY) if k not in sample]
    if missing:
        return f"missing {', '.join(missing)}"
    return None


# ---------------------------------------------------------------------------------------------------------------
# The manifest (written by data_prep/manifest.py)


class DataError(ValueError):
    """Bad or missing data: the message names the file and what to do."""


@dataclass(frozen=True)
class Shard:
    name: str
    url: str
    samples: int
    bytes: int
    sha256: str


@dataclass
class DataSpec:
    root: Path
    manifest: dict
    train: list[Shard]
    val: list[Shard]
    seq_len: int
    vocab_size: int
    special_ids: dict[str, int]
    fingerprint: str
    tokenizer_sha256: str
    skipped_shards: list[str] = field(default_factory=list)

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / self.manifest.get("tokenizer", {}).get("path", "tokenizer")


def load_data_spec(path: str | os.PathLike) -> DataSpec:
    root = Path(path)
    mf = root / "manifest.json"
    if not root.is_dir():
        raise DataError(
            f"data.path={path}: no such directory. Prepare shards first: python -m data_prep input=... output={path}"
        )
    if not mf.is_file():
        parts = sorted(root.glob("manifest.part-*.json"))
        hint = f" Found {len(parts)} part manifests: merge them with python -m data_prep.merge {path}" if parts else ""
        raise DataError(f"data.path={path}: {mf} is missing; it is written by data_prep at the end of a run.{hint}")
    try:
        manifest = json.loads(mf.read_text())
        tok = manifest["tokenizer"]
        shards = [
            Shard(s["name"], str(root / s["name"]), int(s["samples"]), int(s.get("bytes", -1)), s.get("sha256", ""))
            for s in manifest["shards"]
        ]
        spec = DataSpec(
            root=root,
            manifest=manifest,
            train=[s for s, raw in zip(shards, manifest["shards"]) if raw["split"] == "train"],
            val=[s for s, raw in zip(shards, manifest["shards"]) if raw["split"] == "val"],
            seq_len=int(manifest["seq_len"]),
            vocab_size=int(tok["vocab_size"]),
            special_ids={k: int(v) for k, v in tok["special_ids"].items()},
            fingerprint=manifest.get("fingerprint", ""),
            tokenizer_sha256=tok.get("sha256", ""),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(
            f"{mf}: not a data_prep manifest ({type(e).__name__}: {e}); regenerate it with data_prep"
        ) from e
    for key in ("cls", "sep", "pad", "mask"):
        if key not in spec.special_ids:
            raise DataError(f"{mf}: tokenizer.special_ids lacks '{key}'")
    if not spec.train:
        raise DataError(f"{mf}: no train shards listed (the corpus may be too small; see documents.skipped)")
    return spec
