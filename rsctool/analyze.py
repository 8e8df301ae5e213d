"""`rsctool analyze DATA_DIR`: dataset -> validated cycle manifest, report and plots.

Reads an ICBHI-2017-format or folder-format dataset (`rsctool.data.layout` picks the
format, and finds ICBHI data a few folders below the one given) or an event table (a
``.csv``/``.tsv``/``.jsonl`` file, `rsctool.data.events`), optionally seen through a label
map (`rsctool.data.labelmap`), checks every recording (header,
samples: empty, NaN/inf, silent; cycles inside the audio), assigns splits (official or
patient-wise, with a patient-wise validation split carved from train), writes the
manifest (JSONL), `report.json` and PNG plots, and registers the dataset in the project
file. A re-run on an unchanged dataset with the same options is a no-op unless `--force`.
Nothing is written until everything has been read and checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from rsctool.console import get_state, info, print_json, warn
from rsctool.data.manifest import ICBHI_CLASSES, SPLITS, Cycle
from rsctool.data.windows import RECORD_ITEMS
from rsctool.errors import ConfigError, DataError
from rsctool.features_np import AUDIOSET_MEAN, AUDIOSET_STD
from rsctool.locks import hold_record, releasing
from rsctool.utils import atomic_write_json, atomic_write_text, params_hash

if TYPE_CHECKING:
    from rsctool.project import Project

FORMATS = ("auto", "icbhi", "folder", "sprsound", "events")
#: Bump when the analysis itself changes, so old records are not reused as up to date.
ANALYZE_VERSION = 1


@dataclass
class AnalyzeOptions:
    """Resolved options of one `analyze` invocation (stored with its output).

    Attributes:
        data_dir: dataset folder, or an event table (``.csv|.tsv|.jsonl`` file).
        name: dataset name in the project (default: derived from the folder).
        format: ``auto|icbhi|folder|sprsound|events``.
        task: SPRSound: the challenge task whose labels the manifest gets (``1-1``,
            ``1-2``, ``2-1``, ``2-2``; None: ``1-2``).
        split: ``official`` (ICBHI challenge file), ``patients:F`` (patient-wise random,
            F = train fraction) or ``random:TRAIN:VAL`` (folder data).
        val_fraction: patient-wise share of train moved to validation (0 disables).
        seed: seed of every random split.
        strict: stop at the first problem (exit 2) instead of skipping it with a warning.
        allow_unknown_codes: ICBHI format: accept site/mode/device codes in recording
            names outside the ICBHI 2017 sets (otherwise each is a problem).
        target_ratio: synthesis plan target, as a fraction of the largest train class.
        max_synthetic_per_class: cap of the synthesis plan per class.
        plots: write PNG plots next to report.json.
        fbank_stats: compute the log-mel mean and standard deviation of the train split
            for `train`'s default feature configuration (``train --norm dataset``; other
            configurations are computed and recorded by the first run that needs them).
        force: re-run even if nothing changed.
        name_pattern: folder data: file-name pattern whose fields go into each item's
            ``meta`` (e.g. ``{material}_{class}_{frequency}_{seq}``).
        where: folder data: ``{field: [accepted values]}`` filter on pattern fields.
        group_by: folder data: a pattern field (or ``groups``, the sub-folders) whose
            files all go to one split.
        split_file: ICBHI data, ``--split official``: the split file to use instead of
            the one in the dataset folder (or its parent), or of the official list
            built into rsctool when there is none.
        label_map: a built-in label map name or a TOML file (`rsctool.data.labelmap`)
            applied to the labels read.
    """

    data_dir: Path
    name: str | None = None
    format: str = "auto"
    split: str | None = None
    val_fraction: float = 0.1
    seed: int = 0
    strict: bool = True
    allow_unknown_codes: bool = False
    target_ratio: float = 0.5
    max_synthetic_per_class: int = 500
    plots: bool = True
    fbank_stats: bool = True
    force: bool = False
    name_pattern: str | None = None
    where: dict[str, list[str]] | None = None
    group_by: str | None = None
    split_file: Path | None = None
    label_map: str | None = None
    task: str | None = None

    def params(self) -> dict[str, Any]:
        """What determines the output (the fingerprint's parameter half)."""
        d = asdict(self)
        d.pop("force")
        d.pop("plots")
        # options, when unused, leave the fingerprints of earlier analyses unchanged
        for key in ("name_pattern", "where", "group_by", "split_file", "label_map", "task"):
            if d[key] is None:
                d.pop(key)
        if self.split_file is not None:
            d["split_file"] = str(Path(self.split_file).resolve())
        d["data_dir"] = str(Path(self.data_dir).resolve())
        d["analyze_version"] = ANALYZE_VERSION
        return d


@dataclass
class AnalyzeResult:
    name: str
    report: dict[str, Any]
    manifest: Path
    skipped: bool = False
    timings: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers

def detect_format(root: Path) -> str:
    """``icbhi`` when the folder (or one a few levels below it) holds ICBHI-named
    annotation files, ``folder`` when it holds two class sub-folders or more with audio;
    DataError otherwise (see `rsctool.data.layout.resolve_layout`)."""
    from rsctool.data.layout import resolve_layout

    return resolve_layout(root, "auto")[0]


def _default_name(root: Path, fmt: str, given: Path | None = None) -> str:
    """`root`'s folder name, cleaned; ``icbhi`` for ICBHI data in a folder named so (or
    below one: `given` is the folder the user named, `root` the one found in it)."""
    folder = root.resolve()
    names = [folder.name.lower()]
    if given is not None and given.resolve() != folder:
        top = given.resolve()
        names += [p.name.lower() for p in folder.parents if p.is_relative_to(top)]
    if fmt == "icbhi" and any("icbhi" in b or b.startswith("respiratory") for b in names):
        return "icbhi"
    base = names[-1]
    cleaned = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in base).strip("-")
    return cleaned or fmt


def _metadata_dirs(folder: Path, given: Path) -> list[Path]:
    """The folders from `folder`'s grandparent up to `given` (which holds `folder`): where
    the metadata files of ICBHI data found below `given` may also lie."""
    folder, given = folder.resolve(), given.resolve()
    return [p for p in list(folder.parents)[1:] if p.is_relative_to(given)]


def _files_fingerprint(table: Path) -> tuple[str, dict[str, tuple[int, int]]]:
    """`_dataset_fingerprint` of an event table: the table's size and mtime and those
    of every audio file it names (which may lie anywhere)."""
    from rsctool.data.events import table_files

    entries: list[tuple[str, int, int]] = []
    stats: dict[str, tuple[int, int]] = {}
    for i, p in enumerate([table.resolve(), *table_files(table)]):
        try:
            st = p.stat()
        except OSError:
            entries.append((str(p), -1, -1))
            continue
        entries.append((str(p), st.st_size, st.st_mtime_ns))
        if i:
            stats[str(p)] = (st.st_size, st.st_mtime_ns)
    return params_hash(entries), stats


def _dataset_fingerprint(root: Path, extra_files: Sequence[Path] = ()
                         ) -> tuple[str, dict[str, tuple[int, int]]]:
    """Hash of every file's relative path, size and mtime under `root` (cheap: no reads).

    Returns:
        The hash, and ``{absolute path: (size, mtime_ns)}`` of the files under `root`
        (what was hashed; `run` reuses it rather than calling stat again).

    Hidden folders are skipped; the walk is depth-first with names sorted (files of a
    folder before its sub-folders), as ``os.walk``; files that cannot be stat-ed are left
    out. The ICBHI metadata files in the parent folder count too, and `extra_files`
    (e.g. a ``--split-file`` elsewhere) when given.
    """
    entries: list[tuple[str, int, int]] = []
    stats: dict[str, tuple[int, int]] = {}

    def walk(folder: str, rel: str) -> None:
        try:
            with os.scandir(folder) as it:
                listing = sorted(it, key=lambda e: e.name)
        except OSError:
            return
        subdirs = []
        for e in listing:
            try:
                is_dir = e.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if not e.name.startswith("."):
                    subdirs.append(e)
                continue
            try:
                st = e.stat()
            except OSError:
                continue
            entries.append((rel + e.name, st.st_size, st.st_mtime_ns))
            stats[e.path] = (st.st_size, st.st_mtime_ns)
        for e in subdirs:
            if not e.is_symlink():  # as os.walk(followlinks=False)
                walk(e.path, rel + e.name + "/")

    walk(str(root.resolve()), "")
    # the ICBHI metadata files may sit in the parent folder
    for p in sorted(root.resolve().parent.glob("ICBHI_*.txt")):
        st = p.stat()
        entries.append(("../" + p.name, st.st_size, st.st_mtime_ns))
    for p in extra_files:
        try:
            st = p.stat()
        except OSError:
            continue
        entries.append(("extra:" + str(p.resolve()), st.st_size, st.st_mtime_ns))
    return params_hash(entries), stats


class AudioScanner:
    """Reads each recording once and checks its samples; results cached by file identity.

    The cache (`path -> {size, mtime_ns, segments, stats, header}`) is what makes a
    second analyze of the same data cheap: a file whose size and mtime are unchanged is
    not read again, and its header (`header`: the `rsctool.audio.AudioInfo` fields) need
    not be read either (see `_read_icbhi_cached`). Entries of another `VERSION` are
    misses.
    """

    #: Format of the cache entries (2: with the audio header).
    VERSION = 2

    def __init__(self, cache_path: Path | None):
        self.cache_path = cache_path
        self.cache: dict[str, Any] = {}
        self.hits = 0
        self.misses = 0
        if cache_path is not None and cache_path.exists():
            try:
                cache = json.loads(cache_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                cache = {}  # a broken cache is only a slower run
            if isinstance(cache, dict):
                self.cache = {k: v for k, v in cache.items()
                              if isinstance(v, dict) and v.get("version") == self.VERSION}

    def _entry(self, key: str, size: int, mtime_ns: int) -> dict[str, Any] | None:
        hit = self.cache.get(key)
        if hit and hit.get("size") == size and hit.get("mtime_ns") == mtime_ns:
            return hit
        return None

    def header(self, path: str, size: int, mtime_ns: int) -> Any:
        """The cached `AudioInfo` of `path` (absolute) if its size and mtime still match,
        else None."""
        from rsctool.audio import AudioInfo

        hit = self._entry(path, size, mtime_ns)
        h = hit.get("header") if hit else None
        if not isinstance(h, dict):
            return None
        try:
            return AudioInfo(path, int(h["sample_rate"]), int(h["frames"]),
                             int(h["channels"]), str(h["subtype"]))
        except (KeyError, TypeError, ValueError):
            return None

    def scan(self, path: str, segments: list[tuple[float, float]],
             stat: tuple[int, int] | None = None) -> dict[str, Any]:
        """Stats of one file: sample_rate (Hz), duration (s), peak, rms_db (dBFS), and
        per-segment rms_db in `segments` order. Raises DataError for bad samples.

        `stat`: the file's ``(size, mtime_ns)`` when the caller has just stat-ed it."""
        key = os.path.abspath(path)
        if stat is None:
            st = os.stat(path)
            stat = (st.st_size, st.st_mtime_ns)
        seg_key = [[round(s, 4), round(e, 4)] for s, e in segments]
        hit = self._entry(key, *stat)
        if hit and hit.get("segments") == seg_key:
            self.hits += 1
            return hit["stats"]
        self.misses += 1
        stats, meta = _scan_samples(path, segments)
        self.cache[key] = {"version": self.VERSION, "size": stat[0], "mtime_ns": stat[1],
                           "segments": seg_key, "stats": stats,
                           "header": {"sample_rate": meta.sample_rate, "frames": meta.frames,
                                      "channels": meta.channels, "subtype": meta.subtype}}
        return stats

    def save(self) -> None:
        if self.cache_path is not None and self.misses:
            # compact: the cache is read back on every run
            atomic_write_text(self.cache_path, json.dumps(
                self.cache, ensure_ascii=False, separators=(",", ":")) + "\n")


def _db(x: float) -> float:
    return round(20.0 * math.log10(max(x, 1e-10)), 2)


def _scan_samples(path: str, segments: list[tuple[float, float]]) -> tuple[dict[str, Any], Any]:
    """``(stats, AudioInfo)`` of one file (see `AudioScanner.scan`)."""
    import soundfile as sf

    from rsctool.audio import SILENT_AUDIO, LevelStats, audio_info

    meta = audio_info(path)  # raises DataError for missing/unreadable/empty files
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:
        raise DataError(f"unreadable audio ({str(e).strip()[:200]})", path) from None
    if data.shape[0] == 0:
        raise DataError("empty audio (0 samples)", path)
    if not np.isfinite(data).all():
        raise DataError("audio contains NaN or infinite samples", path)
    wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    levels = LevelStats()  # the same checks as predict's (rsctool.audio)
    levels.add(wav)
    if levels.silent:
        raise DataError(SILENT_AUDIO, path)
    peak = levels.peak
    seg_db = []
    for s, e in segments:
        seg = wav[int(s * sr): max(int(e * sr), int(s * sr) + 1)]
        seg_db.append(_db(float(np.sqrt(np.mean(np.square(seg, dtype=np.float64))))
                          if len(seg) else 0.0))
    stats = {
        "sample_rate": int(sr),
        "channels": int(meta.channels),
        "duration": round(len(wav) / sr, 4),
        "peak": round(peak, 6),
        "rms_db": _db(levels.rms),
        "clipped_fraction": round(levels.clipped_fraction, 6),
        "segments_rms_db": seg_db,
    }
    return stats, meta


def _read_cycles(root: Path, fmt: str, opts: AnalyzeOptions, problems: list, *,
                 scanner: AudioScanner | None = None,
                 file_stats: dict[str, tuple[int, int]] | None = None,
                 metadata_dirs: Sequence[Path] = (),
                 info: dict[str, Any] | None = None) -> list[Cycle]:
    if fmt == "icbhi":
        from rsctool.data.icbhi import read_icbhi

        kwargs = {"split": opts.split or "official", "val_fraction": opts.val_fraction,
                  "seed": opts.seed, "strict": opts.strict,
                  "allow_unknown_codes": opts.allow_unknown_codes,
                  "split_file": opts.split_file, "metadata_dirs": metadata_dirs,
                  "info": info}
        if scanner is not None and file_stats is not None:
            cycles = _read_icbhi_cached(root, kwargs, scanner, file_stats, problems)
            if cycles is not None:
                return cycles
        return read_icbhi(root, **kwargs, problems=problems)
    if fmt == "events":
        from rsctool.data.events import read_events

        return read_events(root, split=opts.split, val_fraction=opts.val_fraction,
                           seed=opts.seed, strict=opts.strict, problems=problems, info=info)
    if fmt == "sprsound":
        from rsctool.data.sprsound import DEFAULT_TASK, read_sprsound

        return read_sprsound(root, task=opts.task or DEFAULT_TASK, split=opts.split,
                             val_fraction=opts.val_fraction, seed=opts.seed,
                             strict=opts.strict, problems=problems, info=info)
    from rsctool.data.folder import read_folder

    return read_folder(root, split=opts.split or "random:0.7:0.15", seed=opts.seed,
                       name_pattern=opts.name_pattern, where=opts.where,
                       group_by=opts.group_by, strict=opts.strict, problems=problems)


def parse_where(items: Sequence[str] | None) -> dict[str, list[str]] | None:
    """``--where FIELD=VALUE[,VALUE...]`` (repeatable) -> ``{field: [values]}``; the
    same field given twice accepts the values of both. ConfigError for a malformed item."""
    if not items:
        return None
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not sep or not key or not values:
            raise ConfigError(f"--where expects FIELD=VALUE (e.g. frequency=1000hz), "
                              f"got {item!r}")
        if not key.isidentifier():
            raise ConfigError(f"--where {item!r}: {key!r} is not a field name")
        out.setdefault(key, [])
        out[key] += [v for v in values if v not in out[key]]
    return out


def _read_icbhi_cached(root: Path, kwargs: dict[str, Any], scanner: AudioScanner,
                       file_stats: dict[str, tuple[int, int]], problems: list
                       ) -> list[Cycle] | None:
    """`read_icbhi` with the audio headers taken from the scanner's cache, or None.

    ``read_icbhi(check_audio=True)`` opens every recording's header for its sample rate
    and duration (cycles must lie inside the audio). When every recording-named audio
    file in `root` has a cached header of its current size and mtime, the annotations are
    read with ``check_audio=False`` and the same checks are made from the cached headers.
    Whenever the result could differ from the full read (a header not cached, a reader
    error, a cycle that starts after the end of its audio, i.e. one the full read would
    report and drop before carving the validation split), this returns None and the
    caller does the full read, which reports the problem. A cycle that ends past its
    audio is clamped and listed in ``kwargs["info"]["cycles_clamped"]`` as the full read
    does.
    """
    from rsctool.data.icbhi import AUDIO_SUFFIXES, RECORDING_RE, read_icbhi

    prefix = os.path.join(str(root.resolve()), "")
    headers: dict[str, Any] = {}
    for path, (size, mtime_ns) in file_stats.items():
        name = path[len(prefix):]
        stem, suffix = os.path.splitext(name)
        if (suffix.lower() not in AUDIO_SUFFIXES or not path.startswith(prefix)
                or os.sep in name or name.startswith(".") or RECORDING_RE.match(stem) is None):
            continue
        info = scanner.header(path, size, mtime_ns)
        if info is None:
            return None
        headers[path] = info
    if not headers:
        return None
    found: list = []
    try:
        cycles = read_icbhi(root, **kwargs, problems=found, check_audio=False)
    except DataError:
        return None
    clamped: list[dict[str, Any]] = []
    for c in cycles:
        info = headers.get(c.audio)
        if info is None:
            return None
        duration = info.duration
        if c.start >= duration:
            return None
        if c.end > duration:  # what read_icbhi does: clamp to the audio end and keep
            clamped.append({"id": c.id, "end": c.end, "audio_end": round(duration, 6)})
            c.end = duration
        c.sample_rate = info.sample_rate
    if kwargs.get("info") is not None:
        kwargs["info"]["cycles_clamped"] = sorted(clamped, key=lambda d: d["id"])
    problems.extend(found)
    return cycles


def synthesis_plan(train_counts: dict[str, int], target_ratio: float, cap: int) -> dict[str, int]:
    """Synthetic cycles needed per class so each reaches `target_ratio` x the largest
    class of the train split, capped at `cap`. Classes already there need 0."""
    if not train_counts:
        return {}
    target = math.ceil(target_ratio * max(train_counts.values()))
    return {c: int(min(cap, max(0, target - n))) for c, n in train_counts.items()}


def build_report(cycles: list[Cycle], stats: dict[str, dict], *, fmt: str, name: str,
                 opts: AnalyzeOptions, problems: list, split_hash: str,
                 root: Path | None = None, found_from: Path | None = None,
                 split_info: dict[str, Any] | None = None,
                 label_map: dict[str, Any] | None = None) -> dict[str, Any]:
    """The analysis report (the `--json` document).

    `root`: the folder read (default `opts.data_dir`); `found_from`: the folder the user
    named when `root` was found below it; `split_info`: what `read_icbhi` reported about
    the split file (``split_file``, ``split_source``, ``split_aliases``); `label_map`:
    the label map applied (`LabelMap.record` plus what it mapped), whose classes are the
    dataset's."""
    if label_map:
        classes = list(label_map["classes"])
    elif fmt == "sprsound":  # the task's classes in challenge order, empty ones included
        from rsctool.data.sprsound import DEFAULT_TASK, TASK_CLASSES

        classes = list(TASK_CLASSES[opts.task or DEFAULT_TASK])
    elif fmt == "icbhi" or (cycles and all(c.crackle is not None for c in cycles)):
        classes = list(ICBHI_CLASSES)  # ICBHI data, or an event table with ICBHI labels
    else:
        classes = sorted({c.label for c in cycles})
    splits: dict[str, dict[str, int]] = {}
    for s in SPLITS:
        cnt = Counter(c.label for c in cycles if c.split == s)
        if cnt or s != "val" or opts.val_fraction > 0:
            splits[s] = {k: cnt.get(k, 0) for k in classes}
    by_device: dict[str, Counter] = defaultdict(Counter)
    by_site: dict[str, Counter] = defaultdict(Counter)
    rec_device: dict[str, str] = {}
    for c in cycles:
        by_device[c.device or "unknown"][c.label] += 1
        by_site[c.site or "unknown"][c.label] += 1
        rec_device[c.audio] = c.device or "unknown"
    rec_per_device = Counter(rec_device.values())
    durations = np.array([c.duration for c in cycles], dtype=np.float64)
    sr_count = Counter(str(st["sample_rate"]) for st in stats.values())
    rec_durations = np.array([st["duration"] for st in stats.values()], dtype=np.float64)
    train_counts = splits.get("train", {})
    patients = {c.patient for c in cycles if c.patient is not None}
    cycle_rms = np.array([db for st in stats.values() for db in st["segments_rms_db"]])
    return {
        "dataset": name,
        "format": fmt,
        "root": str(Path(root if root is not None else opts.data_dir).resolve()),
        **({"found_from": str(found_from.resolve())} if found_from is not None else {}),
        "split": {**_split_definition(cycles, opts, fmt, split_hash),
                  **_split_file_fields(split_info),
                  **({"sets": (split_info or {}).get("sets", {})} if fmt == "sprsound"
                     else {})},
        **({"task": opts.task or "1-2", "no_record_label": (split_info or {}).get(
            "no_record_label", 0)} if fmt == "sprsound" else {}),
        "classes": classes,
        **({"label_map": label_map} if label_map else {}),
        "recordings": len(stats),
        "patients": len(patients),
        "cycles": len(cycles),
        "splits": splits,
        "totals": {k: sum(v.get(k, 0) for v in splits.values()) for k in classes},
        "devices": {d: {"recordings": rec_per_device[d], "cycles": sum(cnt.values()),
                        **{k: cnt.get(k, 0) for k in classes}}
                    for d, cnt in sorted(by_device.items())},
        "sites": {s: {"cycles": sum(cnt.values()), **{k: cnt.get(k, 0) for k in classes}}
                  for s, cnt in sorted(by_site.items())},
        "sample_rates": dict(sorted(sr_count.items(), key=lambda kv: int(kv[0]))),
        "duration_s": _summary(durations),
        "recording_duration_s": _summary(rec_durations),
        "cycle_rms_dbfs": _summary(cycle_rms),
        "imbalance": ({k: round(max(train_counts.values()) / v, 3) if v else None
                       for k, v in train_counts.items()} if train_counts else {}),
        "synthesis_plan": synthesis_plan(train_counts, opts.target_ratio,
                                         opts.max_synthetic_per_class),
        "synthesis_target_ratio": opts.target_ratio,
        "cycles_clamped": _clamped_summary(split_info),
        "problems": [p.to_dict() if hasattr(p, "to_dict") else asdict(p) for p in problems],
        "problem_count": len(problems),
    }


def _split_definition(cycles: list[Cycle], opts: AnalyzeOptions, fmt: str,
                      split_hash: str) -> dict[str, Any]:
    """The split as a first-class object: its spec, whether it is the official ICBHI
    challenge split, the validation carve-out, and two hashes: ``hash`` of every
    cycle's split (train/val/test) and ``train_test_hash`` of the train/test assignment
    alone (the same for every --val-fraction)."""
    from rsctool.data.splits import train_test_hash

    spec = opts.split or ("official" if fmt == "icbhi" else "random:0.7:0.15")
    return {"spec": spec, "official": fmt in ("icbhi", "sprsound") and spec == "official",
            "val_fraction": opts.val_fraction, "seed": opts.seed,
            **({"group_by": opts.group_by} if opts.group_by else {}), "hash": split_hash,
            "train_test_hash": train_test_hash(cycles)}


def _clamped_summary(split_info: dict[str, Any] | None) -> dict[str, Any]:
    """Cycles whose annotated end lies past their audio, clamped to it and kept:
    ``count``, ``max_past_s`` (the largest overrun) and ``cycles`` (their ids)."""
    rows = list((split_info or {}).get("cycles_clamped") or [])
    past = [float(r["end"]) - float(r["audio_end"]) for r in rows]
    return {"count": len(rows), "max_past_s": round(max(past), 6) if past else 0.0,
            "cycles": [r["id"] for r in rows]}


def _split_file_fields(split_info: dict[str, Any] | None) -> dict[str, Any]:
    """The report's record of the split file an official ICBHI split came from."""
    if not split_info or not split_info.get("split_file"):
        return {}
    out: dict[str, Any] = {"split_file": split_info["split_file"],
                           "split_source": split_info.get("split_source")}
    if split_info.get("split_aliases"):
        out["split_aliases"] = list(split_info["split_aliases"])
    return out


def _summary(x: np.ndarray) -> dict[str, float | None]:
    if x.size == 0:
        return {"min": None, "mean": None, "max": None}
    return {"min": round(float(x.min()), 4), "mean": round(float(x.mean()), 4),
            "max": round(float(x.max()), 4)}


# --------------------------------------------------------------------------- run

@releasing  # the dataset's lock (one writer per name), however `run` ends
def run(project: Project, opts: AnalyzeOptions, *, progress: bool = False,
        log: Any = None) -> AnalyzeResult:
    """Analyze `opts.data_dir` and register it in `project` (a `rsctool.project.Project`)."""
    from rsctool.data.splits import split_hash as compute_split_hash

    t0 = time.perf_counter()
    given = Path(opts.data_dir)
    events = _check_input(given, opts)
    fmt, root, found_from, name = _resolve_input(given, opts, events)
    hold_record(project, "datasets", name)  # one writer per dataset name
    labelmap = None
    params = {**opts.params(), "format": fmt, "name": name}
    if opts.label_map is not None:
        from rsctool.data.labelmap import load_map

        labelmap = load_map(opts.label_map)
        params["label_map"] = labelmap.record()  # a changed map file re-runs analyze
    if found_from is not None:
        params["folder"] = str(root.resolve())
    if fmt == "sprsound" and str(opts.task or "").startswith("2"):
        params["items"] = RECORD_ITEMS  # records analysed before the field get it
    p_hash = params_hash(params)
    meta_dirs = _metadata_dirs(root, given) if found_from is not None else []
    if events:
        fingerprint, file_stats = _files_fingerprint(root)
    else:
        fingerprint, file_stats = _dataset_fingerprint(
            root, _extra_files(root, meta_dirs, opts) if fmt == "icbhi" else [])

    state_dir = project.state_dir()
    manifest_path = state_dir / "manifests" / f"{name}.jsonl"
    report_dir = state_dir / "reports" / name
    report_path = report_dir / "report.json"

    old = project.get("datasets", name)
    if (not opts.force and old and old.get("params_hash") == p_hash
            and old.get("inputs_hash") == fingerprint and manifest_path.exists()
            and report_path.exists() and old.get("status") == "done"):
        from rsctool.data.manifest import file_sha256

        if file_sha256(manifest_path) == old.get("sha256"):
            report = json.loads(report_path.read_text(encoding="utf-8"))
            return AnalyzeResult(name, report, manifest_path, skipped=True,
                                 timings={"total": time.perf_counter() - t0})

    problems: list = []
    split_info: dict[str, Any] = {}
    scanner = AudioScanner(state_dir / "cache" / "audio-stats.json")
    cycles = _read_cycles(root, fmt, opts, problems, scanner=scanner, file_stats=file_stats,
                          metadata_dirs=meta_dirs, info=split_info)
    if fmt == "sprsound" and opts.split is None:  # the reader chose official or patients
        opts = dataclasses.replace(opts, split=split_info.get("split"))
    if events:  # the spec the table's reader chose (its split column, or patient-wise)
        opts = dataclasses.replace(opts, split=split_info.pop("split_spec"))
        split_info.clear()
    map_record = None
    if labelmap is not None:
        cycles, map_record = _apply_label_map(cycles, labelmap, opts, given)
    t_read = time.perf_counter()

    cycles, stats = _scan_audio(cycles, scanner, file_stats, opts, problems, progress)
    for p in problems:
        warn(str(p) if not hasattr(p, "to_dict") else _problem_line(p))
    if not cycles:
        raise DataError("no usable cycles found", root)
    _check_splits(cycles, opts, fmt, root)
    t_scan = time.perf_counter()

    s_hash = compute_split_hash(cycles)
    reuse = old if old and old.get("inputs_hash") == fingerprint else None
    norm_stats = _fbank_stats(cycles, reuse, s_hash, opts.fbank_stats, log)
    report = build_report(cycles, stats, fmt=fmt, name=name, opts=opts, problems=problems,
                          split_hash=s_hash, root=root, found_from=found_from,
                          split_info=split_info, label_map=map_record)
    # Everything is read and checked: now write outputs, then record them.
    sha = _write_manifest(manifest_path, cycles)
    report["manifest"] = str(manifest_path)
    report["manifest_sha256"] = sha
    for entry in norm_stats.values():
        entry["manifest_sha256"] = sha
    if norm_stats:
        report["fbank_stats"] = norm_stats
    plots = _write_report(report, cycles, report_dir, opts)
    scanner.save()
    record = _dataset_record(project, report, opts, fmt=fmt, root=root,
                             found_from=found_from, s_hash=s_hash, labelmap=labelmap,
                             manifest_path=manifest_path, sha=sha, cycles=cycles,
                             report_path=report_path, plots=plots, problems=problems,
                             p_hash=p_hash, fingerprint=fingerprint)
    if norm_stats:
        record["fbank_stats"] = norm_stats
    project.set_record("datasets", name, record)
    t_end = time.perf_counter()
    return AnalyzeResult(name, report, manifest_path, timings={
        "read": t_read - t0, "scan": t_scan - t_read, "write": t_end - t_scan,
        "total": t_end - t0, "cache_hits": scanner.hits, "cache_misses": scanner.misses})


def _check_input(root: Path, opts: AnalyzeOptions) -> bool:
    """Check the format, the data path and the numeric options; True when `root` is read
    as an event table."""
    if opts.format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {opts.format!r}")
    from rsctool.data.events import EVENT_SUFFIXES

    # an event table is a file: --format events, or auto on a .csv/.tsv/.jsonl file
    events = opts.format == "events" or (opts.format == "auto" and not root.is_dir()
                                         and root.suffix.lower() in EVENT_SUFFIXES)
    if not root.exists():
        raise DataError("event table not found" if events else "dataset folder not found", root)
    if events and not root.is_file():
        raise DataError("--format events reads an event table file (.csv, .tsv, .jsonl), "
                        "not a folder", root)
    if not events and not root.is_dir():
        raise DataError("not a folder (an event table ends in .csv, .tsv or .jsonl)"
                        if root.is_file() else "not a folder", root)
    if not 0.0 <= opts.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {opts.val_fraction}")
    if opts.target_ratio <= 0 or opts.max_synthetic_per_class < 0:
        raise ConfigError("--target-ratio must be > 0 and --max-synthetic-per-class >= 0")
    return events


def _resolve_input(given: Path, opts: AnalyzeOptions, events: bool
                   ) -> tuple[str, Path, Path | None, str]:
    """``(format, dataset root, the folder given when the root was found below it (else
    None), dataset name)``; ConfigError for options that do not apply to the format."""
    from rsctool.data.layout import resolve_layout

    fmt, root = ("events", given) if events else resolve_layout(given, opts.format)
    found_from = given if root.resolve() != given.resolve() else None
    if opts.task is not None and fmt != "sprsound":
        raise ConfigError(f"--task applies to SPRSound data (--format sprsound); {root} is "
                          f"read as {fmt}")
    if fmt != "folder" and (opts.name_pattern or opts.where or opts.group_by):
        raise ConfigError("--name-pattern, --where and --group-by apply to folder datasets "
                          f"(--format folder); {root} is read as {fmt}")
    if opts.split_file is not None:
        if fmt != "icbhi":
            raise ConfigError(f"--split-file applies to ICBHI data (--format icbhi); {root} "
                              f"is read as {fmt}")
        if (opts.split or "official") != "official":
            raise ConfigError("--split-file applies to --split official (the challenge "
                              f"split), not to --split {opts.split}")
        if not Path(opts.split_file).is_file():
            raise DataError("split file not found", opts.split_file)
    name = opts.name or (_default_name(root.with_suffix(""), fmt) if events
                         else _default_name(root, fmt, given))
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"--name may hold letters, digits, '-' and '_' only, got {name!r}")
    return fmt, root, found_from, name


def _extra_files(root: Path, meta_dirs: list[Path], opts: AnalyzeOptions) -> list[Path]:
    """ICBHI data: the files outside the walked folder that the fingerprint counts (the
    metadata files found elsewhere and the --split-file)."""
    from rsctool.data.icbhi import find_metadata_files

    extra_files: list[Path] = []
    folder = root.resolve()
    for p in find_metadata_files(root, meta_dirs).values():
        # files in `root` are walked, the parent's ICBHI_*.txt globbed: the rest
        # (Kaggle names, files further up) count here
        if p is not None and p.parent != folder and not (
                p.parent == folder.parent and p.name.startswith("ICBHI_")):
            extra_files.append(p)
    if opts.split_file is not None:
        extra_files.append(Path(opts.split_file))
    return extra_files


def _apply_label_map(cycles: list[Cycle], labelmap: Any, opts: AnalyzeOptions,
                     given: Path) -> tuple[list[Cycle], dict[str, Any]]:
    """The cycles seen through `labelmap` (unmapped ones dropped with a warning, or
    refused with --strict) and the map's record for the report."""
    from rsctool.data.labelmap import apply_map

    mapped = apply_map(cycles, labelmap, strict=opts.strict, where=given)
    if mapped.unmapped:
        warn(f"{given}: label map {labelmap.name}: dropped {mapped.dropped} segment(s) "
             "with unmapped label(s) "
             + ", ".join(f"{k!r} ({v})" for k, v in mapped.unmapped.items()))
    map_record = {**labelmap.record(), "mapped": mapped.counts,
                  "unmapped": mapped.unmapped}
    return mapped.cycles, map_record


def _scan_audio(cycles: list[Cycle], scanner: AudioScanner, file_stats: dict[str, Any],
                opts: AnalyzeOptions, problems: list, progress: bool
                ) -> tuple[list[Cycle], dict[str, dict]]:
    """Scan the samples of each recording once (cached by file identity): the cycles
    whose audio could be read and ``{audio: stats}``. An unreadable file stops with
    --strict, else it is a problem and its cycles are dropped."""
    by_audio: dict[str, list[Cycle]] = defaultdict(list)
    for c in cycles:
        by_audio[c.audio].append(c)
    stats: dict[str, dict] = {}
    bad_audio: set[str] = set()
    items = sorted(by_audio.items())
    bar = _progress(progress, "scanning audio", len(items))
    try:
        for audio, cs in items:
            try:
                stats[audio] = scanner.scan(audio, [(c.start, c.end) for c in cs],
                                            file_stats.get(audio))
            except DataError as e:
                if opts.strict:
                    raise
                from rsctool.data.splits import Problem

                problems.append(Problem(path=audio, line=None, message=e.message))
                bad_audio.add(audio)
            if bar is not None:
                bar[0].advance(bar[1])
    finally:
        if bar is not None:
            bar[0].stop()
    if bad_audio:
        cycles = [c for c in cycles if c.audio not in bad_audio]
    return cycles, stats


def _write_report(report: dict[str, Any], cycles: list[Cycle], report_dir: Path,
                  opts: AnalyzeOptions) -> list[str]:
    """Write report.json (unless unchanged) and, with --plots, its plots; returns the
    plot paths."""
    report_path = report_dir / "report.json"
    old_report = _read_json(report_path)
    if old_report != report:  # as the manifest: an unchanged report is left alone
        atomic_write_json(report_path, report)
    plots: list[str] = []
    if opts.plots:
        from rsctool.plots import ANALYZE_PLOTS, analyze_plots

        plots = [str(report_dir / f) for f in ANALYZE_PLOTS]
        # The plots are a function of the report (which holds the manifest hash): an
        # unchanged report with its plots on disk needs no re-rendering (--force on
        # unchanged data is then cheap).
        if old_report != report or not all(Path(p).exists() for p in plots):
            plots = [str(p) for p in analyze_plots(report, cycles, report_dir)]
    return plots


def _dataset_record(project: Project, report: dict[str, Any], opts: AnalyzeOptions, *, fmt: str,
                    root: Path, found_from: Path | None, s_hash: str, labelmap: Any,
                    manifest_path: Path, sha: str, cycles: list[Cycle], report_path: Path,
                    plots: list[str], problems: list, p_hash: str,
                    fingerprint: str) -> dict[str, Any]:
    """The project's ``[datasets.NAME]`` record of an analysed dataset."""
    return {
        "format": fmt,
        "root": project.rel(root.resolve()),
        **({"found_from": project.rel(found_from.resolve())} if found_from is not None else {}),
        "split": report["split"]["spec"],
        **({"split_file": _rel_split_file(project, report["split"]["split_file"])}
           if report["split"].get("split_file") else {}),
        **({"split_aliases": len(report["split"]["split_aliases"])}
           if report["split"].get("split_aliases") else {}),
        "split_hash": s_hash,
        "split_train_test_hash": report["split"]["train_test_hash"],
        "val_fraction": opts.val_fraction,
        "seed": opts.seed,
        **({"name_pattern": opts.name_pattern} if opts.name_pattern else {}),
        **({"where": opts.where} if opts.where else {}),
        **({"group_by": opts.group_by} if opts.group_by else {}),
        **({"label_map": labelmap.record()} if labelmap is not None else {}),
        **({"task": report["task"]} if fmt == "sprsound" else {}),
        # one item per recording (SPRSound Tasks 2-x): train and eval split it into
        # windows and eval aggregates them per recording (rsctool.data.windows)
        **({"items": RECORD_ITEMS} if fmt == "sprsound" and str(report["task"]).startswith("2")
           else {}),
        "classes": report["classes"],
        "manifest": project.rel(manifest_path),
        "sha256": sha,
        "cycles": len(cycles),
        "recordings": report["recordings"],
        "report": project.rel(report_path),
        "plots": [project.rel(p) for p in plots],
        "problems": len(problems),
        "params_hash": p_hash,
        "inputs_hash": fingerprint,
        "status": "done",
    }


def _rel_split_file(project: Project, label: str) -> str:
    """A split file as recorded: ``builtin:...`` as is, a path relative to the project."""
    return label if label.startswith("builtin:") else project.rel(label)


def layout_notes(report: dict[str, Any]) -> list[str]:
    """stderr lines on which folder and split file an analysis used (from its report)."""
    notes = []
    if report.get("found_from"):
        notes.append(f"reading {report['format']} data in {report['root']} (found in "
                     f"{report['found_from']})")
    split = report.get("split") or {}
    if split.get("split_source") == "builtin":
        notes.append("split: the official ICBHI 2017 split list built into rsctool (no "
                     "ICBHI_challenge_train_test.txt beside the data; --split-file PATH "
                     "overrides)")
    elif split.get("split_file"):
        notes.append(f"split file: {split['split_file']}")
    if report.get("no_record_label"):
        notes.append(f"{report['no_record_label']} recording(s) have no record_annotation (the "
                     f"SPRSound 2024+ test sets label events only): not items of task "
                     f"{report.get('task')}")
    for a in split.get("split_aliases") or []:
        notes.append(f"split file line {a['line']}: {a['name']} is a known alias of "
                     f"{a['recording']} (listed too, {a['split']}); not a problem")
    return notes


def _check_splits(cycles: list[Cycle], opts: AnalyzeOptions, fmt: str, root: Path) -> None:
    """Exit 2 now, not at train/eval time, when a split the spec asks for is empty:
    train always; test unless a random spec gives it no share; val when a random spec
    asks for it (ICBHI's carve-out may legitimately find no second train patient)."""
    from rsctool.data.splits import check_splits, parse_split_spec

    spec_text = opts.split or ("official" if fmt == "icbhi" else "random:0.7:0.15")
    spec = parse_split_spec(spec_text)
    required = ["train"]
    if spec.kind == "random":
        if spec.val > 0:
            required.append("val")
        if spec.train + spec.val < 1.0 - 1e-9:
            required.append("test")
    else:
        required.append("test")
    check_splits(cycles, required, spec=spec_text, group_by=opts.group_by, where=root)


def _fbank_stats(cycles: list[Cycle], old: dict[str, Any] | None, s_hash: str,
                 enabled: bool, log: Any) -> dict[str, dict[str, Any]]:
    """``{stats_key: entry}``: the train split's log-mel statistics (see
    `rsctool.data.dataset.fbank_statistics`) for the default feature configuration,
    plus every entry of the previous record `old` (data and split unchanged) that is
    still valid, e.g. those recorded by `train` for other configurations."""
    from rsctool.data.dataset import default_stats_clip, fbank_statistics, stats_key

    out: dict[str, dict[str, Any]] = {}
    for key, entry in ((old or {}).get("fbank_stats") or {}).items():
        if isinstance(entry, dict) and entry.get("split_hash") == s_hash:
            out[key] = dict(entry)
    if not enabled:
        return out
    clip = default_stats_clip()
    key = stats_key(clip)
    if key in out:
        return out
    train = [c for c in cycles if c.split == "train" and c.source != "synthetic"]
    if not train:
        return out
    if log is not None:
        log(f"normalisation statistics of the train split ({min(len(train), 2000)} clips)")
    entry = fbank_statistics(train, clip, None)
    out[key] = {**entry, "split_hash": s_hash, "source": "analyze"}
    return out


def _write_manifest(path: Path, cycles: list[Cycle]) -> str:
    """`rsctool.data.manifest.write_manifest` (validate; write atomically unless the file
    already holds these bytes; return the sha256), with each record encoded from its
    fields directly: ``Cycle.to_dict`` (``dataclasses.asdict``) deep-copies every value,
    which made encoding 7k cycles cost ~0.6 s. The bytes are the same (a record whose
    fields are not plain JSON values goes through ``to_dict``; tests compare the two)."""
    from rsctool.data.manifest import file_sha256, validate_manifest

    validate_manifest(cycles, path)
    names = tuple(f.name for f in dataclasses.fields(Cycle))
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    lines = []
    for c in cycles:
        d = vars(c)
        try:
            if type(c) is not Cycle or tuple(d) != names:
                raise TypeError
            lines.append(encode(d))
        except (TypeError, ValueError):
            lines.append(encode(c.to_dict()))
    text = "".join(line + "\n" for line in lines)
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if not (path.is_file() and file_sha256(path) == sha):
        atomic_write_text(path, text)
    return sha


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _problem_line(p: Any) -> str:
    where = p.path if getattr(p, "line", None) is None else f"{p.path}:{p.line}"
    return f"{where}: {p.message} (skipped)"


def _progress(enabled: bool, label: str, total: int):
    if not enabled or total == 0:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from rsctool.console import err_console

    prog = Progress("[progress.description]{task.description}", BarColumn(),
                    MofNCompleteColumn(), TimeRemainingColumn(), console=err_console,
                    transient=True)
    task = prog.add_task(label, total=total)
    prog.start()
    return prog, task


def print_report(report: dict[str, Any]) -> None:
    """Rich tables on stderr: cycles per split and class, devices, sites, plan."""
    from rich.table import Table

    from rsctool.console import err_console

    classes = report["classes"]
    t = Table(title=f"{report['dataset']} ({report['format']}, split {report['split']['spec']}, "
                    f"hash {report['split']['hash'][:12]})", title_justify="left")
    t.add_column("split")
    for k in classes:
        t.add_column(k, justify="right")
    t.add_column("total", justify="right")
    for s, cnt in report["splits"].items():
        t.add_row(s, *(str(cnt[k]) for k in classes), str(sum(cnt.values())))
    t.add_row("all", *(str(report["totals"][k]) for k in classes), str(report["cycles"]),
              style="bold")
    err_console.print(t)
    for title, key in (("devices", "devices"), ("sites", "sites")):
        tt = Table(title=title, title_justify="left")
        tt.add_column(title[:-1])
        if key == "devices":
            tt.add_column("recordings", justify="right")
        tt.add_column("cycles", justify="right")
        for k in classes:
            tt.add_column(k, justify="right")
        for d, row in report[key].items():
            extra = [str(row["recordings"])] if key == "devices" else []
            tt.add_row(d, *extra, str(row["cycles"]), *(str(row[k]) for k in classes))
        err_console.print(tt)
    d = report["duration_s"]
    srs = ", ".join(f"{k} Hz x{v}" for k, v in report["sample_rates"].items())
    err_console.print(f"{report['recordings']} recordings, {report['patients']} patients, "
                      f"{report['cycles']} cycles; cycle duration {d['min']:.2f}-{d['max']:.2f} s "
                      f"(mean {d['mean']:.2f}); sample rates: {srs}")
    plan = report["synthesis_plan"]
    if plan:
        err_console.print(
            "synthesis plan (to reach {:.0%} of the largest train class): ".format(
                report["synthesis_target_ratio"])
            + ", ".join(f"{k} +{v}" for k, v in plan.items() if v) or "balanced")
    for st in (report.get("fbank_stats") or {}).values():
        err_console.print(
            f"log-mel statistics of the train split ({st['clips']} clips; "
            f"{st['clip_seconds']:g} s, {st['num_mel_bins']} bins, {st['window']} window): "
            f"mean {st['mean']:.4f}, std {st['std']:.4f}  (train --norm dataset; "
            f"--norm audioset uses {AUDIOSET_MEAN:.4f} / {AUDIOSET_STD:.4f})")
    clamped = report.get("cycles_clamped") or {}
    if clamped.get("count"):
        err_console.print(f"{clamped['count']} cycle(s) end past their recording (by up to "
                          f"{clamped['max_past_s']:.3f} s): clamped to its end and kept")
    if report["problem_count"]:
        err_console.print(f"[yellow]{report['problem_count']} problem(s) skipped[/yellow]")


# --------------------------------------------------------------------------- command

#: Every option's default, written once: the Typer options below refer to it
#: (`data_dir` is the command's argument and has none).
_D = AnalyzeOptions(data_dir=Path())


def command(
    ctx: typer.Context,
    data_dir: Annotated[Path, typer.Argument(
        help="Dataset folder: ICBHI 2017 layout (wav + txt; or a folder a few levels "
             "above it, as downloads unpack), SPRSound (wav + same-named json) or "
             "<class>/**/*.wav; or an event table (.csv, .tsv, .jsonl: file,start,end,label "
             "per segment).")],
    *,
    name: Annotated[str | None, typer.Option(
        help="Dataset name in the project (default: from the folder name).")] = _D.name,
    format: Annotated[str, typer.Option(
        "--format", help="Dataset layout: auto, icbhi, folder, sprsound or events (an "
        "event table; auto picks it for a .csv, .tsv or .jsonl file).")] = _D.format,
    split: Annotated[str | None, typer.Option(
        help="official (ICBHI challenge file; SPRSound: the challenge sets its folders name; "
             "an event table's split column), patients:F (F: train fraction, e.g. "
             "patients:0.6), or random:F:G (folder data; train and val fractions, e.g. "
             "random:0.7:0.15).")] = _D.split,
    val_fraction: Annotated[float, typer.Option(
        help="Share of train patients moved to the validation split (0 disables).")
    ] = _D.val_fraction,
    strict: Annotated[bool, typer.Option(
        "--strict/--lenient",
        help="Stop at the first bad file or line (exit 2), or skip it with a warning.")
    ] = _D.strict,
    allow_unknown_codes: Annotated[bool, typer.Option(
        help="ICBHI layout: accept chest-location, mode and device codes in recording names "
             "other than ICBHI 2017's (e.g. another stethoscope).")] = _D.allow_unknown_codes,
    target_ratio: Annotated[float, typer.Option(
        help="Synthesis plan: bring each class to this fraction of the largest train class.")
    ] = _D.target_ratio,
    max_synthetic_per_class: Annotated[int, typer.Option(
        help="Synthesis plan: at most this many synthetic cycles per class.")
    ] = _D.max_synthetic_per_class,
    plots: Annotated[bool, typer.Option(help="Write PNG plots next to report.json.")] = _D.plots,
    fbank_stats: Annotated[bool, typer.Option(
        "--fbank-stats/--no-fbank-stats",
        help="Compute the train split's log-mel mean and std (for train --norm dataset).")
    ] = _D.fbank_stats,
    name_pattern: Annotated[str | None, typer.Option(
        help="Folder data: file-name pattern whose fields are kept per file, e.g. "
             "'{material}_{class}_{frequency}_{seq}' ({class} matches the class folder).")
    ] = _D.name_pattern,
    where: Annotated[list[str] | None, typer.Option(
        help="Folder data: keep only files whose pattern field has this value, "
             "FIELD=VALUE[,VALUE...] (repeatable), e.g. frequency=1000hz.")] = _D.where,
    group_by: Annotated[str | None, typer.Option(
        help="Folder data: keep all files with the same value of this pattern field (or "
             "'groups': the same sub-folders) in one split, e.g. material.")] = _D.group_by,
    split_file: Annotated[Path | None, typer.Option(
        help="ICBHI data: the train/test split file to use (default: "
             "ICBHI_challenge_train_test.txt beside the data, else the official list "
             "built into rsctool).")] = _D.split_file,
    label_map: Annotated[str | None, typer.Option(
        "--map",
        help="See the labels through another dataset's classes: a built-in label map "
             "(sprsound-to-icbhi) or a TOML file. Unmapped labels stop analyze (--lenient "
             "drops them).")] = _D.label_map,
    export_events: Annotated[Path | None, typer.Option(
        help="Also write the analysed dataset as an event table (.csv, .tsv or .jsonl; "
             "files relative to it; with its split column), e.g. to relabel it and read "
             "it back with --format events.")] = None,
    task: Annotated[str | None, typer.Option(
        "--task", help="SPRSound data: the challenge task whose labels the manifest gets: "
                       "1-1 (events: normal/adventitious), 1-2 (events: 7 classes, the "
                       "default), 2-1 (recordings: normal/adventitious/poor_quality), 2-2 "
                       "(recordings: 5 classes).")] = _D.task,
    force: Annotated[bool, typer.Option(help="Re-run even if nothing changed.")] = _D.force,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")]
    = False,
) -> None:
    """Read a dataset, check it, write its cycle manifest and a distribution report."""
    state = get_state(ctx)
    opts = AnalyzeOptions(data_dir=data_dir, name=name, format=format, split=split,
                          val_fraction=val_fraction, seed=state.seed, strict=strict,
                          allow_unknown_codes=allow_unknown_codes, target_ratio=target_ratio,
                          max_synthetic_per_class=max_synthetic_per_class, plots=plots,
                          fbank_stats=fbank_stats, force=force, name_pattern=name_pattern,
                          where=parse_where(where), group_by=group_by, split_file=split_file,
                          label_map=label_map, task=task)
    if export_events is not None:
        from rsctool.data.events import EVENT_SUFFIXES

        if export_events.suffix.lower() not in EVENT_SUFFIXES:
            raise ConfigError(f"--export-events writes a {', '.join(EVENT_SUFFIXES)} file, "
                              f"got {export_events}")
    project = state.load_project()
    result = run(project, opts, progress=not state.quiet and not json_out)
    if export_events is not None:
        from rsctool.data.events import write_event_table
        from rsctool.data.manifest import read_manifest

        write_event_table(read_manifest(result.manifest), export_events)
        info(state, f"event table: {export_events}")
    for note in layout_notes(result.report):
        info(state, note)
    if json_out:
        print_json(result.report)
    if not state.quiet:
        print_report(result.report)
        if result.skipped:
            info(state, f"dataset {result.name!r} unchanged: nothing to do (--force re-runs)")
        else:
            info(state, f"manifest: {result.manifest}  ({result.timings['total']:.1f} s)")
