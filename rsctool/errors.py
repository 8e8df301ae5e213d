"""Error types that map to exit codes.

`UserError` (exit 2) is bad input or usage: a missing or corrupt file, a malformed
annotation line, an unknown class, a bad option. Its message is one line that names
the file (and line, where it applies) and the problem; the CLI prints it without a
traceback. Anything else escaping a command is an internal error (exit 1).
`ExitStatus` ends a command with a given exit code and no message (the CLI exits with it).
"""

from __future__ import annotations

import os


class UserError(Exception):
    """Bad input or usage; exit code 2.

    Args:
        message: what is wrong, one line.
        path: the file the problem is in (printed first).
        line: 1-based line number inside `path`, where it applies.
    """

    exit_code = 2

    def __init__(self, message: str, path: str | os.PathLike | None = None,
                 line: int | None = None):
        self.message = message
        self.path = None if path is None else os.fspath(path)
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path if self.line is None else f"{self.path}:{self.line}"
            where += ": "
        return f"{where}{self.message}"


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
