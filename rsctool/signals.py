"""SIGTERM and SIGHUP stop a stage the way Ctrl-C does.

`timeout`, SLURM pre-emption, ``docker stop`` and a closed terminal send SIGTERM or
SIGHUP, whose default action kills Python on the spot: no checkpoint, and the run stays
``running`` in the project file. Inside `handled`, the first such signal raises
`Interrupted` (a KeyboardInterrupt carrying the signal number) in the main thread, so
every Ctrl-C path runs unchanged (`train` saves its last checkpoint and records
``interrupted``, `synth` closes its manifest, temp files are removed) and the CLI exits
with 128 + the signal number (143 for SIGTERM, 129 for SIGHUP). A second signal of
either kind while the first is being handled kills the process at once, as the default
action would: whoever sends it wants the process gone now.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["SIGNALS", "Interrupted", "exit_code", "handled", "signal_name"]

#: The signals handled like Ctrl-C (where the platform has them).
SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


class Interrupted(KeyboardInterrupt):
    """A stage stopped by signal `signum` (SIGTERM, SIGHUP); caught like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal_name(signum))
        self.signum = signum


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15 (the number itself when unknown)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def exit_code(exc: BaseException) -> int:
    """The exit status of a process stopped by `exc`: 128 + signal for `Interrupted`,
    130 for any other KeyboardInterrupt (Ctrl-C)."""
    return 128 + exc.signum if isinstance(exc, Interrupted) else 130


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Handle `SIGNALS` as described in the module docstring while the block runs; the
    previous handlers come back afterwards. A signal ignored on entry (SIGHUP under
    ``nohup``) stays ignored; outside the main thread (where Python cannot install
    handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if fired:  # a second signal: die as the default action would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        fired.append(signum)
        raise Interrupted(signum)

    previous: dict[int, Any] = {}
    try:
        for sig in SIGNALS:
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue  # e.g. SIGHUP under `nohup`: ignoring it was asked for
            previous[sig] = signal.signal(sig, handler)
        yield
    finally:
        for sig, old in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, old if old is not None else signal.SIG_DFL)
