"""One writer per thing: non-blocking locks on runs, synthetic sets, datasets and exports.

A stage that writes a record's files (a run folder, a synthetic set, a dataset manifest,
an ONNX file) first takes that thing's lock with `hold` (``.rsctool/locks/KIND-KEY.lock``).
A second rsctool process asking for the same lock fails at once (ConfigError, exit 2)
with one line naming the thing and the holder (pid, host, since when): two writers of
one folder would mix their checkpoints or samples.

The lock is an OS file lock (`filelock`): the kernel drops it when its process dies, so a
killed rsctool never leaves a lock that blocks the next one, and `writer` tells a live
``running`` record from one whose process is gone (`rsctool status`). The holder's pid,
host and start time go to a side file (``KIND-KEY.json``), because a failed attempt to
take the lock may truncate the lock file itself.

Locks taken inside `scope` (or a function decorated with `releasing`) are released when
it exits, however it exits; one process taking a lock it already holds gets it again
(the count is kept), so a stage may take it early (fail fast) and again where its name
is final.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rsctool.errors import ConfigError

if TYPE_CHECKING:
    from rsctool.project import Project

__all__ = ["Held", "hold", "hold_record", "lock_file", "releasing", "scope", "writer"]

F = TypeVar("F", bound=Callable[..., Any])

#: What a project section's record is called in a message, and how to avoid the clash.
_RECORDS: dict[str, tuple[str, str]] = {
    "runs": ("run", "wait for it or use another --run"),
    "synthetic": ("synthetic set", "wait for it or use another --name"),
    "datasets": ("dataset", "wait for it or use another --name"),
}
#: How long `hold` tries before it reports the holder (seconds).
_GRACE_S = 0.2
_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

# Locks this process holds: lock file -> Held (re-entrant by count).
_HELD: dict[str, Held] = {}
# The open `scope`s, innermost last: the locks each has to release.
_SCOPES: list[list[Held]] = []


def lock_file(lock_dir: Path, kind: str, key: str) -> Path:
    """The lock file of `key` (a record name, an output path) of `kind` in `lock_dir`:
    ``KIND-KEY.lock`` for a plain name, else ``KIND-<hash of KEY>.lock``."""
    if not _PLAIN.match(key):
        from rsctool.utils import sha256_text

        key = sha256_text(key)[:16]
    return lock_dir / f"{kind}-{key}.lock"


class Held:
    """A lock this process holds (see `hold`); `release` gives it up."""

    def __init__(self, path: Path, lock: Any, count: int = 1):
        self.path = path
        self.lock = lock
        self.count = count  # 0: not held (a lock file that cannot be created)

    @property
    def info_path(self) -> Path:
        return self.path.with_suffix(".json")

    def release(self) -> None:
        """Give up one hold; the last one removes the holder file and frees the lock."""
        if self.count <= 0:  # released already
            return
        self.count -= 1
        if self.count > 0:
            return
        _HELD.pop(os.fspath(self.path), None)
        with contextlib.suppress(OSError):
            if _read_info(self.info_path).get("pid") == os.getpid():
                self.info_path.unlink()
        self.lock.release()


def _read_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _holder(info: dict[str, Any]) -> str:
    """``pid 1234 on host x, since 2026-01-02 03:04:05 UTC`` (what is known of it)."""
    if not info.get("pid"):
        return "holder unknown"
    text = f"pid {info['pid']} on host {info.get('host') or '?'}"
    return text + (f", since {info['since']}" if info.get("since") else "")


def hold(lock_dir: Path, kind: str, key: str, *, what: str, hint: str,
         verb: str = "written") -> Held:
    """Take the lock of `key` of `kind` for this process, without waiting for a holder.

    Released by the innermost open `scope` when there is one, else by the caller
    (`Held.release`). `what` names the thing in the message (``run 'd'``), `verb` what
    the holder does to it, and `hint` what to do (``wait for it or use another --run``).

    Raises:
        ConfigError: another process holds the lock:
            ``run 'd' is being written by another rsctool process (pid 1234 on host x,
            since ...); wait for it or use another --run``.

    A lock file that cannot be created (a read-only folder) gives a `Held` that holds
    nothing: this process cannot write there either.
    """
    import filelock

    path = lock_file(lock_dir, kind, key)
    held = _HELD.get(os.fspath(path))
    if held is not None:
        held.count += 1
    else:
        lock = filelock.FileLock(os.fspath(path))
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
            # a moment's grace, not a wait: `writer` (rsctool status) takes a free lock
            # for an instant to test it
            lock.acquire(timeout=_GRACE_S, poll_interval=0.02)
        except filelock.Timeout:
            raise ConfigError(f"{what} is being {verb} by another rsctool process "
                              f"({_holder(_read_info(path.with_suffix('.json')))}); "
                              f"{hint}") from None
        except OSError:
            # A folder this process cannot write (a read-only shared project): it writes
            # nothing here either, so there is nothing to guard; a stage that does try
            # to write reports the path it cannot write.
            return Held(path, None, count=0)
        held = _HELD[os.fspath(path)] = Held(path, lock)
        since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        with contextlib.suppress(OSError):  # the message's detail only: never fatal
            from rsctool.utils import atomic_write_json

            atomic_write_json(held.info_path, {"pid": os.getpid(), "host": socket.gethostname(),
                                               "since": since, "what": what})
    if _SCOPES:
        _SCOPES[-1].append(held)
    return held


def hold_record(project: Project, section: str, name: str, dist: Any = None) -> None:
    """Take the lock of record `name` of `section` (``runs``, ``synthetic``,
    ``datasets``) of `project`, released by the innermost `scope`.

    Under a launcher with several processes (`dist`, a `rsctool.distributed.Dist`) only
    the main process takes it, and every process then raises the same ConfigError when
    it failed (so none is left waiting in a collective). Call it on every process then.
    """
    word, hint = _RECORDS[section]
    problem: str | None = None
    if dist is None or dist.is_main:
        try:
            hold(project.state_dir() / "locks", section, name, what=f"{word} {name!r}",
                 hint=hint)
        except ConfigError as e:
            if dist is None or not dist.distributed:
                raise
            problem = str(e)
    if dist is not None and dist.distributed:
        problem = dist.broadcast(problem)
        if problem is not None:
            raise ConfigError(problem)


def writer(project: Project, section: str, name: str) -> dict[str, Any] | None:
    """Who is writing record `name` of `section` now: the holder's ``{pid, host, since}``
    (``{}`` when unknown), or None when no process holds its lock (the process that
    recorded it ``running`` is gone). Writes nothing when the lock is free and its file
    absent; a lock file that cannot be tested counts as held."""
    import filelock

    path = lock_file(project.state_dir() / "locks", section, name)
    held = _HELD.get(os.fspath(path))
    if held is not None:  # this very process
        return _read_info(held.info_path)
    if not path.exists():
        return None
    lock = filelock.FileLock(os.fspath(path))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return _read_info(path.with_suffix(".json"))
    except OSError:
        return {}
    lock.release()
    return None


@contextlib.contextmanager
def scope() -> Iterator[None]:
    """Release every lock taken through `hold` inside the block when it exits."""
    taken: list[Held] = []
    _SCOPES.append(taken)
    try:
        yield
    finally:
        _SCOPES.remove(taken)
        for held in reversed(taken):
            with contextlib.suppress(Exception):
                held.release()


def releasing(fn: F) -> F:
    """Decorator: run `fn` inside a `scope` (its locks are released however it returns)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with scope():
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]
