"""The shard record schema: what data_prep writes and the trainer reads.

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

import numpy as np

IDS_KEY = "input_ids.npy"
META_KEY = "json"
SCHEMA_VERSION = 1


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
