"""`rsctool export`: a trained run as one self-describing ONNX file, checked for parity.

The model is rebuilt from the run's checkpoint (as `rsctool eval` does) and exported with
torch's TorchScript-based ONNX exporter (``dynamo=False``), which handles every registered
model (the transformers AST blocks with eager attention, the metadata hooks of the
conditioned ASTs, ADD's DFT-as-matmul filter) in about a second for tiny sizes and writes
a single file; the ``torch.export`` exporter needs ``external_data=False`` for that and
several times longer. The graph has a dynamic batch axis and outputs ``logits`` and
``probs``; what it needs fed (classes, task and thresholds, clip, filter bank and
normalisation, metadata vocabularies and statistics, model name, rsctool version) goes
into the file's ``metadata_props`` (`rsctool.onnx_runtime.ModelSpec`). With
``--with-features`` the filter bank is part of the graph (its conv formulation) and the
model takes clip-length waveforms.

After writing, a parity check feeds real inputs (validation-split cycles of the run's
dataset; training cycles when there is no validation split; noise when the dataset is
gone) to torch and to onnxruntime: the max abs difference of logits and probabilities is
recorded in the project file and the export fails above ``--tolerance`` (1e-4). An int8
export (``--quantize int8``, dynamic quantisation of weights) is not held to that bound:
instead the accuracy (and ICBHI Score) of the int8 model on the validation split is
reported next to the fp32 model's. The ONNX file is written to a temporary file and only
renamed into place once it has passed, so a failed export never leaves a file behind.

Records go to ``[exports.<run>]`` (``<run>-int8``, ``<run>-wav``, ``<run>-wav-int8`` for
the variants). Exporting an unchanged checkpoint with the same options again is a no-op
unless ``--force``.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from rsctool import __version__
from rsctool.console import err_console, get_state, info, print_json, warn
from rsctool.errors import ConfigError, DataError, UserError
from rsctool.runs import export_name
from rsctool.utils import file_mode, mkstemp_for, params_hash

if TYPE_CHECKING:
    from rsctool.project import Project

QUANTIZE = ("none", "int8")
OPSETS = range(14, 21)
CHECKPOINTS = ("best", "last")
EXPORTER = "torchscript"


class ParityError(UserError):
    """The exported graph does not compute what the torch model computes."""


@dataclass
class ExportOptions:
    """What to export and how.

    Attributes:
        run: run name (default: the last finished run in the project).
        checkpoint: ``best`` or ``last``.
        out: the ONNX file (default: ``<run dir>/model[.wav][.int8].onnx``).
        opset: ONNX opset version.
        quantize: ``none`` or ``int8`` (dynamic quantisation of the weights).
        with_features: the graph takes waveforms and computes the filter bank itself.
        tolerance: max abs difference torch vs onnxruntime an fp32 export may have.
        parity_cycles: real cycles fed to both for the parity check.
        accuracy_cycles: validation cycles at most for the int8 accuracy comparison.
        batch_size: batch size of the checks.
        force: export again even if an identical export is recorded.
    """

    run: str | None = None
    checkpoint: str = "best"
    out: Path | None = None
    opset: int = 17
    quantize: str = "none"
    with_features: bool = False
    tolerance: float = 1e-4
    parity_cycles: int = 32
    accuracy_cycles: int = 1000
    batch_size: int = 16
    force: bool = False

    def validate(self) -> ExportOptions:
        if self.quantize not in QUANTIZE:
            raise ConfigError(f"--quantize must be one of {', '.join(QUANTIZE)}, "
                              f"got {self.quantize!r}")
        if self.opset not in OPSETS:
            raise ConfigError(f"--opset must be in {OPSETS.start}..{OPSETS.stop - 1}, "
                              f"got {self.opset}")
        if self.checkpoint not in CHECKPOINTS:
            raise ConfigError(f"--checkpoint must be best or last, got {self.checkpoint!r}")
        if not self.tolerance > 0:
            raise ConfigError(f"--tolerance must be positive, got {self.tolerance}")
        for key in ("parity_cycles", "accuracy_cycles", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, "
                                  f"got {getattr(self, key)}")
        if self.out is not None and Path(self.out).suffix.lower() != ".onnx":
            raise ConfigError(f"--out must name a .onnx file, got {self.out}")
        return self


def default_path(run_dir: Path, with_features: bool, quantize: str) -> Path:
    return run_dir / ("model" + (".wav" if with_features else "")
                      + (".int8" if quantize == "int8" else "") + ".onnx")


# --------------------------------------------------------------------------- graph

def export_wrapper(model: Any, *, task: str, needs_metadata: bool, fbank: Any = None) -> Any:
    """`torch.nn.Module` around a classifier, in eval mode, with the export's signature.

    ``forward(x, *meta) -> (logits (B, C), probs (B, C))`` where `x` is `(B, T, F)`
    normalised features, or `(B, N)` waveforms when `fbank` (a `FbankConfig`) is given;
    `meta` the five metadata tensors in `META_KEYS` order for a conditioned model.
    The filter bank uses its conv formulation in eager mode too, and AST attention is
    switched to eager in place, so the torch side of the parity check computes exactly
    what the graph computes.
    """
    import torch

    from rsctool.features import Fbank
    from rsctool.models.metadata import META_KEYS

    if isinstance(getattr(model, "config", None), dict) and "attention" in model.config:
        # AST backbones train with fused SDPA attention; the graph gets the eager
        # softmax(QK^T)V (the same function), which onnxruntime runs faster. In place:
        # the parity check then compares the graph with the torch model it was traced from.
        from rsctool.models.ast import set_attention

        set_attention(model, "eager")

    class ExportWrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.fbank = (Fbank(fbank.replace(dither=0.0), normalize=True, method="conv")
                          if fbank is not None else None)

        def forward(self, x: torch.Tensor, *meta: torch.Tensor):
            if self.fbank is not None:
                x = self.fbank(x)
            md = dict(zip(META_KEYS, meta, strict=True)) if needs_metadata else None
            logits = self.model(x, md)["logits"]
            if md is not None:
                # A model whose metadata field list leaves an input unread (seed 001: sex,
                # num_mask) would lose it from the traced graph; every export keeps the
                # same five inputs, so add each one times zero (exact: encoded values are
                # finite).
                logits = logits + sum(t.reshape(t.shape[0], -1)[:, :1].to(logits.dtype)
                                      for t in meta) * 0.0
            if task == "ranking":  # (B, 1) score: no probabilities; "probs" repeats it
                probs = logits[:, :1]
            else:
                probs = (torch.sigmoid(logits) if task == "multilabel"
                         else torch.softmax(logits, -1))
            return logits, probs

    # torch.onnx.export puts the wrapper back into its own mode afterwards: build it in
    # eval mode, or dropout and batch-norm statistics would change after the export.
    return ExportWrapper().eval()


def write_onnx(wrapper: Any, example: tuple, path: Path, input_names: list[str],
               opset: int) -> None:
    """Export `wrapper` to `path` (one file) with a dynamic batch axis."""
    import torch

    names = [*input_names, "logits", "probs"]
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter announces its deprecation and traces with warnings
        # about Python values in shape arithmetic (constant here: only batch is dynamic).
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, example, os.fspath(path), dynamo=False,
                          opset_version=opset, input_names=input_names,
                          output_names=["logits", "probs"], do_constant_folding=True,
                          dynamic_axes={n: {0: "batch"} for n in names})


def set_metadata(path: Path, props: dict[str, str]) -> None:
    """Replace the ``metadata_props`` of the ONNX file at `path` (rewritten in place)."""
    import onnx

    m = onnx.load(os.fspath(path))
    del m.metadata_props[:]
    for k, v in sorted(props.items()):
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v
    m.producer_name = "rsctool"
    m.producer_version = __version__
    m.doc_string = ("rsctool respiratory-sound classifier; see metadata_props "
                    "(rsctool.*) for the classes and how to compute its inputs")
    onnx.save(m, os.fspath(path))


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the MatMul/Gemm weights of `src` into `dst`.

    Convolutions stay float: onnxruntime's ConvInteger kernel is slower than its float
    convolution on CPU, so quantising them costs accuracy and gains nothing.
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # "consider pre-processing" advice on every call
    try:
        quantize_dynamic(os.fspath(src), os.fspath(dst), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        logger.setLevel(level)


# --------------------------------------------------------------------------- inputs

@dataclass
class CheckInputs:
    """Inputs for the checks, made batch by batch (1000 cycles of 8 s features would
    take 400 MB at once).

    `batch(s, e)` returns ``(x, meta, labels)`` for items ``s:e``: `x` features `(B, T, F)`
    or waveforms `(B, N)`, `meta` the five metadata tensors (`META_KEYS` order; empty for
    models without metadata), `labels` class indices (-1: not a class of the run) or None.
    """

    n: int
    source: str
    batch: Callable[[int, int], tuple[Any, list[Any], np.ndarray | None]]

    def batches(self, batch_size: int, limit: int | None = None):
        n = self.n if limit is None else min(self.n, limit)
        for s in range(0, n, batch_size):
            yield self.batch(s, min(n, s + batch_size))


def _pick(cycles: list, n: int, seed: int = 0) -> list:
    """`n` cycles at most: a seeded subsample in manifest order."""
    if len(cycles) <= n:
        return list(cycles)
    idx = np.sort(np.random.default_rng(seed).choice(len(cycles), n, replace=False))
    return [cycles[i] for i in idx]


def check_inputs(project: Project, loaded: Any, n: int, with_features: bool,
                 log: Callable[[str], None]) -> CheckInputs:
    """Up to `n` validation cycles of the run's dataset, fed as in training.

    Falls back to training cycles (no validation split) and to seeded noise (dataset or
    audio gone), with a warning; never the test split.
    """
    import torch

    from rsctool.audio import load_cycle
    from rsctool.data.dataset import CycleDataset, feature_cache
    from rsctool.datasets import load_dataset_cycles
    from rsctool.models.metadata import META_KEYS

    ds_name = loaded.config.dataset or loaded.record.get("dataset")
    record = project.get("datasets", ds_name) if ds_name else None
    enc = loaded.encoder if loaded.config.needs_metadata else None
    clip = loaded.clip
    cycles: list = []
    source = "random"
    if record is not None:
        try:
            everything = load_dataset_cycles(project, record)
        except DataError as e:
            warn(f"parity check: cannot read dataset {ds_name!r} ({e}); using noise inputs")
            everything = []
        for split in ("val", "train"):
            cycles = [c for c in everything if c.split == split]
            if cycles:
                source = split
                break
        if source == "train":
            warn(f"dataset {ds_name!r} has no validation split: checking on training cycles")
    else:
        warn(f"run {loaded.name!r}: dataset {ds_name!r} is not in the project; checking the "
             "export on noise inputs instead of real cycles")
    cycles = _pick(cycles, n)
    if cycles:
        try:
            ds = CycleDataset(cycles, loaded.classes, clip, feature_cache(project.state_dir()),
                              enc, "binary" if loaded.task == "binary" else "multiclass")
            ds.features(0)  # unreadable audio shows here, not halfway through the export
        except (DataError, ConfigError) as e:
            warn(f"parity check: cannot use the {source} cycles ({e}); using noise inputs")
            cycles = []
    if cycles:
        labels = ds.targets.numpy()
        meta_all = [ds.meta[k] for k in META_KEYS] if ds.meta is not None else []

        def batch(s: int, e: int) -> tuple[Any, list[Any], np.ndarray | None]:
            if with_features:
                x = torch.from_numpy(np.stack([
                    load_cycle(c.audio, c.start, c.end, clip.sample_rate, clip.clip_seconds,
                               clip.pad_mode) for c in cycles[s:e]]))
            else:
                x = torch.stack([ds.features(i) for i in range(s, e)])
            return x, [m[s:e] for m in meta_all], labels[s:e]

        log(f"checking on {len(cycles)} {source} cycles of dataset {ds_name!r}")
        return CheckInputs(len(cycles), source, batch)
    # Noise: log-mel-like values (or waveforms) and random metadata.
    g = torch.Generator().manual_seed(0)
    m = max(2, min(n, 8))
    x = (0.1 * torch.randn(m, clip.num_samples, generator=g) if with_features else
         0.5 * torch.randn(m, clip.frames, clip.fbank.num_mel_bins, generator=g))
    meta: list[Any] = []
    if enc is not None:
        sp = enc.spec()
        meta = [torch.randint(0, sp["n_devices"], (m,), generator=g),
                torch.randint(0, sp["n_sites"], (m,), generator=g),
                torch.randint(0, 3, (m,), generator=g),
                torch.randn(m, sp["n_num"], generator=g),
                (torch.rand(m, sp["n_num"], generator=g) > 0.3).float()]
    return CheckInputs(m, "random", lambda s, e: (x[s:e], [t[s:e] for t in meta], None))


def compare(wrapper: Any, session: Any, inputs: CheckInputs, batch_size: int,
            limit: int | None = None) -> dict[str, Any]:
    """Run torch and onnxruntime on the same batches (the first `limit` items).

    Returns max abs differences (``max_abs``, ``logits_max_abs``, ``probs_max_abs``),
    ``n``, both sides' logits and the labels (None for noise inputs).
    """
    import torch

    names = [i.name for i in session.get_inputs()]
    diff = {"logits": 0.0, "probs": 0.0}
    t_logits, o_logits, labels = [], [], []
    with torch.no_grad():
        for x, meta, y in inputs.batches(batch_size, limit):
            ref = wrapper(x, *meta)
            feed = {k: t.numpy() for k, t in zip(names, [x, *meta], strict=True)}
            got = session.run(["logits", "probs"], feed)
            for key, r, o in zip(("logits", "probs"), ref, got, strict=True):
                if o.shape != tuple(r.shape):
                    raise ParityError(f"onnxruntime output {key} has shape {o.shape}, torch "
                                      f"{tuple(r.shape)}")
                diff[key] = max(diff[key], float(np.abs(o - r.numpy()).max()))
            t_logits.append(ref[0].numpy())
            o_logits.append(got[0])
            if y is not None:
                labels.append(y)
    return {"max_abs": max(diff.values()), "logits_max_abs": diff["logits"],
            "probs_max_abs": diff["probs"], "n": int(sum(len(t) for t in t_logits)),
            "torch_logits": np.concatenate(t_logits), "onnx_logits": np.concatenate(o_logits),
            "labels": np.concatenate(labels) if labels else None}


def _accuracy(labels: np.ndarray, logits: np.ndarray, spec: Any) -> dict[str, Any]:
    from rsctool.metrics import icbhi_metrics
    from rsctool.onnx_runtime import decide

    pred, _, _ = decide(logits, spec.task, spec.thresholds)
    keep = labels >= 0
    m = icbhi_metrics(labels[keep].tolist(), pred[keep].tolist(), spec.classes)
    return {"pred": pred, "accuracy": m["accuracy"], "score": m["score"]}


# --------------------------------------------------------------------------- run

def _session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as predict
    return ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])


def _up_to_date(project: Project, name: str, inputs_hash: str) -> dict[str, Any] | None:
    from rsctool.data.manifest import file_sha256

    rec = project.get("exports", name)
    if not rec or rec.get("status") != "done" or rec.get("inputs_hash") != inputs_hash:
        return None
    path = project.abs(rec["onnx"])
    if not path.is_file() or file_sha256(path) != rec.get("sha256"):
        return None
    return rec


def run(project: Project, opts: ExportOptions, *, log: Callable[[str], None] | None = None
        ) -> dict[str, Any]:
    """Export a run; returns the document recorded in ``[exports.NAME]`` (plus ``name``,
    ``skipped``).

    Raises:
        ConfigError: unknown run or no checkpoint; bad options.
        ParityError: an fp32 export differs from torch by more than the tolerance (the
            failure is recorded, no file is left behind).
    """
    from rsctool.data.manifest import file_sha256
    from rsctool.onnx_runtime import ModelSpec

    log = log or (lambda msg: None)
    opts.validate()
    t0 = time.perf_counter()
    name, loaded = _load(project, opts)
    spec = ModelSpec.from_run(loaded, with_features=opts.with_features, quantize=opts.quantize)
    if "attention" in spec.model_config:
        spec.model_config["attention"] = "eager"  # what the graph computes (export_wrapper)
    ename = export_name(name, opts.with_features, opts.quantize)
    out = Path(opts.out) if opts.out is not None else default_path(
        loaded.dir, opts.with_features, opts.quantize)
    out = Path(os.path.abspath(out))
    ck_sha = file_sha256(loaded.checkpoint)
    settings = {"opset": opts.opset, "quantize": opts.quantize,
                "with_features": opts.with_features, "tolerance": opts.tolerance,
                "checkpoint": opts.checkpoint, "parity_cycles": opts.parity_cycles,
                "accuracy_cycles": opts.accuracy_cycles}
    inputs_hash = params_hash({"version": __version__, "checkpoint_sha256": ck_sha,
                               "onnx": project.rel(out), **settings})
    if not opts.force:
        rec = _up_to_date(project, ename, inputs_hash)
        if rec is not None:
            log(f"export {ename!r} is up to date ({project.abs(rec['onnx'])}); --force "
                "exports again")
            return {"name": ename, **rec, "skipped": True}

    n_check = max(opts.parity_cycles, opts.accuracy_cycles if opts.quantize == "int8" else 0)
    inputs = check_inputs(project, loaded, n_check, opts.with_features, log)
    wrapper = export_wrapper(loaded.model, task=loaded.task,
                             needs_metadata=spec.needs_metadata,
                             fbank=loaded.clip.fbank if opts.with_features else None)
    x0, meta0, _ = inputs.batch(0, min(2, inputs.n))
    example = (x0, *meta0)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = _claim_output(out, project.state_dir() / "locks")
    tmp_files: list[Path] = []

    def tmp_path(tag: str) -> Path:
        fd, p = mkstemp_for(out, suffix=f".{tag}.tmp.onnx")
        os.close(fd)
        tmp_files.append(Path(p))
        return Path(p)

    doc: dict[str, Any] = {"run": name, "checkpoint": opts.checkpoint,
                           "checkpoint_file": project.rel(loaded.checkpoint),
                           "checkpoint_sha256": ck_sha,
                           # size and mtime: `predict` tells a stale export without hashing
                           "checkpoint_signature": [loaded.checkpoint.stat().st_size,
                                                    loaded.checkpoint.stat().st_mtime_ns],
                           "model": spec.model,
                           # predict prefers an int8 transformer export on the CPU
                           "transformer": _is_transformer(spec.model),
                           "exporter": EXPORTER, **settings, "onnx": project.rel(out),
                           "parity_inputs": inputs.source, "rsctool_version": __version__}
    try:
        fp32 = tmp_path("fp32")
        log(f"exporting run {name!r} ({spec.model}, {opts.checkpoint} checkpoint) with opset "
            f"{opts.opset}" + (", filter bank inside" if opts.with_features else ""))
        write_onnx(wrapper, example, fp32, spec.input_names(), opts.opset)
        set_metadata(fp32, spec.to_props())
        final = fp32
        if opts.quantize == "int8":
            final = tmp_path("int8")
            quantize_int8(fp32, final)
            set_metadata(final, spec.to_props())
        session = _session(final)
        res = compare(wrapper, session, inputs, opts.batch_size, opts.parity_cycles)
        doc.update(parity_max_abs=res["max_abs"], parity_logits_max_abs=res["logits_max_abs"],
                   parity_probs_max_abs=res["probs_max_abs"], parity_n=res["n"])
        if opts.quantize == "int8":
            doc.update(_int8_accuracy(wrapper, session, inputs, opts, spec))
        elif res["max_abs"] > opts.tolerance:
            doc.update(status="failed", seconds=round(time.perf_counter() - t0, 3))
            project.set_record("exports", ename, doc)
            raise ParityError(
                f"run {name!r}: ONNX parity check failed: max abs difference "
                f"{res['max_abs']:.3g} between torch and onnxruntime on "
                f"{doc['parity_n']} {inputs.source} inputs exceeds {opts.tolerance:g}; "
                "nothing was written")
        # Fsync, then rename into place: readers see no file or the complete one.
        with open(final, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(final, file_mode())  # the exporters may recreate the temp file as 0600
        os.replace(final, out)
        tmp_files.remove(final)
    finally:
        for p in tmp_files:
            with contextlib.suppress(OSError):
                p.unlink()
        lock.release()
    doc.update(status="done", sha256=file_sha256(out), size_bytes=out.stat().st_size,
               inputs_hash=inputs_hash, seconds=round(time.perf_counter() - t0, 3))
    project.set_record("exports", ename, doc)
    return {"name": ename, **doc, "skipped": False}


def _load(project: Project, opts: ExportOptions) -> tuple[str, Any]:
    """The run to export (`opts.run`, else the last) and its loaded checkpoint (a
    `rsctool.runs.LoadedRun`, on the CPU)."""
    from rsctool.runs import load_run, select_runs

    name = select_runs(project, opts.run, [])[0][0]
    loaded = load_run(project, name, opts.checkpoint, "cpu")
    if loaded.config.needs_metadata and loaded.encoder is None:
        raise DataError("checkpoint of a metadata model lacks its metadata encoder",
                        loaded.checkpoint)
    if loaded.record.get("status") not in (None, "done"):
        warn(f"run {name!r} is {loaded.record.get('status')}: exporting its current "
             f"{opts.checkpoint} checkpoint")
    return name, loaded


def _is_transformer(model: str) -> bool:
    """Whether registered model `model` is a transformer (its traits); False when unknown."""
    from rsctool.models.registry import model_traits

    try:
        return bool(model_traits(model).transformer)
    except ConfigError:
        return False


def _int8_accuracy(wrapper: Any, session: Any, inputs: CheckInputs, opts: ExportOptions,
                   spec: Any) -> dict[str, Any]:
    """The record's fields comparing the int8 model with torch on up to
    `accuracy_cycles` labelled cycles (accuracy, Score, agreement); none without labels."""
    full = compare(wrapper, session, inputs, opts.batch_size, opts.accuracy_cycles)
    if full["labels"] is None:
        warn("no labelled cycles: the int8 accuracy change is not measured")
        return {}
    a32 = _accuracy(full["labels"], full["torch_logits"], spec)
    a8 = _accuracy(full["labels"], full["onnx_logits"], spec)
    return {
        "accuracy_n": full["n"], "accuracy_split": inputs.source,
        "accuracy_fp32": a32["accuracy"], "accuracy_int8": a8["accuracy"],
        "accuracy_change": a8["accuracy"] - a32["accuracy"],
        "score_fp32": a32["score"], "score_int8": a8["score"],
        "score_change": (None if a32["score"] is None or a8["score"] is None
                        else a8["score"] - a32["score"]),
        "agreement": float(np.mean(a32["pred"] == a8["pred"]))}


def _claim_output(out: Path, lock_dir: Path) -> Any:
    """Hold the export lock of output file `out` (released by the caller) and remove the
    temp files a killed export of it left behind: while the lock is held no other export
    writes them. Another process exporting to `out` now is a ConfigError. The lock file
    lives in `lock_dir` (the project's state folder), not beside a user's output."""
    from rsctool.locks import hold

    lock = hold(lock_dir, "export", str(out), what=str(out), verb="exported",
                hint="wait for it or choose another --out")
    for stale in out.parent.glob(f".{out.name}.*.tmp.onnx"):
        with contextlib.suppress(OSError):
            stale.unlink()
    return lock


# --------------------------------------------------------------------------- command

#: Every option's default, written once: the Typer options below refer to it
#: (`--run` is the field `run`).
_D = ExportOptions()


def print_export(doc: dict[str, Any]) -> None:
    """One summary block on stderr."""
    size = doc.get("size_bytes")
    err_console.print(
        f"[bold]{doc['name']}[/bold]: {doc['onnx']}"
        + (f" ({size / 1e6:.1f} MB)" if size else "")
        + (" [dim](up to date)[/dim]" if doc.get("skipped") else ""))
    err_console.print(
        f"  parity torch vs onnxruntime on {doc.get('parity_n')} {doc.get('parity_inputs')} "
        f"inputs: max abs {doc.get('parity_max_abs', float('nan')):.2e}"
        + ("" if doc.get("quantize") == "int8" else f" (limit {doc.get('tolerance'):g})"))
    if doc.get("accuracy_fp32") is not None:
        pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
        err_console.print(
            f"  int8 on {doc['accuracy_n']} {doc['accuracy_split']} cycles: accuracy "
            f"{pct(doc['accuracy_int8'])} % (fp32 {pct(doc['accuracy_fp32'])} %, change "
            f"{100 * doc['accuracy_change']:+.2f} points), Score {pct(doc.get('score_int8'))} "
            f"% (fp32 {pct(doc.get('score_fp32'))} %), same prediction for "
            f"{100 * doc['agreement']:.1f} % of cycles")


def command(
    ctx: typer.Context,
    *,
    run_name: Annotated[str | None, typer.Option(
        "--run",
        help="Run to export (default: the last finished run in the project).")] = _D.run,
    out: Annotated[Path | None, typer.Option(
        help="ONNX file to write (default: model[.wav][.int8].onnx in the run folder).")]
    = _D.out,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = _D.opset,
    quantize: Annotated[str, typer.Option(
        help="none, or int8: dynamic int8 quantisation of the weights (reports the "
             "validation accuracy change instead of holding it to the parity bound).")]
    = _D.quantize,
    with_features: Annotated[bool, typer.Option(
        "--with-features", help="Put the filter bank inside the graph: the model then takes "
                                "raw clip-length waveforms.")] = _D.with_features,
    checkpoint: Annotated[str, typer.Option(help="Checkpoint: best or last.")] = _D.checkpoint,
    tolerance: Annotated[float, typer.Option(
        help="Fail when torch and onnxruntime outputs differ by more than this.")] = _D.tolerance,
    parity_cycles: Annotated[int, typer.Option(
        help="Validation cycles fed to torch and onnxruntime for the parity check.")
    ] = _D.parity_cycles,
    accuracy_cycles: Annotated[int, typer.Option(
        help="Validation cycles at most for the int8 accuracy comparison.")] = _D.accuracy_cycles,
    force: Annotated[bool, typer.Option(
        help="Export again even if an identical export is recorded.")] = _D.force,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the export record as JSON on stdout.")] = False,
) -> None:
    """Export a trained run to ONNX (metadata inside), checked against torch."""
    state = get_state(ctx)
    opts = ExportOptions(run=run_name, out=out, opset=opset, quantize=quantize,
                         with_features=with_features, checkpoint=checkpoint,
                         tolerance=tolerance, parity_cycles=parity_cycles,
                         accuracy_cycles=accuracy_cycles, force=force).validate()
    # the export and its parity check run on the CPU; a device that is not there is still
    # refused, as by every other stage
    from rsctool.devices import resolve_device

    resolve_device(state.device)
    project = state.load_project(must_exist=True)
    doc = run(project, opts, log=lambda msg: info(state, msg))
    if json_out:
        print_json(doc)
    if not state.quiet:
        print_export(doc)


