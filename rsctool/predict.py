"""`rsctool predict`: classify breathing cycles or sliding windows of new recordings.

Inputs are audio files, folders (searched recursively for the audio suffixes every stage
reads, `rsctool.audio.AUDIO_EXTENSIONS`: .wav/.flac/.ogg/.mp3) and glob
patterns. Each recording is classified

* per cycle, when an ICBHI-style annotation (``<stem>.txt``: ``start end crackles
  wheezes`` per line) lies beside it or is given with ``--annotations``: every cycle is
  read, resampled and padded/cropped exactly as in training, and its annotated label is
  reported next to the prediction;
* else in sliding windows (``--window``, default the training clip length; ``--hop``,
  default half a window), read block by block so an hour of audio needs no more memory
  than a minute; consecutive abnormal windows are merged into segments of abnormal
  sound.

Metadata-conditioned models get each recording's metadata from, in increasing priority,
its ICBHI-style file name (device, chest site) and the challenge demographics file beside
it (age, sex, BMI), a CSV (``--meta FILE.csv`` with a ``file`` column), and
``--meta KEY=VALUE ...``. Whatever is still missing is encoded as missing, exactly as in
training (unknown index, numeric mask 0), never filled in, and reported.

Backends: ``onnx`` runs an export of the run (or ``--model FILE.onnx``) with onnxruntime
and a numpy filter bank, and never imports torch, so it starts in well under a second;
``torch`` rebuilds the model from the checkpoint. The default is onnx when the run has an
up-to-date export, except a transformer on a CPU with bf16 units, which torch runs faster
(`torch_bf16_first`). Results: a table on stderr, and on stdout (or in ``--out``, written
atomically) the records: ``--format tsv`` (the default when stdout is not a terminal, so
``| head``, ``cut`` and ``awk`` work) one line per cycle/window; ``json|jsonl|csv`` also
the per-recording summaries (counts per class, segments, metadata used) and the errors.
Every file is checked as `analyze` checks audio (too short for one analysis frame, a
truncated wav, silence, clipping): a warning on stderr and in the records' ``warning``
field, or with ``--strict`` an error. A bad file stops the batch with exit code 2 and one
line naming it; with ``--keep-going`` it is reported and the rest are still classified
(the exit code is then 2 if any file failed).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rsctool.console import err_console, get_state, warn, write_stdout
from rsctool.console import info as note
from rsctool.devices import check_precision
from rsctool.errors import ConfigError, DataError, UserError, flag_lookup, render_message

if TYPE_CHECKING:
    import numpy as np

    from rsctool.project import Project

# numpy is imported where it is used: `rsctool predict --help` then starts ~0.1 s faster.

FORMATS = ("table", "tsv", "json", "jsonl", "csv")
BACKENDS = ("auto", "onnx", "torch")
MODES = ("auto", "cycles", "windows")
#: Metadata a user may give (`--meta`, CSV); ``duration`` comes from each cycle/window.
USER_META = ("device", "site", "sex", "age", "bmi")
_SUFFIX_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
                   ".tsv": "tsv"}


@dataclass
class PredictOptions:
    """What to classify and how.

    Attributes:
        inputs: audio files, folders or glob patterns.
        run: run whose model to use (default: the last finished run in the project).
        model: an exported ``.onnx`` file instead of a run (no project needed).
        backend: ``auto`` (onnx when the run has an up-to-date export, except for
            `torch_bf16_first`), ``onnx``, ``torch``.
        checkpoint: ``best`` or ``last`` (the run's checkpoint, or which export).
        mode: ``auto`` (cycles when an annotation is found), ``cycles`` or ``windows``.
        annotations: an annotation file (one input recording) or a folder of them.
        window, hop: sliding-window length and step in seconds (None: the clip length,
            half a window).
        meta: ``KEY=VALUE`` items (device, site, sex, age, bmi; ``NA`` = missing) and/or
            CSV files with a ``file`` column, applied in order.
        format: ``table`` (stderr only), ``tsv``, ``json``, ``jsonl`` or ``csv`` (None: from
            the suffix of `out`, else table; the command picks tsv when stdout is not a
            terminal).
        out: write the records there (atomically) instead of stdout.
        keep_going: report a bad file and continue with the others.
        strict: a file that is too short, truncated, silent or clipping is an error
            (default: a warning).
        batch_size: cycles/windows per model call (None: `default_batch_size` of the
            backend: for an AST-family model on the CPU 1, or 2 in torch bf16; else 16).
        threads: onnxruntime intra-op threads (None: one per core).
        block_seconds: audio read per block when streaming windows.
        precision: torch backend compute precision, ``auto`` (bf16 where the CPU has bf16
            units or the GPU supports it), ``fp32`` or ``bf16``
            (`rsctool.devices.resolve_precision`); the ONNX backend runs in its exported
            precision.
    """

    inputs: list[str] = field(default_factory=list)
    run: str | None = None
    model: Path | None = None
    backend: str = "auto"
    checkpoint: str = "best"
    mode: str = "auto"
    annotations: Path | None = None
    window: float | None = None
    hop: float | None = None
    meta: list[str] = field(default_factory=list)
    format: str | None = None
    out: Path | None = None
    keep_going: bool = False
    strict: bool = False
    batch_size: int | None = None
    threads: int | None = None
    block_seconds: float = 30.0
    precision: str = "auto"

    def validate(self) -> PredictOptions:
        if not self.inputs:
            raise ConfigError("no audio given: rsctool predict AUDIO... (files, folders, globs)")
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, "
                              f"got {self.backend!r}")
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.checkpoint not in ("best", "last"):
            raise ConfigError(f"--checkpoint must be best or last, got {self.checkpoint!r}")
        if self.model is not None and self.run is not None:
            raise ConfigError("give either --run NAME or --model FILE.onnx, not both")
        if self.model is not None and self.backend == "torch":
            raise ConfigError("--backend torch needs a run (--run NAME), not an ONNX file")
        for key in ("window", "hop"):
            v = getattr(self, key)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ConfigError(f"--{key} must be a positive number of seconds, got {v}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        check_precision(self.precision)
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        if self.format is None:
            suffix = Path(self.out).suffix.lower() if self.out is not None else ""
            if self.out is not None and suffix not in _SUFFIX_FORMATS:
                raise ConfigError(f"--out {self.out}: give --format tsv|json|jsonl|csv (or "
                                  "use a .tsv, .json, .jsonl or .csv file name)")
            self.format = _SUFFIX_FORMATS.get(suffix, "table")
        if self.format not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, "
                              f"got {self.format!r}")
        if self.format == "table" and self.out is not None:
            raise ConfigError("--out needs --format tsv, json, jsonl or csv")
        return self


# --------------------------------------------------------------------------- backends

class OnnxBackend:
    """An exported model in onnxruntime; numpy features and metadata (no torch)."""

    name = "onnx"

    #: The ONNX graph runs in the precision it was exported in (`--precision` is torch's).
    precision = None

    def __init__(self, path: Path, threads: int | None = None, device: str = "auto"):
        from rsctool.devices import onnx_providers
        from rsctool.onnx_runtime import OnnxModel

        providers = onnx_providers(device)
        #: ``cuda`` when onnxruntime is asked for its CUDA provider, else ``cpu``.
        self.device = "cuda" if providers[0].startswith("CUDA") else "cpu"
        self.model = OnnxModel(path, threads, providers)
        self.spec = self.model.spec
        self.source = str(path)

    def logits(self, wav: np.ndarray, meta: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """`(B, C)` logits of `(B, N)` clip waveforms and their metadata records."""
        from rsctool.onnx_runtime import encode_metadata

        enc = (encode_metadata(meta, self.spec.metadata_encoder)
               if self.spec.needs_metadata else None)
        return self.model.logits(self.model.features(wav), enc)


class TorchBackend:
    """A run's checkpoint in torch, fed as in training."""

    name = "torch"

    def __init__(self, project: Project, run: str, checkpoint: str, device: str,
                 precision: str = "auto"):
        from rsctool.devices import resolve_device, resolve_precision
        from rsctool.onnx_runtime import ModelSpec
        from rsctool.runs import load_run

        self.device = resolve_device(device)
        #: ``fp32`` or ``bf16`` (autocast; the weights stay fp32, AST blocks use bf16
        #: copies on the CPU).
        self.precision = resolve_precision(precision, self.device)
        self.loaded = load_run(project, run, checkpoint, self.device)
        if self.loaded.config.needs_metadata and self.loaded.encoder is None:
            raise DataError("checkpoint of a metadata model lacks its metadata encoder",
                            self.loaded.checkpoint)
        self.spec = ModelSpec.from_run(self.loaded)
        self.fbank_cfg = self.loaded.clip.fbank.replace(dither=0.0)
        self.source = str(self.loaded.checkpoint)
        if self.precision == "bf16" and self.device == "cpu":
            from rsctool.models.ast_backbone import pack_for_inference

            # once for every call: AST blocks take the fused bf16 path (no-op otherwise)
            pack_for_inference(self.loaded.model)

    def logits(self, wav: np.ndarray, meta: Sequence[Mapping[str, Any]]) -> np.ndarray:
        import numpy as np
        import torch

        from rsctool.devices import inference_precision
        from rsctool.features import fbank, normalize_fbank

        cfg = self.fbank_cfg
        x = normalize_fbank(fbank(torch.from_numpy(np.ascontiguousarray(wav)), cfg),
                            cfg.mean, cfg.std).to(self.device)
        enc = None
        if self.spec.needs_metadata:
            enc = {k: v.to(self.device)
                   for k, v in self.loaded.encoder.encode_values(list(meta)).items()}
        # The filter bank stays fp32 (outside autocast): only the model runs in bf16.
        with torch.no_grad(), inference_precision(self.precision, self.device):
            return self.loaded.model(x, enc)["logits"].float().cpu().numpy()


def default_batch_size(backend: Any) -> int:
    """Cycles/windows per model call when ``--batch-size`` is not given, by the rule the
    CPU measurements in docs/benchmarks.md back ("AST base: weight layouts by call
    size"): for an AST-family model (a transformer with an ``attention`` setting) on the
    CPU, 1 in onnxruntime and in torch fp32 (one clip alone costs less than its share of a
    batch), 2 in torch bf16 (AST base, fused blocks: 164 ms per clip at batch 2, 173 at 1,
    157 at 4 and 192 at 8; `FUSED_CPU_BATCH`); 16 otherwise (CNNs, and any model on a GPU,
    are cheaper per clip in batches)."""
    ast_like = "attention" in (backend.spec.model_config or {})
    if not ast_like or backend.device != "cpu":
        return 16
    if backend.name == "torch" and getattr(backend, "precision", None) == "bf16":
        return 2
    return 1


def _file_signature(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


#: An int8 export counts as "equal accuracy" to fp32 when its labels agree with torch's
#: on at least this share of the validation cycles `export --quantize int8` compared...
INT8_MIN_AGREEMENT = 0.99
#: ... and its ICBHI Score there is at most this much lower.
INT8_MAX_SCORE_DROP = 0.01


def int8_first(rec: Mapping[str, Any] | None) -> bool:
    """Whether an int8 export record (`rsctool export --quantize int8`) is preferred to
    the fp32 export on the CPU: a transformer (AST family: int8 matmuls are 2-3x faster
    than fp32 there, docs/benchmarks.md; the convolutions of the CNNs stay fp32 and gain
    nothing) whose measured accuracy equals fp32's (`INT8_MIN_AGREEMENT`,
    `INT8_MAX_SCORE_DROP`). Exports from before the ``transformer`` field never are."""
    if not rec or not rec.get("transformer") or rec.get("agreement") is None:
        return False
    drop = rec.get("score_change")
    return (rec["agreement"] >= INT8_MIN_AGREEMENT
            and (drop is None or drop >= -INT8_MAX_SCORE_DROP))


def torch_bf16_first(project: Project, run: str, precision: str) -> bool:
    """Whether ``--backend auto`` takes torch over the run's ONNX export: the run is a
    transformer (its export record says so), torch would run it in bf16 (`precision`
    ``auto`` or ``bf16``) and this CPU has bf16 units (`rsctool.devices.cpu_bf16_fast`).
    There the fused bf16 AST blocks beat onnxruntime's int8 export (AST base: 154 vs
    258 ms per clip, 3 minutes of audio in 8.6 vs 13.1 s; docs/benchmarks.md) at
    fp32-like accuracy (probabilities within 5e-3 of fp32)."""
    from rsctool.devices import cpu_bf16_fast
    from rsctool.runs import export_name

    if precision == "fp32":
        return False
    recs = (project.get("exports", export_name(run, wf, q))
            for wf in (False, True) for q in ("none", "int8"))
    return any(r and r.get("transformer") for r in recs) and cpu_bf16_fast()


def find_export(project: Project, run: str, checkpoint: str, cpu: bool = True
                ) -> tuple[Path | None, str | None]:
    """The run's usable ONNX export: ``(path, None)``, or ``(None, why not)``.

    Prefers the plain fp32 export, then the waveform and int8 variants; on the CPU
    (`cpu`) an int8 export of equal accuracy (`int8_first`) comes first. An export whose
    checkpoint changed since (size/mtime, then sha256) is not usable.
    """
    from rsctool.data.manifest import file_sha256
    from rsctool.runs import export_name

    why = f"run {run!r} has no ONNX export (run `rsctool export --run {run}`)"
    order = [(False, "none"), (True, "none"), (False, "int8"), (True, "int8")]
    if cpu:
        order.sort(key=lambda v: not (v[1] == "int8" and int8_first(
            project.get("exports", export_name(run, *v)))))
    for wf, q in order:
        rec = project.get("exports", export_name(run, wf, q))
        if not rec or rec.get("status") != "done" or rec.get("checkpoint") != checkpoint:
            continue
        path = project.abs(rec["onnx"])
        if not path.is_file():
            why = f"the export of run {run!r} is missing ({path})"
            continue
        ck = project.abs(rec.get("checkpoint_file", ""))
        if ck.is_file() and list(_file_signature(ck)) != rec.get("checkpoint_signature"):
            if file_sha256(ck) != rec.get("checkpoint_sha256"):
                why = (f"the export of run {run!r} is older than its {checkpoint} checkpoint "
                       f"(run `rsctool export --run {run} --force`)")
                continue
        return path, None
    return None, why


def open_backend(opts: PredictOptions, state: Any) -> Any:
    """The backend `opts` asks for (see `PredictOptions.backend`)."""
    if opts.model is not None:
        path = Path(opts.model)
        if path.suffix.lower() != ".onnx":
            raise ConfigError(f"--model must be an exported .onnx file, got {path}")
        return OnnxBackend(path, opts.threads, state.device)
    from rsctool.runs import select_runs

    project = state.load_project(must_exist=True)
    name = select_runs(project, opts.run, [])[0][0]
    if opts.backend in ("auto", "onnx"):
        from rsctool.devices import onnx_providers

        cpu = onnx_providers(state.device)[0] == "CPUExecutionProvider"
        path, why = find_export(project, name, opts.checkpoint, cpu)
        if path is not None:
            if not (opts.backend == "auto" and cpu
                    and torch_bf16_first(project, name, opts.precision)):
                return OnnxBackend(path, opts.threads, state.device)
            note(state, f"run {name!r}: torch in bf16, faster on this CPU (bf16 units) than "
                        f"its ONNX export ({path.name}; --backend onnx to use that)")
        if opts.backend == "onnx":
            raise ConfigError(f"--backend onnx: {why}")
        if why and "older" in why:
            warn(f"{why}; using the torch backend")
    return TorchBackend(project, name, opts.checkpoint, state.device, opts.precision)


# --------------------------------------------------------------------------- inputs

def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def expand_inputs(items: Sequence[str]) -> list[tuple[str, Path | None, UserError | None]]:
    """``(as given, file, error)`` per recording: folders give their audio files
    (recursively, sorted), patterns their matches; a name that matches nothing gives an
    error entry (so `--keep-going` can report it and go on). Duplicates are dropped."""
    from rsctool.audio import AUDIO_EXTENSIONS, is_audio_file

    out: list[tuple[str, Path | None, UserError | None]] = []
    seen: set[str] = set()

    def add(item: str, path: Path) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            out.append((item, path, None))

    for item in items:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if is_audio_file(f) and f.is_file())
            if not files:
                out.append((item, None, DataError(
                    f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder", p)))
            for f in files:
                add(item, f)
        elif p.exists():
            add(item, p)
        elif _is_glob(item):
            hits = sorted(Path(h) for h in glob.glob(item, recursive=True)
                          if Path(h).is_file() and is_audio_file(h))
            if not hits:
                out.append((item, None, DataError("no audio files match this pattern", item)))
            for f in hits:
                add(item, f)
        else:
            out.append((item, None, DataError("audio file not found", p)))
    return out


# --------------------------------------------------------------------------- metadata

def parse_meta_value(key: str, raw: Any, where: str) -> Any:
    """A user-given metadata value, checked: device/site strings, sex M/F, age >= 0,
    bmi > 0 (years, kg/m^2); empty or ``NA`` = missing (None). `where` (if any)
    starts error messages.

    Raises:
        DataError: an unknown key or a bad value (the message starts with `where`).
    """
    pre = f"{where}: " if where else ""
    if key not in USER_META:
        raise DataError(f"{pre}unknown metadata field {key!r} (known: "
                        f"{', '.join(USER_META)})")
    if raw is None:
        return None
    text = str(raw).strip()
    if text == "" or text.upper() in ("NA", "NAN", "NONE", "NULL"):
        return None
    if key in ("device", "site"):
        return text
    if key == "sex":
        if text.upper() not in ("M", "F"):
            raise DataError(f"{pre}sex must be M, F or NA, got {text!r}")
        return text.upper()
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{pre}{key} must be a number or NA, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (key == "bmi" and value == 0):
        what = "positive" if key == "bmi" else "non-negative"
        raise DataError(f"{pre}{key} must be a finite {what} number, got {text!r}")
    return value


@dataclass
class MetaSources:
    """User metadata: ``--meta`` pairs (for every file) and CSV rows (per file)."""

    fixed: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    def row_for(self, path: Path) -> dict[str, Any]:
        for key in (os.path.realpath(path), path.name, path.stem):
            if key in self.rows:
                return self.rows[key]
        return {}


def read_meta_csv(path: Path) -> dict[str, dict[str, Any]]:
    """``{file key: values}`` of a metadata CSV: a ``file`` column (path, file name or
    stem) and any of device, site, sex, age, bmi. Paths are matched resolved (relative
    ones against the CSV's folder), names and stems as they are."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError("metadata CSV not found", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read metadata CSV ({e})", path) from None
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    if "file" not in fields:
        raise DataError(f"metadata CSV needs a 'file' column (has: {', '.join(fields)})", path, 1)
    unknown = [f for f in fields if f != "file" and f not in USER_META]
    if unknown:
        raise DataError(f"metadata CSV: unknown column(s) {unknown} (known: file, "
                        f"{', '.join(USER_META)})", path, 1)
    rows: dict[str, dict[str, Any]] = {}
    for lineno, row in enumerate(reader, 2):
        row = {(k or "").strip().lower(): v for k, v in row.items()}
        name = (row.get("file") or "").strip()
        if not name:
            raise DataError("empty 'file' value", path, lineno)
        values = {}
        for k in USER_META:
            # An empty cell says nothing (lower-priority sources stay); NA is an explicit
            # "missing" (None) that outranks the file name and the demographics file.
            if (row.get(k) or "").strip():
                try:
                    values[k] = parse_meta_value(k, row[k], "")
                except DataError as e:
                    raise DataError(e.message, path, lineno) from None
        p = Path(name)
        key = name if (len(p.parts) == 1 and not p.is_absolute()) else \
            os.path.realpath(p if p.is_absolute() else path.parent / p)
        rows[key] = values
    return rows


def parse_meta_args(items: Sequence[str]) -> MetaSources:
    """``--meta`` values: ``KEY=VALUE`` pairs (several per value, separated by spaces or
    commas) and CSV file names."""
    src = MetaSources()
    for item in items:
        for token in item.replace(",", " ").split():
            if "=" not in token:
                p = Path(token)
                if p.suffix.lower() != ".csv":
                    raise ConfigError(f"--meta {token!r}: expected KEY=VALUE (keys: "
                                      f"{', '.join(USER_META)}) or a .csv file")
                src.rows.update(read_meta_csv(p))
                continue
            key, value = token.split("=", 1)
            try:
                src.fixed[key.strip().lower()] = parse_meta_value(key.strip().lower(), value,
                                                                  f"--meta {token}")
            except DataError as e:
                raise ConfigError(str(e)) from None
    return src


class MetadataResolver:
    """Metadata of a recording for a conditioned model (see the module docstring)."""

    def __init__(self, sources: MetaSources):
        self.sources = sources
        self._demographics: dict[Path, dict[str, dict[str, Any]]] = {}

    def _demo(self, folder: Path) -> dict[str, dict[str, Any]]:
        if folder not in self._demographics:
            from rsctool.data.icbhi import find_metadata_files, read_demographics

            found = find_metadata_files(folder).get("demographics")
            # Lenient: a malformed line about another patient must not fail this file.
            self._demographics[folder] = (read_demographics(found, strict=False)
                                          if found is not None else {})
        return self._demographics[folder]

    def resolve(self, path: Path) -> tuple[dict[str, Any], dict[str, str]]:
        """``(values, source per field)`` for `path`; absent fields are missing."""
        from rsctool.data.icbhi import RECORDING_RE

        values: dict[str, Any] = {}
        source: dict[str, str] = {}

        def put(vals: Mapping[str, Any], where: str, explicit: bool = False) -> None:
            # `explicit`: a None is the user's NA, which overrides what is known so far.
            for k, v in vals.items():
                if v is not None:
                    values[k] = v
                    source[k] = where
                elif explicit:
                    values.pop(k, None)
                    source[k] = f"{where} (NA)"

        m = RECORDING_RE.match(path.stem)
        if m is not None:
            put({"device": m["device"], "site": m["site"]}, "file name")
            person = self._demo(path.parent).get(m["patient"], {})
            put({k: person.get(k) for k in ("age", "sex", "bmi")}, "demographics file")
        put(self.sources.row_for(path), "csv", explicit=True)
        put(self.sources.fixed, "--meta", explicit=True)
        return values, source


def missing_metadata(values: Mapping[str, Any], encoder: Mapping[str, Any]) -> list[str]:
    """Fields the model will see as missing: absent, or a device/site the training data
    did not have (encoded as "unknown", as in training)."""
    out = []
    for k in USER_META:
        v = values.get(k)
        if v is None:
            out.append(k)
        elif k == "device" and v not in encoder.get("devices", []):
            out.append(f"device ({v!r} not seen in training)")
        elif k == "site" and v not in encoder.get("sites", []):
            out.append(f"site ({v!r} not seen in training)")
    return out


# --------------------------------------------------------------------------- recordings

@dataclass
class Item:
    """One cycle or window to classify: time span (s), waveform, annotation."""

    kind: str
    index: int
    start: float
    end: float
    wav: np.ndarray
    annotated: str | None = None


def find_annotation(path: Path, annotations: Path | None) -> Path | None:
    if annotations is not None:
        if annotations.is_dir():
            cand = annotations / f"{path.stem}.txt"
            return cand if cand.is_file() else None
        return annotations
    cand = path.with_suffix(".txt")
    return cand if cand.is_file() else None


def annotated_cycles(audio: Path, annotation: Path, spec: Any) -> Iterable[Item]:
    """The annotation's cycles, each read and padded/cropped as in training."""
    from rsctool.audio import audio_info, load_cycle
    from rsctool.data.icbhi import read_annotation
    from rsctool.data.manifest import BINARY_CLASSES, binary_label, icbhi_label

    rows = read_annotation(annotation, strict=True)
    duration = audio_info(audio).duration
    # a 2-class (train --task binary) model: crackle, wheeze and both are "abnormal"
    binary = tuple(spec.classes) == BINARY_CLASSES
    for i, (start, end, crackle, wheeze) in enumerate(rows):
        if start >= duration:
            raise DataError(f"cycle {i + 1} starts at {start:g} s, after the end of the audio "
                            f"({duration:.3f} s, {audio.name})", annotation)
        end = min(end, duration)  # clamped to the audio end, as analyze does
        wav = load_cycle(audio, start, end, spec.sample_rate, spec.clip_seconds, spec.pad_mode)
        label = icbhi_label(crackle, wheeze)
        yield Item("cycle", i, start, end, wav, binary_label(label) if binary else label)


def sliding_windows(audio: Path, spec: Any, window: float, hop: float,
                    block_seconds: float, levels: Any = None) -> Iterable[Item]:
    """Streamed windows, each padded/cropped to the clip length as a cycle would be;
    `levels` (`rsctool.audio.LevelStats`) accumulates the file's sample levels."""
    from rsctool.audio import pad_or_crop
    from rsctool.streaming import stream_windows

    sr = spec.sample_rate
    for w in stream_windows(audio, sr, window, hop, block_seconds, levels):
        clip = pad_or_crop(w.wav, spec.clip_samples, sr, spec.pad_mode)
        yield Item("window", w.index, w.start / sr, (w.start + len(w.wav)) / sr, clip)


def _batched(items: Iterable[Item], n: int) -> Iterable[list[Item]]:
    batch: list[Item] = []
    for it in items:
        batch.append(it)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def merge_segments(records: Sequence[Mapping[str, Any]], classes: Sequence[str]
                   ) -> list[dict[str, Any]]:
    """Runs of consecutive overlapping (or touching) abnormal windows, merged.

    Abnormal = any label but ``normal``; without a ``normal`` class, runs of one label.
    Each segment: ``start, end`` (s), ``label`` (its most frequent window label),
    ``labels`` (windows per label), ``windows``, ``max_probability`` (of not being
    normal, or of the label).
    """
    has_normal = "normal" in classes
    segments: list[dict[str, Any]] = []
    open_ = False
    for r in records:
        label = r["label"]
        if has_normal and label == "normal":
            open_ = False
            continue
        probs = r.get("probabilities")  # None for a ranking model (scores)
        p = (None if probs is None else
             (1.0 - probs["normal"]) if has_normal else probs[label])
        seg = segments[-1] if segments else None
        if (open_ and seg is not None and r["start"] <= seg["end"] + 1e-9
                and (has_normal or seg["label"] == label)):
            seg["end"] = max(seg["end"], r["end"])
            seg["labels"][label] = seg["labels"].get(label, 0) + 1
            seg["windows"] += 1
            if p is not None:
                seg["max_probability"] = max(seg["max_probability"], round(p, 6))
        else:
            segments.append({"start": r["start"], "end": r["end"], "label": label,
                             "labels": {label: 1}, "windows": 1,
                             "max_probability": None if p is None else round(p, 6)})
        open_ = True
    order = {c: i for i, c in enumerate(classes)}
    for seg in segments:
        seg["label"] = max(seg["labels"], key=lambda k: (seg["labels"][k], -order[k]))
    return segments


def record_decision(records: Sequence[Mapping[str, Any]], classes: Sequence[str],
                    task: str) -> dict[str, Any] | None:
    """One decision for a whole recording from its windows, as `rsctool eval` scores a
    run trained on a record-level dataset (`rsctool.data.windows`): ``{label,
    probabilities}``, the mean class probability over the windows and its argmax. None
    without windows, or for a run that is not multiclass or binary."""
    if task not in ("multiclass", "binary") or not records \
            or any(r.get("probabilities") is None for r in records):
        return None
    from rsctool.data.windows import aggregate_windows

    probs = [[r["probabilities"][c] for c in classes] for r in records]
    mean = aggregate_windows(["record"] * len(records), probs)[1][0]
    return {"label": classes[int(mean.argmax())],
            "probabilities": {c: round(float(mean[k]), 6) for k, c in enumerate(classes)}}


@dataclass
class Predictor:
    """Classifies recordings with one backend; see `predict_file`."""

    backend: Any
    opts: PredictOptions
    resolver: MetadataResolver | None = None

    @property
    def spec(self) -> Any:
        return self.backend.spec

    def window_hop(self) -> tuple[float, float]:
        window = self.opts.window or self.spec.clip_seconds
        return window, self.opts.hop or window / 2.0

    def predict_file(self, path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Records (one per cycle/window) and the summary of one recording.

        Raises:
            DataError: unreadable audio or annotation, bad metadata (naming the file);
                with ``strict``, audio that is too short, truncated, silent or clipping.
        """
        import numpy as np

        from rsctool.audio import LevelStats, audio_info, header_problems, level_problems
        from rsctool.onnx_runtime import decide

        t0 = time.perf_counter()
        spec, opts = self.spec, self.opts
        info = audio_info(path)
        frame_s = float(spec.fbank.get("frame_length_ms", 25.0)) / 1000.0
        problems = header_problems(info, frame_s)
        if problems and opts.strict:
            raise DataError(f"{'; '.join(problems)} (--strict)", path)
        levels = LevelStats()
        annotation = None if opts.mode == "windows" else find_annotation(path, opts.annotations)
        if opts.mode == "cycles" and annotation is None:
            raise DataError("--mode cycles: no annotation file "
                            f"({path.stem}.txt) for this recording", path)
        meta_values: dict[str, Any] = {}
        meta_source: dict[str, str] = {}
        if spec.needs_metadata and self.resolver is not None:
            meta_values, meta_source = self.resolver.resolve(path)
        if annotation is not None:
            items: Iterable[Item] = annotated_cycles(path, annotation, spec)
            mode = "cycles"
        else:
            window, hop = self.window_hop()
            items = sliding_windows(path, spec, window, hop, opts.block_seconds, levels)
            mode = "windows"
        records: list[dict[str, Any]] = []
        where = str(path)
        for batch in _batched(items, opts.batch_size or default_batch_size(self.backend)):
            wav = np.stack([it.wav for it in batch])
            meta = [{**meta_values, "duration": it.end - it.start, "id": where}
                    for it in batch]
            try:
                logits = self.backend.logits(wav, meta)
            except DataError as e:  # metadata rejected by the encoder: name the file
                raise DataError(e.message if e.path else str(e), path) from None
            pred, probs, raw = decide(logits, spec.task, spec.thresholds)
            for j, it in enumerate(batch):
                rec: dict[str, Any] = {
                    "file": where, "type": it.kind, "index": it.index,
                    "start": round(it.start, 4), "end": round(it.end, 4),
                    "label": spec.classes[int(pred[j])],
                    "probabilities": None if probs is None else
                    {c: round(float(probs[j, k]), 6) for k, c in enumerate(spec.classes)}}
                if spec.task == "ranking":  # the class is where the score falls
                    rec["score"] = round(float(raw[j, 0]), 6)
                if spec.task == "multilabel":
                    rec["sigmoid"] = {"crackle": round(float(raw[j, 0]), 6),
                                      "wheeze": round(float(raw[j, 1]), 6)}
                if it.annotated is not None:
                    rec["annotated"] = it.annotated
                records.append(rec)
        if mode == "cycles":  # cycles read only their spans: scan the whole file, by blocks
            from rsctool.streaming import read_blocks

            for _ in read_blocks(path, max(1, int(opts.block_seconds * info.sample_rate)),
                                 levels):
                pass
        problems += level_problems(levels)
        if problems and opts.strict:
            raise DataError(f"{'; '.join(problems)} (--strict)", path)
        warning = "; ".join(problems) or None
        if warning:
            warn(f"{path}: {warning}")
        for rec in records:
            rec["warning"] = warning
        counts = Counter(r["label"] for r in records)
        summary: dict[str, Any] = {
            "file": where, "mode": mode, "duration": round(info.duration, 4),
            "sample_rate": info.sample_rate, "channels": info.channels, "n": len(records),
            "counts": {c: counts.get(c, 0) for c in spec.classes}, "warning": warning}
        if mode == "cycles":
            ann = Counter(r["annotated"] for r in records)
            summary["annotation"] = str(annotation)
            summary["annotated_counts"] = {c: ann[c] for c in
                                           ("normal", "crackle", "wheeze", "both") if c in ann}
            # Only meaningful when the model's classes are the annotation's (ICBHI) ones.
            same = [r for r in records if r["annotated"] in spec.classes]
            summary["agreement"] = (round(sum(r["label"] == r["annotated"] for r in same)
                                          / len(same), 6) if same else None)
        else:
            window, hop = self.window_hop()
            summary["window"], summary["hop"] = window, hop
            summary["segments"] = merge_segments(records, spec.classes)
            if (spec.provenance or {}).get("items") == "records":  # a record-level run
                summary["record"] = record_decision(records, spec.classes, spec.task)
        if spec.needs_metadata:
            summary["metadata"] = {k: meta_values.get(k) for k in USER_META}
            summary["metadata_source"] = meta_source
            summary["metadata_missing"] = missing_metadata(meta_values,
                                                           spec.metadata_encoder or {})
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        return records, summary


# --------------------------------------------------------------------------- output

def tsv_columns(doc: dict[str, Any], classes: Sequence[str]) -> list[str]:
    """Columns of `--format tsv`: one row per cycle/window."""
    ranking = doc["model"].get("task") == "ranking"
    return ["file", "type", "index", "start", "end", "label", "annotated",
            *(["score"] if ranking else (f"p_{c}" for c in classes)), "warning"]


def _tsv_row(r: Mapping[str, Any], cols: Sequence[str]) -> str:
    flat = {**r, **{f"p_{c}": v for c, v in (r.get("probabilities") or {}).items()}}
    # Tabs and newlines inside a value (a file name) would shift the columns.
    return "\t".join("" if flat.get(c) is None else
                     str(flat[c]).replace("\t", " ").replace("\n", " ") for c in cols) + "\n"


def render_lines(doc: dict[str, Any], fmt: str, classes: Sequence[str]) -> Iterable[str]:
    """The `--format` text of a result document (see `run`), in pieces: whole lines
    (records) for tsv and jsonl, so a reader that stops early never sees half a record."""
    if fmt == "tsv":
        cols = tsv_columns(doc, classes)
        yield "\t".join(cols) + "\n"
        for r in doc["predictions"]:
            yield _tsv_row(r, cols)
        return
    if fmt == "jsonl":
        for r in doc["predictions"]:
            yield json.dumps(r, ensure_ascii=False) + "\n"
        for s in doc["recordings"]:
            yield json.dumps({"type": "recording", **s}, ensure_ascii=False) + "\n"
        for e in doc["errors"]:
            yield json.dumps({"type": "error", **e}, ensure_ascii=False) + "\n"
        return
    yield render(doc, fmt, classes)


def render(doc: dict[str, Any], fmt: str, classes: Sequence[str]) -> str:
    """The `--format` text of a result document (see `run`)."""
    if fmt in ("tsv", "jsonl"):
        return "".join(render_lines(doc, fmt, classes))
    if fmt == "json":
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    buf = io.StringIO()
    ranking = doc["model"].get("task") == "ranking"  # a score instead of probabilities
    cols = ["type", "file", "index", "start", "end", "label", "annotated",
            *(["score"] if ranking else (f"p_{c}" for c in classes)),
            *(f"n_{c}" for c in classes), "warning", "error"]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in doc["predictions"]:
        w.writerow({**r, **{f"p_{c}": v for c, v in (r["probabilities"] or {}).items()}})
    for s in doc["recordings"]:
        for i, seg in enumerate(s.get("segments", [])):
            w.writerow({"type": "segment", "file": s["file"], "index": i, **seg,
                        **{f"n_{c}": seg["labels"].get(c, 0) for c in classes}})
        w.writerow({"type": "recording", "file": s["file"], "start": 0.0,
                    "end": s["duration"], "warning": s.get("warning"),
                    **{f"n_{c}": n for c, n in s["counts"].items()}})
    for e in doc["errors"]:
        w.writerow({"type": "error", "file": e["file"], "error": e["error"]})
    return buf.getvalue()


def print_table(doc: dict[str, Any]) -> None:
    """Per-recording summary on stderr."""
    from rich.table import Table

    m = doc["model"]
    err_console.print(f"{m['model']} ({m['backend']}: {m['source']}), {len(doc['recordings'])} "
                      f"recording(s), {len(doc['predictions'])} prediction(s)")
    classes = m["classes"]
    t = Table(title_justify="left")
    t.add_column("file", overflow="fold")
    t.add_column("mode")
    t.add_column("n", justify="right")
    for c in classes:
        t.add_column(c, justify="right")
    t.add_column("abnormal segments | agreement", overflow="fold")
    for s in doc["recordings"]:
        if s["mode"] == "windows":
            segs = s["segments"]
            extra = f"{len(segs)}" + (": " + ", ".join(
                f"{g['start']:.1f}-{g['end']:.1f} s {g['label']}" for g in segs[:4])
                + (" ..." if len(segs) > 4 else "") if segs else "")
            if s.get("record"):
                extra += f"; recording: {s['record']['label']}"
        else:
            ag = s.get("agreement")
            extra = "-" if ag is None else f"{100 * ag:.1f} %"
        t.add_row(s["file"], s["mode"], str(s["n"]), *(str(s["counts"][c]) for c in classes),
                  extra)
    err_console.print(t)


# --------------------------------------------------------------------------- run

def run(opts: PredictOptions, backend: Any, *, log: Callable[[str], None] | None = None,
        flag_of: Callable[[str], str | None] | None = None) -> dict[str, Any]:
    """Classify every input with `backend` (`OnnxBackend` / `TorchBackend`). `flag_of`
    spells an option named in a skipped file's error (`rsctool.errors.render_message`).

    Returns the result document::

        model        {source, backend, model, run, classes, task, thresholds,
                      sample_rate, clip_seconds, needs_metadata, precision (torch:
                      fp32|bf16; onnx: null), batch_size}
        predictions  [{file, type (cycle|window), index, start, end (s), label,
                       probabilities {class: p}, sigmoid (multilabel),
                       annotated (cycles), warning (audio check text or None)}]
        recordings   [{file, mode, duration, sample_rate, channels, n, counts, warning,
                       segments (windows) | annotation, annotated_counts, agreement
                       (cycles), window, hop, record {label, probabilities} (windows
                       of a run trained on a record-level dataset), metadata, metadata_source,
                       metadata_missing (conditioned models), seconds}]
        errors       [{file, error}]  (only with keep_going)

    Raises:
        UserError: the first bad input (unless ``opts.keep_going``).
    """
    log = log or (lambda msg: None)
    opts.validate()
    spec = backend.spec
    sources = parse_meta_args(opts.meta)
    if opts.meta and not spec.needs_metadata:
        log(f"note: model {spec.model!r} does not use metadata; --meta is ignored")
    if opts.precision != "auto" and backend.name == "onnx":
        log(f"note: --precision {opts.precision} applies to the torch backend; the ONNX "
            "model runs in its exported precision (--backend torch to use it)")
    if opts.batch_size is None:
        opts.batch_size = default_batch_size(backend)
    inputs = expand_inputs(opts.inputs)
    if opts.annotations is not None:
        if not opts.annotations.exists():
            raise DataError("annotation file or folder not found", opts.annotations)
        if opts.annotations.is_file() and len(inputs) != 1:
            raise ConfigError("--annotations FILE needs exactly one recording (give a folder "
                              "of <stem>.txt files for several)")
    predictor = Predictor(backend, opts, MetadataResolver(sources))
    doc: dict[str, Any] = {
        "model": {"source": backend.source, "backend": backend.name, "model": spec.model,
                  "run": spec.run, "classes": list(spec.classes), "task": spec.task,
                  "thresholds": spec.thresholds, "sample_rate": spec.sample_rate,
                  "clip_seconds": spec.clip_seconds, "needs_metadata": spec.needs_metadata,
                  "precision": backend.precision, "batch_size": opts.batch_size},
        "predictions": [], "recordings": [], "errors": []}
    for given, path, error in inputs:
        try:
            if error is not None:
                raise error
            assert path is not None
            records, summary = predictor.predict_file(path)
        except UserError as e:
            if not opts.keep_going:
                raise
            where = str(path) if path is not None else given
            text = render_message(e, flag_of)
            warn(f"{text if text.startswith(where) else where + ': ' + text} (skipped)")
            doc["errors"].append({"file": where, "error": text})
            continue
        doc["predictions"].extend(records)
        doc["recordings"].append(summary)
    missing = [s for s in doc["recordings"] if s.get("metadata_missing")]
    if missing:
        fields = sorted({f.split(" ")[0] for s in missing for f in s["metadata_missing"]})
        warn(f"{len(missing)} of {len(doc['recordings'])} recording(s) lack metadata "
             f"({', '.join(fields)}): encoded as missing, as in training (see "
             "metadata_missing in the output; give --meta KEY=VALUE or a CSV)")
    return doc


# --------------------------------------------------------------------------- command

#: The defaults of the command's options: `PredictOptions` is where each is written.
_D = PredictOptions()


def command(
    ctx: typer.Context,
    audio: Annotated[list[str], typer.Argument(
        metavar="AUDIO...", show_default=False,
        help="Audio files, folders (searched recursively) or glob patterns.")],
    *,
    run_name: Annotated[str | None, typer.Option(
        "--run", help="Run whose model to use (default: the last finished run in the project).")]
    = None,
    model: Annotated[Path | None, typer.Option(
        "--model", help="An exported .onnx file to use instead of a run (no project "
                        "needed).")] = None,
    backend: Annotated[str, typer.Option(
        help="onnx, torch, or auto: onnx when the run has an up-to-date export, except "
             "for a transformer on a CPU with bf16 units (torch in bf16 is faster there).")]
    = _D.backend,
    checkpoint: Annotated[str, typer.Option(
        help="Run checkpoint (and export) to use: best or last.")] = _D.checkpoint,
    mode: Annotated[str, typer.Option(
        help="auto (per cycle when an annotation is found, else sliding windows), "
             "cycles or windows.")] = _D.mode,
    annotations: Annotated[Path | None, typer.Option(
        help="ICBHI-style annotation file for the recording, or a folder of <stem>.txt "
             "files (default: <stem>.txt beside each recording).")] = None,
    window: Annotated[float | None, typer.Option(
        help="Sliding-window length in seconds (default: the training clip length).")]
    = None,
    hop: Annotated[float | None, typer.Option(
        help="Sliding-window step in seconds (default: half a window).")] = None,
    meta: Annotated[list[str] | None, typer.Option(
        help="Metadata for conditioned models: KEY=VALUE (device, site, sex M/F, age, bmi; "
             "NA = missing), several per option or repeated, or a CSV with a 'file' "
             "column. Default: parsed from ICBHI-style file names and demographics.")]
    = None,
    fmt: Annotated[str | None, typer.Option(
        "--format", help="table (stderr only), tsv (one line per cycle/window), json, jsonl "
                         "or csv (default: from --out's suffix, else table on a terminal "
                         "and tsv on stdout when it is a pipe or file).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Write the records to this file (atomically) instead of stdout.")] = None,
    keep_going: Annotated[bool, typer.Option(
        "--keep-going", help="Report a bad file and continue with the others (exit code "
                             "2 at the end if any failed).")] = _D.keep_going,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Audio that is too short for one analysis frame, truncated, "
                         "silent or clipping is an error (exit 2 naming the file) instead "
                         "of a warning.")] = _D.strict,
    batch_size: Annotated[int | None, typer.Option(
        help="Cycles/windows per model call (default: for an AST-family model on the CPU 1, "
             "or 4 in torch bf16; 16 otherwise; see docs/benchmarks.md).",
        show_default=False)]
    = _D.batch_size,
    threads: Annotated[int | None, typer.Option(
        help="onnxruntime threads (default: one per core).")] = None,
    precision: Annotated[str, typer.Option(
        help="Torch backend compute precision: auto (bf16 where the CPU has bf16 units, "
             "AMX/AVX512-BF16, or the GPU supports it; else fp32), fp32 or bf16.")]
    = _D.precision,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the records as one JSON document on stdout (the same as "
                       "--format json; not with --out).")] = False,
) -> None:
    """Classify cycles (annotated) or sliding windows of recordings with a trained model."""
    state = get_state(ctx)
    # `--meta device=X site=Y`: click gives the pairs after the first to AUDIO; take back
    # the KEY=VALUE items that are metadata keys and not files.
    meta_items = list(meta or [])
    files = list(audio)
    if meta_items:
        pairs = [a for a in files if "=" in a and a.split("=", 1)[0].strip().lower()
                 in USER_META and not Path(a).exists()]
        meta_items += pairs
        files = [a for a in files if a not in pairs]
    if json_out:  # the same switch as every other stage's
        if fmt not in (None, "json") or out is not None:
            raise ConfigError("--json prints JSON on stdout: give it without --format and "
                              "--out (or use --format json --out FILE)")
        fmt = "json"
    import sys

    if fmt is None and out is None and not sys.stdout.isatty():
        fmt = "tsv"  # records for `| head`, `cut`, `awk`; the table stays on stderr
    opts = PredictOptions(inputs=files, run=run_name, model=model, backend=backend,
                          checkpoint=checkpoint, mode=mode, annotations=annotations,
                          window=window, hop=hop, meta=meta_items, format=fmt, out=out,
                          keep_going=keep_going, strict=strict, batch_size=batch_size,
                          threads=threads, precision=precision).validate()
    be = open_backend(opts, state)
    doc = run(opts, be, log=lambda msg: None if state.quiet else err_console.print(msg),
              flag_of=flag_lookup(ctx))
    if opts.format != "table":
        if opts.out is not None:
            from rsctool.utils import atomic_write_text

            try:
                atomic_write_text(opts.out, render(doc, opts.format, be.spec.classes))
            except OSError as e:
                raise ConfigError(f"cannot write --out {opts.out}: {e.strerror or e}") from None
        else:
            # whole records per write; a reader that stops early gives exit 141 (cli.py)
            write_stdout(render_lines(doc, opts.format, be.spec.classes))
    if not state.quiet:
        print_table(doc)
    if doc["errors"]:
        n = len(doc["errors"]) + len(doc["recordings"])
        raise DataError(f"{len(doc['errors'])} of {n} input(s) could not be classified "
                        "(reported above)")
