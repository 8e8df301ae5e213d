"""Small shared helpers: atomic file writes (with the umask's mode) and hashing."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from rsctool.errors import WriteError

#: errno values that say "this place cannot be written" (the user's to fix, not a bug).
WRITE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC,
                          errno.EDQUOT})

_UMASK_LOCK = threading.Lock()


def is_write_error(e: BaseException) -> bool:
    """True for an OSError that means the path cannot be written (permission, read-only
    file system, full disk or quota)."""
    return isinstance(e, OSError) and e.errno in WRITE_ERRNOS


def write_error(e: OSError, path: str | os.PathLike | None = None) -> WriteError:
    """The one-line `WriteError` for `e`, naming `path` (the file or folder the caller
    meant to write; a temp file's name would only confuse), else `e.filename`."""
    where = path if path is not None else e.filename
    reason = e.strerror or str(e)
    return WriteError(f"cannot write: {reason}", where)


def naming(e: OSError, path: str | os.PathLike) -> OSError:
    """`e` (same type and errno) with `path` as its file name: the file or folder the
    caller meant to write, not the temp file that failed (the CLI names it in its
    one-line error)."""
    return type(e)(e.errno, e.strerror, os.fspath(path))


def current_umask() -> int:
    """The process umask (e.g. ``0o022``), read without changing it where Linux allows."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    # os.umask can only be read by setting it: a lock keeps our threads from racing.
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain `open()` gives a new file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def mkstemp_for(path: str | os.PathLike, suffix: str = ".tmp",
                prefix: str | None = None) -> tuple[int, str]:
    """A temp file next to `path` (for a later `os.replace` onto it), with the mode a plain
    `open()` would give: ``0o666 & ~umask``. mkstemp creates 0600 files and the rename
    keeps that mode, so without this a shared project folder is unreadable to others.

    Returns:
        `(fd, tmp_path)` as `tempfile.mkstemp`. A folder that cannot be written raises
        its OSError with the folder as file name (the CLI turns it into exit 2).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}." if prefix is None else prefix,
                                   suffix=suffix, dir=path.parent)
    except OSError as e:
        if is_write_error(e):
            raise naming(e, path.parent) from None
        raise
    try:
        os.fchmod(fd, file_mode())
    except OSError:  # a file system without modes (some mounts): keep mkstemp's
        pass
    return fd, tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old or the new file, never a torn one.

    Temp file in the same directory (mode from the umask), fsync, `os.replace`, fsync of
    the directory. If anything fails (disk full, interrupt) the previous file is left
    untouched; a path that cannot be written raises its OSError naming `path`.
    """
    path = Path(path)
    fd, tmp = mkstemp_for(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if is_write_error(e):
            raise naming(e, path) from None
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def params_hash(params: Any) -> str:
    """Stable hash of a JSON-serialisable parameter structure (key order ignored)."""
    return sha256_text(json.dumps(params, sort_keys=True, default=str, separators=(",", ":")))
