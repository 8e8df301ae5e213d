"""Cycle manifests: one breathing cycle (or one folder-dataset item) per JSONL line.

Field names are stable (DESIGN.md, "Manifests"). Missing metadata is `None`
(JSON null), never a made-up value. Times are seconds from the start of `audio`.
Manifest files are written atomically (`write_manifest`) or appended to with ids
already present skipped (`ManifestWriter`), which is how an interrupted job resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsctool.errors import DataError
from rsctool.utils import atomic_write_text

#: The four ICBHI classes, in the order used for class indices everywhere.
ICBHI_CLASSES: tuple[str, ...] = ("normal", "crackle", "wheeze", "both")
#: The classes of ``train --task binary``, ICBHI's 2-class task (see `binary_label`).
BINARY_CLASSES: tuple[str, ...] = ("normal", "abnormal")
SPLITS: tuple[str, ...] = ("train", "val", "test")
SOURCES: tuple[str, ...] = ("real", "synthetic")


def icbhi_label(crackle: int, wheeze: int) -> str:
    """Map the two ICBHI annotation flags to one of `ICBHI_CLASSES`."""
    return ICBHI_CLASSES[int(bool(crackle)) + 2 * int(bool(wheeze))]


def binary_label(label: str) -> str:
    """The `BINARY_CLASSES` label of a cycle label: every label but ``normal`` (crackle,
    wheeze, both) is ``abnormal``."""
    return "normal" if label == "normal" else "abnormal"


@dataclass
class Cycle:
    """One labelled segment of a recording.

    Attributes:
        id: unique within a manifest (e.g. ``"101_1b1_Al_sc_Meditron_003"``).
        audio: path of the audio file (absolute, or relative to the manifest's folder).
        start, end: segment bounds in seconds, ``0 <= start < end``.
        label: class name; for ICBHI one of ``normal|crackle|wheeze|both``,
            for folder datasets the class folder name.
        crackle, wheeze: ICBHI flags (0/1), ``None`` for non-ICBHI data.
        split: ``train|val|test``.
        patient, recording, device, site, mode: recording metadata (``None`` if unknown).
        age (years), sex (``"M"|"F"``), bmi (kg/m^2), diagnosis: patient metadata.
        sample_rate: native sample rate of `audio` in Hz.
        source: ``real|synthetic``.
        generator: for synthetic cycles: backend, model, prompt, seed, steps, ...
        meta: free-form extra fields (folder groups, filename-pattern fields).
    """

    id: str
    audio: str
    start: float
    end: float
    label: str
    split: str
    crackle: int | None = None
    wheeze: int | None = None
    patient: str | None = None
    recording: str | None = None
    device: str | None = None
    site: str | None = None
    mode: str | None = None
    age: float | None = None
    sex: str | None = None
    bmi: float | None = None
    diagnosis: str | None = None
    sample_rate: int | None = None
    source: str = "real"
    generator: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        """Segment length in seconds."""
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cycle:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}")
        missing = {"id", "audio", "start", "end", "label", "split"} - set(d)
        if missing:
            raise ValueError(f"missing field(s) {sorted(missing)}")
        return cls(**d)

    def validate(self) -> None:
        """Raise ValueError when a field is out of its domain."""
        if not isinstance(self.id, str) or not self.id:
            raise ValueError("id must be a non-empty string")
        if not isinstance(self.audio, str) or not self.audio:
            raise ValueError(f"{self.id}: audio must be a non-empty path")
        for name in ("start", "end"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{self.id}: {name} must be a finite number, got {v!r}")
        if self.start < 0 or self.end <= self.start:
            raise ValueError(f"{self.id}: need 0 <= start < end, got {self.start}..{self.end}")
        if self.split not in SPLITS:
            raise ValueError(f"{self.id}: split must be one of {SPLITS}, got {self.split!r}")
        if self.source not in SOURCES:
            raise ValueError(f"{self.id}: source must be one of {SOURCES}, got {self.source!r}")
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(f"{self.id}: label must be a non-empty string")
        if self.crackle is not None or self.wheeze is not None:
            if self.crackle not in (0, 1) or self.wheeze not in (0, 1):
                raise ValueError(f"{self.id}: crackle and wheeze must both be 0 or 1")
            if self.label != icbhi_label(self.crackle, self.wheeze):
                raise ValueError(
                    f"{self.id}: label {self.label!r} disagrees with crackle={self.crackle} "
                    f"wheeze={self.wheeze}")
        if self.sex is not None and self.sex not in ("M", "F"):
            raise ValueError(f"{self.id}: sex must be 'M', 'F' or null, got {self.sex!r}")
        if self.source == "synthetic" and not self.generator:
            raise ValueError(f"{self.id}: synthetic cycles need a generator record")


def _dumps(c: Cycle) -> str:
    return json.dumps(c.to_dict(), ensure_ascii=False, separators=(",", ":"), sort_keys=False)


def iter_manifest(path: str | os.PathLike) -> Iterator[Cycle]:
    """Yield the cycles of a JSONL manifest; a bad line raises DataError naming file:line."""
    path = Path(path)
    try:
        fh = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("manifest not found", path) from None
    except OSError as e:
        raise DataError(f"cannot read manifest ({e.strerror})", path) from None
    with fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                c = Cycle.from_dict(json.loads(line))
                c.validate()
            except (ValueError, TypeError) as e:
                raise DataError(f"invalid manifest record: {e}", path, lineno) from None
            yield c


def read_manifest(path: str | os.PathLike) -> list[Cycle]:
    """Read and validate a whole manifest (ids must be unique)."""
    cycles = list(iter_manifest(path))
    validate_manifest(cycles, path)
    return cycles


def validate_manifest(cycles: Iterable[Cycle], path: str | os.PathLike | None = None) -> None:
    """Validate every record and the uniqueness of ids; raise DataError on the first problem."""
    seen: set[str] = set()
    for c in cycles:
        try:
            c.validate()
        except ValueError as e:
            raise DataError(f"invalid manifest record: {e}", path) from None
        if c.id in seen:
            raise DataError(f"duplicate id {c.id!r}", path)
        seen.add(c.id)


def write_manifest(path: str | os.PathLike, cycles: Iterable[Cycle]) -> str:
    """Validate and atomically write a manifest; return its sha256 (hex)."""
    cycles = list(cycles)
    validate_manifest(cycles, path)
    text = "".join(_dumps(c) + "\n" for c in cycles)
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    # An identical file is left alone (no rewrite, mtime kept).
    if not (os.path.isfile(path) and file_sha256(path) == sha):
        atomic_write_text(path, text)
    return sha


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ManifestWriter:
    """Append records to a JSONL manifest, skipping ids already written.

    Re-opening a partially written manifest (an interrupted job) keeps its complete
    lines, drops a torn last line, and lets the job continue where it stopped::

        with ManifestWriter(path) as w:
            for item in work:
                if item.id in w:
                    continue
                w.write(make_cycle(item))
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ids: set[str] = set()
        good = b""
        if self.path.exists():
            raw = self.path.read_bytes()
            # Keep only complete, parseable lines: a kill mid-write leaves a torn tail.
            keep = []
            for line in raw.split(b"\n"):
                if not line.strip():
                    continue
                try:
                    c = Cycle.from_dict(json.loads(line))
                except (ValueError, TypeError):
                    break
                if c.id not in self.ids:
                    self.ids.add(c.id)
                    keep.append(line)
            good = b"".join(x + b"\n" for x in keep)
            if good != raw:
                self.path.write_bytes(good)
        self._fh = self.path.open("a", encoding="utf-8")

    def __contains__(self, cycle_id: str) -> bool:
        return cycle_id in self.ids

    def write(self, cycle: Cycle) -> bool:
        """Append `cycle` unless its id is present; return True when written."""
        if cycle.id in self.ids:
            return False
        cycle.validate()
        self._fh.write(_dumps(cycle) + "\n")
        self._fh.flush()
        self.ids.add(cycle.id)
        return True

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
