"""Exported models: their self-description, and running them with onnxruntime (no torch).

An ONNX file written by `rsctool export` carries everything needed to feed it in its
``metadata_props`` (`ModelSpec`): class names, task and thresholds, sample rate, clip
length and pad mode, the filter-bank options with the normalisation statistics, the
metadata encoder's vocabularies and train statistics, the model name and the rsctool
version. Its graph::

    inputs   features  float32 (B, T, F)  normalised log-mel  (or, exported with
                                         --with-features: waveform float32 (B, N))
             device, site, sex  int64 (B,)     (metadata-conditioned models only;
             num, num_mask      float32 (B, K)  see rsctool.models.metadata)
    outputs  logits  float32 (B, C)   (multilabel: C = 2, crackle and wheeze)
             probs   float32 (B, C)   softmax, or sigmoid for multilabel

Everything here is numpy + onnxruntime, so `rsctool predict --model FILE.onnx` starts
without importing torch. Metadata is encoded by `rsctool.metadata_np`, the code the
training encoder runs too; `decide` is the decision rule of `rsctool.inference.predict`
(tests check it against the torch code).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsctool.audio import DEFAULT_CLIP_SECONDS, DEFAULT_SAMPLE_RATE
from rsctool.errors import ConfigError, DataError
from rsctool.metadata_np import META_KEYS as META_INPUTS
from rsctool.metadata_np import encode_metadata
from rsctool.runconfig import RunConfig

__all__ = ["FORMAT", "META_INPUTS", "MULTILABEL_CLASSES", "ModelSpec", "OnnxModel", "decide",
           "encode_metadata", "sigmoid", "softmax"]

FORMAT = "rsctool-onnx"
FORMAT_VERSION = 1
#: The four ICBHI classes a multilabel (crackle, wheeze) model's outputs map to.
MULTILABEL_CLASSES = ["normal", "crackle", "wheeze", "both"]


@dataclass
class ModelSpec:
    """How to feed a model and read its outputs (stored in the ONNX metadata).

    Attributes:
        classes: class names, in output order of the decision (`decide`).
        task: ``multiclass`` (softmax over classes) or ``multilabel`` (crackle and
            wheeze sigmoids, combined into the four ICBHI classes).
        thresholds: multilabel crackle/wheeze thresholds chosen on validation (None:
            0.5 each).
        sample_rate: Hz the audio is resampled to.
        clip_seconds: every cycle/window is padded (repeat + fades) or cropped to this.
        pad_mode: ``repeat|repeat-fadeout|zero`` (`rsctool.audio.PAD_MODES`).
        fbank: `FbankConfig` dict, incl. the normalisation ``mean``/``std``.
        norm: where those come from: ``audioset`` (AST's pretraining values) or
            ``dataset`` (the training split's statistics); None in older exports.
        provenance: the run's data and split (spec, hash, official), and the rsctool,
            torch and transformers versions and git commit it was trained with;
            ``items: "records"`` when it was trained on the windows of whole recordings
            (a record-level dataset: `predict` then also gives each recording's mean).
        needs_metadata: the graph takes the metadata inputs.
        metadata_encoder: `MetadataEncoder.to_dict()` (vocabularies, train mean/std).
        model: registered model name; model_config its builder config.
        run, checkpoint: the training run and checkpoint (best|last) it came from.
        with_features: the graph computes the filter bank (input ``waveform``).
        quantize: ``none`` or ``int8``.
        rsctool_version: the rsctool that wrote the file.
    """

    classes: list[str]
    task: str = "multiclass"
    thresholds: list[float] | None = None
    sample_rate: int = DEFAULT_SAMPLE_RATE
    clip_seconds: float = DEFAULT_CLIP_SECONDS
    pad_mode: str = "repeat"
    fbank: dict[str, Any] = field(default_factory=dict)
    norm: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    needs_metadata: bool = False
    metadata_encoder: dict[str, Any] | None = None
    model: str = ""
    model_config: dict[str, Any] = field(default_factory=dict)
    run: str | None = None
    checkpoint: str | None = None
    with_features: bool = False
    quantize: str = "none"
    rsctool_version: str = ""

    # ----- derived ------------------------------------------------------------------
    @property
    def clip_samples(self) -> int:
        """N: samples per clip at `sample_rate`."""
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def normalization(self) -> dict[str, Any]:
        return {"mean": self.fbank.get("mean"), "std": self.fbank.get("std"),
                "norm": self.norm, "formula": "(log_mel - mean) / (2 * std)"}

    def input_names(self) -> list[str]:
        return ["waveform" if self.with_features else "features",
                *(META_INPUTS if self.needs_metadata else ())]

    # ----- metadata_props ---------------------------------------------------------
    def to_props(self) -> dict[str, str]:
        """``metadata_props`` of the ONNX file: strings, JSON for non-string values.

        Besides the spec's fields (``rsctool.*`` keys, read back by `from_props`), a few
        plainly named keys describe the file to other tools.
        """
        props = {"rsctool.format": FORMAT, "rsctool.format_version": str(FORMAT_VERSION)}
        for k, v in asdict(self).items():
            props[f"rsctool.{k}"] = json.dumps(v, sort_keys=True)
        props.update({
            "class_names": json.dumps(self.classes),
            "task": self.task,
            "thresholds": json.dumps(self.thresholds),
            "sample_rate": str(self.sample_rate),
            "clip_seconds": str(self.clip_seconds),
            "feature_config": json.dumps(self.fbank, sort_keys=True),
            "normalization": json.dumps(self.normalization),
            "metadata_encoder": json.dumps(self.metadata_encoder, sort_keys=True),
            "inputs": ", ".join(self.input_names()),
            "model_name": self.model,
            "rsctool_version": self.rsctool_version,
        })
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], path: str | os.PathLike | None = None
                   ) -> ModelSpec:
        """Inverse of `to_props`.

        Raises:
            DataError: not an rsctool export, a newer format, or malformed values.
        """
        if props.get("rsctool.format") != FORMAT:
            raise DataError("not an ONNX model exported by `rsctool export` (no rsctool "
                            "metadata: class names, features and thresholds are unknown)", path)
        try:
            version = int(props.get("rsctool.format_version", "0"))
        except ValueError:
            version = -1
        if not 1 <= version <= FORMAT_VERSION:
            raise DataError(f"ONNX export format version {props.get('rsctool.format_version')!r}"
                            f" is not one this rsctool reads ({FORMAT_VERSION}); upgrade "
                            "rsctool or export again", path)
        kw: dict[str, Any] = {}
        names = set(cls.__dataclass_fields__)
        for key, raw in props.items():
            if key.startswith("rsctool.") and key[8:] in names:
                try:
                    kw[key[8:]] = json.loads(raw)
                except ValueError:
                    raise DataError(f"malformed ONNX metadata {key!r}", path) from None
        if "classes" not in kw:
            raise DataError("ONNX metadata lacks the class names", path)
        spec = cls(**kw)
        spec.validate(path)
        return spec

    def validate(self, path: str | os.PathLike | None = None) -> ModelSpec:
        if not self.classes or not all(isinstance(c, str) for c in self.classes):
            raise DataError(f"ONNX metadata: bad class names {self.classes!r}", path)
        if self.task not in ("multiclass", "multilabel", "ranking"):
            raise DataError(f"ONNX metadata: unknown task {self.task!r}", path)
        if self.task == "ranking" and (not self.thresholds
                                       or len(self.thresholds) != len(self.classes) - 1):
            raise DataError(f"ONNX metadata: a ranking model needs {len(self.classes) - 1} "
                            f"score thresholds for its {len(self.classes)} classes, got "
                            f"{self.thresholds!r}", path)
        if self.task == "multilabel" and self.classes != MULTILABEL_CLASSES:
            raise DataError(f"ONNX metadata: a multilabel model needs the classes "
                            f"{MULTILABEL_CLASSES}, got {self.classes}", path)
        if self.needs_metadata and not self.metadata_encoder:
            raise DataError("ONNX metadata: a metadata model without its encoder", path)
        if self.sample_rate <= 0 or self.clip_seconds <= 0:
            raise DataError("ONNX metadata: bad sample rate or clip length", path)
        return self

    @classmethod
    def from_run(cls, loaded: Any, *, with_features: bool = False, quantize: str = "none"
                 ) -> ModelSpec:
        """The spec of a run loaded by `rsctool.runs.load_run` (no torch needed here)."""
        from rsctool import __version__

        config = loaded.config
        clip = config.clip
        needs = config.needs_metadata
        return cls(
            # binary (normal vs abnormal) is a 2-class softmax like multiclass
            classes=list(loaded.classes),
            task="multiclass" if loaded.task == "binary" else loaded.task,
            thresholds=list(loaded.thresholds) if loaded.thresholds else None,
            sample_rate=int(clip["sample_rate"]), clip_seconds=float(clip["clip_seconds"]),
            pad_mode=str(clip.get("pad_mode", "repeat")), fbank=dict(clip["fbank"]),
            norm=config.norm,
            provenance=_provenance(config),
            needs_metadata=needs,
            metadata_encoder=config.metadata_encoder if needs else None,
            model=config.model_name or "",
            model_config=dict(config.model), run=loaded.name, checkpoint=loaded.which,
            with_features=with_features, quantize=quantize, rsctool_version=__version__,
        ).validate(loaded.checkpoint)


def _provenance(config: RunConfig) -> dict[str, Any]:
    """The compact provenance of a run config (`rsctool.train.Trainer.provenance`)."""
    split, data, env = config.split or {}, config.data or {}, config.environment or {}
    pk = env.get("packages") or {}
    out = {"dataset": data.get("dataset"), "manifest_sha256": data.get("manifest_sha256"),
           "split": split.get("spec"), "split_hash": split.get("hash"),
           "official_split": split.get("official"),
           # "records": one item per recording, windows aggregated per recording
           "items": data.get("items"),
           "seed": config.seed,
           "trained_with": {k: v for k, v in (("rsctool", env.get("rsctool")),
                                               ("torch", pk.get("torch")),
                                               ("transformers", pk.get("transformers")),
                                               ("git", (env.get("git") or {}).get("commit")))
                            if v is not None}}
    return {k: v for k, v in out.items() if v not in (None, {})}


# --------------------------------------------------------------------------- decisions

def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + exp(-x)), without overflow


def decide(logits: np.ndarray, task: str, thresholds: Sequence[float] | None = None
           ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Predicted classes from logits `(B, C)`, as `rsctool.inference.predict` decides.

    Multiclass: argmax of the softmax. Multilabel: crackle = sigmoid >= threshold (and
    wheeze likewise; 0.5 when no thresholds), mapped to normal/crackle/wheeze/both; the
    class probabilities are then (1-c)(1-w), c(1-w), (1-c)w, cw. Ranking: one score per
    example `(B, 1)`; the class is the number of ascending `thresholds` it reaches (as
    `rsctool.metrics.scores_to_classes`); there are no class probabilities.

    Returns:
        ``(pred (B,) int, class_probs (B, C') float or None (ranking), raw (B, C))``
        where raw is the softmax, the two sigmoids or the score.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if task == "ranking":
        from rsctool.metrics import scores_to_classes  # numpy only, as this module

        return scores_to_classes(logits[:, 0], thresholds or []), None, logits[:, :1]
    if task == "multilabel":
        p = sigmoid(logits)
        t = list(thresholds) if thresholds else [0.5, 0.5]
        crackle, wheeze = p[:, 0] >= t[0], p[:, 1] >= t[1]
        pred = crackle.astype(np.int64) + 2 * wheeze.astype(np.int64)
        c, w = p[:, 0], p[:, 1]
        class_probs = np.stack([(1 - c) * (1 - w), c * (1 - w), (1 - c) * w, c * w], axis=1)
        return pred, class_probs, p
    p = softmax(logits)
    return p.argmax(axis=1), p, p


# --------------------------------------------------------------------------- runtime

def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


class OnnxModel:
    """An rsctool ONNX export in an onnxruntime session.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (None: onnxruntime's default, one per core).
        providers: onnxruntime execution providers (default: the CPU's only).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None,
                 providers: list[str] | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError("ONNX model not found", self.path)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # onnxruntime's warnings are not the user's business
        # Idle worker threads sleep instead of spinning: on a shared or busy CPU, spinning
        # threads take cores from other work (and from each other) for no gain here.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(os.fspath(self.path), opts,
                                                providers=providers
                                                or ["CPUExecutionProvider"])
        except Exception as e:
            raise DataError(f"not a readable ONNX model ({_short(e)})", self.path) from None
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        self.spec = ModelSpec.from_props(props, self.path)
        self.inputs = [i.name for i in self.session.get_inputs()]
        want = self.spec.input_names()
        if self.inputs != want:
            raise DataError(f"ONNX graph inputs {self.inputs} do not match its metadata "
                            f"({want})", self.path)
        self._fbank = None

    def logits(self, x: np.ndarray, meta: Mapping[str, np.ndarray] | None = None
               ) -> np.ndarray:
        """`(B, C)` logits of a batch: `x` is `(B, T, F)` normalised features, or `(B, N)`
        waveforms for a ``with_features`` export; `meta` the `encode_metadata` batch."""
        feed = {self.inputs[0]: np.ascontiguousarray(x, dtype=np.float32)}
        if self.spec.needs_metadata:
            if meta is None:
                raise ConfigError(f"{self.path}: the model needs metadata inputs")
            for k in META_INPUTS:
                feed[k] = meta[k]
        return self.session.run(["logits"], feed)[0]

    def features(self, wav: np.ndarray) -> np.ndarray:
        """What `logits` takes for `(B, N)` waveforms: normalised numpy fbank features,
        or the waveforms themselves for a ``with_features`` export."""
        if self.spec.with_features:
            return np.ascontiguousarray(wav, dtype=np.float32)
        if self._fbank is None:
            from rsctool.features_np import FbankConfig, FbankNumpy

            # no dither at prediction: the same recording always gives the same answer
            self._fbank = FbankNumpy(FbankConfig.from_dict({**self.spec.fbank, "dither": 0.0}),
                                     normalize=True)
        return self._fbank(wav)
