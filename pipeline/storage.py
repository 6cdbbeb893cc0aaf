"""A write that failed (a full disk, a quota, a read-only or vanished filesystem) said in one line: what was being
written, why it failed, the space left, and what to do (pipeline/cli.py prints StorageError as one line).

torch.save on a full disk raises a RuntimeError with no errno ("unexpected pos 22208 vs 22102", caused by
"basic_ios::clear: iostream error"), so the reason is read from the errno when there is one, and otherwise from the
space left on the filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
from pathlib import Path

REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only filesystem",
    errno.EACCES: "permission denied",
    errno.EIO: "input/output error",
}
# torch's serializer on a failed write (no errno): its stream failed, which on a full disk is the only sign.
TORCH_WRITE_FAILED = ("iostream error", "unexpected pos", "PytorchStreamWriter failed", "file write failed")
# Libraries that report the OS's error in their own exception's text (safetensors: "I/O error: No space left on
# device (os error 28)").
OS_ERROR_TEXT = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
                 "Read-only file system": errno.EROFS}  # fmt: skip


class StorageError(RuntimeError):
    """A write that failed for a reason outside the program; reported in one line (pipeline/cli.py)."""


def _errno(e: BaseException | None) -> int | None:
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno:
            return e.errno
        code = next((c for text, c in OS_ERROR_TEXT.items() if text in str(e)), None)
        if code is not None:
            return code
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _text(e: BaseException | None) -> str:
    parts = []
    while e is not None and len(parts) < 8:
        parts.append(str(e))
        e = e.__cause__ or e.__context__
    return " ".join(parts)


def space(path: Path) -> tuple[int, int] | None:
    """(free, total) bytes of the filesystem holding ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        usage = shutil.disk_usage(p)
    except OSError:
        return None
    return usage.free, usage.total


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB" if n < 2**30 else f"{n / 2**30:,.1f} GB"


def write_failed(e: BaseException) -> bool:
    """Whether ``e`` is a failed write rather than a bug: an OSError of the filesystem, or torch's stream failure."""
    return _errno(e) is not None or any(m in _text(e) for m in TORCH_WRITE_FAILED)


def reason(e: BaseException, path: Path) -> str:
    """'no space left on device (0.0 MB free of 8.0 MB on the filesystem of PATH)' and the like."""
    code, left = _errno(e), space(path)
    free = f"{_mb(left[0])} free of {_mb(left[1])} on the filesystem of {path}" if left else f"{path} unreachable"
    if code in REASONS:
        return f"{REASONS[code]} ({free})"
    if left and left[0] < min(64 * 2**20, left[1] // 20):  # under 5% (at most 64 MB) left: a full disk, no errno
        return f"no space left on device ({free})"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{first} ({free})"


def storage_error(what: str, path: Path, e: BaseException, then: str) -> StorageError:
    """``what`` failed: the reason; ``then`` (what happens now and what to do)."""
    return StorageError(f"{what} failed: {reason(e, Path(path))}; {then}")


def remove_quietly(path: Path) -> None:
    """Best effort: a partial output takes the space a retry needs."""
    if Path(path).is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


def finite_or_none(obj):
    """For strict JSON: a non-finite float (an undefined metric, such as a correlation of constant predictions) becomes
    null, inside dicts and lists too."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj
