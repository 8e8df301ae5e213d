"""`rsctool train`: train a cycle classifier on a dataset registered by `analyze`.

Model selection, early stopping and decision thresholds (multilabel flags; the score
thresholds of ``--task ranking``) use the validation split only; the test split is never
loaded here. A run directory holds ``config.json``, ``history.csv``/``history.json``,
``last.safetensors`` (model, optimizer, scheduler step, RNG, loss state such as GHM's
moving averages: everything a resume needs), ``best.safetensors`` and, with a GHM loss,
``ghm_stats.json`` (bin statistics per epoch).

``--task ranking``: ordered classes (``0_degree < 45_degree < ...``, or ``class_order``)
are ranks; the model outputs one score and the ranking losses (``margin``,
``ghm-ranking``) use every in-batch pair of different classes.
`rsctool train --run NAME` on a run recorded as running continues it from its last
checkpoint; the sample order of an epoch is a pure function of (seed, epoch), so the
resumed run sees exactly the batches the uninterrupted one would have.

Options are resolved once, by `resolve_train_options`, from these sources, later ones
winning (the model and loss configs merge key by key, `merge_options`):

1. the `TrainOptions` defaults (``--task ranking`` defaults to ``--model cnn``);
2. ``--like RUN``: the options the run (or seed group) was started with;
3. the global ``--seed`` when given;
4. ``--config FILE``: a TOML file (a ``[train]`` table or top-level keys);
5. ``--set KEY=VALUE`` (``model.KEY`` / ``loss.KEY`` for the model and loss configs);
6. the train options given on the command line.

Then `TrainOptions.resolve` fills the model family's defaults and validates. A run is
built in one pass before it is recorded (`build_parts`: data, then model, then loss and
optimiser; a bad option fails with the project file untouched), then its name is claimed
and a `Trainer` is made from the parts, the name, folder, group and trackers; `fit` runs
the loop (epoch, validation, model selection, checkpoints).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rsctool.audio import DEFAULT_CLIP_SECONDS, DEFAULT_SAMPLE_RATE
from rsctool.console import StepProgress, err_console, get_state, info, print_json
from rsctool.datasets import load_dataset_cycles, pick_dataset
from rsctool.devices import resolve_device
from rsctool.distributed import sync_project
from rsctool.errors import ConfigError
from rsctool.features_np import AUDIOSET_MEAN, AUDIOSET_STD, FbankConfig
from rsctool.inference import loader_generator, predict, predictions
from rsctool.locks import hold_record, releasing
from rsctool.signals import Interrupted
from rsctool.utils import atomic_write_json, atomic_write_text, params_hash

if TYPE_CHECKING:
    from rsctool.project import Project

TASKS = ("multiclass", "multilabel", "binary", "ranking")
#: Loss names of the ranking task (``--loss ghm`` means ``ghm-ranking`` there).
RANKING_LOSSES = ("margin", "ghm-ranking")
NORMS = ("audioset", "dataset")


@dataclass
class TrainOptions:
    """Everything that determines a training run (stored as the run's config).

    Attributes mirror the command-line options; `None` means "the model family's
    default" and is resolved by `resolve()` (AST family: lr 3e-5, 10 warm-up epochs,
    cosine decay, AdamW with weight decay 0.01 — the seeds' paper settings; CNNs:
    lr 1e-3, 1 warm-up epoch).
    """

    model: str = "ast"
    size: str | None = None
    pretrained: str | None = None
    dataset: str | None = None
    run: str | None = None
    epochs: int = 50
    batch_size: int = 16
    lr: float | None = None
    weight_decay: float = 0.01
    warmup_epochs: float | None = None
    task: str = "multiclass"
    loss: str = "ce"
    # ranking: the classes from lowest to highest (default: by their leading number)
    class_order: list[str] | None = None
    balanced: bool = False
    specaugment: bool = True
    # SpecAugment shape: masks of each kind, widths (None: 24/128 of the bins and 12 % of
    # the frames) and fill; the ICBHI AST papers' code: 2, 48 bins, 160 frames, "mean"
    specaug_masks: int = 1
    specaug_freq_width: int | None = None
    specaug_time_width: int | None = None
    specaug_fill: str = "zero"
    mixup: float = 0.0
    # positive weight x this (multilabel: pos_weight = neg/pos x bias; binary: the
    # abnormal class weight = normal/abnormal x bias); None: 1.0 multilabel, none binary
    sensitivity_bias: float | None = None
    # metadata the conditioned models read (None: all of rsctool.metadata_np.META_FIELDS)
    # and how a missing number is encoded: mask (0 + mask) or median (train median)
    metadata: list[str] | None = None
    metadata_impute: str = "mask"
    clip_seconds: float = DEFAULT_CLIP_SECONDS
    # repeat (fades on every copy) | repeat-fadeout (the papers' code: one linear fade-out
    # at the clip end) | zero
    pad_mode: str = "repeat"
    sample_rate: int = DEFAULT_SAMPLE_RATE
    num_mel_bins: int = FbankConfig.num_mel_bins
    window: str | None = None
    norm: str = "audioset"
    patience: int = 0
    checkpoint_every: int = 0
    max_steps: int | None = None
    grad_accum: int = 1
    num_workers: int = 0
    amp: bool = True
    # autocast precision (`choose_precision`): auto = CUDA's amp (bf16, else fp16 with loss
    # scaling); on a CPU bf16 where it has bf16 units and a training step measures faster,
    # else fp32; fp32; bf16 (also on a CPU). Weights stay fp32.
    precision: str = "auto"
    seed: int = 0
    deterministic: bool = False
    model_cfg: dict[str, Any] = field(default_factory=dict)
    loss_cfg: dict[str, Any] = field(default_factory=dict)
    # synthetic cycles (rsctool synth) in the training split; see rsctool.synth
    synthetic: list[str] = field(default_factory=list)
    synthetic_ratio: float | None = None
    max_synthetic_per_class: int | None = None
    # adversarial fine-tuning (real-vs-synthetic discriminator); see rsctool.adversarial
    # (defaults: seed 002's public code; LayerNorm + Linear discriminator, domain loss
    # weight 0.2, reversal lambda(p) = adv_weight x the DANN ramp)
    adversarial: bool = False
    adv_weight: float = 1.0
    adv_hidden: int = 0
    adv_schedule: str = "dann"
    adv_loss_weight: float = 0.2
    # after each optimizer step, weights <- ma_beta x before + (1 - ma_beta) x after (the
    # ICBHI AST papers' code's `--ma_update --ma_beta 0.5`); 0: off
    ma_beta: float = 0.0
    # keep every epoch's weights as epochs/epoch-NNN.safetensors (one weights-only
    # checkpoint per epoch, each the size of best.safetensors) so that `rsctool eval
    # --protocol paper` can report the seeds' test-selected epoch; training never reads
    # the test split either way
    keep_epochs: bool = False

    def resolve(self) -> TrainOptions:
        """Fill family defaults and validate; returns a new object."""
        o = dataclasses.replace(self, model_cfg=dict(self.model_cfg),
                                loss_cfg=dict(self.loss_cfg))
        # The model's registered traits (rsctool/models/registry.py) pick its defaults;
        # an unknown --model fails here, before any work.
        from rsctool.models.registry import model_traits, models_with

        traits = model_traits(o.model)
        family_tf = traits.transformer
        if o.lr is None:
            o.lr = 3e-5 if family_tf else 1e-3
        if o.window is None:
            # AST's AudioSet checkpoints were trained on Hanning-window fbanks (the
            # transformers ASTFeatureExtractor's setting); Kaldi's default elsewhere.
            o.window = traits.window
        if o.warmup_epochs is None:
            o.warmup_epochs = min(10.0, o.epochs / 5) if family_tf else min(1.0, o.epochs / 5)
        if o.task not in TASKS:
            raise ConfigError(f"--task must be one of {', '.join(TASKS)}, got {o.task!r}")
        if o.norm not in NORMS:
            raise ConfigError(f"--norm must be one of {', '.join(NORMS)}, got {o.norm!r}")
        from rsctool.devices import check_precision

        check_precision(o.precision)
        if o.task == "multilabel" and o.loss == "ce":
            o.loss = "bce"
        if isinstance(o.class_order, str):  # `class_order = "a,b"` in a config file or --set
            o.class_order = comma_list(o.class_order)
        if o.task == "ranking":
            o.loss = {"ce": "margin", "ghm": "ghm-ranking"}.get(o.loss, o.loss)
            if o.loss not in RANKING_LOSSES:
                raise ConfigError(f"--task ranking trains with --loss margin or ghm, "
                                  f"got {o.loss!r}")
            if "ranking" not in traits.tasks:
                ranking = ", ".join(models_with(lambda t: "ranking" in t.tasks))
                raise ConfigError(f"--task ranking needs a model with a score output "
                                  f"({ranking}), got {o.model!r}")
            if o.model_cfg.get("output", "score") != "score":
                raise ConfigError("--task ranking needs model.output=score, got "
                                  f"{o.model_cfg['output']!r}")
            o.model_cfg["output"] = "score"
            if o.mixup > 0:
                raise ConfigError("mixup (--set mixup=ALPHA) mixes class targets; it does not "
                                  "apply to --task ranking")
        else:
            if o.loss in RANKING_LOSSES:
                raise ConfigError(f"--loss {o.loss} is a ranking loss: use it with "
                                  "--task ranking")
            if o.class_order is not None:
                raise ConfigError("--class-order applies to --task ranking only")
        for name, v, lo in (("--epochs", o.epochs, 1), ("--batch-size", o.batch_size, 1),
                            ("--grad-accum", o.grad_accum, 1)):
            if name == "--grad-accum" and (isinstance(v, bool) or not isinstance(v, int)):
                raise ConfigError(f"{name} must be an integer, got {v!r}")
            if v < lo:
                raise ConfigError(f"{name} must be >= {lo}, got {v}")
        if o.metadata is not None:  # `metadata = "a,b"` in --set, or a TOML list
            from rsctool.metadata_np import check_fields

            o.metadata = list(check_fields(o.metadata, "metadata"))
        if o.metadata_impute not in ("mask", "median"):
            raise ConfigError(f"metadata_impute must be mask or median, "
                              f"got {o.metadata_impute!r}")
        if o.task not in ("multilabel", "binary") and o.sensitivity_bias is not None:
            # 1.0 is what runs recorded before the option became task-specific hold
            # (`--like` of such a run must work); any other value would be a silent no-op
            if o.sensitivity_bias != 1.0:
                raise ConfigError(f"sensitivity_bias weights the positive outputs of --task "
                                  f"multilabel or binary, not --task {o.task}")
            o.sensitivity_bias = None
        if o.task == "multilabel" and o.sensitivity_bias is None:
            o.sensitivity_bias = 1.0
        if not (o.lr > 0 and o.weight_decay >= 0 and o.warmup_epochs >= 0 and o.mixup >= 0
                and (o.sensitivity_bias is None or o.sensitivity_bias > 0)
                and o.clip_seconds > 0):
            raise ConfigError("--lr, --clip-seconds and --sensitivity-bias must be > 0; "
                              "--weight-decay, --warmup-epochs and mixup (--set mixup=) >= 0")
        from rsctool.audio import PAD_MODES
        from rsctool.data.dataset import SPECAUG_FILLS

        if o.pad_mode not in PAD_MODES:
            raise ConfigError(f"pad_mode must be one of {', '.join(PAD_MODES)}, "
                              f"got {o.pad_mode!r}")
        if o.specaug_fill not in SPECAUG_FILLS:
            raise ConfigError(f"specaug_fill must be one of {', '.join(SPECAUG_FILLS)}, "
                              f"got {o.specaug_fill!r}")
        for name in ("specaug_masks", "specaug_freq_width", "specaug_time_width"):
            v = getattr(o, name)
            if v is None and name != "specaug_masks":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {v!r}")
        # `synthetic = "a,b"` in a config file or --set
        o.synthetic = comma_list(o.synthetic) if isinstance(o.synthetic, str) else list(
            o.synthetic or [])
        if o.synthetic_ratio is not None and not o.synthetic_ratio > 0:
            raise ConfigError(f"--synthetic-ratio must be > 0, got {o.synthetic_ratio}")
        if o.max_synthetic_per_class is not None and o.max_synthetic_per_class < 0:
            raise ConfigError("--max-synthetic-per-class must be >= 0, got "
                              f"{o.max_synthetic_per_class}")
        if (o.synthetic_ratio is not None or o.max_synthetic_per_class is not None
                or o.adversarial) and not o.synthetic:
            raise ConfigError("--synthetic-ratio, --max-synthetic-per-class and --adversarial "
                              "need --synthetic NAME (a set made by `rsctool synth`)")
        if (not o.adv_weight >= 0 or o.adv_hidden < 0 or not o.adv_loss_weight >= 0
                or o.adv_schedule not in ("constant", "dann")):
            raise ConfigError("--adv-weight and adv_loss_weight must be >= 0, adv_hidden >= 0 "
                              "and adv_schedule constant or dann")
        if not 0.0 <= o.ma_beta < 1.0:
            raise ConfigError(f"ma_beta must be in [0, 1), got {o.ma_beta}")
        return o


#: TrainOptions fields that are tables: merged key by key across option sources.
CONFIG_TABLES = ("model_cfg", "loss_cfg")


def merge_options(*layers: dict[str, Any]) -> dict[str, Any]:
    """Option dicts merged, later layers winning; the model and loss configs
    (`CONFIG_TABLES`) are merged key by key (``--set model.dropout=0.1`` over a
    ``--like`` run's model config keeps its other keys)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            out[key] = ({**out.get(key, {}), **value} if key in CONFIG_TABLES and key in out
                        else value)
    return out


def _known_options(values: dict[str, Any]) -> dict[str, Any]:
    """`values` without the keys that are no TrainOptions field."""
    fields = {f.name for f in dataclasses.fields(TrainOptions)}
    return {k: v for k, v in values.items() if k in fields}


def options_from(values: dict[str, Any]) -> TrainOptions:
    """Resolved `TrainOptions` from merged option values (ConfigError for unknown keys
    or invalid values)."""
    try:
        opts = TrainOptions(**values)
    except TypeError as e:
        raise ConfigError(f"invalid train options: {e}") from None
    return opts.resolve()


def comma_list(values: str | Sequence[str] | None) -> list[str]:
    """``"a,b"`` or ``["a,b", "c"]`` as ``["a", "b", "c"]`` (names given on the command
    line, in a config file or with --set)."""
    items = [values] if isinstance(values, str) else list(values or [])
    return [p.strip() for v in items for p in str(v).split(",") if p.strip()]


@dataclass
class TrainResult:
    run: str
    dir: Path
    best: Path | None
    best_score: float | None
    epochs_done: int
    steps: int
    skipped: bool = False
    resumed: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers

def recorded_stats(record: dict[str, Any], clip: Any) -> dict[str, Any] | None:
    """The log-mel statistics the dataset record holds for `clip`'s feature configuration
    (computed by `analyze`, or by an earlier run), if still valid for its split and
    manifest; else None."""
    from rsctool.data.dataset import stats_key

    entry = (record.get("fbank_stats") or {}).get(stats_key(clip))
    if not isinstance(entry, dict):
        return None
    ok = (entry.get("split_hash") == record.get("split_hash")
          and entry.get("manifest_sha256", record.get("sha256")) == record.get("sha256")
          and all(isinstance(entry.get(k), (int, float)) and not isinstance(entry.get(k), bool)
                  for k in ("mean", "std")) and entry["std"] > 0)
    return dict(entry) if ok else None


def normalization(norm: str, clip: Any, record: dict[str, Any], train_cycles: Sequence[Any],
                  cache: Any = None, log: Callable[[str], None] | None = None
                  ) -> dict[str, Any]:
    """The normalisation of a run: ``{"norm", "mean", "std", "source", ...}``.

    ``audioset``: AST's AudioSet pretraining statistics (`AUDIOSET_MEAN` /
    `AUDIOSET_STD` of `rsctool.features_np`).
    ``dataset``: the log-mel statistics of the training split for this feature
    configuration, as recorded in the dataset record (by `analyze`, or by an earlier run);
    when none are recorded they are computed now (``source = "train"``, ``new = True``:
    `run` then records them, so the next run, e.g. the next seed, reuses them).
    """
    from rsctool.data.dataset import fbank_statistics

    if norm != "dataset":
        return {"norm": "audioset", "mean": AUDIOSET_MEAN, "std": AUDIOSET_STD,
                "source": "AudioSet (AST pretraining)"}
    entry = recorded_stats(record, clip)
    if entry is not None:
        return {"norm": "dataset", **entry}
    if log is not None:
        log("computing the train split's log-mel statistics for this feature configuration "
            "(recorded in the project for later runs)")
    entry = fbank_statistics(train_cycles, clip, cache)
    return {"norm": "dataset", **entry, "split_hash": record.get("split_hash"),
            "manifest_sha256": record.get("sha256"), "source": "train", "new": True}


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up over `warmup` steps, then cosine decay to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def selection_metrics(classes: list[str], y_true: list[int], y_pred: list[int]
                      ) -> dict[str, Any]:
    """Validation metrics; `select` is what model selection maximises: the ICBHI Score
    when the classes include ``normal``, else the macro recall (balanced accuracy)."""
    from rsctool.metrics import icbhi_metrics

    m = icbhi_metrics(y_true, y_pred, classes)
    m["select"] = m["score"] if m["score"] is not None else m["macro_recall"]
    return m


def validation_loss(probs: Any, targets: Any) -> float:
    """Mean negative log-likelihood of the targets under `probs`: cross-entropy for
    class indices `(N,)` with softmax probabilities `(N, C)`, binary cross-entropy for
    multilabel targets `(N, K)` with sigmoid probabilities `(N, K)`."""

    p = probs.double().clamp(1e-7, 1 - 1e-7)
    if targets.dim() == 2:
        t = targets.double()
        return float(-(t * p.log() + (1 - t) * (1 - p).log()).mean())
    return float(-p.gather(1, targets.long()[:, None]).log().mean())


def is_improvement(select: float | None, loss: float, best_select: float | None,
                   best_loss: float | None) -> bool:
    """Model selection: a higher validation Score wins; an equal Score with a lower
    validation loss also wins. The Score of a small validation split moves in coarse
    steps and plateaus for many epochs; without the tie-break the first epoch that
    reaches the plateau (often a barely trained model) would be kept."""
    sel = select if select is not None else 0.0
    if best_select is None:
        return True
    if sel != best_select:
        return sel > best_select
    return best_loss is None or loss < best_loss


# --------------------------------------------------------------------------- the trainer

@dataclass
class TrainData:
    """The data part of a run, read in one pass (`load_train_data`): the dataset record,
    the classes the model predicts, the train/val splits (real cycles plus the synthetic
    ones, training split only), the normalisation and feature configuration; then the
    datasets and the sampler's weights (`TrainData.make_sets`, once the model says
    whether it reads metadata). The test split is never loaded."""

    name: str
    record: dict[str, Any]
    classes: list[str]
    train_cycles: list[Any]
    val_cycles: list[Any]
    #: {norm, mean, std, source, ...}: stored in the run config, checkpoints and export
    normalization: dict[str, Any]
    clip: Any
    meta_encoder: Any
    synthetic: Any
    cache: Any
    train_set: Any = None
    val_set: Any = None
    sample_weights: Any = None

    def make_sets(self, opts: TrainOptions, encoder: Any) -> None:
        """The datasets (`encoder`: the metadata encoder when the model reads metadata,
        else None) and the class-balanced sampling weights (``--balanced``)."""
        from rsctool.data.dataset import CycleDataset, class_balanced_weights

        self.train_set = CycleDataset(self.train_cycles, self.classes, self.clip, self.cache,
                                      encoder, opts.task)
        self.val_set = CycleDataset(self.val_cycles, self.classes, self.clip, self.cache,
                                    encoder, opts.task) if self.val_cycles else None
        self.sample_weights = (class_balanced_weights(self.train_set.targets,
                                                      len(self.classes))
                               if opts.balanced else None)


def task_classes(task: str, classes: list[str], class_order: list[str] | None,
                 dataset: str) -> list[str]:
    """The classes a `task` run predicts from the dataset's `classes`: binary's
    normal/abnormal, ranking's classes in rank order (class index = rank), else as is."""
    if task == "binary":
        from rsctool.data.manifest import BINARY_CLASSES

        # normal vs abnormal (ICBHI's 2-class task): every non-normal label is abnormal
        if "normal" not in classes or len(classes) < 2:
            raise ConfigError(f"--task binary (normal vs abnormal) needs a dataset with a "
                              f"'normal' class and others; {dataset!r} has "
                              f"{', '.join(classes)}")
        return list(BINARY_CLASSES)
    if task == "ranking":
        from rsctool.metrics import class_rank_order

        # class index = rank: the targets are the rank keys of the ranking losses
        ranked = class_rank_order(classes, class_order)
        if len(ranked) < 2:
            raise ConfigError(f"--task ranking needs at least 2 classes, dataset "
                              f"{dataset!r} has {len(ranked)}")
        return ranked
    return list(classes)


def load_train_data(project: Project, opts: TrainOptions, log: Callable[[str], None]
                    ) -> TrainData:
    """The dataset, splits, normalisation and synthetic cycles of a run (no datasets yet:
    `TrainData.make_sets`)."""
    from rsctool.data.dataset import clip_config, feature_cache
    from rsctool.data.synthetic import mix_synthetic
    from rsctool.data.windows import default_hop, is_record_level, record_windows
    from rsctool.models.metadata import MetadataEncoder

    name, record = pick_dataset(project, opts.dataset)
    cycles = load_dataset_cycles(project, record)
    dataset_classes = list(record.get("classes") or sorted({c.label for c in cycles}))
    classes = task_classes(opts.task, dataset_classes, opts.class_order, name)
    # The test split is never loaded by training: selection uses val only.
    train_cycles = [c for c in cycles if c.split == "train"]
    val_cycles = [c for c in cycles if c.split == "val"]
    if not train_cycles:
        raise ConfigError(f"dataset {name!r} has no train cycles")
    if is_record_level(record):  # one item per recording: train on its windows
        window, hop = opts.clip_seconds, default_hop(opts.clip_seconds)
        n_records = len(train_cycles) + len(val_cycles)
        train_cycles = record_windows(train_cycles, window, hop)
        val_cycles = record_windows(val_cycles, window, hop)
        log(f"dataset {name!r} is record-level: {n_records} train/val recordings -> "
            f"{len(train_cycles) + len(val_cycles)} windows of {window:g} s every {hop:g} s")
    if not val_cycles:
        log("warning: no validation split (analyze --val-fraction 0): the last "
            "epoch is kept as best and no early stopping happens")
    cache = feature_cache(project.state_dir())
    clip = clip_config(opts)
    norm = normalization(opts.norm, clip, record, train_cycles, cache, log)
    meta_encoder = MetadataEncoder.fit(train_cycles, fields=opts.metadata,
                                       impute=opts.metadata_impute)
    # Synthetic cycles join the training split only (never val/test), after the
    # normalisation statistics and metadata vocabularies were fitted on real cycles.
    synthetic = mix_synthetic(project, opts, train_cycles, dataset_classes, log)
    return TrainData(name=name, record=record, classes=classes,
                     train_cycles=train_cycles + synthetic.cycles, val_cycles=val_cycles,
                     normalization=norm, clip=clip.with_norm(norm["mean"], norm["std"]),
                     meta_encoder=meta_encoder, synthetic=synthetic, cache=cache)


def num_outputs(opts: TrainOptions, classes: list[str]) -> int:
    """The model's outputs: 2 sigmoids (crackle, wheeze) for multilabel, else one per
    class (ranking models give one score whatever this is)."""
    return 2 if opts.task == "multilabel" else len(classes)


def build_model(opts: TrainOptions, data: TrainData, device: str) -> Any:
    """The model of a run on `device` (``--model``, ``--size``, ``--pretrained`` and
    ``model.KEY`` options; input ``(T, F)`` from the clip)."""
    import torch

    from rsctool.models import create_model

    model_kwargs = dict(opts.model_cfg)
    if opts.size is not None:
        model_kwargs["size"] = opts.size
    if opts.pretrained is not None:
        model_kwargs["pretrained"] = opts.pretrained
    model = create_model(opts.model, num_classes=num_outputs(opts, data.classes),
                         input_tdim=data.clip.frames, input_fdim=data.clip.fbank.num_mel_bins,
                         meta_spec=data.meta_encoder.spec(), **model_kwargs)
    model.to(device)
    if any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        # oneDNN/cuDNN convolutions run ~2x faster on NHWC than on NCHW tensors
        # (measured on CPU: docs/benchmarks.md); values are unchanged.
        model.to(memory_format=torch.channels_last)
    return model


@dataclass
class Optimisation:
    """What a run optimises and how: the loss (and the adversary with ``--adversarial``),
    the training forwards (DistributedDataParallel with several processes, the modules
    themselves in one; state dicts come from the modules), AdamW with the warm-up +
    cosine schedule over `total_steps`, and mixed precision (`choose_precision`)."""

    loss_fn: Any
    adversary: Any
    train_model: Any
    train_adversary: Any
    optimizer: Any
    scheduler: Any
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    use_amp: bool
    amp_dtype: Any
    scaler: Any
    precision: PrecisionChoice


def train_precision(opts: TrainOptions, device_type: str) -> str:
    """The autocast precision of a run on `device_type` (``cpu``/``cuda``) that needs no
    measurement: ``fp32``, ``bf16`` or ``fp16``. ``--precision auto`` on CUDA is mixed
    precision unless ``amp=false`` (bf16 where the GPU has it, Ampere and later: fp32's
    range, no loss scaling; fp16 with a GradScaler otherwise); on the CPU it is fp32
    here, and bf16 where `choose_precision` measures that it pays. ``bf16`` is asked for
    explicitly, also on a CPU (`rsctool.devices.resolve_precision`)."""
    from rsctool.devices import resolve_precision

    if opts.precision == "auto":
        if device_type != "cuda" or not opts.amp:
            return "fp32"
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return resolve_precision(opts.precision, device_type)


@dataclass
class PrecisionChoice:
    """The autocast precision of a run (``fp32``/``bf16``/``fp16``) on `device`
    (``cpu``/``cuda``) and how it was chosen (`how`):

    * ``asked``: ``--precision fp32|bf16``;
    * ``rule``: ``auto`` on CUDA (`train_precision`), on a CPU without bf16 units, or
      with ``amp=false``;
    * ``small``: ``auto`` on a CPU with bf16 units, but a micro-batch has less matrix work
      than `rsctool.devices.CPU_BF16_MIN_GFLOP` (fp32);
    * ``measured``: ``auto`` on such a CPU: a training step was timed in both precisions
      (`rsctool.devices.bf16_speedup`), bf16 when it is `CPU_BF16_MIN_SPEEDUP` faster;
    * ``cached``: that measurement, made before in this project for the same model,
      input, batch and machine (so the runs of a sweep train alike);
    * ``resumed``: a resume keeps what the run trained in on the same device type.

    `detail`: ``gflop`` and ``batch`` of the micro-batch; ``fp32_s``, ``bf16_s`` and
    ``speedup`` where measured; a resumed choice keeps the first one's and names how it
    was made (``chosen``; None for runs from before it was recorded)."""

    precision: str
    device: str
    how: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "device": self.device, "how": self.how,
                **self.detail}


def choose_precision(project: Project, opts: TrainOptions, data: TrainData, model: Any,
                     loss_fn: Any, dist: Any, log: Callable[[str], None],
                     resumed: dict[str, Any] | None = None) -> PrecisionChoice:
    """The autocast precision of a run (`PrecisionChoice` says how it is chosen).

    `resumed`: the ``precision_choice`` (or, for runs of older versions, ``precision``
    and the start ``device``) that a resumed run's checkpoint recorded; with ``auto`` it
    is kept on the same device type, so a resume continues in the precision the run
    trained in (a bf16 run moved to a CPU without bf16 units is chosen for anew).

    With several processes the main process measures and the others take its choice."""
    from rsctool.devices import cpu_bf16_fast

    kind = dist.device_type
    if resumed and opts.precision == "auto":
        was, where = resumed.get("precision"), resumed.get("device")
        if where == kind and was in ("fp32", "bf16", "fp16") and not (
                kind == "cpu" and (was == "fp16" or (was == "bf16" and not cpu_bf16_fast()))):
            first = {k: v for k, v in resumed.items() if k not in ("precision", "device", "how")}
            return PrecisionChoice(was, kind, "resumed",
                                   {**first, "chosen": first.get("chosen", resumed.get("how"))})
        if was is not None:
            log(f"the run trained in {was} on {where}: precision auto chooses anew on {kind}"
                if where != kind else f"the run trained in {was}, which this {kind} has no "
                "units for: precision auto chooses anew")
    if opts.precision != "auto" or kind != "cpu" or not opts.amp or not cpu_bf16_fast():
        return PrecisionChoice(train_precision(opts, kind), kind,
                               "asked" if opts.precision != "auto" else "rule")
    choice = None
    if dist.is_main:
        choice = _measure_cpu_precision(project, opts, data, model, loss_fn, dist, log)
        d = choice.detail
        if choice.how == "small":
            log(f"precision auto: fp32 ({d['gflop']:.2g} GFLOP of matrix work per batch of "
                f"{d['batch']} is too little for this CPU's bf16 units to pay)")
        else:
            log(f"precision auto: {choice.precision} (a training step takes "
                f"{d['bf16_s'] * 1e3:,.0f} ms in bf16 and {d['fp32_s'] * 1e3:,.0f} ms in "
                f"fp32 at batch {d['batch']} on this CPU: {d['speedup']:.2f}x"
                + (", measured before in this project" if choice.how == "cached" else "")
                + ("; --precision fp32 keeps fp32)" if choice.precision == "bf16"
                   else "; --precision bf16 forces it)"))
    return dist.broadcast(choice)


#: Where `_measure_cpu_precision` keeps its measurements (in the project's state folder).
PRECISION_CACHE = "cache/train-precision.json"


def _measure_cpu_precision(project: Project, opts: TrainOptions, data: TrainData, model: Any,
                           loss_fn: Any, dist: Any, log: Callable[[str], None]
                           ) -> PrecisionChoice:
    """`choose_precision` on a CPU with bf16 units: fp32 below the matrix work where bf16
    pays, else a training step (forward, loss, backward; the optimizer step costs the
    same in both, on fp32 weights) on copies of the model and loss, timed both ways on
    the first micro-batch of the training set. The copies and a forked RNG leave the run
    exactly as it was: the measurement changes nothing but the precision."""
    import copy

    import torch

    from rsctool import __version__
    from rsctool.data.dataset import collate
    from rsctool.devices import (
        CPU_BF16_MIN_GFLOP,
        CPU_BF16_MIN_SPEEDUP,
        bf16_speedup,
        matrix_flops,
    )
    from rsctool.environment import cpu_name

    if not len(data.train_set):
        return PrecisionChoice("fp32", "cpu", "rule")
    n = max(1, min(opts.batch_size // (dist.world * opts.grad_accum), len(data.train_set)))
    batch = collate([data.train_set[i] for i in range(n)])  # CPU tensors, as needed here
    x, y, meta = batch["x"], batch["y"], batch.get("meta")
    one = None if meta is None else {k: v[:1] for k, v in meta.items()}
    with torch.random.fork_rng(devices=[]):
        gflop = matrix_flops(model, lambda: model(x[:1], one)) * n / 1e9
    detail: dict[str, Any] = {"gflop": round(gflop, 4), "batch": n}
    if gflop < CPU_BF16_MIN_GFLOP:
        return PrecisionChoice("fp32", "cpu", "small", detail)
    key = params_hash({"model": getattr(model, "config", opts.model), "x": list(x.shape),
                       "meta": sorted(meta or {}), "loss": opts.loss, "task": opts.task,
                       "cpu": cpu_name(), "threads": torch.get_num_threads(),
                       "processes": dist.world, "torch": torch.__version__,
                       "rsctool": __version__})
    path = project.state_dir() / PRECISION_CACHE
    cache: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError, TypeError):  # none, or unreadable: measure
        cache = dict(json.loads(path.read_text(encoding="utf-8")))
    known = cache.get(key)
    if isinstance(known, dict) and known.get("precision") in ("fp32", "bf16"):
        with contextlib.suppress(KeyError, TypeError, ValueError):
            return PrecisionChoice(known["precision"], "cpu", "cached", {
                **detail, **{k: float(known[k]) for k in ("fp32_s", "bf16_s", "speedup")}})
    # a large model's steps take a while on a CPU: say what the wait is
    log(f"precision auto: timing a training step of batch {n} in fp32 and in bf16 "
        f"({gflop:,.0f} GFLOP of matrix work per forward pass; once per model and machine)")
    twin, twin_loss = copy.deepcopy(model).train(), copy.deepcopy(loss_fn)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = twin_loss(twin(x, meta), y)
        loss.backward()
        twin.zero_grad(set_to_none=True)

    with torch.random.fork_rng(devices=[]):
        measured = bf16_speedup(step)
    precision = "bf16" if measured["speedup"] >= CPU_BF16_MIN_SPEEDUP else "fp32"
    detail.update({k: round(v, 5) for k, v in measured.items()})
    with contextlib.suppress(OSError):  # a cache that cannot be written is measured again
        path.parent.mkdir(parents=True, exist_ok=True)
        cache[key] = {"precision": precision, "model": opts.model, **detail,
                      "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_json(path, cache)
    return PrecisionChoice(precision, "cpu", "measured", detail)


def build_loss_fn(opts: TrainOptions, data: TrainData, device: Any) -> Any:
    """The training loss of a run whose datasets are made (`TrainData.make_sets`): the
    sensitivity bias as positive/class weights, ranking and binary tasks as their
    multiclass losses."""
    from rsctool.losses import build_loss, sensitivity_pos_weight

    loss_kwargs = dict(opts.loss_cfg)
    if opts.task == "multilabel":
        loss_kwargs.setdefault("pos_weight", sensitivity_pos_weight(
            data.train_set.multilabel, opts.sensitivity_bias))
    elif opts.task == "binary" and opts.sensitivity_bias is not None:
        # seed 001's binary BCE pos_weight as the abnormal class's CE weight
        abnormal = (data.train_set.targets == data.classes.index("abnormal"))
        loss_kwargs.setdefault("class_weights", [1.0, *sensitivity_pos_weight(
            abnormal[:, None], opts.sensitivity_bias)])
    return build_loss(opts.loss, num_classes=num_outputs(opts, data.classes),
                      task=("multiclass" if opts.task in ("ranking", "binary")
                            else opts.task), **loss_kwargs).to(device)


def build_optimisation(opts: TrainOptions, data: TrainData, model: Any, dist: Any,
                       loss_fn: Any, precision: PrecisionChoice) -> Optimisation:
    """Adversary, distribution, optimiser, schedule and AMP of a run whose datasets are
    made (`TrainData.make_sets`), with its loss (`build_loss_fn`) and `precision`."""
    import torch

    device = dist.device
    adversary = None
    if opts.adversarial:
        from rsctool.adversarial import AdversarialObjective

        adversary = AdversarialObjective.for_model(
            model, weight=opts.adv_weight, hidden=opts.adv_hidden,
            schedule=opts.adv_schedule, loss_weight=opts.adv_loss_weight).to(device)
    train_model = dist.prepare(model, find_unused=dist.distributed and _has_unused_parameters(
        model, data.train_set, device))
    train_adversary = dist.prepare(adversary) if adversary is not None else None
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad]
        + (list(adversary.parameters()) if adversary is not None else []),
        lr=opts.lr, weight_decay=opts.weight_decay)
    steps_per_epoch = math.ceil(len(data.train_set) / opts.batch_size)
    total_steps = steps_per_epoch * opts.epochs
    if opts.max_steps is not None:
        total_steps = min(total_steps, opts.max_steps)
    warmup_steps = int(round(opts.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s, total_steps, warmup_steps))
    use_amp = precision.precision != "fp32"
    amp_dtype = torch.float16 if precision.precision == "fp16" else torch.bfloat16
    # only fp16 needs loss scaling (bf16 has fp32's exponent range)
    scaler = torch.amp.GradScaler("cuda", enabled=precision.precision == "fp16")
    return Optimisation(loss_fn, adversary, train_model, train_adversary, optimizer, scheduler,
                        steps_per_epoch, total_steps, warmup_steps, use_amp, amp_dtype, scaler,
                        precision)


@dataclass
class TrainParts:
    """Everything a `Trainer` trains with, built before the run has a name (so a bad
    option fails before the project file is touched): the processes, data, model and
    optimisation."""

    dist: Any
    data: TrainData
    model: Any
    optim: Optimisation


def build_parts(project: Project, opts: TrainOptions, device: str,
                log: Callable[[str], None] | None = None, dist: Any = None,
                resumed_precision: dict[str, Any] | None = None) -> TrainParts:
    """Data, model, loss, precision (`choose_precision`; `resumed_precision`: what the
    run being resumed recorded), then optimiser of a run with resolved `opts` (in this
    order: the model's initialisation draws from the seeded RNG). `dist`: this process's
    share of a data-parallel run (`rsctool.distributed`); one process is the same code
    path with world 1."""
    from rsctool.distributed import Dist

    log = log or (lambda msg: None)
    dist = dist if dist is not None else Dist(device=device)
    data = load_train_data(project, opts, log)
    model = build_model(opts, data, dist.device)
    data.make_sets(opts, data.meta_encoder if getattr(model, "needs_metadata", False)
                   else None)
    loss_fn = build_loss_fn(opts, data, dist.device)
    precision = choose_precision(project, opts, data, model, loss_fn, dist, log,
                                 resumed_precision)
    return TrainParts(dist, data, model,
                      build_optimisation(opts, data, model, dist, loss_fn, precision))


class Trainer:
    """One training run, built completely from its parts (`build_parts`) and its name,
    folder, seed group and trackers; `fit()` does the work."""

    def __init__(self, project: Project, opts: TrainOptions, parts: TrainParts, *, run_name: str,
                 run_dir: Path, group: str | None = None, trackers: Sequence[Any] = (),
                 progress: bool = False, log: Callable[[str], None] | None = None):
        from rsctool.environment import collect

        data, optim = parts.data, parts.optim
        self.project, self.opts, self.run_name, self.dir = project, opts, run_name, run_dir
        self.group = group  # the seed sweep (`run_group`) the run belongs to
        self.trackers = list(trackers)  # rsctool.tracking (``--log``)
        self.dist, self.device = parts.dist, parts.dist.device
        self.progress = progress
        self.log = log or (lambda msg: None)
        # data
        self.dataset_name, self.dataset_record = data.name, data.record
        self.classes = data.classes
        self.train_cycles, self.val_cycles = data.train_cycles, data.val_cycles
        self.normalization, self.clip = data.normalization, data.clip
        self.meta_encoder, self.synthetic = data.meta_encoder, data.synthetic
        self.train_set, self.val_set = data.train_set, data.val_set
        self.sample_weights = data.sample_weights
        # model, loss, optimiser
        self.model = parts.model
        self.loss_fn, self.adversary = optim.loss_fn, optim.adversary
        self.train_model, self.train_adversary = optim.train_model, optim.train_adversary
        self.optimizer, self.scheduler = optim.optimizer, optim.scheduler
        self.steps_per_epoch, self.total_steps = optim.steps_per_epoch, optim.total_steps
        self.warmup_steps = optim.warmup_steps
        self.use_amp, self.amp_dtype, self.scaler = optim.use_amp, optim.amp_dtype, optim.scaler
        self.precision = optim.precision.precision
        self.precision_choice = optim.precision
        # the loop's state (what a checkpoint holds)
        self.step = 0
        self.epoch = 0
        self.best_select: float | None = None
        self.best_epoch: int | None = None
        self.best_val_loss: float | None = None
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.thresholds: list[float] | None = None
        #: the GHM histogram of the epoch in progress (summed over its steps) and one
        #: summary per finished epoch (``ghm_stats.json``), for GHM losses only
        self.ghm_acc: dict[str, Any] | None = None
        self.ghm_stats: list[dict[str, Any]] = []
        # where the run started (a resume keeps it and records its own as `resumed_in`)
        self.environment: dict[str, Any] = collect(self.dist.device_type)
        self.resumed_in: list[dict[str, Any]] = []

    # ----- state -----------------------------------------------------------------------
    def provenance(self) -> dict[str, Any]:
        """What makes the run reproducible and comparable: the data (manifest hash), the
        split (spec, hash, whether it is the official one), the normalisation, and the
        environment (package versions, device, git commit)."""
        rec = self.dataset_record
        spec = str(rec.get("split", "unknown"))
        return {
            "data": {"dataset": self.dataset_name, "format": rec.get("format"),
                     "manifest_sha256": rec.get("sha256"), "cycles": rec.get("cycles"),
                     "analyze_params_hash": rec.get("params_hash"),
                     **({"items": rec["items"]} if rec.get("items") else {})},
            "split": {"spec": spec, "hash": rec.get("split_hash"),
                      "official": spec == "official" and rec.get("format") == "icbhi",
                      "train_test_hash": rec.get("split_train_test_hash"),
                      "val_fraction": rec.get("val_fraction"), "seed": rec.get("seed")},
            "normalization": {k: v for k, v in self.normalization.items() if k != "new"},
            "environment": self.environment,
            **({"resumed_in": self.resumed_in} if self.resumed_in else {}),
            **({"group": self.group} if self.group else {}),
        }

    def run_config(self) -> dict[str, Any]:
        """What `eval`, `export` and `predict` need to rebuild and feed the model, and
        the run's provenance (`provenance`)."""
        return {
            "run": self.run_name,
            "options": asdict(self.opts),
            "model": self.model.config,
            "classes": self.classes,
            "task": self.opts.task,
            "precision": self.precision,  # what autocast computed in (fp32|bf16|fp16)
            "precision_choice": self.precision_choice.to_dict(),  # and why
            "clip": self.clip.to_dict(),
            "metadata_encoder": self.meta_encoder.to_dict(),
            "needs_metadata": bool(getattr(self.model, "needs_metadata", False)),
            "dataset": self.dataset_name,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "synthetic": self.synthetic.summary(),
            # how this invocation computes the global batch (a resume may differ)
            "distributed": {**self.dist.describe(), "grad_accum": self.opts.grad_accum,
                            "per_process_batch": self.opts.batch_size
                            // (self.dist.world * self.opts.grad_accum)},
            **self.provenance(),
        }

    def _state(self) -> dict[str, Any]:
        return {
            "config": self.run_config(),
            "step": self.step,
            "epoch": self.epoch,
            "best_select": self.best_select,
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "thresholds": self.thresholds,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ghm_acc": self.ghm_acc,
            "ghm_stats": self.ghm_stats,
        }

    def save(self, name: str, *, full: bool = True, gather: bool = True) -> Path:
        """Write checkpoint `name` (main process only). A full one holds every process's
        RNG state: with several processes that is a collective (all must call it), unless
        not `gather` (an interrupted run: the main process's own state only)."""
        from rsctool.checkpoint import save_checkpoint

        path = self.dir / name
        extras: dict[str, Any] = {}
        if self.adversary is not None:
            extras["adversary"] = self.adversary
        if full and any(True for _ in self.loss_fn.buffers()):
            extras["loss"] = self.loss_fn  # e.g. the GHM moving averages: resume exactly
        rng_extra = None
        if full and gather and self.dist.distributed:
            states = self.dist.all_gather(_rng_state(self.dist))
            rng_extra = {f"rank{r}.{k}": v for r, st in enumerate(states) if r > 0
                         for k, v in st.items()}
        if self.dist.is_main:
            save_checkpoint(path, model=self.model, state=self._state(),
                            optimizer=self.optimizer if full else None, rng=full,
                            extras=extras or None, rng_extra=rng_extra)
        return path

    def restore(self, path: Path) -> None:
        from rsctool.checkpoint import load_checkpoint

        ck = load_checkpoint(path)
        st = ck.state
        used = (st.get("config", {}).get("synthetic") or {}).get("sha256")
        if used != self.synthetic.sha256:
            raise ConfigError(f"{path}: the synthetic cycles selected now differ from those "
                              "the run started with (a synthetic set changed); use --force "
                              "to retrain or another --run name")
        self.model.load_state_dict(ck.model_state)
        if self.adversary is not None and "adversary" in ck.extras:
            self.adversary.load_state_dict(ck.extras["adversary"])
        if "loss" in ck.extras:
            self.loss_fn.load_state_dict(ck.extras["loss"])
        self.ghm_acc = st.get("ghm_acc")
        self.ghm_stats = list(st.get("ghm_stats") or [])
        if ck.optimizer_state is not None:
            self.optimizer.load_state_dict(ck.optimizer_state)
        self.step, self.epoch = int(st["step"]), int(st["epoch"])
        self.best_select, self.best_epoch = st.get("best_select"), st.get("best_epoch")
        self.best_val_loss = st.get("best_val_loss")
        self.bad_epochs = int(st.get("bad_epochs", 0))
        self.history = list(st.get("history", []))
        self.thresholds = st.get("thresholds")
        started = st.get("config", {}).get("environment")
        if isinstance(started, dict) and started:
            from rsctool.environment import differences

            now = self.environment
            self.resumed_in = list(st.get("config", {}).get("resumed_in") or [])
            if differences(started, now) and now not in self.resumed_in:
                self.resumed_in.append(now)
                self.log("resuming in another environment than the run started in: "
                         + "; ".join(differences(started, now)))
            self.environment = started
        if st.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(st["scaler"])
        # LambdaLR's only state is the step count: rebuild it from `step`.
        self.scheduler.last_epoch = self.step
        for g, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
            g["lr"] = base * cosine_with_warmup(self.step, self.total_steps, self.warmup_steps)
        if not ck.restore_rng(self.dist.rank) and self.dist.rank > 0:
            # a process the checkpointed run did not have: a fresh stream of its own
            import torch

            torch.manual_seed(rank_seed(self.opts.seed, self.dist.rank, self.step))

    # ----- loops -----------------------------------------------------------------------
    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        dev = self.device
        out = {k: (v.to(dev, non_blocking=True) if hasattr(v, "to") else v)
               for k, v in batch.items() if k != "meta"}
        if "meta" in batch:
            out["meta"] = {k: v.to(dev, non_blocking=True) for k, v in batch["meta"].items()}
        return out

    def _loader(self, dataset: Any, batches: list[list[int]]) -> Any:
        """Loads `batches` (lists of dataset indices: this process's micro-batches)."""
        import torch

        from rsctool.data.dataset import collate

        return torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, collate_fn=collate,
            num_workers=self.opts.num_workers, pin_memory=self.dist.device_type == "cuda",
            persistent_workers=False, generator=loader_generator(self.opts.seed, self.epoch))

    def _epoch_plan(self) -> list[tuple[list[int], float, bool]]:
        """This process's micro-batches ``(indices, factor, sync)`` for what is left of the
        epoch: the epoch's order is a pure function of (seed, epoch), so a resumed run
        skips exactly the batches it has done."""
        from rsctool.data.dataset import epoch_order

        opts, dist = self.opts, self.dist
        order = epoch_order(len(self.train_set), self.epoch, opts.seed, self.sample_weights)
        done_in_epoch = self.step - self.epoch * self.steps_per_epoch
        order_list = order[done_in_epoch * opts.batch_size:].tolist()
        plan: list[tuple[list[int], float, bool]] = []
        for k in range(0, len(order_list), opts.batch_size):
            plan += micro_batches(order_list[k:k + opts.batch_size], opts.batch_size,
                                  dist.world, opts.grad_accum, dist.rank)
        return plan

    def _start_ghm_epoch(self, ghm: Any) -> None:
        """Open the epoch's GHM histogram (kept when resuming inside the epoch)."""
        if self.ghm_acc is None or self.ghm_acc.get("epoch") != self.epoch + 1:
            self.ghm_acc = {"epoch": self.epoch + 1, "steps": 0, "n": 0,
                            "counts": [0] * ghm.bins, "weight_sums": [0.0] * ghm.bins,
                            "g_sum": 0.0, "density": None, "bin_weights": None}

    def _forward_backward(self, batch: dict[str, Any], factor: float, sync: bool,
                          first: bool) -> tuple[Any, int]:
        """One micro-batch: augment, forward, loss, backward (gradients add up until the
        step). Returns the loss and the batch size."""
        import torch

        from rsctool.data.dataset import mixup, spec_augment

        opts = self.opts
        b = self._to_device(batch)
        x, y = b["x"], b["y"]
        if opts.specaugment:
            x = spec_augment(x, n_masks=opts.specaug_masks, freq_width=opts.specaug_freq_width,
                             time_width=opts.specaug_time_width, fill=opts.specaug_fill)
        if opts.mixup > 0:
            x, y = mixup(x, y, len(self.classes), opts.mixup)
        # accumulation micro-steps skip the gradient all-reduce; the last one syncs
        sync_ctx = (contextlib.nullcontext() if sync
                    else self.dist.no_sync(self.train_model, self.train_adversary))
        with sync_ctx:
            with torch.autocast(self.dist.device_type, dtype=self.amp_dtype,
                                enabled=self.use_amp):
                out = self.train_model(x, b.get("meta"))
                loss = self.loss_fn(out, y)
                if self.adversary is not None:  # domain CE through gradient reversal
                    loss = loss + self.train_adversary(out, b["domain"],
                                                       self.step / max(1, self.total_steps))
            if first:
                self.optimizer.zero_grad(set_to_none=True)
            # this micro-batch's share of the global batch mean (DDP averages over
            # processes); exactly the loss itself in one process without accumulation
            scaled = loss if factor == 1.0 else loss * factor
            self.scaler.scale(scaled).backward()
        return loss, len(x)

    def _optimizer_step(self, loss: Any, on_step: Callable[[], None] | None) -> None:
        """The optimizer and LR-schedule step after a global batch; checkpoint every
        ``checkpoint_every`` steps; progress."""
        import torch

        opts = self.opts
        before = None
        if opts.ma_beta > 0:  # the weights before this step, for the moving average
            before = [p.detach().clone() for g in self.optimizer.param_groups
                      for p in g["params"]]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if before is not None:
            with torch.no_grad():
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                for p, q in zip(params, before, strict=True):
                    p.lerp_(q, opts.ma_beta)
        with warnings.catch_warnings():
            # The schedule is a pure function of the step count; when the GradScaler
            # skips an overflowing fp16 step, torch warns that the scheduler stepped
            # first, which is intended here.
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step",
                                    UserWarning)
            self.scheduler.step()
        self.step += 1
        if on_step is not None:
            on_step()
        if opts.checkpoint_every and self.step % opts.checkpoint_every == 0:
            self.save("last.safetensors")
        loss_value = float(loss.detach())
        self._bar.update(loss=loss_value, epoch=self.epoch + 1)
        speed = getattr(self, "_speed", None)
        if speed is not None:
            # the global batch of this step (an epoch's last one may be short)
            k = self.step - 1 - self.epoch * self.steps_per_epoch
            speed.step(self.step, self.epoch + 1, loss_value,
                       max(0, min(opts.batch_size, len(self.train_set) - k * opts.batch_size)))

    def train_epoch(self, on_step: Callable[[], None] | None = None) -> dict[str, float]:
        """One epoch (or what is left of it). ``--batch-size`` is the global batch: each
        optimizer step sees the same samples whatever the number of processes and
        accumulation steps (`micro_batches` splits it), and the per-sample mean loss of
        the global batch, so the gradient is the one-process gradient."""
        import torch

        self.model.train()
        if self.adversary is not None:
            self.adversary.train()
        plan = self._epoch_plan()
        # with several processes each GHM loss sees (and its statistics count) only its
        # own process's share of the batch
        ghm = getattr(self.loss_fn, "ghm", None)
        if ghm is not None:
            self._start_ghm_epoch(ghm)
        total_loss, n_seen, t0 = 0.0, 0, time.perf_counter()
        set_progress = getattr(self.model, "set_progress", None)
        first = True  # the next micro-batch starts an optimizer step
        loss = torch.zeros(())
        loader = self._loader(self.train_set, [p[0] for p in plan])
        for (_, factor, sync), batch in zip(plan, loader, strict=True):
            if self.step >= self.total_steps:
                break
            if first and set_progress is not None:
                set_progress(self.step / max(1, self.total_steps))
            if ghm is not None:
                ghm.last_stats = None  # a ranking batch without pairs leaves it None
            loss, n = self._forward_backward(batch, factor, sync, first)
            first = False
            if factor > 0:
                total_loss += float(loss.detach()) * n
                n_seen += n
                if ghm is not None and ghm.last_stats is not None:
                    _accumulate_ghm(self.ghm_acc, ghm.last_stats)
            if sync:
                first = True
                self._optimizer_step(loss, on_step)
        dt = time.perf_counter() - t0
        # over all processes (the count of contributing processes proves how many ran)
        total_loss, n_all, processes = self.dist.all_sum([total_loss, n_seen, 1.0])
        return {"train_loss": total_loss / max(1.0, n_all),
                "samples_per_s": n_all / dt if dt > 0 else 0.0,
                "processes": int(round(processes)),
                **(self.adversary.epoch_stats() if self.adversary is not None else {})}

    def validate(self) -> dict[str, Any]:
        """Validation metrics. With several processes each predicts a contiguous share of
        the validation split and all gather the probabilities, so every process computes
        the same metrics (and takes the same model-selection and early-stopping steps)."""
        import torch

        from rsctool.distributed import shard_range
        from rsctool.metrics import choose_thresholds

        assert self.val_set is not None
        if self.opts.task == "ranking":
            return self._validate_ranking()
        dist = self.dist
        data: Any = self.val_set
        if dist.distributed:
            data = torch.utils.data.Subset(
                self.val_set, list(shard_range(len(self.val_set), dist.rank, dist.world)))
        out = predict(self.model, data, self.opts.batch_size * 2, self.device,
                      self.opts.task, self.thresholds)
        probs = out["probs"]
        if dist.distributed:
            probs = torch.cat(dist.all_gather(probs))
        if self.opts.task == "multilabel":
            t = choose_thresholds(probs.numpy(), self.val_set.multilabel.numpy())
            self.thresholds = [float(t[0]), float(t[1])]
        pred = predictions(probs, self.opts.task, self.thresholds)
        m = selection_metrics(self.classes, self.val_set.targets.tolist(), pred)
        m["loss"] = validation_loss(probs, self.val_set.multilabel
                                    if self.opts.task == "multilabel" else self.val_set.targets)
        return m

    def _validate_ranking(self) -> dict[str, Any]:
        """Ranking validation: score thresholds between adjacent classes are chosen on
        this (validation) split, then class accuracy, pairwise accuracy and Spearman;
        model selection maximises the pairwise accuracy."""
        from rsctool.metrics import choose_rank_thresholds, ranking_metrics

        assert self.val_set is not None
        out = predict(self.model, self.val_set, self.opts.batch_size * 2, self.device,
                      "ranking")
        scores = out["probs"][:, 0].numpy()
        y = self.val_set.targets.numpy()
        self.thresholds = choose_rank_thresholds(scores, y, len(self.classes))
        m = ranking_metrics(scores, y, self.classes, self.thresholds)
        m["select"] = m["pairwise_accuracy"]
        m["loss"] = ranking_validation_loss(scores, y, float(self.opts.loss_cfg.get("margin",
                                                                                   1.0)))
        return m

    def fit(self) -> TrainResult:
        """Train up to ``epochs`` (or ``max_steps``): each epoch is trained, validated,
        logged and checkpointed (``best`` when validation improved, ``last`` always);
        early stopping after ``patience`` epochs without improvement."""
        opts = self.opts
        start_step = self.step
        self._bar = StepProgress(self.progress, "train", self.total_steps, self.step)
        self._speed = self._progress_lines()
        try:
            while self.epoch < opts.epochs and self.step < self.total_steps:
                row, improved, epoch_complete = self._train_and_validate()
                self._end_epoch(row, improved, epoch_complete)
                self.log(_epoch_line(row))
                if opts.patience and self.bad_epochs >= opts.patience:
                    self.log(f"early stopping: no validation improvement in {opts.patience} "
                             "epochs")
                    break
        finally:
            self._bar.close()
        return TrainResult(self.run_name, self.dir, self.dir / "best.safetensors",
                           self.best_select, self.epoch, self.step,
                           resumed=start_step > 0, history=self.history)

    def _train_and_validate(self) -> tuple[dict[str, Any], bool, bool]:
        """One epoch (or what is left of it) and its validation: the history row, whether
        it improved on the best, and whether the epoch is complete (not cut by
        ``max_steps``)."""
        t0 = time.perf_counter()
        if self._speed is not None:
            self._speed.resume()
        stats = self.train_epoch()
        if self._speed is not None:
            self._speed.pause()  # validation and checkpoints are no training steps
        row: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.step,
                               "lr": self.optimizer.param_groups[0]["lr"], **stats}
        epoch_complete = (self.step % self.steps_per_epoch == 0
                          or self.step >= self.total_steps)
        if self.ghm_acc is not None and epoch_complete:
            self._finish_ghm_epoch()
        if self.val_set is not None:
            m = self.validate()
            row.update(val_loss=m["loss"], val_score=m["score"], val_sp=m["sp"],
                       val_se=m["se"], val_accuracy=m["accuracy"], val_select=m["select"])
            if self.opts.task == "ranking":
                row.update(val_pairwise_accuracy=m["pairwise_accuracy"],
                           val_spearman=m["spearman"])
            improved = is_improvement(m["select"], m["loss"], self.best_select,
                                      self.best_val_loss)
        else:
            improved = True
            if self.opts.task == "ranking":
                self._train_thresholds()
        row["seconds"] = time.perf_counter() - t0
        # every process takes the main process's row and decision (they agree on the
        # metrics already; this also makes the history identical everywhere)
        row, improved = self.dist.broadcast((row, improved))
        return row, improved, epoch_complete

    def _end_epoch(self, row: dict[str, Any], improved: bool, epoch_complete: bool) -> None:
        """Record the epoch: history and trackers, model selection (``best``), the
        ``last`` checkpoint, ``history.csv`` and the project record."""
        self.history.append(row)
        for tracker in self.trackers:
            tracker.log(row, step=row["epoch"])
        if epoch_complete:
            self.epoch += 1
        if improved:
            self.best_select = row.get("val_select")
            self.best_val_loss = row.get("val_loss")
            self.best_epoch = row["epoch"]
            self.bad_epochs = 0
            self.save("best.safetensors", full=False)
        else:
            self.bad_epochs += 1
        self.save("last.safetensors")
        if self.opts.keep_epochs:  # weights only, for `eval --protocol paper`
            self.save(f"epochs/epoch-{row['epoch']:03d}.safetensors", full=False)
        if self.dist.is_main:
            self._write_history()
            self.project.update_record("runs", self.run_name, epoch=self.epoch,
                                       step=self.step, best_score=self.best_select,
                                       best_epoch=self.best_epoch)

    def _progress_lines(self) -> Any:
        """The speed/ETA reporter of `fit` (None in the processes that do not log):
        periodic lines where no progress bar shows (stderr is no terminal, or --json)."""
        from rsctool.eta import TrainProgress, slow_on_cpu_hint

        if not self.dist.is_main:
            return None
        size = (getattr(self.model, "config", None) or {}).get("size")
        return TrainProgress(
            self.log, total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch,
            epochs=self.opts.epochs, lines=not (self.progress and err_console.is_terminal),
            hint=slow_on_cpu_hint(self.opts.model, size, self.dist.device_type))

    def _train_thresholds(self) -> None:
        """Without a validation split, a ranking run's class thresholds come from the
        training split's scores (recorded as such; the test split is never used)."""
        from rsctool.metrics import choose_rank_thresholds

        out = predict(self.model, self.train_set, self.opts.batch_size * 2, self.device,
                      "ranking")
        self.thresholds = choose_rank_thresholds(out["probs"][:, 0].numpy(),
                                                 self.train_set.targets.numpy(),
                                                 len(self.classes))

    def _finish_ghm_epoch(self) -> None:
        """Close the GHM histogram of the epoch: append it to ``ghm_stats.json``."""
        acc = self.ghm_acc
        self.ghm_acc = None
        if not acc:
            return
        if self.dist.distributed:
            # every process's share of the batches (a collective: all processes close the
            # same epochs); density and EMA stay the main process's own
            k = len(acc["counts"])
            s = self.dist.all_sum([acc["steps"], acc["n"], acc["g_sum"], *acc["counts"],
                                   *acc["weight_sums"]])
            acc.update(steps=int(round(s[0])), n=int(round(s[1])), g_sum=s[2],
                       counts=[int(round(v)) for v in s[3:3 + k]], weight_sums=s[3 + k:])
        if not acc["steps"]:
            return
        ghm = self.loss_fn.ghm
        n = max(1, acc["n"])
        bins = ghm.bins
        self.ghm_stats.append({
            "epoch": acc["epoch"], "step": self.step, "steps": acc["steps"], "n": acc["n"],
            "loss": self.opts.loss, "bins": bins, "alpha": ghm.alpha, "momentum": ghm.momentum,
            "edges": [i / bins for i in range(bins + 1)],
            "counts": acc["counts"],
            "fraction": [c / n for c in acc["counts"]],
            "mean_weight": [w / c if c else None
                            for w, c in zip(acc["weight_sums"], acc["counts"], strict=True)],
            "density": acc["density"], "bin_weights": acc["bin_weights"],
            "ema_density": [float(v) for v in ghm.density.tolist()],
            "g_mean": acc["g_sum"] / n,
        })
        if self.dist.is_main:
            atomic_write_json(self.dir / "ghm_stats.json", self.ghm_stats)

    def _write_history(self) -> None:
        atomic_write_json(self.dir / "history.json", self.history)
        if not self.history:
            return
        keys: list[str] = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        lines = [",".join(keys)]
        for row in self.history:
            lines.append(",".join("" if row.get(k) is None else f"{row[k]}" for k in keys))
        atomic_write_text(self.dir / "history.csv", "\n".join(lines) + "\n")


def micro_batches(batch: Sequence[int], batch_size: int, world: int, accum: int, rank: int
                  ) -> list[tuple[list[int], float, bool]]:
    """Process `rank`'s share of one global batch: ``(indices, factor, sync)`` per
    accumulation micro-step.

    The global batch (`batch_size` samples; the last one of an epoch may be short) is cut
    into ``world * accum`` chunks of ``batch_size // (world * accum)``; micro-step ``j``
    of process ``r`` takes chunk ``j * world + r``. `factor` scales that micro-batch's
    mean loss to its share of the global batch mean, times `world` because
    DistributedDataParallel averages gradients over processes: the summed gradient is
    the one-process gradient of the whole batch. `sync` marks the micro-step whose
    backward all-reduces (the last one with data). A process with no data in that step
    (a short last batch) runs chunk 0 with factor 0, so it still joins the all-reduce;
    empty earlier micro-steps are skipped.
    """
    m = len(batch)
    per = batch_size // (world * accum)
    chunks = [list(batch[q * per:(q + 1) * per]) for q in range(world * accum)]
    steps = [j for j in range(accum) if chunks[j * world]]
    out: list[tuple[list[int], float, bool]] = []
    for j in steps:
        mine = chunks[j * world + rank]
        sync = j == steps[-1]
        if mine:
            out.append((mine, len(mine) * world / m, sync))
        elif sync:
            out.append((chunks[j * world], 0.0, True))
    return out


def _has_unused_parameters(model: Any, dataset: Any, device: str) -> bool:
    """Whether a training forward of `model` leaves trainable parameters out of the graph
    (DistributedDataParallel must then look for them every step). One forward and
    gradient on two training items; the model's state and the RNG are left as found."""
    import copy

    import torch

    from rsctool.data.dataset import collate

    params = [p for p in model.parameters() if p.requires_grad]
    if not params or len(dataset) == 0:
        return False
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(torch.device(device)) if device.startswith(
        "cuda") else None
    was_training = model.training
    try:
        batch = collate([dataset[i] for i in range(min(2, len(dataset)))])
        meta = ({k: v.to(device) for k, v in batch["meta"].items()}
                if "meta" in batch else None)
        model.train()
        out = model(batch["x"].to(device), meta)
        total = sum(v.float().sum() for v in out.values()
                    if torch.is_tensor(v) and v.requires_grad)
        grads = torch.autograd.grad(total, params, allow_unused=True)
        return any(g is None for g in grads)
    finally:
        model.load_state_dict(state)
        model.train(was_training)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, torch.device(device))


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The torch seed of process `rank` > 0 of a run (the main process uses `seed`
    itself), so augmentation differs between processes but is reproducible."""
    return (int(seed) * 1_000_003 + int(rank) * 7_919 + int(step)) % (2 ** 63)


def _rng_state(dist: Any) -> dict[str, Any]:
    """This process's torch RNG state (and its CUDA device's), for the checkpoint."""
    import torch

    st = {"torch": torch.get_rng_state()}
    if dist.device_type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(torch.device(dist.device))
    return st


def _accumulate_ghm(acc: dict[str, Any] | None, stats: dict[str, Any]) -> None:
    """Add one step's GHM statistics (`_GHMWeights.last_stats`) to the epoch's."""
    if acc is None:
        return
    acc["steps"] += 1
    acc["n"] += int(stats["n"])
    counts = stats["counts"]
    weights = stats["bin_weights"]
    for b, c in enumerate(counts):
        acc["counts"][b] += int(c)
        acc["weight_sums"][b] += float(c) * float(weights[b])
    if stats.get("g_mean") is not None:
        acc["g_sum"] += float(stats["g_mean"]) * int(stats["n"])
    acc["density"] = [float(v) for v in stats["density"]]
    acc["bin_weights"] = [float(v) for v in weights]


def ranking_validation_loss(scores: Any, y: Any, margin: float = 1.0) -> float:
    """Mean margin hinge ``max(0, margin - (s_hi - s_lo))`` over all pairs of different
    classes (a ranking run's validation loss, the tie-break of model selection)."""
    import numpy as np

    s = np.asarray(scores, dtype=np.float64)
    k = np.asarray(y, dtype=np.float64)
    total, count = 0.0, 0
    for a in range(0, s.size, 2048):
        hi = k[a:a + 2048, None] > k[None, :]
        gap = s[a:a + 2048, None] - s[None, :]
        total += float(np.maximum(0.0, margin - gap)[hi].sum())
        count += int(hi.sum())
    return total / count if count else 0.0


def _epoch_line(row: dict[str, Any]) -> str:
    parts = [f"epoch {row['epoch']}", f"loss {row['train_loss']:.4f}"]
    for k in ("val_score", "val_sp", "val_se", "val_accuracy", "val_pairwise_accuracy",
              "val_spearman"):
        if row.get(k) is not None:
            parts.append(f"{k.replace('val_', 'val ')} {row[k]:.3f}")
    parts.append(f"{row['samples_per_s']:.1f} samples/s")
    return ", ".join(parts)


# --------------------------------------------------------------------------- run

def _seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Set both ways: a non-deterministic run after a deterministic one in the same process
    # (tests, `--seeds`) gets torch's defaults back.
    if deterministic:
        # cuBLAS needs this before its first call to pick deterministic reductions.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    # warn_only: an op without a deterministic CUDA kernel warns instead of stopping the
    # run (docs/reproducing.md lists the limits on CUDA).
    torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)
    torch.backends.cudnn.deterministic = bool(deterministic)


def _option_diffs(recorded: dict[str, Any], explicit: dict[str, Any],
                  ignore: tuple[str, ...] = ("run",)) -> list[str]:
    """``["lr 0.001 -> 0.5", ...]``: the options in `explicit` that differ from the
    `recorded` ones after both are resolved (empty when they cannot be compared)."""
    base = _known_options(recorded)
    given = {k: v for k, v in _known_options(explicit).items() if k not in ignore}
    try:
        before = asdict(TrainOptions(**base).resolve())
        after = asdict(TrainOptions(**merge_options(base, given)).resolve())
    except (TypeError, ConfigError):
        return []  # invalid values are reported by the normal path
    return [f"{k} {before[k]!r} -> {after[k]!r}" for k in sorted(given)
            if before.get(k) != after.get(k)]


def recorded_options(run_dir: Path) -> dict[str, Any] | None:
    """The resolved options a run was started with (its ``config.json``, else its last
    or best checkpoint), or None when it has neither yet."""
    try:
        return dict(json.loads((run_dir / "config.json").read_text())["options"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from rsctool.checkpoint import load_checkpoint

    for ck in ("last.safetensors", "best.safetensors"):
        with contextlib.suppress(Exception):
            return dict(load_checkpoint(run_dir / ck).state["config"]["options"])
    return None


def _check_same_options(name: str, run_dir: Path, explicit: dict[str, Any],
                        ignore: tuple[str, ...] = ("run",)) -> None:
    """ConfigError when options given explicitly for an existing run differ from the
    ones it was started with: resuming or skipping would silently ignore them."""
    path = run_dir / "config.json"
    try:
        recorded = json.loads(path.read_text())["options"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # a run killed before its config was written: nothing to compare with
    diffs = _option_diffs(recorded, explicit, ignore=ignore)
    if diffs:
        longer = any(d.startswith(("epochs ", "max_steps ")) for d in diffs)
        hint = (f"; to train it longer, add --extend (train --run {name} --epochs N "
                "--extend)" if longer else "")
        raise ConfigError(f"run {name!r} exists with other options ({'; '.join(diffs)}): "
                          "use a new --run name (or --new), or --force to retrain it from "
                          f"scratch{hint}")


#: `TrainOptions()` as a dict: what `run_hash` leaves out.
_DEFAULT_OPTIONS: dict[str, Any] = asdict(TrainOptions())

#: Options that may change when a run is extended (`run(..., extend=True)`).
EXTENDABLE = ("epochs", "max_steps")


def run_hash(opts: TrainOptions, dataset: str | None = None) -> str:
    """The identity of a run: the hash of its resolved options without the run name,
    with the dataset's resolved name (`dataset`, else ``opts.dataset``). Recorded as the
    run's ``params_hash``; a run started without ``--run`` is found again by it.

    Options at their dataclass default are left out, so an option added in a later
    rsctool (at a default that keeps the old behaviour) does not change the identity of
    the runs made before it: the same command still finds them."""
    d = asdict(opts)
    d.pop("run", None)
    if dataset is not None:
        d["dataset"] = dataset
    defaults = _DEFAULT_OPTIONS
    return params_hash({k: v for k, v in d.items() if k not in defaults or v != defaults[k]})


def same_run(project: Project, opts: TrainOptions, like: str | None = None
             ) -> Callable[[dict[str, Any]], bool]:
    """Whether a run record is the run an unnamed ``train`` with (resolved) `opts` means:
    not part of a seed group, the same `run_hash` on the same dataset (same name and,
    where recorded, the same manifest hash) and the same ``like`` origin."""
    dataset, record = pick_dataset(project, opts.dataset)
    wanted = run_hash(opts, dataset)
    sha = record.get("sha256")

    def same(rec: dict[str, Any]) -> bool:
        return (rec.get("group") is None and rec.get("params_hash") == wanted
                and rec.get("dataset", dataset) == dataset
                and rec.get("dataset_sha256", sha) == sha and rec.get("like") == like)

    return same


def find_same_run(project: Project, opts: TrainOptions, like: str | None = None) -> str | None:
    """The last recorded run that `same_run` matches; None when there is none (a new run)."""
    same = same_run(project, opts, like)
    for name, rec in reversed(list(project.section("runs").items())):
        if same(rec):
            return name
    return None


def _compact_env(env: dict[str, Any], resumed_in: list[dict[str, Any]]) -> dict[str, Any]:
    """The environment as the project file records it (`rsctool.environment.compact`)."""
    from rsctool.environment import compact

    out = compact(env)
    if resumed_in:
        out["resumed_in"] = [compact(e) for e in resumed_in]
    return out


def _record_stats(project: Project, dataset: str, norm: dict[str, Any]) -> None:
    """Add normalisation statistics computed by a run to its dataset's record (unless the
    dataset was re-analysed meanwhile), so the next run with these features reuses them."""
    entry = {k: v for k, v in norm.items() if k not in ("norm", "new")}

    def apply(doc: dict) -> None:
        rec = doc.get("datasets", {}).get(dataset)
        if (rec is None or rec.get("sha256") != entry.get("manifest_sha256")
                or rec.get("split_hash") != entry.get("split_hash")):
            return
        rec.setdefault("fbank_stats", {})[entry["key"]] = entry

    project.update(apply)


def run(project: Project, opts: TrainOptions, *, device: str = "auto", progress: bool = False,
        force: bool = False, log: Callable[[str], None] | None = None,
        trackers: Sequence[str] = (), explicit: dict[str, Any] | None = None,
        group: str | None = None, like: str | None = None,
        reserve: Callable[[], tuple[str, str]] | None = None, new: bool = False,
        extend: bool = False) -> TrainResult:
    """Train (or resume, or skip, or extend) a run; records it in the project file.

    A run without a name (``opts.run`` None) is the run recorded with the same options
    (`find_same_run`: same `run_hash` on the same dataset), so the same command again
    resumes it when unfinished and is a no-op (``skipped``) when done; only other options
    (or `new`) start a new run, named after the model plus a counter.

    `extend`: continue the existing run ``opts.run`` (finished or not) from its last
    full checkpoint up to the larger ``opts.epochs`` (or ``max_steps``): the history and
    best checkpoint are kept, the cosine schedule is recomputed for the new total, and
    the change is recorded as ``extended = [{from, to, epoch, step}]`` in the project
    record and ``config.json``. Other options must match the run's.

    `group`: the seed sweep (`run_group`) the run belongs to; an existing run of that
    name must belong to it. `reserve`: how a new run claims its name (and its group's,
    atomically; returns both) once its options are validated; by default the run name
    (or model name) plus a counter. `like`: the run whose options these are
    (``train --like``), recorded for provenance.

    `explicit`: the options the user actually gave (command line, --set, --config).
    For an existing run they must agree with the ones it was started with (else
    ConfigError), since a finished run is skipped and an unfinished one resumes with
    its own options.

    `trackers`: experiment trackers to mirror the history into (``tensorboard``,
    ``mlflow``; see `rsctool.tracking`). They are presentation, not part of the run's
    options or params hash.

    Under a launcher (``accelerate launch``, ``torchrun``, ``train --processes N``) every
    process calls this: all read the project, build the same trainer and train on their
    share of each global batch (`rsctool.distributed`); only the main process writes the
    project file, checkpoints, history and logs, and the others follow its decisions
    (the run name; `sync_project` after its writes).

    `opts` are resolved here (`TrainOptions.resolve`); the command line resolves them
    once (`resolve_train_options`) and calls `run_resolved`.
    """
    return run_resolved(project, opts.resolve(), device=device, progress=progress,
                        force=force, log=log, trackers=trackers, explicit=explicit,
                        group=group, like=like, reserve=reserve, new=new, extend=extend)


@dataclass
class _Start:
    """How `run_resolved` starts a run: its options (an existing run's own when it
    resumes), and for an existing run its name, folder, group, ``like`` origin,
    extensions and last checkpoint; `skipped` when it is done already."""

    opts: TrainOptions
    group: str | None
    like: str | None
    name: str | None = None
    run_dir: Path = field(default_factory=Path)
    extended: list[dict[str, Any]] = field(default_factory=list)
    extension: dict[str, Any] | None = None
    resume_from: Path | None = None
    #: the precision the resumed run trained in (`choose_precision`'s `resumed`)
    precision: dict[str, Any] | None = None
    skipped: TrainResult | None = None


@releasing  # the run's lock (one writer per run), however `run` ends
def run_resolved(project: Project, opts: TrainOptions, *, device: str = "auto",
                 progress: bool = False, force: bool = False,
                 log: Callable[[str], None] | None = None, trackers: Sequence[str] = (),
                 explicit: dict[str, Any] | None = None, group: str | None = None,
                 like: str | None = None,
                 reserve: Callable[[], tuple[str, str]] | None = None, new: bool = False,
                 extend: bool = False) -> TrainResult:
    """`run` with options resolved already (`TrainOptions.resolve`)."""
    from rsctool.distributed import setup
    from rsctool.tracking import make_trackers

    log = log or (lambda msg: None)
    tracker_objs = make_trackers(trackers)  # fail before any work if one is missing
    dev = resolve_device(device)
    dist = setup(dev)
    if not dist.is_main:
        log, progress, tracker_objs = (lambda msg: None), False, []
    dist.barrier()  # every process has read the project before the main one writes it
    if opts.run is not None:  # fail fast, before the model is built
        hold_record(project, "runs", opts.run, dist)
    start = _plan_start(project, opts, log, explicit=explicit, group=group, like=like,
                        reserve=reserve, new=new, extend=extend, force=force)
    if start.skipped is not None:
        return start.skipped
    opts = start.opts
    check_batch_split(opts.batch_size, dist.world, opts.grad_accum)
    _seed_everything(opts.seed, opts.deterministic)
    # Build everything (dataset, model, loss) before touching the project file, so a bad
    # option fails with the project byte-identical.
    parts = build_parts(project, opts, dev, log, dist, start.precision)
    if dist.rank > 0:
        # the model was initialised alike everywhere; augmentation streams differ
        import torch

        torch.manual_seed(rank_seed(opts.seed, dist.rank))
    opts.dataset = parts.data.name  # resolved: "the last analysed" is no config
    name, group, run_dir = start.name, start.group, start.run_dir
    if name is None:
        name, group = _claim_run(project, opts, dist, reserve=reserve, like=start.like,
                                 new=new, group=group)
        opts.run = name
        run_dir = project.record_dir("runs", name, None)
    hold_record(project, "runs", name, dist)  # one writer per run (held already if named)
    trainer = Trainer(project, opts, parts, run_name=name, run_dir=run_dir, group=group,
                      trackers=tracker_objs, progress=progress, log=log)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if start.resume_from is not None:
        _resume(trainer, start, log)
    if dist.distributed:
        log(f"{dist.world} processes ({dist.backend}), global batch {opts.batch_size} = "
            f"{dist.world} x {opts.grad_accum} accumulation step(s) x "
            f"{opts.batch_size // (dist.world * opts.grad_accum)}")
    config = trainer.run_config()
    if start.extended:
        config["extended"] = start.extended
    if not dist.is_main:
        result = trainer.fit()
        sync_project(project, dist)
        return result
    _record_start(project, trainer, config, device=dev, like=start.like,
                  resumed=start.resume_from is not None, extended=start.extended)
    result = _fit_recorded(project, trainer, config)
    sync_project(project, dist)
    return result


def _plan_start(project: Project, opts: TrainOptions, log: Callable[[str], None], *,
                explicit: dict[str, Any] | None, group: str | None, like: str | None,
                reserve: Callable[[], tuple[str, str]] | None, new: bool, extend: bool,
                force: bool) -> _Start:
    """Which run `opts` mean (a new one, or a recorded one to skip, resume or extend)
    and with which options; ConfigError when the request cannot be met."""
    runs = project.section("runs")
    _check_new_extend(opts, runs, new=new, extend=extend, force=force)
    if opts.run is None and not new and group is None and reserve is None:
        found = find_same_run(project, opts, like)
        if found is not None:
            opts = dataclasses.replace(opts, run=found)
            if runs[found].get("status") != "done":  # a finished one says "already done"
                log(f"same options as run {found!r}: continuing it (--new starts another "
                    "run)")
    start = _Start(opts, group=group, like=like)
    if opts.run is None or opts.run not in runs:
        return start
    rec = runs[opts.run]
    name = start.name = opts.run
    run_dir = start.run_dir = project.record_dir("runs", name, rec)
    last = run_dir / "last.safetensors"
    if group is not None and rec.get("group") != group:
        raise ConfigError(f"run {name!r} exists and is not part of seed group {group!r}; "
                          "use another --run name for the group")
    start.group = group or rec.get("group")
    start.like = like or rec.get("like")
    start.extended = [dict(e) for e in rec.get("extended") or []]
    if explicit and not force:
        _check_same_options(name, run_dir, explicit,
                            ignore=("run", *EXTENDABLE) if extend else ("run",))
    if rec.get("status") == "done" and not force and not extend:
        start.skipped = TrainResult(name, run_dir, project.abs(rec["best"]) if rec.get("best")
                                    else None, rec.get("best_score"), int(rec.get("epoch", 0)),
                                    int(rec.get("step", 0)), skipped=True)
    elif (rec.get("status") != "done" or extend) and last.exists() and not force:
        # Resume with the options the run was started with.
        from rsctool.checkpoint import load_checkpoint

        config = load_checkpoint(last).state["config"]
        recorded = TrainOptions(**config["options"])
        start.precision = config.get("precision_choice") or {
            "precision": config.get("precision"),  # before precision_choice was recorded
            "device": (config.get("environment") or {}).get("device")}
        if extend:
            recorded, start.extension = _extended_options(name, recorded, opts, explicit)
        start.opts, start.resume_from = recorded, last
    elif extend:
        raise ConfigError(f"--extend: run {name!r} has no last checkpoint ({last}) to "
                          "continue from; train it again without --extend")
    return start


def _claim_run(project: Project, opts: TrainOptions, dist: Any, *,
               reserve: Callable[[], tuple[str, str]] | None, like: str | None, new: bool,
               group: str | None) -> tuple[str, str | None]:
    """The name (and group) of a new run, claimed in the project file by the main
    process and broadcast to the others."""
    name: str | None = None
    if dist.is_main:
        if reserve is not None:
            name, group = reserve()
        else:
            # the identity goes in with the name, so a run killed before its first
            # record update is still found again by the same command
            # ... and an identical unnamed command that claimed it meanwhile (its
            # lookup ran while this one built its model) is refused, not repeated
            unnamed = opts.run is None and not new
            name = project.reserve_name("runs", opts.run or opts.model,
                                        {"model": opts.model, "status": "running",
                                         "dataset": opts.dataset,
                                         "params_hash": run_hash(opts),
                                         **({"like": like} if like else {})},
                                        same=same_run(project, opts, like) if unnamed
                                        else None)
    return dist.broadcast((name, group))


def _resume(trainer: Trainer, start: _Start, log: Callable[[str], None]) -> None:
    """Restore `trainer` from the run's last checkpoint (and extend it)."""
    name, opts, extension = trainer.run_name, trainer.opts, start.extension
    assert start.resume_from is not None
    trainer.restore(start.resume_from)
    if extension is not None:
        if trainer.step >= trainer.total_steps:
            raise ConfigError(f"--extend: run {name!r} already made {trainer.step} "
                              f"steps, and {opts.epochs} epochs"
                              + (f" with --max-steps {opts.max_steps}"
                                 if opts.max_steps is not None else "")
                              + f" are {trainer.total_steps}: ask for more")
        # patience counts from the extension: "train 20 more epochs" trains them
        # unless validation stops improving in the new ones
        trainer.bad_epochs = 0
        start.extended.append({**extension, "epoch": trainer.epoch, "step": trainer.step})
        log(f"extending run {name!r} from {extension['from']} to {extension['to']} "
            f"epochs (history kept; the cosine schedule is recomputed for the new total)")
    log(f"resuming run {name!r} at epoch {trainer.epoch + 1}, step {trainer.step}")


def _record_start(project: Project, trainer: Trainer, config: dict[str, Any], *, device: str,
                  like: str | None, resumed: bool, extended: list[dict[str, Any]]) -> None:
    """Main process: write the run's ``config.json`` and synthetic ids, and record it as
    running in the project file (with provenance and new normalisation statistics)."""
    name, run_dir, opts, group = trainer.run_name, trainer.dir, trainer.opts, trainer.group
    # seed group and --like source, for provenance (docs/reproducing.md); a resume
    # without --like keeps what the first start recorded.
    old_config = _read_config(run_dir) if resumed else {}
    for key, value in (("group", group), ("like", like)):
        value = value if value is not None else old_config.get(key)
        if value is not None:
            config[key] = value
    atomic_write_json(run_dir / "config.json", config)
    ids_file = trainer.synthetic.write(run_dir)  # exactly which synthetic cycles it uses
    prov = config
    if like and not resumed:
        from rsctool.console import warn

        for line in like_differences(_like_config(project, like), config):
            warn(f"--like {like}: {line} (this re-run cannot reproduce it exactly)")
    project.update_record(
        "runs", name, model=opts.model, dataset=trainer.dataset_name, status="running",
        dir=project.rel(run_dir), last=project.rel(run_dir / "last.safetensors"),
        best=project.rel(run_dir / "best.safetensors"), task=opts.task,
        classes=trainer.classes, device=device, seed=opts.seed,
        params_hash=run_hash(opts),
        dataset_sha256=prov["data"]["manifest_sha256"],
        split_hash=prov["split"]["hash"], split=prov["split"]["spec"],
        official_split=prov["split"]["official"], norm=trainer.normalization["norm"],
        norm_mean=trainer.normalization["mean"], norm_std=trainer.normalization["std"],
        deterministic=opts.deterministic, processes=trainer.dist.world,
        precision=trainer.precision,
        environment=_compact_env(trainer.environment, trainer.resumed_in),
        **{k: v for k, v in (("group", group), ("like", like)) if v is not None},
        **({"extended": extended} if extended else {}))
    if trainer.normalization.get("new"):
        _record_stats(project, trainer.dataset_name, trainer.normalization)
    if ids_file is not None:
        project.update_record("runs", name, synthetic=trainer.synthetic.names,
                              synthetic_count=len(trainer.synthetic.cycles),
                              synthetic_counts=trainer.synthetic.counts,
                              synthetic_sha256=trainer.synthetic.sha256,
                              synthetic_ids=project.rel(ids_file), adversarial=opts.adversarial)


def _fit_recorded(project: Project, trainer: Trainer, config: dict[str, Any]) -> TrainResult:
    """Main process: `trainer.fit()` with the trackers started and finished, the run
    recorded as interrupted (with a last checkpoint) or done, and ``summary.json``."""
    name, run_dir, dist = trainer.run_name, trainer.dir, trainer.dist
    for tracker in trainer.trackers:
        tracker.start(name, config["options"], run_dir)
    status = "failed"
    try:
        result = trainer.fit()
        status = "done"
    except KeyboardInterrupt as e:
        status = "interrupted"
        with contextlib.suppress(Exception):
            # no collective here: the other processes are being interrupted too. With
            # several, SIGTERM may be the launcher stopping the survivors of a failed
            # process mid-step: then the last full checkpoint (every process's RNG) stays
            if not (dist.distributed and isinstance(e, Interrupted)):
                trainer.save("last.safetensors", gather=False)
            project.update_record("runs", name, status="interrupted", epoch=trainer.epoch,
                                  step=trainer.step)
        raise
    finally:
        for tracker in trainer.trackers:
            with contextlib.suppress(Exception):
                tracker.finish(status)
    project.update_record("runs", name, status="done", epoch=result.epochs_done,
                          step=result.steps, best_score=result.best_score)
    atomic_write_json(run_dir / "summary.json", {
        "run": name, "best_score": result.best_score, "best_epoch": trainer.best_epoch,
        "epochs": result.epochs_done, "steps": result.steps, "history": result.history})
    return result


def _check_new_extend(opts: TrainOptions, runs: dict[str, Any], *, new: bool, extend: bool,
                      force: bool) -> None:
    """ConfigError for `new` / `extend` requests that cannot mean anything."""
    if new and extend:
        raise ConfigError("--new starts a new run and --extend continues one: give one")
    if extend and force:
        raise ConfigError("--extend continues a run and --force retrains it from scratch: "
                          "give one")
    if new and opts.run is not None and opts.run in runs:
        raise ConfigError(f"--new: run {opts.run!r} exists; give a new --run name or drop "
                          "--run for a MODEL-N name")
    if extend and (opts.run is None or opts.run not in runs):
        known = ", ".join(runs) or "none"
        what = "give the run to extend as --run NAME" if opts.run is None else \
            f"there is no run {opts.run!r}"
        raise ConfigError(f"--extend continues an existing run: {what} (runs: {known})")


def _extended_options(name: str, recorded: TrainOptions, wanted: TrainOptions,
                      explicit: dict[str, Any] | None
                      ) -> tuple[TrainOptions, dict[str, Any]]:
    """The options of run `name` extended to `wanted`'s length (``epochs``, and
    ``max_steps`` where given explicitly, or always from the Python API), and the
    ``{from, to}`` epochs of the extension. ConfigError unless it asks for more."""
    max_steps = (wanted.max_steps if explicit is None or "max_steps" in explicit
                 else recorded.max_steps)
    more_epochs = wanted.epochs > recorded.epochs
    more_steps = (recorded.max_steps is not None
                  and (max_steps is None or max_steps > recorded.max_steps))
    if wanted.epochs < recorded.epochs or not (more_epochs or more_steps):
        raise ConfigError(f"--extend: run {name!r} was set to {recorded.epochs} epochs; "
                          f"give a larger --epochs (the new total), got {wanted.epochs}")
    return (dataclasses.replace(recorded, epochs=wanted.epochs, max_steps=max_steps),
            {"from": recorded.epochs, "to": wanted.epochs})


def check_batch_split(batch_size: int, processes: int, grad_accum: int) -> None:
    """ConfigError unless the global batch splits evenly into `processes` x `grad_accum`
    micro-batches."""
    if batch_size % (processes * grad_accum):
        raise ConfigError(
            f"--batch-size {batch_size} is the global batch: it must be divisible by "
            f"processes x --grad-accum = {processes} x {grad_accum} = "
            f"{processes * grad_accum}")


# --------------------------------------------------------------------------- seed sweeps

@dataclass
class GroupResult:
    """A seed sweep (`run_group`): the group name, its seeds and one result per seed."""

    group: str
    seeds: list[int]
    results: list[TrainResult]


def parse_seeds(values: Sequence[int | str]) -> list[int]:
    """``--seeds``: one number N means the N seeds 0..N-1; several numbers are the seeds
    themselves (spaces or commas separate them). ConfigError for anything else."""
    items = [p for v in values for p in str(v).replace(",", " ").split()]
    nums: list[int] = []
    for p in items:
        try:
            nums.append(int(p))
        except ValueError:
            raise ConfigError(f"--seeds expects integers, got {p!r}") from None
    if not nums:
        raise ConfigError("--seeds: no seeds given")
    if len(nums) == 1:
        if nums[0] < 1:
            raise ConfigError(f"--seeds N runs seeds 0..N-1, so N must be >= 1, got {nums[0]} "
                              "(list two or more seeds to choose them: --seeds 3 7)")
        return list(range(nums[0]))
    return check_seeds(nums)


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """`seeds` as a list of distinct non-negative ints (ConfigError otherwise)."""
    try:
        nums = [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise ConfigError(f"seeds must be integers, got {list(seeds)!r}") from None
    if not nums:
        raise ConfigError("--seeds: no seeds given")
    if any(n < 0 for n in nums):
        raise ConfigError(f"--seeds must be >= 0, got {min(nums)}")
    if len(set(nums)) != len(nums):
        raise ConfigError(f"--seeds lists a seed twice: {nums}")
    return nums


def member_name(group: str, seed: int) -> str:
    """The run name of seed `seed` in group `group`: ``GROUP-sSEED``."""
    return f"{group}-s{seed}"


def _group_options(project: Project, grec: dict[str, Any]) -> dict[str, Any] | None:
    """The recorded options of a group's first member that has them."""
    runs = project.section("runs")
    for m in grec.get("runs") or []:
        rec = runs.get(m)
        if rec is None:
            continue
        run_dir = project.record_dir("runs", m, rec)
        found = recorded_options(run_dir)
        if found is not None:
            return found
    return None


def _group_hash(opts: TrainOptions, dataset: str | None = None) -> str:
    """Hash of a group's options: those of its runs without the run name and seed, with
    the dataset's resolved name (`dataset`, else ``opts.dataset``); options at their
    default left out, as in `run_hash`."""
    return run_hash(dataclasses.replace(opts, seed=_DEFAULT_OPTIONS["seed"]), dataset)


def find_same_group(project: Project, opts: TrainOptions, dataset: str,
                    like: str | None = None) -> str | None:
    """The seed group an unnamed ``train --seeds`` with (resolved) `opts` means: the last
    group recorded with the same `_group_hash` on `dataset` and the same ``like``."""
    wanted = _group_hash(opts, dataset)
    for name, grec in reversed(list(project.section("groups").items())):
        if (grec.get("params_hash") == wanted and grec.get("dataset") == dataset
                and grec.get("like") == like):
            return name
    return None


def run_group(project: Project, opts: TrainOptions, seeds: Sequence[int], *,
              device: str = "auto", progress: bool = False, force: bool = False,
              log: Callable[[str], None] | None = None, trackers: Sequence[str] = (),
              explicit: dict[str, Any] | None = None, like: str | None = None,
              new: bool = False) -> GroupResult:
    """A seed sweep: one run per seed in `seeds` (the seeds themselves; `parse_seeds`
    reads the command line's ``--seeds N``) with otherwise identical options.

    The group is named ``opts.run`` (else the model name plus a counter, claimed when its
    first run starts) and its runs ``GROUP-s0``, ``GROUP-s1``, ...; the project file
    records ``[groups.GROUP]`` (``runs``, ``seeds``, ``model``, ``dataset``,
    ``params_hash`` of the shared options, ``status``, and when all are done the
    validation ``best_score_mean``/``best_score_std``) and ``group = "GROUP"`` on each
    run. The runs go one after another; running the same command again resumes the
    unfinished ones and skips the finished ones, and more seeds extend the group. An
    existing group keeps its options: explicit options that differ are refused (as for
    one run), unless `force`. `rsctool eval --group GROUP` reports mean and standard
    deviation over the seeds. Without a name, the group recorded with the same options
    (`find_same_group`) is that group, unless `new`.

    `opts` are resolved here; the command line calls `run_group_resolved`.
    """
    return run_group_resolved(project, opts.resolve(), seeds, device=device,
                              progress=progress, force=force, log=log, trackers=trackers,
                              explicit=explicit, like=like, new=new)


def run_group_resolved(project: Project, opts: TrainOptions, seeds: Sequence[int], *,
                       device: str = "auto", progress: bool = False, force: bool = False,
                       log: Callable[[str], None] | None = None, trackers: Sequence[str] = (),
                       explicit: dict[str, Any] | None = None, like: str | None = None,
                       new: bool = False) -> GroupResult:
    """`run_group` with options resolved already (`TrainOptions.resolve`)."""
    from rsctool.distributed import setup

    log = log or (lambda msg: None)
    seed_list = check_seeds(seeds)
    explicit = dict(explicit or {})
    group, opts = _plan_group(project, opts, explicit, like=like, new=new, force=force,
                              log=log)
    claims = _GroupClaims(project, opts, seed_list, like, group)
    results: list[TrainResult] = []
    for i, seed in enumerate(seed_list):
        g = claims.group
        m_opts = dataclasses.replace(opts, seed=seed, run=member_name(g, seed) if g else None,
                                     model_cfg=dict(opts.model_cfg),
                                     loss_cfg=dict(opts.loss_cfg))
        log(f"seed {seed} ({i + 1} of {len(seed_list)})"
            + (f": run {member_name(g, seed)!r}" if g else ""))
        res = run_resolved(project, m_opts, device=device, progress=progress, force=force,
                           log=log, trackers=trackers,
                           explicit={**explicit, "seed": seed} if explicit else None,
                           group=g, like=like, reserve=claims.claimer(seed))
        if claims.group is None:
            claims.group = (project.get("runs", res.run) or {}).get("group") or g
        results.append(res)
    group = claims.group
    assert group is not None
    dist = setup(resolve_device(device))
    if dist.is_main:
        _finish_group(project, group)
    sync_project(project, dist)
    return GroupResult(group, seed_list, results)


def _plan_group(project: Project, opts: TrainOptions, explicit: dict[str, Any], *,
                like: str | None, new: bool, force: bool, log: Callable[[str], None]
                ) -> tuple[str | None, TrainOptions]:
    """The seed group `opts` mean (None: a new one, named when its first run starts) and
    its options: an existing group's recorded ones under the `explicit` ones, which must
    not differ (ConfigError), unless `force`."""
    group = opts.run
    if new and group is not None and project.get("groups", group) is not None:
        raise ConfigError(f"--new: seed group {group!r} exists; give a new --run name or "
                          "drop --run for a MODEL-N name")
    if group is None and not new:
        group = find_same_group(project, opts, pick_dataset(project, opts.dataset)[0], like)
        if group is not None:
            log(f"same options as seed group {group!r}: continuing it (--new starts "
                "another group)")
    if group is None:
        return None, opts
    project.unique_name("groups", group)  # ProjectError for a name that cannot be one
    grec = project.get("groups", group)
    recorded = _group_options(project, grec) if grec is not None and not force else None
    if recorded is None:
        return group, opts
    diffs = _option_diffs(recorded, explicit, ignore=("run", "seed"))
    if diffs:
        raise ConfigError(f"seed group {group!r} exists with other options "
                          f"({'; '.join(diffs)}): use a new --run name, or --force to retrain "
                          "its runs from scratch")
    return group, options_from(merge_options(_known_options(recorded), explicit,
                                             {"run": group}))


class _GroupClaims:
    """How the runs of a seed sweep claim their names: the group's (the model name plus a
    counter for a new one) and the member's, in one project-file update."""

    def __init__(self, project: Project, opts: TrainOptions, seeds: list[int], like: str | None,
                 group: str | None):
        self.project, self.opts, self.seeds, self.like = project, opts, seeds, like
        self.group = group
        self.dataset = pick_dataset(project, opts.dataset)[0]
        self.params_hash = _group_hash(opts, self.dataset)

    def claimer(self, seed: int) -> Callable[[], tuple[str, str]]:
        def claim() -> tuple[str, str]:
            rname, g = self.project.update(lambda doc: self._apply(doc, seed))
            self.group = g
            return rname, g
        return claim

    def _apply(self, doc: dict, seed: int) -> tuple[str, str]:
        opts = self.opts
        groups = doc.setdefault("groups", {})
        runs = doc.setdefault("runs", {})
        g = self.group
        if g is None:  # a new group: the model name plus a counter
            g, n = opts.model, 1
            while g in groups or any(member_name(g, s) in runs for s in self.seeds):
                g, n = f"{opts.model}-{n}", n + 1
        rname = member_name(g, seed)
        if rname in runs and runs[rname].get("group") != g:
            raise ConfigError(f"run {rname!r} exists and is not part of seed group "
                              f"{g!r}; use another --run name for the group")
        grec = groups.setdefault(g, {})
        done = set(grec.get("seeds") or [])
        all_seeds = sorted(done | {seed})
        grec.update(model=opts.model, dataset=self.dataset, status="running",
                    params_hash=self.params_hash, seeds=all_seeds,
                    runs=[member_name(g, s) for s in all_seeds])
        if self.like is not None:
            grec["like"] = self.like
        runs[rname] = {"model": opts.model, "status": "running", "group": g, "seed": seed}
        return rname, g


def _finish_group(project: Project, group: str) -> None:
    """Mark the group done when all its runs are, with the validation score statistics."""
    import statistics

    grec = project.get("groups", group) or {}
    runs = project.section("runs")
    members = [runs.get(m, {}) for m in grec.get("runs") or []]
    if not members or any(m.get("status") != "done" for m in members):
        return
    scores = [m["best_score"] for m in members if m.get("best_score") is not None]
    project.update_record(
        "groups", group, status="done",
        best_score_mean=statistics.fmean(scores) if scores else None,
        best_score_std=statistics.stdev(scores) if len(scores) > 1 else None)


def options_like(project: Project, name: str) -> tuple[dict[str, Any], list[int] | None]:
    """``train --like NAME``: the options run `NAME` was started with (all of them, as
    recorded in its ``config.json``), and None; for a seed group `NAME`, the options of
    its runs and its seeds.

    Raises:
        ConfigError: no run or group of that name, or one without recorded options.
    """
    runs = project.section("runs")
    if name in runs:
        rec = runs[name]
        run_dir = project.record_dir("runs", name, rec)
        found = recorded_options(run_dir)
        if found is None:
            raise ConfigError(f"--like {name!r}: the run has no recorded options yet (no "
                              f"config.json or checkpoint in {run_dir})")
        if found.get("dataset") is None and rec.get("dataset"):
            found["dataset"] = rec["dataset"]  # the dataset it ran on, not "the last one"
        return found, None
    grec = project.get("groups", name)
    if grec is not None:
        found = _group_options(project, grec)
        if found is None:
            raise ConfigError(f"--like {name!r}: none of the group's runs has recorded options")
        if found.get("dataset") is None and grec.get("dataset"):
            found["dataset"] = grec["dataset"]
        return found, [int(s) for s in grec.get("seeds") or []] or None
    known = ", ".join([*runs, *project.section("groups")]) or "none"
    raise ConfigError(f"--like {name!r} is not a run or seed group in the project "
                      f"(known: {known})")


def _read_config(run_dir: Path) -> dict[str, Any]:
    """A run folder's ``config.json`` ({} when missing or unreadable)."""
    try:
        return json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _like_config(project: Project, name: str) -> dict[str, Any] | None:
    """The ``config.json`` of run `name` (of the first member of group `name`)."""
    rec = project.get("runs", name)
    if rec is None:
        grec = project.get("groups", name) or {}
        members = grec.get("runs") or []
        rec = project.get("runs", members[0]) if members else None
        name = members[0] if members else name
    if rec is None:
        return None
    run_dir = project.record_dir("runs", name, rec)
    try:
        return json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def like_differences(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What differs between the inputs of a run (`old`, its config) and a re-run of it
    (`new`): the manifest, the split, the synthetic cycles, the normalisation and the
    environment (package versions, device, git commit)."""
    if not old:
        return []
    from rsctool.environment import differences

    out = []
    checks = (("dataset manifest", ("data", "manifest_sha256")), ("split", ("split", "hash")),
              ("synthetic cycles", ("synthetic", "sha256")),
              ("normalisation mean", ("normalization", "mean")),
              ("normalisation std", ("normalization", "std")))
    for label, (a, b) in checks:
        x = (old.get(a) or {}).get(b)
        y = (new.get(a) or {}).get(b)
        if x != y:
            out.append(f"{label} {str(x)[:12]} -> {str(y)[:12]}")
    env = differences(old.get("environment"), new.get("environment"))
    if env:
        out.append("environment: " + "; ".join(env))
    return out


# --------------------------------------------------------------------------- command

def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``--set key=value``: ``model.KEY`` and ``loss.KEY`` go to the model/loss config
    (``model_cfg``/``loss_cfg``), anything else must be a TrainOptions field. Values are
    parsed as JSON when they can be (numbers, true/false, lists), else kept as strings;
    never evaluated as code."""
    model_cfg: dict[str, Any] = {}
    loss_cfg: dict[str, Any] = {}
    top: dict[str, Any] = {}
    fields = {f.name for f in dataclasses.fields(TrainOptions)}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if key.startswith("model."):
            model_cfg[key[6:]] = value
        elif key.startswith("loss."):
            loss_cfg[key[5:]] = value
        elif key.replace("-", "_") in fields:
            top[key.replace("-", "_")] = value
        else:
            raise ConfigError(f"--set {key}: unknown option (use model.KEY, loss.KEY or one "
                              f"of {', '.join(sorted(fields))})")
    return {**top, "model_cfg": model_cfg, "loss_cfg": loss_cfg}


def _load_config_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import tomllib

    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: invalid TOML ({e})") from None
    doc = doc.get("train", doc)
    fields = {f.name for f in dataclasses.fields(TrainOptions)}
    unknown = sorted(set(doc) - fields - {"model_cfg", "loss_cfg"})
    if unknown:
        raise ConfigError(f"{path}: unknown train option(s) {unknown}")
    return doc


def resolve_train_options(project: Project, given: dict[str, Any], *, like: str | None = None,
                          config: Path | None = None, sets: Sequence[str] = (),
                          seed: int = 0, seed_given: bool = False
                          ) -> tuple[TrainOptions, dict[str, Any], list[int] | None]:
    """Train's options from all their sources, resolved once (`TrainOptions.resolve`).

    Later sources win (the model/loss configs merge key by key, `merge_options`):
    the `TrainOptions` defaults (``--task ranking`` defaults to ``--model cnn``; the seed
    to the global ``--seed``'s default) < the run or group named by `like` (``--like``)
    < the global ``--seed`` when given (`seed_given`) < the `config` TOML
    (``--config``) < `sets` (``--set KEY=VALUE``) < `given`, the train options given on
    the command line (those not None; ``model_cfg``/``loss_cfg`` for ``--ghm-*``).

    Returns the resolved options; the explicit ones (every source but the defaults: what
    an existing run or group must agree with, `run`'s `explicit`); and the seeds of a
    ``--like`` seed group (None for a run).
    """
    like_values, like_seeds = options_like(project, like) if like is not None else ({}, None)
    like_values.pop("run", None)
    explicit = merge_options(like_values, {"seed": seed} if seed_given else {},
                             _load_config_file(config), _parse_sets(sets), given)
    if given.get("loss_cfg") and explicit.get("loss") not in ("ghm", "ghm-ranking"):
        raise ConfigError("--ghm-bins, --ghm-alpha and --ghm-momentum need --loss ghm")
    for key in CONFIG_TABLES:
        explicit.setdefault(key, {})
    values = dict(explicit)
    if values.get("task") == "ranking" and "model" not in values:
        values["model"] = "cnn"  # the default model (ast) has no score output
    values.setdefault("seed", seed)
    return options_from(values), explicit, like_seeds


def _group_seeds(seeds: list[str] | None, extra: list[str], like_seeds: list[int] | None,
                 seed_given: bool) -> list[int] | None:
    """The seeds of a seed sweep (``--seeds``, else a ``--like`` group's), or None for
    one run."""
    if seeds is not None:
        if seed_given:
            raise ConfigError("give either the global --seed N (one run) or train --seeds "
                              "(a group of runs), not both")
        return parse_seeds([*seeds, *extra])
    if like_seeds is not None and not seed_given:
        return like_seeds  # --like GROUP: the group's seeds
    return None


def _given_seed(ctx: Any) -> bool:
    """Whether the global ``--seed`` was given (not its default)."""
    source = ctx.parent.get_parameter_source("seed") if ctx.parent else None
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _report_group(state: Any, group: GroupResult, json_out: bool) -> None:
    """The summary of a seed sweep: JSON on stdout (``--json``), a line on stderr."""
    docs = [_result_doc(r) for r in group.results]
    if json_out:
        print_json({"group": group.group, "seeds": group.seeds, "runs": docs,
                    "skipped": all(d["skipped"] for d in docs)})
    if all(d["skipped"] for d in docs):
        info(state, f"already done: seed group {group.group!r} (seeds "
                    f"{', '.join(map(str, group.seeds))}) with these options; nothing to "
                    "do (--new starts another group, --force retrains it)")
    scores = [r.best_score for r in group.results if r.best_score is not None]
    spread = ""
    if len(scores) > 1:
        import statistics

        spread = (f"; best validation score {statistics.fmean(scores):.4f} +- "
                  f"{statistics.stdev(scores):.4f} over {len(scores)} seeds")
    info(state, f"group {group.group!r}: runs {', '.join(r.run for r in group.results)}"
                f"{spread} (rsctool eval --group {group.group})")


def _report_run(state: Any, result: TrainResult, task: str, json_out: bool) -> None:
    """The summary of a run: JSON on stdout (``--json``), a line on stderr."""
    if json_out:
        print_json(_result_doc(result))
    if result.skipped:
        info(state, f"already done: run {result.run!r} ({result.epochs_done} epochs) with "
                    "these options; nothing to do (--new starts another run, --force "
                    f"retrains it, --run {result.run} --epochs N --extend trains it longer)")
    else:
        score = "n/a" if result.best_score is None else f"{result.best_score:.4f}"
        what = " (pairwise accuracy)" if task == "ranking" else ""
        info(state, f"run {result.run!r}: best validation score{what} {score}; "
                    f"checkpoints in {result.dir}")


def command(
    ctx: typer.Context,
    more_synthetic: Annotated[list[str] | None, typer.Argument(
        metavar="VALUES", show_default=False,
        help="More values of --synthetic (names) or --seeds (integers), so "
             "`--synthetic A B` and `--seeds 0 1 2` work.")] = None,
    *,
    model: Annotated[str | None, typer.Option(
        help="Model name: ast, grf, film, tafilm, softfilm, add (ADD-RSC), add-standalone, "
             "cnn, resnet (default ast; "
             "cnn with --task ranking).", rich_help_panel="Model")] = None,
    size: Annotated[str | None, typer.Option(
        help="Model size (tiny, small, base; default per model).", rich_help_panel="Model")] = None,
    pretrained: Annotated[str | None, typer.Option(
        help="Hub id or local directory of pretrained weights; 'none' for random init.",
        rich_help_panel="Model")
    ] = None,
    dataset: Annotated[str | None, typer.Option(
        help="Dataset name in the project (default: the last analysed).",
        rich_help_panel="Data")] = None,
    run_name: Annotated[str | None, typer.Option(
        "--run", "--run-name",
        help="Run name (with --seeds: the group name, runs NAME-s0, NAME-s1, ...); "
             "an unfinished run of that name is resumed. (Under torchrun, spell it "
             "--run-name: torchrun takes --run for its --run-path.)",
        rich_help_panel="Run and output")] = None,
    seeds: Annotated[list[str] | None, typer.Option(
        "--seeds", help="One run per seed, recorded as a group: --seeds 5 (seeds 0-4) or "
                        "--seeds 0 1 2 3 4. `rsctool eval --group NAME` gives mean and std.",
        show_default=False, rich_help_panel="Run and output")] = None,
    like: Annotated[str | None, typer.Option(
        "--like", help="Re-run with the options run (or seed group) RUN was started with; "
                       "options given here override them.", metavar="RUN",
        rich_help_panel="Run and output")] = None,
    config: Annotated[Path | None, typer.Option(
        help="TOML file with train options (a table named train, or top-level keys).",
        rich_help_panel="Run and output")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default 50).",
        rich_help_panel="Optimisation")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (default 16).",
        rich_help_panel="Optimisation")] = None,
    lr: Annotated[float | None, typer.Option(
        help="Peak learning rate (default 3e-5 for AST/ADD, 1e-3 for CNNs).",
        rich_help_panel="Optimisation")] = None,
    task: Annotated[str | None, typer.Option(
        help="multiclass (4-way softmax), multilabel (crackle/wheeze sigmoids), binary "
             "(normal vs abnormal: ICBHI's 2-class task) or ranking "
             "(one score per example; ordered classes such as 0_degree, 45_degree; "
             "models cnn and resnet).", rich_help_panel="Model")] = None,
    loss: Annotated[str | None, typer.Option(
        help="ce, focal, bce, ghm or bias-denoising; with --task ranking: margin "
             "(default) or ghm.", rich_help_panel="Optimisation")] = None,
    class_order: Annotated[str | None, typer.Option(
        help="--task ranking: the classes from lowest to highest, comma separated "
             "(default: sorted by the number their names start with).",
        rich_help_panel="Model")] = None,
    ghm_bins: Annotated[int | None, typer.Option(
        help="GHM loss: number of gradient-norm bins (default 10).",
        rich_help_panel="Optimisation")] = None,
    ghm_alpha: Annotated[float | None, typer.Option(
        help="GHM loss: exponent of the inverse bin density (0: plain loss; default 1).",
        rich_help_panel="Optimisation")
    ] = None,
    ghm_momentum: Annotated[float | None, typer.Option(
        help="GHM loss: moving-average momentum of the bin densities, in [0, 1) "
             "(0: this batch only; default 0.75).", rich_help_panel="Optimisation")] = None,
    balanced: Annotated[bool | None, typer.Option(
        "--balanced/--no-balanced", help="Class-balanced sampling.",
        rich_help_panel="Data")] = None,
    norm: Annotated[str | None, typer.Option(
        help=f"Feature normalisation: audioset (AST pretraining values {AUDIOSET_MEAN:.2f}/"
             f"{AUDIOSET_STD:.2f}) or "
             "dataset (the train split's statistics, recorded by analyze).",
        rich_help_panel="Data")] = None,
    patience: Annotated[int | None, typer.Option(
        help="Early stopping after this many epochs without validation gain (0: off).",
        rich_help_panel="Optimisation")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(
        help="Stop after this many optimizer steps (quick runs).",
        rich_help_panel="Optimisation")] = None,
    grad_accum: Annotated[int | None, typer.Option(
        help="Gradient accumulation: compute each --batch-size batch in this many "
             "micro-batches per process (less memory, same optimizer steps; default 1).",
        rich_help_panel="Optimisation")
    ] = None,
    precision: Annotated[str | None, typer.Option(
        help="Compute precision (autocast; weights and optimizer stay fp32): auto (CUDA: "
             "bf16, or fp16 with loss scaling on GPUs without bf16, unless --set amp=false; "
             "CPU: bf16 where it has AMX/AVX512-BF16 units and a training step of this "
             "model measures faster in bf16, else fp32; a resume keeps its precision), "
             "fp32, or bf16.",
        rich_help_panel="Optimisation")] = None,
    processes: Annotated[int | None, typer.Option(
        help="Data-parallel training in N processes on this machine (one per GPU, or gloo "
             "on CPU): the same as `torchrun --nproc-per-node N -m rsctool train ...`. "
             "--batch-size stays the global batch.", min=1, rich_help_panel="Distributed")] = None,
    clip_seconds: Annotated[float | None, typer.Option(
        help="Cycle length the model sees, s: shorter cycles are padded by repetition, "
             f"longer ones cropped (default {DEFAULT_CLIP_SECONDS:g}).",
        rich_help_panel="Data")] = None,
    num_mel_bins: Annotated[int | None, typer.Option(
        help=f"Mel bins of the fbank features (default {FbankConfig.num_mel_bins}).",
        rich_help_panel="Data")] = None,
    specaugment: Annotated[bool | None, typer.Option(
        "--specaugment/--no-specaugment", help="SpecAugment time/frequency masks "
        "(default on).", rich_help_panel="Data")] = None,
    log_to: Annotated[list[str] | None, typer.Option(
        "--log", help="Also log the history to tensorboard or mlflow (repeatable; the "
                      "package must be installed).", rich_help_panel="Run and output")] = None,
    synthetic: Annotated[list[str] | None, typer.Option(
        help="Synthetic sets (`rsctool synth`) to add to the training split only: "
             "--synthetic A B, repeated, or A,B.", show_default=False,
        rich_help_panel="Synthetic data")] = None,
    synthetic_ratio: Annotated[float | None, typer.Option(
        help="At most this many synthetic cycles per real training cycle, shared evenly "
             "across classes.", rich_help_panel="Synthetic data")] = None,
    max_synthetic_per_class: Annotated[int | None, typer.Option(
        help="At most N synthetic cycles per class (0..N sweeps add cycles, never swap "
             "them).", rich_help_panel="Synthetic data")] = None,
    adversarial: Annotated[bool | None, typer.Option(
        "--adversarial/--no-adversarial", help="Adversarial fine-tuning: a real-vs-"
        "synthetic discriminator on the embedding through gradient reversal.",
        rich_help_panel="Model")] = None,
    adv_weight: Annotated[float | None, typer.Option(
        help="Scale of the reversed discriminator gradient into the encoder, times the DANN "
             "ramp (default 1; the domain loss weighs adv_loss_weight, default 0.2)."
    , rich_help_panel="Model")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Any option as KEY=VALUE; model.KEY / loss.KEY for model/loss config.",
        rich_help_panel="Run and output")
    ] = None,
    deterministic: Annotated[bool | None, typer.Option(
        "--deterministic/--no-deterministic",
        help="Deterministic algorithms: same seed, same machine, same weights bit for bit "
             "on CPU (limits on CUDA: docs/reproducing.md).",
        rich_help_panel="Optimisation")] = None,
    force: Annotated[bool, typer.Option(help="Retrain a finished run from scratch.",
        rich_help_panel="Run and output")] = False,
    new: Annotated[bool, typer.Option(
        "--new", help="Start a new run (or seed group) even if one with the same options "
                      "exists (without --run, the same options find their run again).",
        rich_help_panel="Run and output")] = False,
    extend: Annotated[bool, typer.Option(
        "--extend", help="Continue the run --run NAME (finished or not) up to a larger "
                         "--epochs from its last checkpoint, keeping its history.",
        rich_help_panel="Run and output")] = False,
    dry_run_: Annotated[bool, typer.Option(
        "--dry-run", help="Resolve the options and build the model, print them with the "
                          "parameters per block, the input shape and the estimated memory; "
                          "train nothing, write nothing (needs no project).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.",
        rich_help_panel="Run and output")]
    = False,
) -> None:
    """Train a classifier on the dataset registered by `rsctool analyze` (resumable)."""
    state = get_state(ctx)
    project = state.load_project(must_exist=not dry_run_)
    extra_synthetic, extra_seeds = _split_extras(more_synthetic or [], bool(synthetic),
                                                 seeds is not None)
    ghm_cfg = {k: v for k, v in (("bins", ghm_bins), ("alpha", ghm_alpha),
                                 ("momentum", ghm_momentum)) if v is not None}
    # the options given here; "none" (random init) for --pretrained is the builder's to read
    given = {k: v for k, v in {
        "model": model, "size": size, "pretrained": pretrained, "dataset": dataset,
        "run": run_name, "epochs": epochs, "batch_size": batch_size, "lr": lr, "task": task,
        "loss": loss, "balanced": balanced, "norm": norm, "patience": patience,
        "max_steps": max_steps, "grad_accum": grad_accum, "precision": precision,
        "clip_seconds": clip_seconds,
        "num_mel_bins": num_mel_bins, "specaugment": specaugment,
        "class_order": None if class_order is None else comma_list(class_order),
        "loss_cfg": ghm_cfg or None,
        "synthetic": comma_list([*(synthetic or []), *extra_synthetic]) or None,
        "synthetic_ratio": synthetic_ratio, "max_synthetic_per_class": max_synthetic_per_class,
        "adversarial": adversarial, "adv_weight": adv_weight, "deterministic": deterministic,
    }.items() if v is not None}
    seed_given = _given_seed(ctx)
    opts, explicit, like_seeds = resolve_train_options(
        project, given, like=like, config=config, sets=set_ or [], seed=state.seed,
        seed_given=seed_given)
    seed_list = _group_seeds(seeds, extra_seeds, like_seeds, seed_given)
    if dry_run_:
        doc = dry_run(project, opts)
        if json_out:
            print_json({**doc, "seeds": seed_list})
        if not state.quiet:
            _print_dry_run(doc)
        return
    if extend and seed_list is not None:
        raise ConfigError("--extend continues one run (--run NAME), not a seed group")
    if extend and "epochs" not in explicit and "max_steps" not in explicit:
        raise ConfigError("--extend needs the new total: --epochs N (more than the run's)")
    if processes is not None:
        _launch_processes(processes, opts)  # returns only when this process should train
    from rsctool.distributed import env_rank

    kwargs: dict[str, Any] = {
        "device": state.device, "progress": not state.quiet and not json_out, "force": force,
        "log": lambda msg: info(state, msg), "trackers": log_to or (), "explicit": explicit,
        "like": like, "new": new}
    if seed_list is not None:
        group = run_group_resolved(project, opts, seed_list, **kwargs)
        if env_rank() == 0:  # the main process reports
            _report_group(state, group, json_out)
        return
    result = run_resolved(project, opts, extend=extend, **kwargs)
    if env_rank() == 0:
        _report_run(state, result, opts.task, json_out)


# --------------------------------------------------------------------------- dry run

#: Bytes per trainable parameter beyond the fp32 weight: its fp32 gradient and AdamW's
#: two fp32 moments.
_TRAIN_STATE_BYTES = 4 + 8


def dry_run(project: Project, opts: TrainOptions) -> dict[str, Any]:
    """What `train` with resolved `opts` would train, without training or writing
    anything: the options, the model's parameters per top-level block, the input shape
    and the estimated memory of one process.

    The dataset's classes and metadata vocabularies come from the project when it has
    the dataset (read only), else the four ICBHI classes and empty vocabularies. The
    model is built with random weights (``pretrained`` is reported, not loaded) on
    torch's ``meta`` device, so even AST base costs no memory; activation memory is the
    bytes autograd saves for the backward pass of one forward pass of one clip, times
    the per-process micro-batch (``batch_size / grad_accum``), in fp32 (bf16/fp16
    autocast stores about half). The count is an upper bound: a tensor saved by two
    operations counts twice, and attention maps count as eager attention saves them
    (fused attention kernels keep less).

    Returns ``{options, dataset, classes, outputs, model {name, config, parameters,
    trainable, blocks [{name, parameters, trainable}]}, input {x: [B, T, F],
    metadata, frames, mel_bins, clip_seconds, sample_rate}, memory {weights,
    gradients_optimizer, activations_per_clip, activations, total} (bytes), precision
    {option, matrix_gflop (linear and convolution work of one forward pass of a
    micro-batch, `rsctool.devices.matrix_flops`), cpu_auto (what ``--precision`` does on
    this machine's CPU, `choose_precision`)}}``.
    """
    import torch

    from rsctool.data.dataset import clip_config
    from rsctool.data.manifest import ICBHI_CLASSES
    from rsctool.models import create_model
    from rsctool.models.metadata import NUM_FIELDS, MetadataEncoder

    classes, dataset = list(ICBHI_CLASSES), None
    encoder = MetadataEncoder([], [], [0.0] * len(NUM_FIELDS), [1.0] * len(NUM_FIELDS),
                              opts.metadata, opts.metadata_impute, [0.0] * len(NUM_FIELDS))
    if project.section("datasets"):
        dataset, record = pick_dataset(project, opts.dataset)
        cycles = load_dataset_cycles(project, record)
        classes = list(record.get("classes") or sorted({c.label for c in cycles}))
        encoder = MetadataEncoder.fit(cycles, fields=opts.metadata, impute=opts.metadata_impute)
    classes = task_classes(opts.task, classes, opts.class_order, dataset or "ICBHI")
    clip = clip_config(opts)
    from rsctool.models.registry import model_traits

    model_kwargs = {**opts.model_cfg, **({"size": opts.size} if opts.size is not None else {}),
                    # the architecture only: weights are never loaded by a dry run
                    **({"pretrained": "none"} if model_traits(opts.model).pretrained else {})}
    with torch.device("meta"):
        model = create_model(opts.model, num_classes=num_outputs(opts, classes),
                             input_tdim=clip.frames, input_fdim=clip.fbank.num_mel_bins,
                             meta_spec=encoder.spec(), **model_kwargs)
    needs_meta = bool(getattr(model, "needs_metadata", False))
    saved = _saved_activation_bytes(model, clip, encoder if needs_meta else None)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    micro = max(1, opts.batch_size // opts.grad_accum)
    memory = {"weights": 4 * n_params, "gradients_optimizer": _TRAIN_STATE_BYTES * n_train,
              "activations_per_clip": saved,
              "activations": None if saved is None else saved * micro}
    memory["total"] = (None if saved is None
                       else memory["weights"] + memory["gradients_optimizer"] + saved * micro)
    gflop = _matrix_gflop(model, clip, encoder if needs_meta else None)
    return {
        "options": asdict(opts), "dataset": dataset, "classes": classes,
        "outputs": num_outputs(opts, classes),
        "model": {"name": opts.model, "config": dict(getattr(model, "config", {}) or {}),
                  "pretrained": opts.pretrained, "parameters": n_params,
                  "trainable": n_train, "blocks": _parameter_blocks(model)},
        "input": {"x": [opts.batch_size, clip.frames, clip.fbank.num_mel_bins],
                  "metadata": list(encoder.fields) if needs_meta else None,
                  "frames": clip.frames, "mel_bins": clip.fbank.num_mel_bins,
                  "clip_seconds": clip.clip_seconds, "sample_rate": clip.sample_rate},
        "memory": memory,
        "precision": {"option": opts.precision,
                      "matrix_gflop": None if gflop is None else round(gflop * micro, 4),
                      "cpu_auto": _cpu_auto(opts, gflop, micro)},
    }


def _meta_clip(clip: Any, encoder: Any) -> tuple[Any, Any]:
    """One clip's input ``(x (1, T, F), metadata or None)`` on the ``meta`` device
    (shapes only), for the dry run's counts."""
    import torch

    x = torch.zeros(1, clip.frames, clip.fbank.num_mel_bins, device="meta")
    if encoder is None:
        return x, None
    return x, {k: v.to("meta") for k, v in encoder.encode_values([{}]).items()}


def _matrix_gflop(model: Any, clip: Any, encoder: Any) -> float | None:
    """`rsctool.devices.matrix_flops` of one clip (GFLOP) on the ``meta`` device (shapes
    only); None where the model cannot run there."""
    from rsctool.devices import matrix_flops

    x, meta = _meta_clip(clip, encoder)
    try:
        return matrix_flops(model, lambda: model(x, meta)) / 1e9
    except (NotImplementedError, RuntimeError):
        return None


def _cpu_auto(opts: TrainOptions, gflop: float | None, micro: int) -> str:
    """What `choose_precision` does with these options on this machine's CPU, in words."""
    from rsctool.devices import CPU_BF16_MIN_GFLOP, cpu_bf16_fast

    if opts.precision != "auto":
        return opts.precision
    if not opts.amp or not cpu_bf16_fast():
        return "fp32"
    if gflop is not None and gflop * micro < CPU_BF16_MIN_GFLOP:
        return "fp32 (too little matrix work for bf16 to pay)"
    return "bf16 if a training step measures faster at the start, else fp32"


def _parameter_blocks(model: Any) -> list[dict[str, Any]]:
    """Parameters per top-level block of `model`, and those held by the model itself
    (e.g. SoftFiLM's masks) as a block named ``(model)``."""
    blocks = [(name, list(m.parameters())) for name, m in model.named_children()]
    own = [p for _, p in model.named_parameters(recurse=False)]
    if own:
        blocks.append(("(model)", own))
    return [{"name": name, "parameters": sum(p.numel() for p in ps),
             "trainable": sum(p.numel() for p in ps if p.requires_grad)}
            for name, ps in blocks]


def _saved_activation_bytes(model: Any, clip: Any, encoder: Any) -> int | None:
    """Bytes autograd keeps for the backward pass of one training forward pass of one
    clip, counted on the ``meta`` device (shapes only); None where the model cannot run
    there (an op without a meta kernel)."""
    import torch

    total = 0

    def pack(t: Any) -> Any:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    x, meta = _meta_clip(clip, encoder)
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x, meta)
    except (NotImplementedError, RuntimeError):
        return None
    return total


def _print_dry_run(doc: dict[str, Any]) -> None:
    """The human-readable `dry_run` document, on stderr."""
    from rich.table import Table

    def mib(n: int | None) -> str:
        if n is None:
            return "n/a"
        return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 2**10:,.1f} KiB"

    o, m, x, mem = doc["options"], doc["model"], doc["input"], doc["memory"]
    err_console.print(f"dry run: {m['name']} (size {o['size'] or 'default'}), task "
                      f"{o['task']}, loss {o['loss']}, {doc['outputs']} output(s) for "
                      f"{', '.join(doc['classes'])}; dataset {doc['dataset'] or 'none yet'}")
    t = Table(title="parameters", title_justify="left")
    for col in ("block", "parameters", "trainable"):
        t.add_column(col, justify="left" if col == "block" else "right")
    for b in m["blocks"]:
        t.add_row(b["name"], f"{b['parameters']:,}", f"{b['trainable']:,}")
    t.add_row("total", f"{m['parameters']:,}", f"{m['trainable']:,}")
    err_console.print(t)
    err_console.print(f"input: x (B, T, F) = {tuple(x['x'])} ({x['clip_seconds']} s at "
                      f"{x['sample_rate']} Hz)"
                      + (f"; metadata {', '.join(x['metadata'])}" if x["metadata"] else ""))
    err_console.print(f"memory per process: weights {mib(mem['weights'])}, gradients and "
                      f"AdamW {mib(mem['gradients_optimizer'])}, activations "
                      f"{mib(mem['activations'])} (fp32, upper bound), total {mib(mem['total'])}")
    pr = doc["precision"]
    g = pr["matrix_gflop"]
    work = ("" if g is None else f"{g:,.0f}" if g >= 100 else f"{g:.3g}")
    work = work and f"{work} GFLOP of matrix work per forward pass of a batch; "
    err_console.print(f"precision {pr['option']}: {work}on this CPU {pr['cpu_auto']}")
    changed = {k: v for k, v in o.items() if k in _DEFAULT_OPTIONS and v != _DEFAULT_OPTIONS[k]}
    err_console.print("options (not at their default): " + (", ".join(
        f"{k}={v!r}" for k, v in sorted(changed.items())) or "none"))


def _launch_processes(processes: int, opts: TrainOptions) -> None:
    """``train --processes N``: start N processes running this same command (torch's
    elastic launcher, as torchrun does) and exit with their exit code. Returns (without
    launching) for N = 1, and inside a process a launcher started with N processes.
    `opts`: resolved."""
    from rsctool.distributed import launch_here, launched_world_size

    if launched_world_size() == 1 and processes > 1:
        check_batch_split(opts.batch_size, processes, opts.grad_accum)
    launch_here(processes)


def _result_doc(result: TrainResult) -> dict[str, Any]:
    return {"run": result.run, "dir": str(result.dir), "best": str(result.best),
            "best_score": result.best_score, "epochs": result.epochs_done,
            "steps": result.steps, "skipped": result.skipped, "resumed": result.resumed}


def _split_extras(extras: list[str], synthetic: bool, seeds: bool
                  ) -> tuple[list[str], list[str]]:
    """Positional values after the options: synthetic set names (`--synthetic A B`) or
    seeds (`--seeds 0 1 2`); with both options, integers are seeds."""
    if not extras:
        return [], []
    if not synthetic and not seeds:
        raise ConfigError(f"unexpected argument {extras[0]!r} (synthetic set names go after "
                          "--synthetic, seeds after --seeds)")
    if not seeds:
        return list(extras), []
    if not synthetic:
        return [], list(extras)
    is_int = [e.strip().lstrip("-").isdigit() for e in extras]
    return ([e for e, i in zip(extras, is_int, strict=True) if not i],
            [e for e, i in zip(extras, is_int, strict=True) if i])
