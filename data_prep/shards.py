"""Writing shards so that a crash never leaves one that looks complete, and checking them on a rerun.

A shard is written to ``.<name>.tmp``, fsynced, renamed to ``<name>``; only then is its sidecar
``.done/<name>.json`` written (also via a temporary file and a rename). A shard without a sidecar, or whose
size or sha256 differs from its sidecar, is redone by the next run.

The tar bytes are those of ``webdataset.TarWriter(f, encoder=False, mtime=TAR_MTIME)`` (a test checks it
byte for byte), written by ``UstarWriter``: Python's tarfile spends ~25 us per member building headers,
a third of a worker's time at 2 members per sample.
"""

from __future__ import annotations

import hashlib
import json
import os

TAR_MTIME = 946684800  # 2000-01-01T00:00:00Z: fixed, so shards are byte-identical from run to run
DONE = ".done"


def shard_name(split: str, k: int) -> str:
    return f"{split}-{k:06d}.tar"


def sidecar_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, DONE, name + ".json")


class _HashingFile:
    """A write-only file object that hashes what passes through it."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


class UstarWriter:
    """webdataset samples ({"__key__": str, ext: bytes, ...}) to an uncompressed tar, members in sorted key
    order, mode 0444, owner bigdata:bigdata, a fixed mtime: what webdataset's TarWriter writes."""

    BLOCK, RECORD = 512, 10240

    def __init__(self, f, mtime: int = TAR_MTIME):
        self.f, self.offset = f, 0
        head = bytearray(self.BLOCK)
        head[100:108] = b"0000444\0"  # mode
        head[108:124] = b"0000000\0" * 2  # uid, gid
        head[136:148] = b"%011o\0" % mtime
        head[148:156] = b"        "  # the checksum counts its own field as spaces
        head[156:157] = b"0"  # regular file
        head[257:265] = b"ustar\x0000"
        head[265:272] = head[297:304] = b"bigdata"  # uname, gname
        self.mid, self.tail, self.base_sum = bytes(head[100:124]), bytes(head[136:148]), sum(head)
        self.end = bytes(head[155:])  # the checksum field's last space onwards

    def _header(self, name: bytes, size: int) -> bytes:
        if len(name) > 100:
            raise ValueError(f"tar member name longer than 100 bytes: {name!r}")
        size_field = b"%011o\0" % size
        checksum = self.base_sum + sum(name) + sum(size_field)
        return b"".join((name.ljust(100, b"\0"), self.mid, size_field, self.tail, b"%06o\0" % checksum, self.end))

    def write(self, sample: dict) -> None:
        key, parts = sample["__key__"], []
        for ext in sorted(sample):
            if ext[0] == "_":
                continue
            data = sample[ext]
            pad = -len(data) % self.BLOCK
            parts += (self._header(f"{key}.{ext}".encode("ascii"), len(data)), data, bytes(pad))
            self.offset += self.BLOCK + len(data) + pad
        self.f.write(b"".join(parts))

    def close(self) -> None:
        end = self.offset + 2 * self.BLOCK
        self.f.write(bytes(2 * self.BLOCK + (-end % self.RECORD)))


def write_shard(out_dir: str, name: str, samples) -> tuple[str, int]:
    """Write `samples` (already bytes, see data_prep.format.encode_sample) atomically; returns (sha256, size)."""
    tmp = os.path.join(out_dir, f".{name}.tmp")
    with open(tmp, "wb", buffering=1 << 20) as f:
        out = _HashingFile(f)
        writer = UstarWriter(out)
        for sample in samples:
            writer.write(sample)
        writer.close()
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(out_dir, name))
    fsync_dir(out_dir)
    return out.sha.hexdigest(), out.size


def write_json_atomic(path: str, data: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def read_sidecar(out_dir: str, name: str) -> dict | None:
    try:
        with open(sidecar_path(out_dir, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def verified(out_dir: str, name: str, record: dict | None) -> bool:
    """True when the shard on disk is the one its sidecar describes (size and sha256)."""
    if record is None:
        return False
    path = os.path.join(out_dir, name)
    try:
        if os.path.getsize(path) != record["bytes"]:
            return False
    except OSError:
        return False
    return file_sha256(path) == record["sha256"]
