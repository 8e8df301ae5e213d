"""Shared CLI plumbing: global state, stderr console, JSON output.

Human-readable tables and progress go to stderr (rich), machine-readable results
to stdout (`--json`), so `rsctool analyze DIR --json | jq .cycles` works.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class AppState:
    """Global options, resolved once in the Typer callback.

    Attributes:
        project: `--project` value (None: `$RSCTOOL_PROJECT` or ./rsctool.toml).
        device: ``auto|cpu|cuda``.
        seed: global random seed.
        quiet: suppress human-readable output on stderr.
    """

    project: Path | None = None
    device: str = "auto"
    seed: int = 0
    quiet: bool = False

    def load_project(self, *, must_exist: bool = False):
        from rsctool.project import Project, resolve_project_path

        return Project.load(resolve_project_path(self.project), must_exist=must_exist)


def get_state(ctx: Any) -> AppState:
    """The AppState of a Typer/click context (a default one when called without the app)."""
    obj = getattr(ctx, "obj", None) if ctx is not None else None
    if isinstance(obj, AppState):
        return obj
    root = ctx.find_root() if ctx is not None else None
    if root is not None and isinstance(root.obj, AppState):
        return root.obj
    return AppState()


def write_stdout(pieces: str | Iterable[str]) -> None:
    """Write text to stdout completely, piece by piece (whole records per piece).

    Goes to the binary layer and loops over short writes: with an unbuffered stdout
    (``PYTHONUNBUFFERED=1``) the text layer drops the rest of a write that the pipe took
    only part of, so a reader that closed early got a cut record and exit 0. Here the
    next write raises BrokenPipeError instead, which the CLI turns into exit 141.
    """
    out = sys.stdout
    buf = getattr(out, "buffer", None)
    if isinstance(pieces, str):
        pieces = (pieces,)
    if buf is None:  # a plain text stream (tests that swap sys.stdout)
        for piece in pieces:
            out.write(piece)
        out.flush()
        return
    out.flush()  # what the text layer holds goes first
    encoding = getattr(out, "encoding", None) or "utf-8"

    def put(data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = buf.write(view)
            view = view[len(view) if n is None else n:]

    chunk: list[bytes] = []
    size = 0
    for piece in pieces:  # whole pieces, about 64 KiB per write (one syscall unbuffered)
        data = piece.encode(encoding)
        chunk.append(data)
        size += len(data)
        if size >= 1 << 16:
            put(b"".join(chunk))
            chunk, size = [], 0
    put(b"".join(chunk))
    buf.flush()


def print_json(obj: Any) -> None:
    """Print one JSON document on stdout."""
    write_stdout(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def info(state: AppState, *objects: Any) -> None:
    if not state.quiet:
        err_console.print(*objects)


def warn(message: str) -> None:
    """One warning line on stderr (always shown: warnings are never silenced by --quiet)."""
    err_console.print(f"[yellow]warning:[/yellow] {message}", markup=True, highlight=False)


class StepProgress:
    """A rich progress bar on stderr (or nothing when not `enabled`): `label`, a bar,
    done/total, time remaining and a status text of ``key value`` pairs."""

    def __init__(self, enabled: bool, label: str, total: int, done: int = 0):
        self.bar: Any = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress("[progress.description]{task.description}", BarColumn(),
                                MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[status]}"), console=err_console)
            self.task = self.bar.add_task(label, total=total, completed=done, status="")
            self.bar.start()

    def update(self, advance: int = 1, **status: Any) -> None:
        if self.bar is not None:
            text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in status.items())
            self.bar.update(self.task, advance=advance, status=text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
