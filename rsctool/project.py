"""The project file (``rsctool.toml``): what every stage made, in one place.

Every stage reads its inputs from, and records its outputs in, this file, so
``rsctool train`` after ``rsctool analyze`` needs no paths (DESIGN.md, "The project file").
Only this module writes it. The document is a TOML table::

    schema = 1
    [datasets.icbhi]          # one record per analysed dataset
    manifest = ".rsctool/manifests/icbhi.jsonl"
    [runs.tafilm-1]           # one record per training run
    status = "running"

Top level: ``schema`` (int), then the sections in `SECTIONS` order, each a table of
records (``[SECTION.NAME]``); any other top-level keys a user added by hand (e.g. a
``[defaults]`` table) are kept as they are. Paths inside records are posix strings
relative to the file's folder (`Project.rel` / `Project.abs`).

Concurrency: every write goes through `Project.update`, which takes an exclusive lock
on ``<project>.lock`` beside the file, re-reads the file from disk (so records written
meanwhile by other processes are kept), applies the change and writes the result
atomically (temp file, fsync, rename). A corrupt file is reported and never overwritten.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path, PurePath
from typing import Any, TypeVar

import filelock
import tomli_w

from rsctool.errors import ProjectError
from rsctool.utils import atomic_write_bytes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "DEFAULT_NAME",
    "MIGRATIONS",
    "PROJECT_ENV",
    "SCHEMA",
    "SECTIONS",
    "STATE_DIR",
    "Project",
    "resolve_project_path",
    "state_dir_name",
]

#: Version of the document layout this rsctool reads and writes.
SCHEMA = 1
#: The record sections, in the order they are written.
SECTIONS: tuple[str, ...] = ("datasets", "synthetic", "vocoders", "runs", "groups", "exports")
#: Environment variable naming the project file when ``--project`` is not given.
PROJECT_ENV = "RSCTOOL_PROJECT"
#: File name used when only a folder (or nothing) is given.
DEFAULT_NAME = "rsctool.toml"
#: State folder (manifests, caches, run folders) of `DEFAULT_NAME`; other project files
#: get ``.rsctool-<stem>`` (`state_dir_name`).
STATE_DIR = ".rsctool"

#: ``MIGRATIONS[v]`` turns a schema-``v`` document into a schema-``v + 1`` one (it may
#: mutate and return its argument; the ``schema`` key is set by the caller). Empty while
#: only schema 1 exists; a file of an older schema without a migration path is refused.
MIGRATIONS: dict[int, Callable[[dict], dict]] = {}

T = TypeVar("T")

# Values TOML can hold natively (datetime.datetime is a subclass of datetime.date).
_SCALARS = (str, bool, int, float, datetime.date, datetime.time)
_TOML_TYPE_NAMES = {
    str: "a string", bool: "a boolean", int: "an integer", float: "a float",
    list: "an array", dict: "a table",
}
# Record names become folder names (<state dir>/runs/NAME), so they must be one safe path part.
_BAD_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")
_TOML_POS = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


# --------------------------------------------------------------------------- paths


def _normalise(path: str | os.PathLike) -> Path:
    """Absolute path of the project file named by `path` (a folder means FOLDER/rsctool.toml).

    The folder is resolved (symlinks, ``..``) but the file name is not, so a symlinked
    ``rsctool.toml`` keeps the folder it was found in as its root.
    """
    text = os.fspath(path)
    p = Path(text).expanduser()
    if p.is_dir() or text.endswith(("/", os.sep)):
        p = p / DEFAULT_NAME
    return p.parent.resolve() / p.name


def resolve_project_path(cli_value: str | os.PathLike | None) -> Path:
    """Find the project file: ``--project PATH``, else ``$RSCTOOL_PROJECT``, else ./rsctool.toml.

    Returns an absolute path; a directory means ``DIR/rsctool.toml``. The file need not exist.
    """
    if cli_value is not None:
        return _normalise(cli_value)
    env = os.environ.get(PROJECT_ENV, "").strip()
    if env:
        return _normalise(env)
    return _normalise(Path.cwd() / DEFAULT_NAME)


# ------------------------------------------------------------------ parse / validate


def _type_name(value: Any) -> str:
    for typ, name in _TOML_TYPE_NAMES.items():
        if isinstance(value, typ):
            return name
    return type(value).__name__


def _parse(raw: bytes, path: Path) -> dict:
    """Bytes of a project file -> TOML document (not yet schema-checked)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ProjectError(f"invalid TOML at line {line}: not UTF-8 text", path) from None
    text = text.removeprefix("\ufeff")  # editors on Windows like to add a BOM
    if not text.strip():
        # A zero-length file (e.g. `touch rsctool.toml`) holds nothing to lose: a new project.
        return {"schema": SCHEMA}
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        match = _TOML_POS.search(message)
        line = getattr(e, "lineno", None) or (int(match.group(1)) if match else None)
        column = getattr(e, "colno", None) or (int(match.group(2)) if match else None)
        detail = getattr(e, "msg", None) or (message[: match.start()] if match else message)
        if "(at end of document)" in detail:
            detail = detail.replace(" (at end of document)", "") + " at end of file"
        if line is None:
            # tomllib reports "at end of document" without a position: that is the last line.
            line = text.rstrip("\n").count("\n") + 1
        where = f" (column {column})" if column else ""
        raise ProjectError(f"invalid TOML at line {line}: {detail}{where}", path) from None


def _check_schema(doc: dict, path: Path) -> int:
    if "schema" not in doc:
        raise ProjectError(
            "no `schema` key, so this is not a project file rsctool wrote; "
            f"if it is meant to be one, add `schema = {SCHEMA}` as its first line", path)
    schema = doc["schema"]
    if isinstance(schema, bool) or not isinstance(schema, int):
        raise ProjectError(f"`schema` must be an integer, not {_type_name(schema)}", path)
    if schema > SCHEMA:
        raise ProjectError(
            f"schema {schema} is newer than this rsctool understands (schema {SCHEMA}); "
            "upgrade rsctool", path)
    return schema


def _migrate(doc: dict, path: Path) -> dict:
    """Bring a document of an older schema up to `SCHEMA` through `MIGRATIONS`."""
    schema = _check_schema(doc, path)
    while schema < SCHEMA:
        step = MIGRATIONS.get(schema)
        if step is None:
            raise ProjectError(
                f"schema {schema} is not a schema this rsctool can read or migrate "
                f"(it reads schema {SCHEMA})", path)
        doc = step(doc)
        schema += 1
        doc["schema"] = schema
    return doc


def _check_sections(doc: dict, path: Path) -> None:
    for section in SECTIONS:
        if section not in doc:
            continue
        records = doc[section]
        if not isinstance(records, dict):
            raise ProjectError(
                f"`{section}` must be a table of records ([{section}.NAME]), "
                f"not {_type_name(records)}", path)
        for name, record in records.items():
            # a hand-edited name like "../x" would become a folder outside the state dir
            _check_name(section, name, path)
            if not isinstance(record, dict):
                raise ProjectError(
                    f"`{section}.{name}` must be a table ([{section}.{name}]), "
                    f"not {_type_name(record)}", path)


def _validate(doc: dict, path: Path) -> dict:
    """Schema-check, migrate and structure-check a parsed document; returns it."""
    doc = _migrate(doc, path)
    _check_sections(doc, path)
    return doc


def _check_section(section: str) -> None:
    if section not in SECTIONS:
        raise ValueError(f"unknown project section {section!r}; expected one of {SECTIONS}")


def _check_name(section: str, name: Any, path: Path) -> None:
    if (not isinstance(name, str) or not name.strip() or name in (".", "..")
            or _BAD_NAME.search(name)):
        raise ProjectError(
            f"invalid {section} name {name!r}: a name must be non-empty, not '.' or '..', "
            "and contain no '/', '\\' or control characters", path)


# --------------------------------------------------------------------------- write


def _clean(value: Any, where: str) -> Any:
    """Copy of `value` ready for TOML: ``None`` dropped at any depth, tuples as lists.

    numpy scalars (and other int/float subclasses) become plain Python numbers: tomli-w
    formats floats with ``repr``, which for numpy 2 is ``np.float64(0.5)``, not TOML.
    Anything else TOML cannot hold is a programming error (TypeError naming the key).
    """
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where or 'project'}: TOML keys must be strings, not {key!r}")
            if item is not None:
                out[key] = _clean(item, f"{where}.{key}" if where else key)
        return out
    if isinstance(value, (list, tuple)):
        return [_clean(item, f"{where}[{i}]") for i, item in enumerate(value) if item is not None]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, _SCALARS):
        return value
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        plain = item()  # numpy scalar / 0-d array -> Python scalar
        if isinstance(plain, _SCALARS):
            return plain
    hint = "; store paths with Project.rel(path)" if isinstance(value, PurePath) else ""
    raise TypeError(f"{where}: cannot store {type(value).__name__} in the project file{hint}")


def _ordered(doc: dict) -> dict:
    """Stable layout: schema, the non-empty sections in SECTIONS order, then other keys.

    (tomli-w then writes every top-level plain value, e.g. a hand-added ``title = ...``,
    before the first table, as TOML requires; the tables keep this order.)
    """
    out: dict[str, Any] = {"schema": doc["schema"]}
    for section in SECTIONS:
        if doc.get(section):
            out[section] = doc[section]
    for key, value in doc.items():
        if key != "schema" and key not in SECTIONS:
            out[key] = value
    return out


# ---------------------------------------------------------------------------- lock

_LOCKS: dict[str, filelock.FileLock] = {}
_LOCKS_GUARD = threading.Lock()


def _file_lock(lock_path: Path) -> filelock.FileLock:
    """One FileLock object per lock file in this process.

    Sharing it makes the lock re-entrant for every `Project` on the same file in one
    thread (a `with project.lock():` around `set_record` calls does not deadlock), while
    the default thread-local mode still makes other threads wait like other processes.
    """
    key = os.fspath(lock_path)
    with _LOCKS_GUARD:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = filelock.FileLock(key)
        return lock


# ------------------------------------------------------------------------- project


class Project:
    """One project file and its last loaded document.

    Attributes:
        path: the TOML file (absolute).
        root: its folder; relative paths inside records are relative to it.
        data: the last loaded or written document (never contains ``None``). Reads
            (`section`, `get`) use it; writes re-read the file under the lock first.
    """

    def __init__(self, path: str | os.PathLike):
        self.path: Path = _normalise(path)
        self.root: Path = self.path.parent
        self.data: dict = {"schema": SCHEMA}

    def __repr__(self) -> str:
        return f"Project({os.fspath(self.path)!r})"

    # ---------------------------------------------------------------- reading

    @classmethod
    def load(cls, path: str | os.PathLike, *, must_exist: bool = False) -> Project:
        """Read and validate the project file at `path` (a folder means FOLDER/rsctool.toml).

        A missing file is an empty document (the first write creates the file), unless
        `must_exist`. Raises ProjectError for an unreadable, non-TOML, wrong-schema or
        wrongly structured file.
        """
        project = cls(path)
        if must_exist and not project.path.exists():
            raise ProjectError(
                "project file not found (run `rsctool analyze DATA_DIR` first)", project.path)
        project.data, _ = project._read_disk()
        return project

    def reload(self) -> dict:
        """Re-read the file from disk into `data` (records other processes wrote) and return it."""
        self.data, _ = self._read_disk()
        return self.data

    def _read_disk(self) -> tuple[dict, bytes | None]:
        """Validated document on disk and its raw bytes (None when the file does not exist)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {"schema": SCHEMA}, None
        except OSError as e:
            raise ProjectError(f"cannot read project file: {e.strerror or e}", self.path) from e
        return _validate(_parse(raw, self.path), self.path), raw

    def exists(self) -> bool:
        """Whether the file exists on disk (it does not before the first write)."""
        return self.path.is_file()

    def section(self, name: str) -> dict[str, dict]:
        """Copy of all records of section `name` (``{}`` if it has none)."""
        _check_section(name)
        return copy.deepcopy(self.data.get(name, {}))

    def get(self, section: str, name: str) -> dict | None:
        """Copy of record `name` of `section`, or None."""
        _check_section(section)
        record = self.data.get(section, {}).get(name)
        return None if record is None else copy.deepcopy(record)

    # ---------------------------------------------------------------- writing

    def update(self, fn: Callable[[dict], T]) -> T:
        """Change the file with `fn` and return what `fn` returns.

        Under the lock: re-read the file (a corrupt one raises ProjectError and is left
        alone), call ``fn(doc)`` to mutate the document in place, drop ``None`` values,
        validate, and write atomically. If `fn` raises, or the write fails (ProjectError,
        e.g. disk full), the file on disk and `data` are unchanged. A write that would
        not change the file's bytes is skipped.
        """
        with self.lock():
            doc, before = self._read_disk()
            result = fn(doc)
            doc = _ordered(_validate(_clean(doc, ""), self.path))
            data = tomli_w.dumps(doc).encode("utf-8")
            if data != before:
                try:
                    atomic_write_bytes(self.path, data)
                except OSError as e:
                    raise ProjectError(
                        f"cannot write project file: {e.strerror or e}", self.path) from e
            self.data = doc
        return result

    def set_record(self, section: str, name: str, record: dict, *, merge: bool = False) -> None:
        """Store `record` as ``[section.name]``, replacing any record of that name.

        With `merge`, the fields of `record` are set on the existing record instead (a
        field given as None is removed); a missing record is created.
        """
        _check_section(section)
        _check_name(section, name, self.path)
        record = copy.deepcopy(dict(record))

        def apply(doc: dict) -> None:
            records = doc.setdefault(section, {})
            if merge and name in records:
                records[name].update(record)
            else:
                records[name] = record

        self.update(apply)

    def update_record(self, section: str, name: str, **fields: Any) -> None:
        """Set `fields` on record ``[section.name]`` (None removes a field); see `set_record`."""
        self.set_record(section, name, fields, merge=True)

    def remove_record(self, section: str, name: str) -> None:
        """Delete record ``[section.name]``; a record that is not there is not an error."""
        _check_section(section)

        def apply(doc: dict) -> None:
            doc.get(section, {}).pop(name, None)

        self.update(apply)

    def unique_name(self, section: str, base: str) -> str:
        """`base` if no record of `section` has that name, else the first free ``base-N``.

        Reads the file fresh but reserves nothing: two processes may get the same answer.
        Use `reserve_name` to pick and claim a name atomically.
        """
        _check_section(section)
        _check_name(section, base, self.path)
        return _first_free(self.reload().get(section, {}), base)

    def reserve_name(self, section: str, base: str, record: dict, *,
                     same: Callable[[dict], bool] | None = None) -> str:
        """Pick a free name like `unique_name` and store `record` under it, in one locked step.

        So concurrent sweeps never get the same run name. Returns the name. `same`: a
        record for which it returns True is the one being reserved, claimed meanwhile by
        another process (two identical unnamed commands started together): ProjectError
        naming it, instead of a second copy of the same work.
        """
        _check_section(section)
        _check_name(section, base, self.path)
        record = copy.deepcopy(dict(record))

        def apply(doc: dict) -> str:
            records = doc.setdefault(section, {})
            if same is not None:
                for other, rec in records.items():
                    if isinstance(rec, dict) and same(rec):
                        raise ProjectError(
                            f"{self.path}: {section[:-1] if section.endswith('s') else section}"
                            f" {other!r} with the same options was started meanwhile by "
                            "another rsctool process; run the same command again when it "
                            "ends (it resumes or skips it)")
            name = _first_free(records, base)
            records[name] = record
            return name

        return self.update(apply)

    # ------------------------------------------------------------ paths, lock

    def rel(self, path: str | os.PathLike) -> str:
        """`path` as stored in the file: posix and relative to `root` when inside it, else absolute.

        A relative `path` is taken relative to the current directory (as a user typed it).
        """
        absolute = Path(os.path.abspath(os.fspath(path)))
        for candidate in (absolute, absolute.resolve()):
            with contextlib.suppress(ValueError):
                return candidate.relative_to(self.root).as_posix()
        return absolute.as_posix()

    def abs(self, rel: str | os.PathLike) -> Path:
        """Inverse of `rel`: a stored path resolved against `root` (absolute ones are kept)."""
        p = Path(rel)
        if p.is_absolute():
            return p
        return Path(os.path.normpath(self.root / p))

    def record_dir(self, section: str, name: str, record: dict | None, *,
                   marker: str | None = None) -> Path:
        """The folder of record `name` in `section`: its recorded ``dir``, or the default
        ``<state dir>/<section>/<name>`` (`state_dir`).

        rsctool writes (and, with ``--force``, deletes) inside this folder, so a recorded
        ``dir`` must lie inside the project folder: a hand-edited or foreign project file
        cannot point rsctool's writes elsewhere. A folder outside is accepted only when
        it already holds `marker`, a file that rsctool itself wrote there (e.g. a
        ``synth --out`` folder's manifest).

        Raises:
            ProjectError: a recorded ``dir`` outside the project folder (without `marker`).
        """
        _check_name(section, name, self.path)
        if not record or not record.get("dir"):
            return self.state_dir() / section / name
        folder = self.abs(record["dir"])
        inside = folder.resolve().is_relative_to(self.root.resolve())
        if not inside and not (marker is not None and (folder / marker).is_file()):
            raise ProjectError(
                f"{section}.{name}.dir = {record['dir']!r} lies outside the project folder "
                f"{self.root}; rsctool does not write there (fix or remove that record)",
                self.path)
        return folder

    @property
    def lock_path(self) -> Path:
        """The lock file beside the project file (``rsctool.toml.lock``)."""
        return self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def lock(self, timeout: float = 60) -> Iterator[filelock.FileLock]:
        """Hold the project's exclusive lock (re-entrant in one thread) for `timeout` s at most.

        Raises ProjectError when another process holds it longer, or when the lock file
        cannot be created (e.g. a read-only folder).
        """
        lock = _file_lock(self.lock_path)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock.acquire(timeout=timeout)
        except filelock.Timeout:
            raise ProjectError(
                f"could not lock the project file within {timeout:g} s: another rsctool "
                f"process is writing it (lock file {self.lock_path})", self.path) from None
        except OSError as e:
            raise ProjectError(
                f"cannot create the lock file {self.lock_path}: {e.strerror or e}",
                self.path) from e
        try:
            yield lock
        finally:
            lock.release()

    def analyze_command(self, record: dict, *, force: bool = True) -> str:
        """The ``rsctool analyze`` command line that re-makes dataset `record` of this
        project (for messages about a missing or changed manifest)."""
        import shlex

        name = next((n for n, r in self.data.get("datasets", {}).items()
                     if r.get("manifest") == record.get("manifest")), None)
        parts = ["rsctool"]
        if self.path.name != DEFAULT_NAME:
            parts += ["--project", str(self.path)]
        parts += ["analyze", str(self.abs(record.get("root") or "DATA_DIR"))]
        if name:
            parts += ["--name", name]
        if force:
            parts.append("--force")
        return " ".join(shlex.quote(p) for p in parts)

    def manifest_problem(self, record: dict) -> str | None:
        """Why dataset `record`'s manifest cannot be used (missing, or its sha256 differs
        from the recorded one, e.g. another project's analyze rewrote it), with the
        command that re-makes it; None when it is fine."""
        from rsctool.data.manifest import file_sha256

        if not record.get("manifest"):
            return None
        path = self.abs(record["manifest"])
        if not path.is_file():
            problem = "manifest is missing"
        elif record.get("sha256") and file_sha256(path) != record["sha256"]:
            problem = "manifest changed since analyze recorded it"
        else:
            return None
        return f"{problem} ({path}); run `{self.analyze_command(record)}`"

    def state_dir(self) -> Path:
        """The folder of this project's manifests, feature caches and run folders.

        ``root/.rsctool`` for ``rsctool.toml``; ``root/.rsctool-<stem>`` for any other
        project file (``--project a.toml`` -> ``.rsctool-a``), so that two project files
        in one folder never write the same manifest or run folder (a dataset of one name
        in both would otherwise overwrite the other's manifest). Not ``.rsctool/<stem>``:
        a project named ``runs.toml`` would then share ``.rsctool/runs`` with
        ``rsctool.toml``. Records store their paths, so folders written before keep
        working wherever they are.
        """
        return self.root / state_dir_name(self.path)


def state_dir_name(project_path: str | os.PathLike) -> str:
    """Name of the state folder beside project file `project_path` (see
    `Project.state_dir`): ``.rsctool`` for ``rsctool.toml``, else ``.rsctool-<stem>``."""
    name = PurePath(os.fspath(project_path)).name
    if name == DEFAULT_NAME:
        return STATE_DIR
    return f"{STATE_DIR}-{PurePath(name).stem or name}"


def _first_free(records: dict, base: str) -> str:
    if base not in records:
        return base
    n = 1
    while f"{base}-{n}" in records:
        n += 1
    return f"{base}-{n}"
