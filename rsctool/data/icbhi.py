"""Reader for the ICBHI 2017 Respiratory Sound Database (official layout).

Layout: one folder with, per recording, ``<patient>_<index>_<site>_<mode>_<device>.wav``
(or ``.flac``, ``.ogg``, ``.mp3``) and a same-stem ``.txt`` annotation with one breathing
cycle per line, ``start<TAB>end<TAB>crackles<TAB>wheezes`` (seconds, seconds, 0/1, 0/1). The
challenge metadata files (split, diagnosis, demographics) sit in that folder or its parent;
the Kaggle mirror's names for them are recognised too. The Kaggle mirror has no split
file: the official split list ships with rsctool (`BUILTIN_SPLIT`) and is used then.

`read_icbhi` returns one `Cycle` per annotation line. In strict mode the first defect
raises `DataError` naming ``file:line``; in lenient mode each defect becomes a
`Problem`, the bad cycle (or recording) is skipped and reading goes on.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rsctool.audio import AUDIO_EXTENSIONS
from rsctool.data.manifest import Cycle, icbhi_label
from rsctool.data.splits import (
    Problem,
    ProblemSink,
    carve_validation,
    parse_split_spec,
    patient_split,
)
from rsctool.errors import ConfigError, DataError

__all__ = [
    "AUDIO_SUFFIXES",
    "BUILTIN_SPLIT",
    "END_TOLERANCE_S",
    "Problem",
    "builtin_split_path",
    "find_metadata_files",
    "is_icbhi_dir",
    "parse_recording_name",
    "read_annotation",
    "read_demographics",
    "read_diagnosis",
    "read_icbhi",
    "read_split_file",
]

#: ``<patient>_<index>_<site>_<mode>_<device>``, e.g. ``101_1b1_Al_sc_Meditron``.
RECORDING_RE = re.compile(
    r"^(?P<patient>\d+)_(?P<index>[0-9A-Za-z]+)_(?P<site>[A-Za-z]+)_(?P<mode>[A-Za-z]+)"
    r"_(?P<device>[0-9A-Za-z]+)$")

#: The codes of the ICBHI 2017 recording names (chest location, acquisition mode,
#: stethoscope). Other codes are refused unless the reader is told to accept them
#: (``analyze --allow-unknown-codes``, for datasets recorded like ICBHI with other
#: hardware): a typo such as ``Meditorn`` would otherwise become a fifth device.
ICBHI_CODES: dict[str, tuple[str, ...]] = {
    "site": ("Tc", "Al", "Ar", "Pl", "Pr", "Ll", "Lr"),
    "mode": ("sc", "mc"),
    "device": ("AKGC417L", "LittC2SE", "Litt3200", "Meditron"),
}
#: The chest-location code of `rsctool synth` outputs (``901_00007_Syn_sc_diffwave``):
#: their device is the generator, so any device code is accepted with it.
SYNTHETIC_SITE = "Syn"

#: Audio suffixes of recordings, in order of preference when a stem has several (the one
#: list every stage reads, `rsctool.audio.AUDIO_EXTENSIONS`).
AUDIO_SUFFIXES = AUDIO_EXTENSIONS

#: Overrun (s) of a cycle's end past its audio below which it is rounding, not a defect
#: (annotation times are rounded to the millisecond; some files are a few samples shorter
#: than their last cycle). Every cycle that ends past its audio is clamped to the audio
#: end and kept, as the ICBHI AST papers' public code does (it keeps all 6,898 cycles);
#: `read_icbhi` lists them in ``info["cycles_clamped"]`` and analyze counts them.
END_TOLERANCE_S = 0.05

# Metadata file names (lower case; matched case-insensitively), preferred name first.
METADATA_NAMES: dict[str, tuple[str, ...]] = {
    "split": ("icbhi_challenge_train_test.txt",),
    "diagnosis": ("icbhi_challenge_diagnosis.txt", "patient_diagnosis.csv",
                  "patient_diagnosis.txt"),
    "demographics": ("icbhi_challenge_demographic_information.txt", "demographic_info.txt"),
}

#: The official ICBHI 2017 challenge split (920 recording names and train/test, as in
#: ``ICBHI_challenge_train_test.txt``), shipped in ``rsctool/resources`` for datasets
#: without a split file (the Kaggle mirror). Recorded as ``builtin:<this name>``.
BUILTIN_SPLIT = "icbhi_official_split.txt"

_HEADER_WORDS = {"id", "pid", "patient", "patient_id", "patient id", "patient number"}


# --------------------------------------------------------------------------- names

def parse_recording_name(stem: str) -> dict[str, str]:
    """Split a recording name into ``patient, index, site, mode, device``.

    Raises:
        DataError: `stem` is not ``<patient>_<index>_<site>_<mode>_<device>``.
    """
    m = RECORDING_RE.match(stem)
    if m is None:
        raise DataError(f"recording name {stem!r} is not "
                        "<patient>_<index>_<site>_<mode>_<device> (e.g. 101_1b1_Al_sc_Meditron)")
    return m.groupdict()


def unknown_code(name: dict[str, str]) -> str | None:
    """The first of site, mode, device of a parsed name outside `ICBHI_CODES`, as a
    message, or None when all are ICBHI 2017 codes."""
    synthetic = name["site"] == SYNTHETIC_SITE  # its device is the generator: any code
    for field, known in ICBHI_CODES.items():
        if synthetic and field in ("site", "device"):
            continue
        if name[field] not in known:
            return (f"unknown {field} {name[field]!r} in the recording name (ICBHI 2017: "
                    f"{', '.join(known)}; analyze --allow-unknown-codes accepts others)")
    return None


def _prefix(stem: str) -> str | None:
    """``patient_index_site_mode`` of a recording name (None if it is not one)."""
    m = RECORDING_RE.match(stem)
    return None if m is None else stem.rsplit("_", 1)[0]


# --------------------------------------------------------------------------- text io

def _text_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file (BOM dropped, CRLF/CR/LF all accepted)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except IsADirectoryError:
        raise DataError("is a folder, not a file", path) from None
    except OSError as e:
        raise DataError(f"cannot read file ({e.strerror})", path) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError("not a UTF-8 text file", path, line) from None
    return text.splitlines()


def _number(token: str, what: str) -> float:
    """Parse a finite float; ValueError carries the user-facing message."""
    try:
        value = float(token)
    except ValueError:
        raise ValueError(f"{what} {token!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {token!r}")
    return value


def _optional_number(token: str, what: str) -> float | None:
    if token.upper() == "NA":
        return None
    return _number(token, what)


# --------------------------------------------------------------------------- annotations

def _annotation_rows(path: Path, sink: ProblemSink
                     ) -> list[tuple[int, int, float, float, int, int]]:
    """``(line, cycle_index, start, end, crackle, wheeze)`` of every good line.

    `cycle_index` counts non-blank lines (0-based), bad ones included, so a cycle keeps
    its id whether or not an earlier line of its file is skipped.
    """
    try:
        lines = _text_lines(path)
    except DataError as e:
        sink.report_error(e)
        return []
    rows = []
    index = -1
    for lineno, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens:
            continue
        index += 1
        try:
            if len(tokens) != 4:
                raise ValueError(f"expected 4 columns (start end crackles wheezes), "
                                 f"got {len(tokens)}")
            start = _number(tokens[0], "start time")
            end = _number(tokens[1], "end time")
            if start < 0:
                raise ValueError(f"start time {start:g} s is negative")
            if end <= start:
                raise ValueError(f"end time {end:g} s is not after start time {start:g} s")
            flags = []
            for token, what in ((tokens[2], "crackles"), (tokens[3], "wheezes")):
                if token not in ("0", "1"):
                    raise ValueError(f"{what} flag must be 0 or 1, got {token!r}")
                flags.append(int(token))
        except ValueError as e:
            sink.report(str(e), path, lineno)
            continue
        rows.append((lineno, index, start, end, flags[0], flags[1]))
    if index < 0:
        sink.report("empty annotation file (no cycles)", path)
    return rows


def read_annotation(path: str | os.PathLike, *, strict: bool = True,
                    problems: list[Problem] | None = None
                    ) -> list[tuple[float, float, int, int]]:
    """Read one ICBHI annotation file.

    Returns:
        ``[(start_s, end_s, crackle, wheeze), ...]`` in file order.

    Raises:
        DataError (strict): ``file:line`` for a wrong column count, a non-numeric or
        non-finite time, start < 0, end <= start or a flag other than 0/1; an empty file.
        In lenient mode bad lines are recorded in `problems` and skipped.
    """
    sink = ProblemSink(strict, problems)
    return [(s, e, c, w) for _, _, s, e, c, w in _annotation_rows(Path(path), sink)]


# --------------------------------------------------------------------------- metadata files

def _split_rows(path: Path, sink: ProblemSink) -> dict[str, tuple[str, int]]:
    """``{recording: (split, line)}`` of a challenge split file."""
    rows: dict[str, tuple[str, int]] = {}
    for lineno, line in enumerate(_text_lines(path), 1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 2:
            sink.report(f"expected 2 columns (recording split), got {len(tokens)}", path,
                        lineno)
            continue
        name, value = tokens[0], tokens[1].lower()
        if value not in ("train", "test"):
            sink.report(f"split must be 'train' or 'test', got {tokens[1]!r}", path, lineno)
            continue
        if name in rows and rows[name][0] != value:
            sink.report(f"{name} is listed again with a different split "
                        f"(line {rows[name][1]} says {rows[name][0]})", path, lineno)
            continue
        rows.setdefault(name, (value, lineno))
    if not rows and sink.count == 0:
        sink.report("empty split file", path)
    return rows


def read_split_file(path: str | os.PathLike, *, strict: bool = True,
                    problems: list[Problem] | None = None) -> dict[str, str]:
    """Read ``ICBHI_challenge_train_test.txt``: ``{recording name: "train"|"test"}``.

    Columns separated by tabs or spaces; CRLF and a BOM are fine. A line with other
    than two columns, a split other than train/test (any case), a name listed twice
    with different splits, or an empty file raises `DataError` (``file:line``).
    """
    sink = ProblemSink(strict, problems)
    return {k: v for k, (v, _) in _split_rows(Path(path), sink).items()}


def _is_header(first: str) -> bool:
    return first.strip().strip('"').lower() in _HEADER_WORDS


def read_demographics(path: str | os.PathLike, *, strict: bool = True,
                      problems: list[Problem] | None = None) -> dict[str, dict[str, Any]]:
    """Read the challenge demographics file.

    Columns (tabs or spaces): patient id, age (years), sex (M/F), adult BMI (kg/m^2),
    child weight (kg), child height (cm); ``NA`` marks a missing value.

    Returns:
        ``{pid: {"age", "sex", "bmi", "adult_bmi", "child_weight", "child_height"}}``
        where `bmi` is the adult BMI, else weight / height_m^2 when both child values
        exist, else None; missing values are None.
    """
    path = Path(path)
    sink = ProblemSink(strict, problems)
    out: dict[str, dict[str, Any]] = {}
    first = True
    for lineno, line in enumerate(_text_lines(path), 1):
        tokens = line.split()
        if not tokens:
            continue
        if first and _is_header(tokens[0]):
            first = False
            continue
        first = False
        try:
            if len(tokens) != 6:
                raise ValueError("expected 6 columns (pid age sex adult_bmi child_weight "
                                 f"child_height), got {len(tokens)}")
            pid = tokens[0]
            age = _optional_number(tokens[1], "age")
            if age is not None and age < 0:
                raise ValueError(f"age {age:g} is negative")
            sex = tokens[2].upper()
            if sex == "NA":
                sex = None
            elif sex not in ("M", "F"):
                raise ValueError(f"sex must be M, F or NA, got {tokens[2]!r}")
            values = {}
            for token, what in zip(tokens[3:], ("adult BMI", "child weight", "child height"),
                                   strict=True):
                v = _optional_number(token, what)
                if v is not None and v <= 0:
                    raise ValueError(f"{what} must be positive, got {token!r}")
                values[what] = v
            if pid in out:
                raise ValueError(f"patient {pid} is listed twice")
        except ValueError as e:
            sink.report(str(e), path, lineno)
            continue
        adult, weight, height = values["adult BMI"], values["child weight"], \
            values["child height"]
        bmi = adult
        if bmi is None and weight is not None and height is not None:
            bmi = weight / (height / 100.0) ** 2
        out[pid] = {"age": age, "sex": sex, "bmi": bmi, "adult_bmi": adult,
                    "child_weight": weight, "child_height": height}
    return out


def read_diagnosis(path: str | os.PathLike, *, strict: bool = True,
                   problems: list[Problem] | None = None) -> dict[str, str]:
    """Read a diagnosis file: ``{pid: diagnosis}``.

    Accepts the challenge file (``pid<TAB>diagnosis``), whitespace separated columns and
    the Kaggle CSV (``ID,CLASS`` header, comma separated).
    """
    path = Path(path)
    sink = ProblemSink(strict, problems)
    out: dict[str, str] = {}
    first = True
    for lineno, line in enumerate(_text_lines(path), 1):
        if not line.strip():
            continue
        if "\t" in line:
            parts = [p.strip() for p in line.split("\t") if p.strip()]
        elif "," in line:
            parts = [p.strip().strip('"').strip() for p in line.split(",")]
            parts = [p for p in parts if p]
        else:
            parts = line.split(None, 1)
        if first and parts and _is_header(parts[0]):
            first = False
            continue
        first = False
        if len(parts) != 2:
            sink.report(f"expected 2 columns (pid diagnosis), got {len(parts)}", path, lineno)
            continue
        pid, diagnosis = parts[0], parts[1].strip()
        if pid in out and out[pid] != diagnosis:
            sink.report(f"patient {pid} is listed again with another diagnosis", path, lineno)
            continue
        out[pid] = diagnosis
    return out


def builtin_split_path() -> Path:
    """The packaged official split list (`BUILTIN_SPLIT`)."""
    from importlib import resources

    return Path(str(resources.files("rsctool") / "resources" / BUILTIN_SPLIT))


def find_metadata_files(root: str | os.PathLike, extra_dirs: Iterable[str | os.PathLike] = ()
                        ) -> dict[str, Path | None]:
    """Locate the challenge metadata files in `root`, its parent, then `extra_dirs`.

    Returns:
        ``{"split": path|None, "diagnosis": path|None, "demographics": path|None}``.
        Names are matched case-insensitively; the official names win over the Kaggle
        ones (``patient_diagnosis.csv``, ``demographic_info.txt``), `root` over its parent
        and the parent over `extra_dirs` (e.g. the folders between the folder that
        `analyze` was given and the ICBHI folder it found below it).
    """
    root = Path(root).resolve()
    found: dict[str, Path | None] = dict.fromkeys(METADATA_NAMES)
    folders = [root, root.parent]
    for extra in extra_dirs:
        folder = Path(extra).resolve()
        if folder not in folders:
            folders.append(folder)
    for folder in folders:
        try:
            entries = {e.name.lower(): Path(e.path) for e in os.scandir(folder) if e.is_file()}
        except OSError:
            continue
        for kind, names in METADATA_NAMES.items():
            if found[kind] is None:
                found[kind] = next((entries[n] for n in names if n in entries), None)
    return found


# --------------------------------------------------------------------------- scanning

def _scan(root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """``({stem: annotation}, {stem: audio})`` of files named like recordings."""
    texts: dict[str, Path] = {}
    audio: dict[str, tuple[int, Path]] = {}
    with os.scandir(root) as it:
        for entry in it:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            stem, suffix = os.path.splitext(entry.name)
            if RECORDING_RE.match(stem) is None:
                continue  # README.txt, the split file, ...: not recordings
            suffix = suffix.lower()
            if suffix == ".txt":
                texts[stem] = root / entry.name
            elif suffix in AUDIO_SUFFIXES:
                rank = AUDIO_SUFFIXES.index(suffix)
                if stem not in audio or rank < audio[stem][0]:
                    audio[stem] = (rank, root / entry.name)
    return texts, {k: p for k, (_, p) in audio.items()}


def is_icbhi_dir(root: str | os.PathLike) -> bool:
    """True when `root` holds at least one ICBHI-named ``.txt`` with a same-stem audio file."""
    root = Path(root)
    if not root.is_dir():
        return False
    try:
        texts, audio = _scan(root)
    except OSError:
        return False
    return any(stem in audio for stem in texts)


def _resolve_official(split_rows: dict[str, tuple[str, int]], stems: Iterable[str],
                      split_path: Path, sink: ProblemSink,
                      aliases: list[dict[str, Any]] | None = None,
                      note: str = "") -> dict[str, str]:
    """Map split-file names onto recordings: ``{stem: "train"|"test"}``.

    A name without a file is matched to the unique recording with the same
    ``patient_index_site_mode`` prefix that the split file does not name itself (the
    official file says ``226_1b1_Pl_sc_Meditron`` for ``226_1b1_Pl_sc_LittC2SE``).
    A name without a file whose only same-prefix recording the file already lists with
    the same side is a known alias, not a problem (the widely copied 921-line variant
    lists both names): it is appended to `aliases` as ``{"name", "recording", "split",
    "line"}``. `note` is appended to each problem's message.
    """
    stems = set(stems)
    by_prefix: dict[str, list[str]] = {}
    for stem in stems:
        by_prefix.setdefault(_prefix(stem) or "", []).append(stem)
    out = {name: value for name, (value, _) in split_rows.items() if name in stems}
    unnamed_by_prefix: dict[str, list[str]] = {}
    for stem in sorted(stems - set(out)):
        unnamed_by_prefix.setdefault(_prefix(stem) or "", []).append(stem)
    missing = sorted(((line, name, value) for name, (value, line) in split_rows.items()
                      if name not in stems))
    claims: dict[str, list[str]] = {}
    for _, name, _ in missing:
        candidates = unnamed_by_prefix.get(_prefix(name) or "\0", [])
        if len(candidates) == 1:
            claims.setdefault(candidates[0], []).append(name)
    for line, name, value in missing:
        candidates = unnamed_by_prefix.get(_prefix(name) or "\0", [])
        same_prefix = by_prefix.get(_prefix(name) or "\0", [])
        if len(candidates) == 1 and len(claims[candidates[0]]) == 1:
            out[candidates[0]] = value
        elif (not candidates and len(same_prefix) == 1 and same_prefix[0] in split_rows
                and split_rows[same_prefix[0]][0] == value):
            if aliases is not None:
                aliases.append({"name": name, "recording": same_prefix[0], "split": value,
                                "line": line})
        else:
            sink.report(f"split file names {name}, but there is no such recording "
                        f"(and no unique same-prefix recording it could mean){note}",
                        split_path, line)
    return out


def _metadata_path(given: str | os.PathLike | None, found: Path | None, what: str
                   ) -> Path | None:
    if given is None:
        return found
    path = Path(given)
    if not path.is_file():
        raise DataError(f"{what} file not found", path)
    return path


# --------------------------------------------------------------------------- reader

def read_icbhi(root: str | os.PathLike, *, split: str = "official", val_fraction: float = 0.1,
               seed: int = 0, strict: bool = True, problems: list[Problem] | None = None,
               split_file: str | os.PathLike | None = None,
               demographics: str | os.PathLike | None = None,
               diagnosis: str | os.PathLike | None = None,
               check_audio: bool = True, allow_unknown_codes: bool = False,
               metadata_dirs: Iterable[str | os.PathLike] = (),
               info: dict[str, Any] | None = None) -> list[Cycle]:
    """Read an ICBHI 2017 dataset folder into cycles.

    Args:
        root: folder with ``<name>.txt`` annotations and ``<name>.wav`` audio (or another
            of `AUDIO_SUFFIXES`).
        split: ``official`` (the challenge split file) or ``patients:<train>``
            (whole patients at random, `seed`).
        val_fraction: share of the train cycles moved to ``val`` by whole patients
            (seeded by `seed`); 0 keeps no validation split. Test is never touched.
        seed: seed of the patient split and of the validation carve.
        strict: raise the first problem as `DataError`; else record it and skip.
        problems: receives `Problem` records in lenient mode.
        split_file, demographics, diagnosis: metadata files; default: found by
            `find_metadata_files` in `root`, its parent or `metadata_dirs`
            (demographics and diagnosis are optional: their fields are None when
            absent). Without a split file the official split uses the packaged list
            (`BUILTIN_SPLIT`), checked against the recordings found like a file.
        check_audio: read each audio header (`rsctool.audio.audio_info`) for the
            sample rate and to check that cycles lie inside the audio. The audio file
            must exist either way.
        allow_unknown_codes: accept site, mode and device codes outside `ICBHI_CODES`
            (kept as named); by default such a recording is a problem.
        metadata_dirs: more folders to look for metadata files in (after `root` and
            its parent).
        info: receives ``split_file`` (the split file used: its path, or
            ``builtin:<BUILTIN_SPLIT>``; None for a patient split), ``split_source``
            (``option``, ``folder``, ``builtin`` or None), ``split_aliases`` (known
            aliases in the split file, see `_resolve_official`) and ``cycles_clamped``
            (``{"id", "end", "audio_end"}`` of each cycle whose annotated end lies past
            its audio: clamped to the audio end and kept; only with `check_audio`).

    Returns:
        Cycles sorted by recording and cycle index; ids ``f"{stem}_{i:03d}"`` with `i`
        the 0-based line index of the cycle in its annotation file.

    Raises:
        DataError: bad or missing files (strict mode: also any per-recording problem).
        ConfigError: an unknown split spec or a bad `val_fraction`.
    """
    spec = parse_split_spec(split)
    if spec.kind == "random":
        raise ConfigError(f"split {split!r}: a cycle-wise random split leaks patients between "
                          "train and test on ICBHI; use official or patients:TRAIN")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    root = Path(root)
    if not root.exists():
        raise DataError("dataset folder not found", root)
    if not root.is_dir():
        raise DataError("not a folder", root)
    root = root.resolve()
    sink = ProblemSink(strict, problems)

    found = find_metadata_files(root, metadata_dirs)
    split_path = _metadata_path(split_file, found["split"], "split")
    demo_path = _metadata_path(demographics, found["demographics"], "demographics")
    diag_path = _metadata_path(diagnosis, found["diagnosis"], "diagnosis")
    split_source = None
    split_label: str | None = None
    if spec.kind == "official":
        split_source = "option" if split_file is not None else "folder"
        if split_path is None:  # the Kaggle mirror has none: the packaged official list
            split_path, split_source = builtin_split_path(), "builtin"
        split_label = f"builtin:{BUILTIN_SPLIT}" if split_source == "builtin" \
            else str(split_path)
    aliases: list[dict[str, Any]] = []
    clamped: list[dict[str, Any]] = []
    if info is not None:
        info.clear()
        info.update(split_file=split_label, split_source=split_source,
                    split_aliases=aliases, cycles_clamped=clamped)

    texts, audio = _scan(root)
    if not texts:
        raise DataError("no ICBHI annotation files (<patient>_<index>_<site>_<mode>_"
                        "<device>.txt) found", root)
    for stem in sorted(set(audio) - set(texts)):
        sink.report("audio file has no annotation file (.txt)", audio[stem])
    stems = []
    for stem in sorted(texts):
        if stem in audio:
            stems.append(stem)
        else:
            sink.report("annotation file has no audio file "
                        f"({', '.join(AUDIO_SUFFIXES)})", texts[stem])

    assigned: dict[str, str] | None = None
    if spec.kind == "official":
        assert split_path is not None
        assigned, stems = _official_split(stems, texts, audio, split_path, split_source,
                                          sink, aliases)

    demo = read_demographics(demo_path, strict=strict, problems=problems) \
        if demo_path is not None else {}
    diag = read_diagnosis(diag_path, strict=strict, problems=problems) \
        if diag_path is not None else {}

    cycles: list[Cycle] = []
    for stem in stems:
        cycles.extend(_recording_cycles(stem, texts[stem], audio[stem],
                                        assigned[stem] if assigned is not None else "train",
                                        demo, diag, check_audio, sink,
                                        allow_unknown_codes, clamped))
    if not cycles:
        raise DataError("no usable cycles found", root)
    if spec.kind == "patients":
        cycles = patient_split(cycles, spec.train, seed)
    return carve_validation(cycles, val_fraction, seed)


def _official_split(stems: list[str], texts: dict[str, Path], audio: dict[str, Path],
                    split_path: Path, split_source: str | None, sink: ProblemSink,
                    aliases: list[dict[str, Any]]) -> tuple[dict[str, str], list[str]]:
    """``({stem: split} from the split file, the stems it names)``; a recording it does
    not name is a problem (reported to `sink`)."""
    rows = _split_rows(split_path, sink)
    # resolve against every recording with either file, so that a recording whose
    # audio or annotation is missing is reported once (above), not again as an
    # unknown split-file name
    note = ("; this is the official ICBHI 2017 split list built into rsctool, used "
            "because the dataset folder has no ICBHI_challenge_train_test.txt: pass "
            "your own with --split-file PATH, or use --split patients:0.6"
            ) if split_source == "builtin" else ""
    assigned = _resolve_official(rows, set(texts) | set(audio), split_path, sink,
                                 aliases, note)
    kept = []
    for stem in stems:
        if stem in assigned:
            kept.append(stem)
        else:
            sink.report(f"recording is not named in the split file {split_path}{note}",
                        texts[stem])
    return assigned, kept


def _recording_cycles(stem: str, text: Path, audio: Path, split: str,
                      demo: dict[str, dict[str, Any]], diag: dict[str, str],
                      check_audio: bool, sink: ProblemSink,
                      allow_unknown_codes: bool = False,
                      clamped: list[dict[str, Any]] | None = None) -> list[Cycle]:
    name = parse_recording_name(stem)
    if not allow_unknown_codes and (problem := unknown_code(name)) is not None:
        sink.report(problem, text)
        return []
    duration: float | None = None
    sample_rate: int | None = None
    if check_audio:
        from rsctool.audio import audio_info

        try:
            info = audio_info(audio)
        except DataError as e:
            sink.report_error(e)
            return []
        duration, sample_rate = info.duration, info.sample_rate
    rows = _annotation_rows(text, sink)
    patient = name["patient"]
    person = demo.get(patient, {})
    out = []
    for lineno, index, start, end, crackle, wheeze in rows:
        if duration is not None:
            if start >= duration:
                # no audio at all to keep (the papers' code would slice an empty cycle)
                sink.report(f"cycle starts at {start:g} s, after the end of the audio "
                            f"({duration:.3f} s, {audio.name})", text, lineno)
                continue
            if end > duration:  # clamped and kept, as the papers' public code does
                if clamped is not None:
                    clamped.append({"id": f"{stem}_{index:03d}", "end": end,
                                    "audio_end": round(duration, 6)})
                end = duration
        out.append(Cycle(
            id=f"{stem}_{index:03d}", audio=str(audio), start=start, end=end,
            label=icbhi_label(crackle, wheeze), split=split, crackle=crackle, wheeze=wheeze,
            patient=patient, recording=stem, device=name["device"], site=name["site"],
            mode=name["mode"], age=person.get("age"), sex=person.get("sex"),
            bmi=person.get("bmi"), diagnosis=diag.get(patient), sample_rate=sample_rate))
    return out
