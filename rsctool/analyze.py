"""`rsctool analyze DATA_DIR`: dataset -> validated cycle manifest, report and plots.

Reads an ICBHI-2017-format or folder-format dataset, checks every recording (header,
samples: empty, NaN/inf, silent; cycles inside the audio), assigns splits (official or
patient-wise, with a patient-wise validation split carved from train), writes the
manifest (JSONL), `report.json` and PNG plots, and registers the dataset in the project
file. A re-run on an unchanged dataset with the same options is a no-op unless `--force`.
Nothing is written until everything has been read and checked.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from rsctool.console import get_state, info, print_json, warn
from rsctool.data.manifest import ICBHI_CLASSES, SPLITS, Cycle, write_manifest
from rsctool.errors import ConfigError, DataError
from rsctool.utils import atomic_write_json, params_hash

FORMATS = ("auto", "icbhi", "folder")
#: Bump when the analysis itself changes, so old records are not reused as up to date.
ANALYZE_VERSION = 1


@dataclass
class AnalyzeOptions:
    """Resolved options of one `analyze` invocation (stored with its output).

    Attributes:
        data_dir: dataset folder.
        name: dataset name in the project (default: derived from the folder).
        format: ``auto|icbhi|folder``.
        split: ``official`` (ICBHI challenge file), ``patients:F`` (patient-wise random,
            F = train fraction) or ``random:TRAIN:VAL`` (folder data).
        val_fraction: patient-wise share of train moved to validation (0 disables).
        seed: seed of every random split.
        strict: stop at the first problem (exit 2) instead of skipping it with a warning.
        target_ratio: synthesis plan target, as a fraction of the largest train class.
        max_synthetic_per_class: cap of the synthesis plan per class.
        plots: write PNG plots next to report.json.
        force: re-run even if nothing changed.
    """

    data_dir: Path
    name: str | None = None
    format: str = "auto"
    split: str | None = None
    val_fraction: float = 0.1
    seed: int = 0
    strict: bool = True
    target_ratio: float = 0.5
    max_synthetic_per_class: int = 500
    plots: bool = True
    force: bool = False

    def params(self) -> dict[str, Any]:
        """What determines the output (the fingerprint's parameter half)."""
        d = asdict(self)
        d.pop("force")
        d.pop("plots")
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
    """``icbhi`` when the folder holds ICBHI-named annotation files, ``folder`` when it
    holds class sub-folders with audio; DataError otherwise."""
    from rsctool.data.folder import is_folder_dir
    from rsctool.data.icbhi import is_icbhi_dir

    if is_icbhi_dir(root):
        return "icbhi"
    if is_folder_dir(root):
        return "folder"
    raise DataError("no ICBHI annotation files and no <class>/*.wav folders found "
                    "(use --format to say which layout it is)", root)


def _default_name(root: Path, fmt: str) -> str:
    base = root.resolve().name.lower()
    if fmt == "icbhi" and ("icbhi" in base or base.startswith("respiratory")):
        return "icbhi"
    cleaned = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in base).strip("-")
    return cleaned or fmt


def _dataset_fingerprint(root: Path) -> str:
    """Hash of every file's relative path, size and mtime under `root` (cheap: no reads)."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            p = Path(dirpath, f)
            try:
                st = p.stat()
            except OSError:
                continue
            entries.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    # the ICBHI metadata files may sit in the parent folder
    for p in sorted(root.resolve().parent.glob("ICBHI_*.txt")):
        st = p.stat()
        entries.append(("../" + p.name, st.st_size, st.st_mtime_ns))
    return params_hash(entries)


class AudioScanner:
    """Reads each recording once and checks its samples; results cached by file identity.

    The cache (`path -> {size, mtime_ns, stats}`) is what makes a second analyze of
    the same data cheap: a file whose size and mtime are unchanged is not read again.
    """

    def __init__(self, cache_path: Path | None):
        self.cache_path = cache_path
        self.cache: dict[str, Any] = {}
        self.hits = 0
        self.misses = 0
        if cache_path is not None and cache_path.exists():
            try:
                self.cache = json.loads(cache_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.cache = {}  # a broken cache is only a slower run

    def scan(self, path: str, segments: list[tuple[float, float]]) -> dict[str, Any]:
        """Stats of one file: sample_rate (Hz), duration (s), peak, rms_db (dBFS), and
        per-segment rms_db in `segments` order. Raises DataError for bad samples."""
        st = os.stat(path)
        key = os.path.abspath(path)
        seg_key = [[round(s, 4), round(e, 4)] for s, e in segments]
        hit = self.cache.get(key)
        if (hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns
                and hit.get("segments") == seg_key):
            self.hits += 1
            return hit["stats"]
        self.misses += 1
        stats = _scan_samples(path, segments)
        self.cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                           "segments": seg_key, "stats": stats}
        return stats

    def save(self) -> None:
        if self.cache_path is not None and self.misses:
            atomic_write_json(self.cache_path, self.cache)


def _db(x: float) -> float:
    return round(20.0 * math.log10(max(x, 1e-10)), 2)


def _scan_samples(path: str, segments: list[tuple[float, float]]) -> dict[str, Any]:
    import soundfile as sf

    from rsctool.audio import audio_info

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
    peak = float(np.max(np.abs(wav)))
    if peak == 0.0:
        raise DataError("silent audio (every sample is zero)", path)
    seg_db = []
    for s, e in segments:
        seg = wav[int(s * sr): max(int(e * sr), int(s * sr) + 1)]
        seg_db.append(_db(float(np.sqrt(np.mean(np.square(seg, dtype=np.float64))))
                          if len(seg) else 0.0))
    return {
        "sample_rate": int(sr),
        "channels": int(meta.channels),
        "duration": round(len(wav) / sr, 4),
        "peak": round(peak, 6),
        "rms_db": _db(float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))),
        "clipped_fraction": round(float(np.mean(np.abs(wav) >= 0.999)), 6),
        "segments_rms_db": seg_db,
    }


def _read_cycles(root: Path, fmt: str, opts: AnalyzeOptions, problems: list) -> list[Cycle]:
    if fmt == "icbhi":
        from rsctool.data.icbhi import read_icbhi

        return read_icbhi(root, split=opts.split or "official", val_fraction=opts.val_fraction,
                          seed=opts.seed, strict=opts.strict, problems=problems)
    from rsctool.data.folder import read_folder

    return read_folder(root, split=opts.split or "random:0.7:0.15", seed=opts.seed,
                       strict=opts.strict, problems=problems)


def synthesis_plan(train_counts: dict[str, int], target_ratio: float, cap: int) -> dict[str, int]:
    """Synthetic cycles needed per class so each reaches `target_ratio` x the largest
    class of the train split, capped at `cap`. Classes already there need 0."""
    if not train_counts:
        return {}
    target = math.ceil(target_ratio * max(train_counts.values()))
    return {c: int(min(cap, max(0, target - n))) for c, n in train_counts.items()}


def build_report(cycles: list[Cycle], stats: dict[str, dict], *, fmt: str, name: str,
                 opts: AnalyzeOptions, problems: list, split_hash: str) -> dict[str, Any]:
    """The analysis report (the `--json` document)."""
    classes = list(ICBHI_CLASSES) if fmt == "icbhi" else sorted({c.label for c in cycles})
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
        "root": str(Path(opts.data_dir).resolve()),
        "split": {"spec": opts.split or ("official" if fmt == "icbhi" else "random:0.7:0.15"),
                  "val_fraction": opts.val_fraction, "seed": opts.seed, "hash": split_hash},
        "classes": classes,
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
        "problems": [p.to_dict() if hasattr(p, "to_dict") else asdict(p) for p in problems],
        "problem_count": len(problems),
    }


def _summary(x: np.ndarray) -> dict[str, float | None]:
    if x.size == 0:
        return {"min": None, "mean": None, "max": None}
    return {"min": round(float(x.min()), 4), "mean": round(float(x.mean()), 4),
            "max": round(float(x.max()), 4)}


# --------------------------------------------------------------------------- run

def run(project: Any, opts: AnalyzeOptions, *, progress: bool = False,
        log: Any = None) -> AnalyzeResult:
    """Analyze `opts.data_dir` and register it in `project` (a `rsctool.project.Project`)."""
    from rsctool.data.splits import split_hash as compute_split_hash

    t0 = time.perf_counter()
    root = Path(opts.data_dir)
    if not root.exists():
        raise DataError("dataset folder not found", root)
    if not root.is_dir():
        raise DataError("not a folder", root)
    if opts.format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {opts.format!r}")
    if not 0.0 <= opts.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {opts.val_fraction}")
    if opts.target_ratio <= 0 or opts.max_synthetic_per_class < 0:
        raise ConfigError("--target-ratio must be > 0 and --max-synthetic-per-class >= 0")
    fmt = detect_format(root) if opts.format == "auto" else opts.format
    name = opts.name or _default_name(root, fmt)
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"--name may hold letters, digits, '-' and '_' only, got {name!r}")
    params = {**opts.params(), "format": fmt, "name": name}
    p_hash = params_hash(params)
    fingerprint = _dataset_fingerprint(root)

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
    cycles = _read_cycles(root, fmt, opts, problems)
    t_read = time.perf_counter()

    # Scan samples of each recording once (cached by file identity).
    by_audio: dict[str, list[Cycle]] = defaultdict(list)
    for c in cycles:
        by_audio[c.audio].append(c)
    scanner = AudioScanner(state_dir / "cache" / "audio-stats.json")
    stats: dict[str, dict] = {}
    bad_audio: set[str] = set()
    items = sorted(by_audio.items())
    bar = _progress(progress, "scanning audio", len(items))
    try:
        for audio, cs in items:
            try:
                stats[audio] = scanner.scan(audio, [(c.start, c.end) for c in cs])
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
    for p in problems:
        warn(str(p) if not hasattr(p, "to_dict") else _problem_line(p))
    if not cycles:
        raise DataError("no usable cycles found", root)
    t_scan = time.perf_counter()

    s_hash = compute_split_hash(cycles)
    report = build_report(cycles, stats, fmt=fmt, name=name, opts=opts, problems=problems,
                          split_hash=s_hash)
    # Everything is read and checked: now write outputs, then record them.
    sha = write_manifest(manifest_path, cycles)
    report["manifest"] = str(manifest_path)
    report["manifest_sha256"] = sha
    old_report = _read_json(report_path)
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
    scanner.save()
    record = {
        "format": fmt,
        "root": project.rel(root.resolve()),
        "split": report["split"]["spec"],
        "split_hash": s_hash,
        "val_fraction": opts.val_fraction,
        "seed": opts.seed,
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
    project.set_record("datasets", name, record)
    t_end = time.perf_counter()
    return AnalyzeResult(name, report, manifest_path, timings={
        "read": t_read - t0, "scan": t_scan - t_read, "write": t_end - t_scan,
        "total": t_end - t0, "cache_hits": scanner.hits, "cache_misses": scanner.misses})


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
    if report["problem_count"]:
        err_console.print(f"[yellow]{report['problem_count']} problem(s) skipped[/yellow]")


# --------------------------------------------------------------------------- command

def command(
    ctx: typer.Context,
    data_dir: Annotated[Path, typer.Argument(
        help="Dataset folder: ICBHI 2017 layout (wav + txt) or <class>/**/*.wav.")],
    *,
    name: Annotated[str | None, typer.Option(
        help="Dataset name in the project (default: from the folder name).")] = None,
    format: Annotated[str, typer.Option(
        "--format", help="Dataset layout: auto, icbhi or folder.")] = "auto",
    split: Annotated[str | None, typer.Option(
        help="official (ICBHI challenge file), patients:TRAIN_FRACTION, or "
             "random:TRAIN:VAL (folder data).")] = None,
    val_fraction: Annotated[float, typer.Option(
        help="Share of train patients moved to the validation split (0 disables).")] = 0.1,
    strict: Annotated[bool, typer.Option(
        "--strict/--lenient",
        help="Stop at the first bad file or line (exit 2), or skip it with a warning.")] = True,
    target_ratio: Annotated[float, typer.Option(
        help="Synthesis plan: bring each class to this fraction of the largest train class.")
    ] = 0.5,
    max_synthetic_per_class: Annotated[int, typer.Option(
        help="Synthesis plan: at most this many synthetic cycles per class.")] = 500,
    plots: Annotated[bool, typer.Option(help="Write PNG plots next to report.json.")] = True,
    force: Annotated[bool, typer.Option(help="Re-run even if nothing changed.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")]
    = False,
) -> None:
    """Read a dataset, check it, write its cycle manifest and a distribution report."""
    state = get_state(ctx)
    opts = AnalyzeOptions(data_dir=data_dir, name=name, format=format, split=split,
                          val_fraction=val_fraction, seed=state.seed, strict=strict,
                          target_ratio=target_ratio,
                          max_synthetic_per_class=max_synthetic_per_class, plots=plots,
                          force=force)
    project = state.load_project()
    result = run(project, opts, progress=not state.quiet and not json_out)
    if json_out:
        print_json(result.report)
    if not state.quiet:
        print_report(result.report)
        if result.skipped:
            info(state, f"dataset {result.name!r} unchanged: nothing to do (--force re-runs)")
        else:
            info(state, f"manifest: {result.manifest}  ({result.timings['total']:.1f} s)")
