"""On-disk cache of per-cycle feature arrays (log-mel filter banks).

An entry is one `.npy` file named by a hash of everything that determines its
content: the audio file (path, size, mtime_ns), the cycle's start/end seconds, the
feature configuration key (`FbankConfig.key()`) and extra options (clip length,
pad mode, resampling ...). Editing or replacing the audio, or changing an option,
therefore changes the key: stale entries are never returned, only left behind
(`clear` removes them).

Layout: ``ROOT/ab/abcdef....npy`` (256 shard folders by the first two hex digits, so
no folder grows to 10^5 files). Writes are atomic (temporary file in the shard, fsync,
`os.replace`), so concurrent workers computing the same entry both succeed and a
reader never sees a torn file; an unreadable entry (a crash, a disk error, a foreign
file) counts as a miss and is recomputed and rewritten.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsctool.errors import ConfigError, DataError
from rsctool.utils import mkstemp_for, sha256_text

#: Part of every key: bump when the entry format changes.
CACHE_FORMAT = 1


@dataclass
class CacheStats:
    """Counters since the cache object was created."""

    hits: int = 0
    misses: int = 0
    corrupt: int = 0  # entries that existed but could not be read (counted in misses too)
    writes: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class FeatureCache:
    """A directory of cached feature arrays.

    Args:
        root: the cache folder (created on the first write).
        dtype: storage dtype, ``"float16"`` (half the disk and io; log-mel values in
            [-16, 20] keep ~3 significant digits, far below the features' own noise)
            or ``"float32"``. `get` returns arrays in this dtype; callers cast.

    Example::

        cache = FeatureCache(project_dir / ".rsctool" / "features")
        key = cache.key(cycle.audio, cycle.start, cycle.end, cfg.key(), clip_s=8.0)
        feats = cache.get_or_compute(key, lambda: fbank(load_cycle(...), cfg)[0].numpy())
    """

    def __init__(self, root: str | os.PathLike, dtype: str = "float16"):
        if dtype not in ("float16", "float32"):
            raise ConfigError(f"feature cache dtype must be float16 or float32, got {dtype!r}")
        self.root = Path(root)
        self.dtype = np.dtype(dtype)
        self.stats = CacheStats()

    # ----- keys ----------------------------------------------------------------------
    def key(self, audio: str | os.PathLike, start: float | None, end: float | None,
            config_key: str, **extra: Any) -> str:
        """Hex key of one cycle's features.

        Args:
            audio: the audio file; its absolute path, size and mtime_ns enter the key.
            start, end: the cycle's bounds in seconds (None: whole file).
            config_key: the feature configuration's key (`FbankConfig.key()`).
            **extra: anything else that changes the array (JSON-serialisable values).

        Raises:
            DataError: `audio` does not exist (cannot be stat-ed).
        """
        path = Path(audio)
        try:
            st = path.stat()
        except OSError as e:
            raise DataError(f"cannot read audio file ({e.strerror or e})", path) from None
        payload = {
            "format": CACHE_FORMAT,
            "audio": os.path.abspath(path),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "start": None if start is None else round(float(start), 6),
            "end": None if end is None else round(float(end), 6),
            "config": str(config_key),
            "dtype": self.dtype.name,
            "extra": extra,
        }
        try:
            text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"feature cache key options must be JSON values ({e})") from None
        return sha256_text(text)[:32]

    def path(self, key: str) -> Path:
        """The file of entry `key` (which need not exist)."""
        if len(key) < 3 or not all(ch in "0123456789abcdef" for ch in key):
            raise ConfigError(f"invalid feature cache key {key!r} (lower-case hex expected)")
        return self.root / key[:2] / f"{key}.npy"

    # ----- access ---------------------------------------------------------------------
    def get(self, key: str) -> np.ndarray | None:
        """The cached array, or None when absent or unreadable (counted as a miss)."""
        p = self.path(key)
        try:
            arr = np.load(p, allow_pickle=False)
        except FileNotFoundError:
            self.stats.misses += 1
            return None
        except Exception:  # numpy raises many types (ValueError, EOFError, ...) for a bad file
            # Torn, truncated or foreign file: a miss; `put` will overwrite it.
            self.stats.misses += 1
            self.stats.corrupt += 1
            return None
        if not isinstance(arr, np.ndarray) or arr.dtype != self.dtype:
            if hasattr(arr, "close"):  # an .npz archive under an .npy name
                arr.close()
            self.stats.misses += 1
            self.stats.corrupt += 1
            return None
        self.stats.hits += 1
        return arr

    def put(self, key: str, array: np.ndarray) -> None:
        """Store `array` (cast to the cache dtype) atomically under `key`.

        Raises:
            DataError: the array has non-finite values after the cast (e.g. overflows
                float16), or the cache folder cannot be written.
        """
        with np.errstate(over="ignore"):  # overflow to inf is reported just below
            arr = np.ascontiguousarray(np.asarray(array), dtype=self.dtype)
        if not np.isfinite(arr).all():
            raise DataError(f"refusing to cache non-finite features ({self.dtype.name})",
                            self.path(key))
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        p = self.path(key)
        try:
            fd, tmp = mkstemp_for(p, prefix=f".{p.stem[:8]}.")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(buf.getbuffer())
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, p)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as e:
            raise DataError(f"cannot write feature cache ({e.strerror or e})", p) from None
        self.stats.writes += 1

    def get_or_compute(self, key: str, fn: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array, or ``fn()`` stored and returned (in the cache dtype, so a
        first run and a cached run see identical values)."""
        arr = self.get(key)
        if arr is not None:
            return arr
        value = fn()
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        self.put(key, value)
        return np.ascontiguousarray(np.asarray(value), dtype=self.dtype)

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def __len__(self) -> int:
        if not self.root.is_dir():
            return 0
        return sum(1 for _ in self.root.glob("??/*.npy"))

    def size_bytes(self) -> int:
        """Total size of the cached entries."""
        if not self.root.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.root.glob("??/*.npy"))

    def clear(self) -> int:
        """Delete every entry (and leftover temporary files); return the number of entries.

        Only the shard folders this class creates (two hex digits) are removed, so a
        mistaken `root` does not wipe unrelated files.
        """
        if not self.root.is_dir():
            return 0
        n = 0
        for shard in self.root.iterdir():
            name = shard.name
            if shard.is_dir() and len(name) == 2 and all(c in "0123456789abcdef" for c in name):
                n += sum(1 for _ in shard.glob("*.npy"))
                shutil.rmtree(shard, ignore_errors=True)
        return n
