"""Which dataset layout a folder holds, for ``rsctool analyze --format auto``.

Real downloads rarely are the dataset folder itself: the official ICBHI 2017 archive
unpacks into ``ROOT/ICBHI_final_database/`` with the challenge txt files beside it, the
Kaggle mirror into ``Respiratory_Sound_Database/audio_and_txt_files/``. A folder like
that also looks like a ``<class>/**/*.wav`` folder dataset with one class, and SPRSound
(``train2022_wav/``, ``test2022_wav/``, JSON annotations in sibling folders) like one
whose classes are its splits. `resolve_layout` finds ICBHI files a few levels down,
recognises SPRSound by its JSON annotations named ``<patient>_<age>_<gender>_<location>_
<recording>``, and refuses, naming what it found and the ``--format`` that reads it,
every other tree that a folder-dataset guess would misread.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from rsctool.errors import DataError

__all__ = ["MAX_ICBHI_DEPTH", "Survey", "resolve_layout", "split_like", "survey"]

#: How many folder levels below the given folder ICBHI files are looked for
#: (``ICBHI_final_database``: 1; ``Respiratory_Sound_Database/audio_and_txt_files``: 2;
#: the Kaggle archive's doubled ``Respiratory_Sound_Database``: 3).
MAX_ICBHI_DEPTH = 3

#: Sub-folder names that are splits, not classes (``train``, ``test2022_wav``, ``val``).
_SPLIT_RE = re.compile(r"^(train|test|val|valid|validation|dev)(?![a-z])", re.IGNORECASE)

_AUDIO = (".wav", ".flac", ".ogg")

#: In a DataError with ``field="format"`` (`rsctool.errors.UserError`'s ``{field}``).
FOLDER_HINT = "{field} folder is for <class>/**/*.wav (one sub-folder per class)"


def split_like(name: str) -> bool:
    """Whether a folder name reads as a split (``train*``, ``test*``, ``val*``, ``dev*``)."""
    return _SPLIT_RE.match(name) is not None


@dataclass
class Survey:
    """What a walk of a dataset folder found.

    Attributes:
        icbhi_dirs: ``(depth, folder)`` of folders with ICBHI-named ``.txt`` annotations
            next to same-stem audio, below the root (depth >= 1).
        txt_dirs: folders with ``.txt`` files next to same-stem audio whose names are
            not ICBHI recording names.
        json_dirs: folders with ``.json`` files named like an audio file of the tree
            (SPRSound keeps them in sibling folders).
        split_dirs: first-level sub-folders named like splits.
        class_dirs: first-level sub-folders with audio under them.
    """

    icbhi_dirs: list[tuple[int, Path]] = field(default_factory=list)
    txt_dirs: list[Path] = field(default_factory=list)
    json_dirs: list[Path] = field(default_factory=list)
    split_dirs: list[str] = field(default_factory=list)
    class_dirs: list[str] = field(default_factory=list)


def survey(root: str | os.PathLike) -> Survey:
    """Walk `root` (hidden entries skipped, symlinked folders not followed) once."""
    from rsctool.data.icbhi import RECORDING_RE

    root = Path(root)
    out = Survey()
    audio_stems: set[str] = set()
    json_by_dir: dict[Path, set[str]] = {}
    classes: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = Path(dirpath)
        rel = folder.relative_to(root).parts
        depth = len(rel)
        if depth == 0:
            out.split_dirs = [d for d in dirnames if split_like(d)]
        stems: dict[str, set[str]] = {}
        for name in filenames:
            if name.startswith("."):
                continue
            stem, suffix = os.path.splitext(name)
            stems.setdefault(suffix.lower(), set()).add(stem)
        audio = set().union(*(stems.get(s, set()) for s in _AUDIO))
        if audio and depth >= 1:
            classes.add(rel[0])
        audio_stems |= audio
        if stems.get(".json"):
            json_by_dir[folder] = stems[".json"]
        paired = stems.get(".txt", set()) & audio
        if paired:
            if any(RECORDING_RE.match(s) for s in paired):
                if depth >= 1:
                    out.icbhi_dirs.append((depth, folder))
            else:
                out.txt_dirs.append(folder)
    out.json_dirs = sorted(d for d, names in json_by_dir.items() if names & audio_stems)
    out.class_dirs = sorted(classes)
    return out


def _names(folders: list[Path], root: Path, limit: int = 3) -> str:
    shown = [p.relative_to(root).as_posix() + "/" for p in folders[:limit]]
    more = f" and {len(folders) - limit} more" if len(folders) > limit else ""
    return ", ".join(shown) + more


def resolve_layout(root: str | os.PathLike, fmt: str) -> tuple[str, Path]:
    """The format and folder that ``analyze ROOT --format FMT`` reads.

    Args:
        root: the folder the user gave.
        fmt: ``auto``, ``icbhi``, ``folder`` or ``sprsound``.

    Returns:
        ``(format, folder)``: `folder` is `root` itself, or, for ICBHI data, the one
        folder up to `MAX_ICBHI_DEPTH` levels below it that holds ICBHI recordings.

    Raises:
        DataError: (auto) no known layout, several ICBHI folders, or a tree that a
            folder-dataset guess would misread: JSON annotations not named as SPRSound's,
            sub-folders named like splits, ``.txt`` annotations next to audio, a single
            class folder. Each message names what was found and the ``--format`` that
            reads it.
    """
    from rsctool.data.icbhi import is_icbhi_dir

    root = Path(root)
    if fmt in ("folder", "sprsound"):
        return fmt, root
    if is_icbhi_dir(root):
        return "icbhi", root
    found = survey(root)
    if found.icbhi_dirs:
        shallowest = min(d for d, _ in found.icbhi_dirs)
        top = [p for d, p in found.icbhi_dirs if d == shallowest]
        if len(top) == 1 and shallowest <= MAX_ICBHI_DEPTH:
            return "icbhi", top[0]
        where = "several folders" if len(top) > 1 else \
            f"a folder more than {MAX_ICBHI_DEPTH} levels down"
        raise DataError(f"ICBHI recordings in {where} ({_names(top, root)}); run analyze "
                        "on the folder you mean ({field} icbhi reads it)", root, field="format")
    if fmt == "icbhi":
        return fmt, root  # the reader says what is missing
    if found.json_dirs:
        from rsctool.data.sprsound import is_sprsound_dir

        if is_sprsound_dir(root):
            return "sprsound", root
        raise DataError(
            f"found JSON annotations named like its audio files (in "
            f"{_names(found.json_dirs, root)}), but not named <patient>_<age>_<gender>_"
            f"<location>_<recording> as SPRSound's ({{field}} sprsound reads those); "
            f"{FOLDER_HINT}: pass it if this is one", root, field="format")
    if found.split_dirs:
        raise DataError(
            f"its sub-folders are named like splits ({', '.join(found.split_dirs[:4])}), not "
            f"classes, so it is not guessed to be a folder dataset; {FOLDER_HINT} "
            "(pass {field} folder if these really are the classes)", root, field="format")
    if found.txt_dirs:
        raise DataError(
            f"found .txt annotation files next to same-name audio (in "
            f"{_names(found.txt_dirs, root)}), ICBHI style, but not named "
            "<patient>_<index>_<site>_<mode>_<device>; {field} icbhi reads ICBHI-named "
            f"files; {FOLDER_HINT}: pass it if this is one", root, field="format")
    if not found.class_dirs:
        raise DataError("no ICBHI annotation files and no <class>/*.wav folders found "
                        "(use {field} to say which layout it is)", root, field="format")
    if len(found.class_dirs) == 1:
        raise DataError(
            f"only one class folder ({found.class_dirs[0]}/) holds audio: a folder dataset "
            f"needs two classes or more; {FOLDER_HINT}; {{field}} icbhi reads ICBHI 2017 "
            "data", root, field="format")
    return "folder", root
