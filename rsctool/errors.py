"""Error types that map to exit codes.

`UserError` (exit 2) is bad input or usage: a missing or corrupt file, a malformed
annotation line, an unknown class, a bad option. Its message is one line that names
the file (and line, where it applies) and the problem; the CLI prints it without a
traceback. Anything else escaping a command is an internal error (exit 1).
An error about an option names it by its field (`field="max_steps"`), never by its
command-line spelling: the command that prints it shows its flag (`render_message`).
`ExitStatus` ends a command with a given exit code and no message (the CLI exits with it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

#: ``{field}`` (the error's own field) or ``{field:NAME}`` (another option) in a message.
_FIELD = re.compile(r"\{field(?::([A-Za-z_][A-Za-z0-9_]*))?\}")


class UserError(Exception):
    """Bad input or usage; exit code 2.

    Args:
        message: what is wrong, one line.
        path: the file the problem is in (printed first).
        line: 1-based line number inside `path`, where it applies.
        field: the option the error is about, by its field name (``precision``,
            ``max_steps``: the Python/dataclass name, as `--set` and config files write
            it), never its flag: the message is written without it
            (``ConfigError("must be auto, fp32 or bf16, got 'fp16'", field="precision")``)
            and is printed after it. The command line prints the flag of the command
            that ran (``--precision must be ...``), or the field name where the command
            has no such option (the value came from `--set` or a config file);
            `str(err)` gives the field name (``precision must be ...``).
            A message that names its field elsewhere than first writes ``{field}``
            there (``"{field} cuda: ... (use {field} cpu or auto)"``; no prefix is
            added then), and ``{field:NAME}`` names another option, NAME
            (``"... use another {field} name or {field:force}"``); both are rendered
            like the field (`render_message`). Without a `field` the message is printed
            as it is (braces included).
    """

    exit_code = 2

    def __init__(self, message: str, path: str | os.PathLike | None = None,
                 line: int | None = None, *, field: str | None = None):
        self.message = message
        self.path = None if path is None else os.fspath(path)
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        return render_message(self)


def render_message(err: UserError,
                   flag_of: Callable[[str], str | None] | None = None) -> str:
    """`err` as one line: ``path:line: `` (where given), then its message with the
    option it names (`UserError`'s ``field``, ``{field}``, ``{field:NAME}``) spelled
    ``flag_of(name)`` (the running command's flag, e.g. ``--max-steps``) or, where that is
    None or there is no `flag_of`, the field name (``max_steps``)."""

    def spell(name: str) -> str:
        return (flag_of(name) if flag_of is not None else None) or name

    message = err.message
    if err.field is not None:
        own = err.field
        if _FIELD.search(message):
            message = _FIELD.sub(lambda m: spell(m.group(1) or own), message)
        else:
            message = f"{spell(own)} {message}"
    where = ""
    if err.path is not None:
        where = err.path if err.line is None else f"{err.path}:{err.line}"
        where += ": "
    return f"{where}{message}"


def flag_lookup(ctx: Any) -> Callable[[str], str | None]:
    """``field -> flag`` for the command running in `ctx`, a click context (duck-typed:
    this module does not import click): the long option (``--max-steps``) of the first
    option whose name is the field or that is spelled like it (``run`` is ``--run``, whose
    parameter is ``run_name``), looking in the command being run (a group's sub-command
    once chosen, ``ctx.invoked_subcommand``) and then the commands above it (the global
    options, e.g. ``--device``); None where none matches."""

    def commands() -> list[Any]:
        out = []
        sub = getattr(ctx, "invoked_subcommand", None)
        get = getattr(getattr(ctx, "command", None), "get_command", None)
        if sub and get is not None:
            out.append(get(ctx, sub))
        c = ctx
        while c is not None:
            out.append(c.command)
            c = c.parent
        return [cmd for cmd in out if cmd is not None]

    def flag_of(field: str) -> str | None:
        if ctx is None:
            return None
        spelled = "--" + field.replace("_", "-")
        for cmd in commands():
            for p in getattr(cmd, "params", ()):
                if getattr(p, "param_type_name", "") != "option":
                    continue
                if p.name == field or spelled in p.opts:
                    longs = [o for o in p.opts if o.startswith("--")]
                    return (longs or p.opts)[0]
        return None

    return flag_of


class DataError(UserError):
    """A dataset, annotation or audio file is unusable."""


class ProjectError(UserError):
    """The project file is missing, corrupt, of an unknown schema or inconsistent."""


class ConfigError(UserError):
    """An option or config value is invalid."""


class WriteError(UserError):
    """A file or folder cannot be written: no permission, a read-only file system, a full
    disk. Not a bug: the message names the path and the reason."""


class ExitStatus(Exception):
    """End the command now with exit code `code`, printing nothing (what there was to say
    has been said), e.g. a launcher's (`rsctool.distributed.launch_here`) processes
    finished with it. Raised below the CLI instead of ``typer.Exit``; rsctool/cli.py turns
    it into the process's exit code.

    Args:
        code: the exit code (0 success).
    """

    def __init__(self, code: int):
        self.code = int(code)
        super().__init__(f"exit status {self.code}")
