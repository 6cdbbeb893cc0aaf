"""Read the records of an offline W&B run file (run-ID.wandb), to check what a `wandb sync` would upload.

wandb 0.31 no longer ships a Python reader: the file is a LevelDB-style log (7-byte header, 32 KiB blocks, records
with a 7-byte header: crc32c, length, type) of `wandb_internal_pb2.Record` protobufs.
"""

from __future__ import annotations

import json
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb


def records(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0 and length == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def history(path: Path) -> list[dict]:
    rows = []
    for rec in records(path):
        if rec.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
    return rows


def config(path: Path) -> dict:
    for rec in records(path):
        if rec.WhichOneof("record_type") == "run":
            return {u.key: json.loads(u.value_json) for u in rec.run.config.update}
    return {}
