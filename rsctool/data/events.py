"""Reader and writer of event tables: any dataset as one labelled segment per row.

An event table is a ``.csv``, ``.tsv`` or ``.jsonl`` file with one row per segment::

    file,start,end,label,patient,device,site
    audio/p1_rec1.wav,0.00,2.35,crackle,p1,Meditron,Al
    audio/p1_rec1.wav,2.35,4.80,normal,p1,Meditron,Al

Required columns: `file` (relative to the table's folder, or absolute), `start` and
`end` (seconds) and `label`. Optional columns: the `Cycle` metadata fields in
`OPTIONAL_COLUMNS` (``split`` among them: ``train|val|test`` given by the user) and
free-form ``meta.NAME`` columns (kept in ``Cycle.meta``). Any other column is an
error, so that a typo (``lable``) never drops data silently.

Rows are numbered by their line in the file (the CSV/TSV header is line 1), and every
problem names ``TABLE:LINE``. Labels that are all ICBHI classes (``normal``,
``crackle``, ``wheeze``, ``both``) set the crackle/wheeze flags; any other label set is
the dataset's own classes (as for folder datasets).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rsctool.data.manifest import ICBHI_CLASSES, SPLITS, Cycle
from rsctool.data.splits import (
    Problem,
    ProblemSink,
    carve_validation,
    parse_split_spec,
    patient_split,
    random_split,
)
from rsctool.errors import ConfigError, DataError

__all__ = [
    "EVENT_SUFFIXES",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "Problem",
    "is_event_table",
    "read_events",
    "table_files",
    "write_event_table",
]

#: Suffixes of event tables (lower case) and how each is parsed.
EVENT_SUFFIXES: dict[str, str] = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl",
                                  ".ndjson": "jsonl"}
REQUIRED_COLUMNS: tuple[str, ...] = ("file", "start", "end", "label")
#: Optional columns: `Cycle` fields (``id``: default ``<file path>_<k>``, the path
#: without suffix and ``/`` -> ``__``, k the row's index among the rows of its file;
#: ``recording``: default the file stem).
OPTIONAL_COLUMNS: tuple[str, ...] = ("id", "split", "patient", "recording", "device", "site",
                                     "mode", "age", "sex", "bmi", "diagnosis")
META_PREFIX = "meta."
#: A segment may end this much after the end of its audio (rounding); it is clipped.
END_TOLERANCE_S = 0.05
_FLOAT_COLUMNS = ("age", "bmi")
_SEX = {"m": "M", "male": "M", "f": "F", "female": "F"}


def is_event_table(path: str | os.PathLike) -> bool:
    """True when `path` is a file with an event-table suffix (`EVENT_SUFFIXES`)."""
    p = Path(path)
    return p.suffix.lower() in EVENT_SUFFIXES and p.is_file()


def _kind(path: Path) -> str:
    kind = EVENT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"an event table is a {', '.join(EVENT_SUFFIXES)} file, got "
                        f"{path.suffix or 'no suffix'!r}", path)
    return kind


def _rows(path: Path, sink: ProblemSink) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, {column: value})`` of each row; header problems always raise.

    CSV/TSV values are strings ("" for an empty cell); JSONL values are JSON values.
    """
    kind = _kind(path)
    try:
        fh = path.open(encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise DataError("event table not found", path) from None
    except OSError as e:
        raise DataError(f"cannot read event table ({e.strerror})", path) from None
    with fh:
        try:
            if kind == "jsonl":
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError as e:
                        sink.report(f"not a JSON object ({e.msg})", path, lineno)
                        continue
                    if not isinstance(row, dict):
                        sink.report("not a JSON object", path, lineno)
                        continue
                    yield lineno, row
                return
            reader = csv.reader(fh, delimiter="\t" if kind == "tsv" else ",")
            header: list[str] | None = None
            line_start = 1
            for cells in reader:
                lineno, line_start = line_start, reader.line_num + 1
                if not any(c.strip() for c in cells):
                    continue
                if header is None:
                    header = [c.strip() for c in cells]
                    _check_columns(header, path, lineno, sink=None)
                    continue
                if len(cells) != len(header):
                    sink.report(f"{len(cells)} cells, the header has {len(header)}",
                                path, lineno)
                    continue
                yield lineno, dict(zip(header, cells, strict=True))
        except UnicodeDecodeError:
            raise DataError("not UTF-8 text", path) from None
        except csv.Error as e:
            raise DataError(f"malformed table ({e})", path, reader.line_num) from None
        if header is None:
            raise DataError(f"empty table: expected a header with {', '.join(REQUIRED_COLUMNS)}",
                            path)


def _check_columns(columns: Iterable[str], path: Path, lineno: int,
                   sink: ProblemSink | None) -> bool:
    """Unknown or missing columns: raise (sink None: a CSV header) or report the row."""
    columns = list(columns)
    known = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    unknown = [c for c in columns if c not in known and not
               (c.startswith(META_PREFIX) and len(c) > len(META_PREFIX))]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    message = None
    if unknown:
        message = (f"unknown column{'s' if len(unknown) > 1 else ''} "
                   f"{', '.join(map(repr, unknown))} (known: {', '.join(REQUIRED_COLUMNS)}, "
                   f"{', '.join(OPTIONAL_COLUMNS)}, {META_PREFIX}NAME)")
    elif missing:
        message = f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    elif dupes:
        message = f"column {', '.join(dupes)} appears twice"
    if message is None:
        return True
    if sink is None:
        raise DataError(message, path, lineno)
    sink.report(message, path, lineno)
    return False


def _text(value: Any) -> str | None:
    """A cell as stripped text; None when empty or null."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def _number(value: Any, column: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{column} must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        x = float(value)
    else:
        text = _text(value)
        if text is None:
            raise ValueError(f"empty {column}")
        try:
            x = float(text)
        except ValueError:
            raise ValueError(f"{column} must be a number (seconds), got {text!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{column} must be finite, got {value!r}")
    return x


def table_files(path: str | os.PathLike) -> list[Path]:
    """The audio files an event table names (deduplicated, in order), without checks:
    what a change of the dataset is detected from. Unparseable rows are left out."""
    path = Path(path)
    base = path.resolve().parent
    out: dict[str, None] = {}
    try:
        for _, row in _rows(path, ProblemSink(False, [])):
            f = _text(row.get("file"))
            if f is not None:
                out[os.path.normpath(os.path.join(base, f))] = None
    except DataError:
        return []
    return [Path(p) for p in out]


def read_events(path: str | os.PathLike, *, split: str | None = None, val_fraction: float = 0.1,
                seed: int = 0, strict: bool = True, problems: list[Problem] | None = None,
                check_audio: bool = True, info: dict[str, Any] | None = None) -> list[Cycle]:
    """Read an event table into cycles (manifest records).

    Args:
        path: the table (``.csv``, ``.tsv``, ``.jsonl``).
        split: ``official`` (the table's ``split`` column), ``patients:F`` (whole
            patients, else recordings, at random: F of the segments in train) or
            ``random:T:V`` (segment-wise, stratified by label, patients kept whole).
            None: ``official`` when the table has a ``split`` column, else
            ``patients:0.7``.
        val_fraction: share of train moved to ``val`` by whole patients (as for ICBHI);
            not applied when the ``split`` column already gives a ``val`` split, nor to
            a ``random`` spec (which has its own val share).
        seed: seed of the random splits.
        strict, problems: raise the first problem as `DataError` naming ``TABLE:LINE``,
            or record `Problem` records and skip the row.
        check_audio: read each audio header (sample rate; the segment must lie inside
            the audio, up to `END_TOLERANCE_S`, which is clipped). The file must exist.
        info: receives ``split_spec`` (the spec used) and ``split_column`` (bool).

    Returns:
        Cycles in table order with absolute `audio` paths; `start`, `end` in seconds;
        label flags set when every label is an ICBHI class.

    Raises:
        DataError: an unreadable table, a bad header, an empty result, or (strict) any
            bad row: missing file, segment past the audio, start >= end, empty label,
            bad split/number/sex, duplicate id. ConfigError: a bad split spec.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("event table not found", path)
    if not path.is_file():
        raise DataError("an event table is a file (.csv, .tsv, .jsonl), not a folder", path)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    spec = parse_split_spec(split) if split is not None else None
    sink = ProblemSink(strict, problems)
    base = path.resolve().parent
    headers: dict[str, Any] = {}
    cycles: list[Cycle] = []
    rows_of: dict[str, int] = {}
    ids: dict[str, int] = {}
    has_split = False
    for lineno, row in _rows(path, sink):
        if not _check_columns(row, path, lineno, sink):
            continue
        has_split = has_split or "split" in row
        try:
            c = _cycle(row, base, headers, check_audio, rows_of)
        except ValueError as e:
            sink.report(str(e), path, lineno)
            continue
        if c.id in ids:
            sink.report(f"duplicate id {c.id!r} (line {ids[c.id]})", path, lineno)
            continue
        ids[c.id] = lineno
        cycles.append(c)
    if not cycles:
        raise DataError("no usable rows in the event table", path)

    if spec is None:
        spec = parse_split_spec("official" if has_split else "patients:0.7")
    if spec.kind == "official":
        if not has_split:
            raise ConfigError("{field} official reads the table's split column, but it has "
                              "none; add one (train, val or test per row) or use {field} "
                              "patients:F", path, field="split")
        kept = []
        for c in cycles:
            if c.split:
                kept.append(c)
            else:
                sink.report("empty split (the table has a split column: train, val or test "
                            "in every row)", path, ids[c.id])
        cycles = kept
        if not cycles:
            raise DataError("no usable rows in the event table", path)
    if info is not None:
        info.clear()
        info.update(split_spec=str(spec), split_column=has_split)

    labels = {c.label for c in cycles}
    if labels <= set(ICBHI_CLASSES):
        for c in cycles:
            c.crackle = int(c.label in ("crackle", "both"))
            c.wheeze = int(c.label in ("wheeze", "both"))
    if spec.kind == "official":
        if any(c.split == "val" for c in cycles):
            return cycles
        return carve_validation(cycles, val_fraction, seed)
    if spec.kind == "patients":
        return carve_validation(patient_split(cycles, spec.train, seed), val_fraction, seed)
    return random_split(cycles, spec.train, spec.val or 0.0, seed, stratify=True,
                        group_by="patient")


def _cycle(row: dict[str, Any], base: Path, headers: dict[str, Any], check_audio: bool,
           rows_of: dict[str, int]) -> Cycle:
    """One row as a Cycle (``split=""`` when the row has none); ValueError says why not."""
    from rsctool.audio import audio_info

    file = _text(row.get("file"))
    if file is None:
        raise ValueError("empty file")
    audio = os.path.normpath(os.path.join(base, file))
    start = _number(row.get("start"), "start")
    end = _number(row.get("end"), "end")
    if start < 0:
        raise ValueError(f"start {start:g} s is negative")
    if start >= end:
        raise ValueError(f"start {start:g} s is not before end {end:g} s")
    label = _text(row.get("label"))
    if label is None:
        raise ValueError("empty label")
    split = _text(row.get("split")) or ""
    if split and split.lower() not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    sex = _text(row.get("sex"))
    if sex is not None:
        if sex.lower() not in _SEX:
            raise ValueError(f"sex must be M or F (or empty), got {sex!r}")
        sex = _SEX[sex.lower()]
    floats: dict[str, float | None] = {}
    for col in _FLOAT_COLUMNS:
        v = row.get(col)
        floats[col] = None if _text(v) is None else _number(v, col)
    if not os.path.isfile(audio):
        raise ValueError(f"audio file not found: {file}")
    sample_rate = None
    if check_audio:
        if audio not in headers:
            try:
                headers[audio] = audio_info(audio)
            except DataError as e:
                headers[audio] = e
        h = headers[audio]
        if isinstance(h, DataError):
            raise ValueError(f"{h.message}: {file}")
        if start >= h.duration:
            raise ValueError(f"segment starts at {start:g} s, after the end of the audio "
                             f"({h.duration:.3f} s, {file})")
        if end > h.duration + END_TOLERANCE_S:
            raise ValueError(f"segment ends at {end:g} s, {end - h.duration:.3f} s after the "
                             f"end of the audio ({h.duration:.3f} s, {file})")
        end = min(end, h.duration)
        sample_rate = h.sample_rate
    stem = Path(file).stem
    k = rows_of.get(audio, 0)
    rows_of[audio] = k + 1
    # the default id: the file's path as written, so that same-named files in two
    # folders stay apart (``audio/p1/rec.wav`` -> ``audio__p1__rec_000``)
    name = "__".join(p for p in Path(file).with_suffix("").parts
                     if p not in ("..", ".", os.sep, "/") and not p.endswith(":\\"))
    meta = {key[len(META_PREFIX):]: v for key, v in row.items()
            if key.startswith(META_PREFIX) and _text(v) is not None}
    return Cycle(
        id=_text(row.get("id")) or f"{name or stem}_{k:03d}", audio=audio, start=start, end=end,
        label=label, split=split.lower(), patient=_text(row.get("patient")),
        recording=_text(row.get("recording")) or stem, device=_text(row.get("device")),
        site=_text(row.get("site")), mode=_text(row.get("mode")), age=floats["age"], sex=sex,
        bmi=floats["bmi"], diagnosis=_text(row.get("diagnosis")), sample_rate=sample_rate,
        meta=meta)


def write_event_table(cycles: Iterable[Cycle], path: str | os.PathLike, *,
                      split: bool = True) -> Path:
    """Write `cycles` as an event table (the format from `path`'s suffix), atomically.

    Files are written relative to the table's folder when they lie below it, else as
    absolute paths. Columns: `REQUIRED_COLUMNS`, then the optional ones any cycle has a
    value for (``split`` unless `split` is False), then ``meta.NAME`` for meta keys with
    scalar values. Reading the table back (``--split official``) gives the same cycles.
    Synthetic cycles are left out (an event table describes recorded audio).
    """
    from rsctool.utils import atomic_write_text

    path = Path(path)
    kind = _kind(path)
    base = path.resolve().parent
    cycles = [c for c in cycles if c.source != "synthetic"]
    optional = [col for col in OPTIONAL_COLUMNS
                if (col != "split" or split) and any(getattr(c, col) is not None for c in cycles)]
    meta_keys = sorted({k for c in cycles for k, v in c.meta.items()
                        if isinstance(v, (str, int, float)) and not isinstance(v, bool)})
    columns = [*REQUIRED_COLUMNS, *optional, *(META_PREFIX + k for k in meta_keys)]
    rows = []
    for c in cycles:
        audio = Path(c.audio)
        if not audio.is_absolute():
            audio = Path(os.path.abspath(audio))
        try:
            file = audio.relative_to(base).as_posix()
        except ValueError:
            file = str(audio)
        row: dict[str, Any] = {"file": file, "start": c.start, "end": c.end, "label": c.label}
        for col in optional:
            row[col] = getattr(c, col)
        for k in meta_keys:
            row[META_PREFIX + k] = c.meta.get(k)
        rows.append(row)
    if kind == "jsonl":
        text = "".join(json.dumps({k: v for k, v in r.items() if v is not None},
                                  ensure_ascii=False) + "\n" for r in rows)
    else:
        import io

        buf = io.StringIO()
        w = csv.writer(buf, delimiter="\t" if kind == "tsv" else ",", lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r.get(col) is None else repr(r[col])
                        if isinstance(r[col], float) else str(r[col]) for col in columns])
        text = buf.getvalue()
    atomic_write_text(path, text)
    return path
