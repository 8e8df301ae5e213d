"""Reader for folder datasets: ``root/<class>/**/*.wav|flac|ogg``.

Each audio file is one item covering the whole file. The first folder level is the
label; deeper folder levels are kept in ``meta["groups"]``. An optional file-name
pattern such as ``"{material}_{class}_{frequency}_{seq}"`` parses the file stem into
``meta`` fields, and `where` keeps only the files whose fields have given values
(e.g. ``{"frequency": "1000hz"}``). For example, with that pattern
``data/0_degree/plastic/plastic_0_degree_1000hz_1.wav`` becomes label ``0_degree`` with
``meta = {"groups": ["plastic"], "material": "plastic", "class": "0_degree",
"frequency": "1000hz", "seq": "1"}``.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsctool.audio import AUDIO_EXTENSIONS
from rsctool.data.manifest import Cycle
from rsctool.data.splits import Problem, ProblemSink, parse_split_spec, random_split
from rsctool.errors import ConfigError, DataError

__all__ = ["FOLDER_AUDIO_SUFFIXES", "NamePattern", "Problem", "is_folder_dir", "read_folder"]

#: The one list of audio suffixes every stage reads.
FOLDER_AUDIO_SUFFIXES = AUDIO_EXTENSIONS

#: Pattern fields that stand for the class folder name (matched literally, see NamePattern).
CLASS_FIELDS = ("class", "label")


@dataclass(frozen=True)
class NamePattern:
    """A compiled file-name pattern like ``{material}_{class}_{frequency}_{seq}``.

    Fields match any non-empty text (underscores included); literal text between them
    must appear as is. A ``{class}`` (or ``{label}``) field is matched against the
    file's class folder name literally, which makes names like
    ``plastic_0_degree_1000hz_1`` (class ``0_degree``) unambiguous.
    """

    text: str
    fields: tuple[str, ...]
    pieces: tuple[tuple[str, str | None], ...]  # (literal text, following field or None)

    @classmethod
    def parse(cls, text: str) -> NamePattern:
        """Raises ConfigError for bad syntax, duplicate, reserved or adjacent fields."""
        if not isinstance(text, str) or not text:
            raise ConfigError(f"name pattern must be a non-empty string, got {text!r}")
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as e:
            raise ConfigError(f"name pattern {text!r}: {e}") from None
        pieces: list[tuple[str, str | None]] = []
        fields: list[str] = []
        for i, (literal, field, spec, conv) in enumerate(parsed):
            if field is not None:
                if not field.isidentifier() or spec or conv:
                    raise ConfigError(f"name pattern {text!r}: field {{{field}}} must be a "
                                      "plain name like {material}")
                if field in fields:
                    raise ConfigError(f"name pattern {text!r}: field {{{field}}} appears twice")
                if field == "groups":
                    raise ConfigError(f"name pattern {text!r}: 'groups' is reserved "
                                      "(it holds the sub-folder names)")
                if i > 0 and not literal and parsed[i - 1][1] is not None:
                    raise ConfigError(f"name pattern {text!r}: fields must be separated by "
                                      "literal text (e.g. '_')")
                fields.append(field)
            pieces.append((literal, field))
        if not fields:
            raise ConfigError(f"name pattern {text!r} has no {{field}}")
        return cls(text, tuple(fields), tuple(pieces))

    def match(self, stem: str, label: str) -> dict[str, str] | None:
        """Fields parsed from a file stem, or None when it does not fit the pattern."""
        regex = ["^"]
        for literal, field in self.pieces:
            regex.append(re.escape(literal))
            if field is None:
                continue
            if field in CLASS_FIELDS:
                regex.append(f"(?P<{field}>{re.escape(label)})")
            else:
                regex.append(f"(?P<{field}>.+?)")
        regex.append("$")
        m = re.match("".join(regex), stem, flags=re.DOTALL)
        return None if m is None else m.groupdict()


def _is_split_name(name: str) -> bool:
    from rsctool.data.layout import split_like

    return split_like(name)


def _is_audio(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in \
        FOLDER_AUDIO_SUFFIXES


def _walk_audio(folder: Path):
    """Audio files under `folder` in sorted order, hidden files and folders skipped."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if _is_audio(name):
                yield Path(dirpath) / name


def _class_dirs(root: Path) -> list[Path]:
    return sorted(Path(e.path) for e in os.scandir(root)
                  if e.is_dir() and not e.name.startswith("."))


def is_folder_dir(root: str | os.PathLike) -> bool:
    """True when `root` has a class sub-folder with audio under it and is not an ICBHI folder.

    ICBHI folders are excluded so that the two detectors never both claim one folder.
    """
    from rsctool.data.icbhi import is_icbhi_dir

    root = Path(root)
    if not root.is_dir() or is_icbhi_dir(root):
        return False
    try:
        return any(next(_walk_audio(d), None) is not None for d in _class_dirs(root))
    except OSError:
        return False


def _normalise_where(where: Mapping[str, Any] | None, pattern: NamePattern | None
                     ) -> dict[str, set[str]]:
    if not where:
        return {}
    if pattern is None:
        raise ConfigError("a 'where' filter needs a name pattern that defines its fields")
    out = {}
    for key, value in where.items():
        if key not in pattern.fields:
            raise ConfigError(f"'where' field {key!r} is not in the name pattern "
                              f"{pattern.text!r} (fields: {', '.join(pattern.fields)})")
        values = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
        out[key] = {str(v) for v in values}
    return out


def read_folder(root: str | os.PathLike, *, split: str = "random:0.7:0.15", seed: int = 0,
                name_pattern: str | None = None, where: Mapping[str, Any] | None = None,
                group_by: str | None = None, strict: bool = True,
                problems: list[Problem] | None = None) -> list[Cycle]:
    """Read a ``root/<class>/**/*.wav|flac|ogg`` dataset: one item per file.

    Args:
        root: dataset folder; each non-hidden sub-folder is a class.
        split: ``random:<train>:<val>``, stratified by class (test gets the rest).
        seed: split seed (the same seed and files give the same split).
        name_pattern: e.g. ``"{material}_{class}_{frequency}_{seq}"``; its fields go into
            `meta` (strings). A file whose stem does not fit is a problem.
        where: ``{field: value}`` (or a list of accepted values): keep only matching
            files; fields must come from `name_pattern`.
        group_by: keep all files with the same value of this field on one side of the
            split: a `name_pattern` field (e.g. ``material``) or ``groups`` (the
            sub-folder path below the class folder). None: each file on its own.
        strict, problems: raise the first problem as `DataError`, or collect `Problem`
            records and skip the file.

    Returns:
        Items sorted by id: id = relative path without suffix with ``/`` -> ``__``;
        start 0, end = file duration (s); label = class folder; ``meta["groups"]`` =
        deeper folder names; patient None; recording = file stem; sample rate in Hz.

    Raises:
        DataError: missing folder, no audio, bad files (strict). ConfigError: bad spec,
        pattern or filter.
    """
    from rsctool.audio import audio_info

    spec = parse_split_spec(split)
    if spec.kind != "random":
        raise ConfigError(f"split {split!r}: folder datasets have neither an official split "
                          "nor patients; use random:TRAIN:VAL (e.g. random:0.7:0.15)")
    pattern = NamePattern.parse(name_pattern) if name_pattern is not None else None
    filters = _normalise_where(where, pattern)
    if group_by is not None:
        allowed = (*(pattern.fields if pattern is not None else ()), "groups")
        if group_by not in allowed:
            raise ConfigError(f"group-by field {group_by!r} is neither a name pattern field "
                              f"nor 'groups' (the sub-folders); choose one of "
                              f"{', '.join(allowed)}")
    root = Path(root)
    if not root.exists():
        raise DataError("dataset folder not found", root)
    if not root.is_dir():
        raise DataError("not a folder", root)
    root = root.resolve()
    sink = ProblemSink(strict, problems)

    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_file() and _is_audio(entry.name):
            sink.report("audio file outside a class folder (expected <class>/<file>)",
                        entry.path)

    cycles: list[Cycle] = []
    seen: dict[str, Path] = {}
    n_audio = 0
    for class_dir in _class_dirs(root):
        label = class_dir.name
        for path in _walk_audio(class_dir):
            n_audio += 1
            rel = path.relative_to(root)
            fields: dict[str, str] = {}
            if pattern is not None:
                parsed = pattern.match(path.stem, label)
                if parsed is None:
                    sink.report(f"file name {path.stem!r} does not match the name pattern "
                                f"{pattern.text!r}", path)
                    continue
                fields = parsed
            if any(fields.get(k) not in allowed for k, allowed in filters.items()):
                continue
            item_id = rel.with_suffix("").as_posix().replace("/", "__")
            if item_id in seen:
                sink.report(f"gives the same item id {item_id!r} as {seen[item_id]}", path)
                continue
            try:
                info = audio_info(path)
            except DataError as e:
                sink.report_error(e)
                continue
            seen[item_id] = path
            cycles.append(Cycle(
                id=item_id, audio=str(path), start=0.0, end=info.duration, label=label,
                split="train", recording=path.stem, sample_rate=info.sample_rate,
                meta={"groups": list(rel.parts[1:-1]), **fields}))
    if not cycles:
        if n_audio == 0:
            raise DataError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in class sub-folders "
                            "(expected <class>/**/<file>.wav)", root)
        if filters:
            raise DataError(f"no file matches the filter {where!r}", root)
        raise DataError("no usable audio files", root)
    labels = sorted({c.label for c in cycles})
    if len(labels) < 2:
        # one class trains nothing (validation scores a perfect 1.0): most often an
        # ICBHI or split folder read as a folder dataset
        from rsctool.data.icbhi import is_icbhi_dir

        what = ""
        if is_icbhi_dir(root / labels[0]):
            what = f" ({labels[0]}/ holds ICBHI 2017 recordings: --format icbhi reads them)"
        elif _is_split_name(labels[0]):
            what = f" ({labels[0]}/ is named like a split, not a class)"
        raise DataError(f"only one class ({labels[0]}){what}: a folder dataset needs two "
                        "classes or more, one sub-folder each (<class>/**/*.wav)", root)
    cycles.sort(key=lambda c: c.id)
    return random_split(cycles, spec.train, spec.val, seed, stratify=True, group_by=group_by)
