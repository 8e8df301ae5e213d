"""Reader for SPRSound (SJTU paediatric respiratory sounds, BioCAS 2022-2025 challenges).

Layout (the repository's): each recording ``<patient>_<age>_<gender>_<location>_<rec>.wav``
has a same-named ``.json`` annotation, usually in a sibling folder (``train2022_wav/`` and
``train2022_json/``; the 2022 test annotations one level deeper, in
``test2022_json/inter_test_json/`` and ``.../intra_test_json/``). A JSON file holds::

    {"record_annotation": "CAS & DAS",
     "event_annotation": [{"start": "4511", "end": "5777", "type": "Wheeze"}, ...]}

``start``/``end`` are milliseconds, as strings (every released file) or numbers (the
top-level README's example, which also spells the record key ``recording_annotation``).
Events may be unsorted, touching or overlapping; the list may be empty; the 2024+ test
sets have no record label. `read_sprsound` turns the files into manifest items for one
challenge task (`TASKS`): one item per event (Tasks 1-x) or per recording (Tasks 2-x,
the whole recording, cropped/padded like a cycle by the feature pipeline).

Splits: the challenge's own sets when the folders say so (``train2022*`` -> train;
``test2022*``/``inter_test*``/``intra_test*``/``test2023*``... -> test), otherwise
whole patients at random; validation always moves whole train patients.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from rsctool.audio import AUDIO_EXTENSIONS
from rsctool.data.manifest import Cycle
from rsctool.data.splits import (
    Problem,
    ProblemSink,
    carve_validation,
    parse_split_spec,
    patient_split,
)
from rsctool.errors import ConfigError, DataError

__all__ = [
    "DEFAULT_TASK",
    "EVENT_TYPES",
    "NAME_RE",
    "RECORD_TYPES",
    "TASKS",
    "TASK_CLASSES",
    "challenge_split",
    "event_class",
    "parse_name",
    "read_sprsound",
    "record_class",
]

#: ``<patient>_<age>_<gender>_<location>_<recording>``; the patient may be empty (the
#: 2025 README's anonymised names start with ``_``).
NAME_RE = re.compile(r"^(?P<patient>[0-9A-Za-z-]*)_(?P<age>\d+(?:\.\d+)?)_(?P<gender>[01])_"
                     r"(?P<location>[pP]\d+)_(?P<recording>[0-9A-Za-z-]+)$")

#: Event types (as the files write them) -> manifest label. Both spellings of the
#: combined class map to one label.
EVENT_TYPES: dict[str, str] = {
    "Normal": "normal", "Rhonchi": "rhonchi", "Wheeze": "wheeze", "Stridor": "stridor",
    "Coarse Crackle": "coarse_crackle", "Fine Crackle": "fine_crackle",
    "Wheeze+Crackle": "wheeze_crackle", "Wheeze & Crackle": "wheeze_crackle",
}
#: Record labels -> manifest label.
RECORD_TYPES: dict[str, str] = {
    "Normal": "normal", "CAS": "cas", "DAS": "das", "CAS & DAS": "cas_das",
    "Poor Quality": "poor_quality",
}
#: The challenge tasks and their classes, in class-index order (the README's order).
TASK_CLASSES: dict[str, tuple[str, ...]] = {
    "1-1": ("normal", "adventitious"),
    "1-2": ("normal", "rhonchi", "wheeze", "stridor", "coarse_crackle", "fine_crackle",
            "wheeze_crackle"),
    "2-1": ("normal", "adventitious", "poor_quality"),
    "2-2": ("normal", "cas", "das", "cas_das", "poor_quality"),
}
TASKS: tuple[str, ...] = tuple(TASK_CLASSES)
#: Task 1-2 (seven event classes) is the default: the finest event-level task, the one
#: the SPRSound README lists in full and the one the 2022/2023 challenges rank on first.
DEFAULT_TASK = "1-2"
#: Every recording was made with a Yunting model II stethoscope (README).
DEVICE = "Yunting-II"
#: An event may end this far past the end of its audio (clipped to the end).
END_TOLERANCE_S = 0.05

_GENDER = {"0": "M", "1": "F"}
# Folder names that say which challenge set a file belongs to.
_TRAIN_RE = re.compile(r"^train\d{4}", re.IGNORECASE)
_TEST_RE = re.compile(r"^(test\d{4}|inter_test|intra_test)", re.IGNORECASE)


def _key(text: str) -> str:
    """Spelling-insensitive key: case, outer spaces and spaces around ``+``/``&``."""
    return re.sub(r"\s*([+&])\s*", r"\1", " ".join(text.split())).lower()


_EVENT_KEYS = {_key(k): v for k, v in EVENT_TYPES.items()}
_RECORD_KEYS = {_key(k): v for k, v in RECORD_TYPES.items()}


def event_class(label: str, task: str) -> str:
    """A Task 1-2 event label (``fine_crackle``) as a label of `task` (1-1 or 1-2)."""
    if task == "1-1":
        return "normal" if label == "normal" else "adventitious"
    return label


def record_class(label: str, task: str) -> str:
    """A Task 2-2 record label (``cas_das``) as a label of `task` (2-1 or 2-2)."""
    if task == "2-1" and label in ("cas", "das", "cas_das"):
        return "adventitious"
    return label


def parse_name(stem: str) -> dict[str, Any] | None:
    """Fields of a SPRSound recording name, or None when it is not one.

    Returns ``{patient (str or None), age (years), sex ("M"/"F"), location ("p1"..),
    recording}``.
    """
    m = NAME_RE.match(stem)
    if m is None:
        return None
    return {"patient": m["patient"] or None, "age": float(m["age"]),
            "sex": _GENDER[m["gender"]], "location": m["location"].lower(),
            "recording": m["recording"]}


def challenge_split(path: Path, root: Path) -> tuple[str, str] | None:
    """``(split, set)`` of a file from its folders below `root`, or None when no folder
    names a challenge set. `set` is the innermost naming folder without ``_json``/``_wav``
    (``train2022``, ``inter_test``, ``intra_test``, ``test2023``)."""
    try:
        parts = path.resolve().relative_to(root.resolve()).parts[:-1]
    except ValueError:
        parts = path.parts[:-1]
    for part in reversed(parts):
        name = re.sub(r"_(json|wav|audio)$", "", part, flags=re.IGNORECASE)
        if _TEST_RE.match(part):
            return "test", name
        if _TRAIN_RE.match(part):
            return "train", name
    return None


def _ms(value: Any) -> float:
    """A ``start``/``end`` value (ms, string or number) in seconds; ValueError if bad."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, str):
        value = float(value.strip())
    elif not isinstance(value, (int, float)):
        raise ValueError
    if not math.isfinite(value):
        raise ValueError
    return float(value) / 1000.0


def _scan(root: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """SPRSound-named ``.json`` files and audio files under `root`, by stem (hidden
    entries skipped, symlinked folders not followed)."""
    jsons: dict[str, list[Path]] = {}
    audio: dict[str, list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            stem, suffix = os.path.splitext(name)
            if NAME_RE.match(stem) is None:
                continue
            if suffix.lower() == ".json":
                jsons.setdefault(stem, []).append(Path(dirpath) / name)
            elif suffix.lower() in AUDIO_EXTENSIONS:
                audio.setdefault(stem, []).append(Path(dirpath) / name)
    return jsons, audio


def is_sprsound_dir(root: str | os.PathLike) -> bool:
    """Whether `root` holds SPRSound-named JSON annotations (cheap walk, stops early)."""
    for _dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            stem, suffix = os.path.splitext(name)
            if suffix.lower() == ".json" and NAME_RE.match(stem):
                return True
    return False


def _shared_prefix(a: Path, b: Path) -> int:
    n = 0
    for x, y in zip(a.parts, b.parts, strict=False):
        if x != y:
            break
        n += 1
    return n


def _load(path: Path, sink: ProblemSink) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        sink.report("annotation file is not UTF-8 text", path)
        return None
    except OSError as e:
        sink.report(f"cannot read annotation file ({e.strerror})", path)
        return None
    try:
        doc = json.loads(text)
    except ValueError as e:
        sink.report(f"not valid JSON ({e})", path)
        return None
    if not isinstance(doc, dict):
        sink.report("expected a JSON object with event_annotation (and record_annotation)",
                    path)
        return None
    events = doc.get("event_annotation")
    if not isinstance(events, list):
        sink.report("no event_annotation list" if events is None else
                    "event_annotation must be a list of {start, end, type}", path)
        return None
    return doc


def _check_options(task: str, split: str | None, val_fraction: float) -> None:
    """ConfigError for an unknown task, a random split spec or a bad `val_fraction`."""
    if task not in TASK_CLASSES:
        raise ConfigError(f"must be one of {', '.join(TASKS)} (SPRSound challenge "
                          f"tasks), got {task!r}", field="task")
    if split is not None:
        spec = parse_split_spec(split)
        if spec.kind == "random":
            raise ConfigError(f"split {split!r}: an item-wise random split leaks patients "
                              "between train and test; use official or patients:TRAIN")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")


def _record_label(record_raw: Any, path: Path, sink: ProblemSink) -> str | None:
    """The record label of a file's ``record_annotation`` (as read, `record_raw`); None
    when there is none, or (reported to `sink`) when it is unknown."""
    if record_raw is None:
        return None
    record_label = _RECORD_KEYS.get(_key(record_raw)) if isinstance(record_raw, str) \
        else None
    if record_label is None:
        sink.report(f"unknown record_annotation {record_raw!r} (known: "
                    f"{', '.join(RECORD_TYPES)})", path)
    return record_label


def _events(doc: dict[str, Any], path: Path, sink: ProblemSink
            ) -> list[tuple[int, float, float, str, str]] | None:
    """A file's events as ``(position, start s, end s, event label, type as written)``;
    None (the first problem reported to `sink`) when one is malformed."""
    events: list[tuple[int, float, float, str, str]] = []
    for i, ev in enumerate(doc["event_annotation"]):
        what = f"event {i + 1}"
        if not isinstance(ev, dict):
            sink.report(f"{what}: expected an object with start, end and type", path)
            return None
        try:
            start, end = _ms(ev.get("start")), _ms(ev.get("end"))
        except ValueError:
            sink.report(f"{what}: start and end must be milliseconds (a number or a "
                        f"string of one), got {ev.get('start')!r}, {ev.get('end')!r}", path)
            return None
        if start < 0 or end <= start:
            sink.report(f"{what}: need 0 <= start < end, got {ev.get('start')}.."
                        f"{ev.get('end')} ms", path)
            return None
        raw = ev.get("type")
        label = _EVENT_KEYS.get(_key(raw)) if isinstance(raw, str) else None
        if label is None:
            sink.report(f"{what}: unknown event type {raw!r} (known: "
                        f"{', '.join(list(EVENT_TYPES)[:-1])})", path)
            return None
        events.append((i, start, end, label, raw))
    return events


def _audio_fits(wav: Path, events: list[tuple[int, float, float, str, str]], path: Path,
                sink: ProblemSink, check_audio: bool
                ) -> tuple[bool, float | None, int | None]:
    """``(ok, duration s, sample rate)`` of the audio (None, None without `check_audio`);
    not ok (reported to `sink`) when the audio is unreadable or an event ends after it."""
    if not check_audio:
        return True, None, None
    from rsctool.audio import audio_info

    try:
        ainfo = audio_info(wav)
    except DataError as e:
        sink.report_error(e)
        return False, None, None
    duration, sample_rate = ainfo.duration, ainfo.sample_rate
    if duration is not None:
        late = [e for e in events if e[1] >= duration or e[2] > duration + END_TOLERANCE_S]
        if late:
            i, start, end = late[0][:3]
            sink.report(f"event {i + 1} ({start * 1000:g}-{end * 1000:g} ms) ends after "
                        f"the end of the audio ({duration:.3f} s, {wav.name})", path)
            return False, duration, sample_rate
    return True, duration, sample_rate


def _event_items(stem: str, events: list[tuple[int, float, float, str, str]], task: str,
                 duration: float | None, meta: dict[str, Any], base: dict[str, Any]
                 ) -> list[Cycle]:
    """One item per event (tasks 1-1, 1-2), in time order, ids ``<stem>_<i:03d>``; an
    event ending a little after the audio is cut at its end."""
    items = []
    for i, start, end, label, raw in sorted(events, key=lambda e: (e[1], e[2], e[0])):
        if duration is not None:
            end = min(end, duration)
        items.append(Cycle(id=f"{stem}_{i:03d}", start=start, end=end,
                           label=event_class(label, task),
                           meta={**meta, "type": raw}, **base))
    return items


def _record_item(stem: str, record_label: str, task: str,
                 events: list[tuple[int, float, float, str, str]], duration: float | None,
                 meta: dict[str, Any], base: dict[str, Any], path: Path,
                 sink: ProblemSink) -> list[Cycle]:
    """The one item of a recording (tasks 2-1, 2-2), id ``<stem>``, from 0 to the end of
    the audio (without `check_audio`: the last event's end); none (reported to `sink`)
    without a duration."""
    end = duration if duration is not None else max((e[2] for e in events), default=0.0)
    if not end or end <= 0:
        sink.report("no audio duration for the record item", path)
        return []
    return [Cycle(id=stem, start=0.0, end=end, label=record_class(record_label, task),
                  meta={**meta, "type": meta["record"]}, **base)]


def read_sprsound(root: str | os.PathLike, *, task: str = DEFAULT_TASK,
                  split: str | None = None, val_fraction: float = 0.1, seed: int = 0,
                  strict: bool = True, problems: list[Problem] | None = None,
                  check_audio: bool = True, info: dict[str, Any] | None = None
                  ) -> list[Cycle]:
    """Read a SPRSound tree into manifest items for `task`.

    Args:
        root: a folder anywhere above the ``*_json``/``*_wav`` folders (a release, or
            a challenge set's folder).
        task: ``1-1|1-2`` (one item per event, ids ``<stem>_<i:03d>``, `i` the event's
            position in its file) or ``2-1|2-2`` (one item per recording, id ``<stem>``,
            from 0 to the end of the audio).
        split: ``official`` (the challenge sets, from the folder names), or
            ``patients:<train>``; None: official when every file lies under a folder
            naming its set, else ``patients:0.7``.
        val_fraction: share of the train items moved to ``val`` by whole patients.
        seed: seed of the patient split and of the validation carve.
        strict: raise the first problem as `DataError`; else record it and skip.
        problems: receives `Problem` records in lenient mode.
        check_audio: read each audio header for its sample rate and duration.
        info: receives ``split`` (the spec used), ``sets`` (``{set: recordings}``),
            ``task``, ``no_record_label`` (recordings without a record label, not items
            of the record tasks) and ``empty`` (recordings without events).

    Each item's ``meta`` holds ``type`` (the label as written in the file), ``record``
    (the record label as written, or None), ``set`` (the challenge set) and
    ``location``; `site` is the location (``p1``..``p8``), `sex` the gender, `age` the
    age in years, `device` the Yunting model II stethoscope.

    Raises:
        DataError: no annotations; a bad file (strict); no items at all.
        ConfigError: an unknown task or split spec.
    """
    _check_options(task, split, val_fraction)
    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset folder not found", root)
    root = root.resolve()
    sink = ProblemSink(strict, problems)
    jsons, audio = _scan(root)
    if not jsons:
        raise DataError("no SPRSound annotation files (<patient>_<age>_<gender>_<location>_"
                        "<recording>.json) found", root)
    for stem in sorted(set(audio) - set(jsons)):
        sink.report("audio file has no annotation file (.json)", audio[stem][0])
    sets = {stem: challenge_split(paths[0], root) for stem, paths in jsons.items()}
    if split is None:
        split = "official" if all(sets.values()) else "patients:0.7"
    spec = parse_split_spec(split)
    record_task = task.startswith("2")
    tally: Counter = Counter()
    no_record: list[str] = []
    empty: list[str] = []
    items: list[Cycle] = []
    for stem in sorted(jsons):
        path = jsons[stem][0]
        if len(jsons[stem]) > 1:
            sink.report(f"the same recording name is annotated again in "
                        f"{jsons[stem][1].parent} (two copies of a release?); analyze one "
                        "copy", path)
            continue
        if stem not in audio:
            sink.report(f"annotation file has no audio file ({', '.join(AUDIO_EXTENSIONS)})",
                        path)
            continue
        # several audio copies: the one sharing most folders with the annotation
        wav = max(audio[stem], key=lambda p: (_shared_prefix(p, path), -len(p.parts)))
        where = sets[stem]
        if spec.kind == "official" and where is None:
            sink.report("no folder above it names a challenge set (train2022*, test2022*, "
                        "inter_test*, intra_test*, test2023*, ...); use --split patients:F",
                        path)
            continue
        name = parse_name(stem)
        assert name is not None  # _scan keeps SPRSound names only
        doc = _load(path, sink)
        if doc is None:
            continue
        record_raw = doc.get("record_annotation", doc.get("recording_annotation"))
        record_label = _record_label(record_raw, path, sink)
        if record_raw is not None and record_label is None:
            continue
        events = _events(doc, path, sink)
        if events is None:
            continue
        audio_ok, duration, sample_rate = _audio_fits(wav, events, path, sink, check_audio)
        if not audio_ok:
            continue
        split_name = where[0] if spec.kind == "official" and where else "train"
        base: dict[str, Any] = {
            "audio": str(wav), "split": split_name, "patient": name["patient"],
            "recording": stem, "device": DEVICE, "site": name["location"], "age": name["age"],
            "sex": name["sex"], "sample_rate": sample_rate}
        meta = {"record": record_raw, "set": where[1] if where else None,
                "location": name["location"]}
        tally[where[1] if where else "(none)"] += 1
        if not events:
            empty.append(stem)
        if not record_task:
            items += _event_items(stem, events, task, duration, meta, base)
        elif record_label is None:
            no_record.append(stem)
        else:
            items += _record_item(stem, record_label, task, events, duration, meta, base,
                                  path, sink)
    if info is not None:
        info.clear()
        info.update(split=str(spec), task=task, sets=dict(sorted(tally.items())),
                    no_record_label=len(no_record), empty=len(empty))
    if not items:
        raise DataError(f"no usable SPRSound items for task {task} found"
                        + (f" ({len(no_record)} recordings have no record_annotation: the "
                           "2024+ test sets label events only)" if no_record else ""), root)
    if spec.kind == "patients":
        # a recording without a patient number (anonymised) is its own group
        items = patient_split(items, spec.train, seed)
    return carve_validation(items, val_fraction, seed)
