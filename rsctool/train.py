"""`rsctool train`: train a cycle classifier on a dataset registered by `analyze`.

Model selection, early stopping and (multilabel) thresholds use the patient-wise
validation split only; the test split is never loaded here. A run directory holds
``config.json``, ``history.csv``/``history.json``, ``last.safetensors`` (model,
optimizer, scheduler step, RNG: everything a resume needs) and ``best.safetensors``.
`rsctool train --run NAME` on a run recorded as running continues it from its last
checkpoint; the sample order of an epoch is a pure function of (seed, epoch), so the
resumed run sees exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from rsctool.console import get_state, info, print_json
from rsctool.errors import ConfigError, DataError
from rsctool.utils import atomic_write_json, atomic_write_text, params_hash

TASKS = ("multiclass", "multilabel")
NORMS = ("audioset", "dataset")
#: Families trained like the AST papers (small lr, long warm-up).
TRANSFORMERS = ("ast", "grf", "film", "tafilm", "softfilm", "add")


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
    balanced: bool = False
    specaugment: bool = True
    mixup: float = 0.0
    sensitivity_bias: float = 1.0
    clip_seconds: float = 8.0
    sample_rate: int = 16000
    num_mel_bins: int = 128
    norm: str = "audioset"
    patience: int = 0
    checkpoint_every: int = 0
    max_steps: int | None = None
    num_workers: int = 0
    amp: bool = True
    seed: int = 0
    deterministic: bool = False
    model_cfg: dict[str, Any] = field(default_factory=dict)
    loss_cfg: dict[str, Any] = field(default_factory=dict)

    def resolve(self) -> TrainOptions:
        """Fill family defaults and validate; returns a new object."""
        o = dataclasses.replace(self, model_cfg=dict(self.model_cfg),
                                loss_cfg=dict(self.loss_cfg))
        family_tf = o.model in TRANSFORMERS
        if o.lr is None:
            o.lr = 3e-5 if family_tf else 1e-3
        if o.warmup_epochs is None:
            o.warmup_epochs = min(10.0, o.epochs / 5) if family_tf else min(1.0, o.epochs / 5)
        if o.task not in TASKS:
            raise ConfigError(f"--task must be one of {', '.join(TASKS)}, got {o.task!r}")
        if o.norm not in NORMS:
            raise ConfigError(f"--norm must be one of {', '.join(NORMS)}, got {o.norm!r}")
        if o.task == "multilabel" and o.loss == "ce":
            o.loss = "bce"
        for name, v, lo in (("--epochs", o.epochs, 1), ("--batch-size", o.batch_size, 1)):
            if v < lo:
                raise ConfigError(f"{name} must be >= {lo}, got {v}")
        if not (o.lr > 0 and o.weight_decay >= 0 and o.warmup_epochs >= 0 and o.mixup >= 0
                and o.sensitivity_bias > 0 and o.clip_seconds > 0):
            raise ConfigError("--lr, --clip-seconds and --sensitivity-bias must be > 0; "
                              "--weight-decay, --warmup-epochs and --mixup >= 0")
        return o


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

def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available else cpu; ``cuda`` without CUDA is a ConfigError."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu)")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
    return device


def pick_dataset(project: Any, name: str | None) -> tuple[str, dict[str, Any]]:
    """The dataset record to train on: `name`, else the only (or last) one analysed."""
    datasets = project.section("datasets")
    if name is not None:
        if name not in datasets:
            known = ", ".join(sorted(datasets)) or "none"
            raise ConfigError(f"--dataset {name!r} is not in the project (known: {known}); "
                              "run `rsctool analyze DATA_DIR` first")
        return name, datasets[name]
    if not datasets:
        raise ConfigError(f"{project.path}: no dataset in the project; run "
                          "`rsctool analyze DATA_DIR` first")
    name = list(datasets)[-1]
    return name, datasets[name]


def load_dataset_cycles(project: Any, record: dict[str, Any]) -> list:
    """Read and verify the manifest of a dataset record (sha256 must match)."""
    from rsctool.data.manifest import file_sha256, read_manifest

    path = project.abs(record["manifest"])
    if not path.exists():
        raise DataError("manifest recorded in the project is missing (re-run analyze)", path)
    if record.get("sha256") and file_sha256(path) != record["sha256"]:
        raise DataError("manifest changed since analyze recorded it (re-run analyze)", path)
    return read_manifest(path)


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


class _Progress:
    """A rich progress bar on stderr (or nothing when quiet)."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.bar = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            from rsctool.console import err_console

            self.bar = Progress("[progress.description]{task.description}", BarColumn(),
                                MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[status]}"), console=err_console,
                                transient=False)
            self.task = self.bar.add_task("train", total=total, completed=done, status="")
            self.bar.start()

    def update(self, advance: int = 1, **status: Any) -> None:
        if self.bar is not None:
            text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in status.items())
            self.bar.update(self.task, advance=advance, status=text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# --------------------------------------------------------------------------- the trainer

class Trainer:
    """One training run. Built from resolved options; `fit()` does the work."""

    def __init__(self, project: Any, opts: TrainOptions, run_name: str, run_dir: Path,
                 device: str, progress: bool = False, log: Callable[[str], None] | None = None):
        import torch

        from rsctool.data.dataset import (
            AUDIOSET_MEAN,
            AUDIOSET_STD,
            ClipConfig,
            CycleDataset,
            class_balanced_weights,
            dataset_statistics,
            feature_cache,
        )
        from rsctool.features import FbankConfig
        from rsctool.losses import build_loss
        from rsctool.models import create_model
        from rsctool.models.metadata import MetadataEncoder

        self.project, self.opts, self.run_name, self.dir = project, opts, run_name, run_dir
        self.device = device
        self.progress = progress
        self.log = log or (lambda msg: None)
        self.dataset_name, record = pick_dataset(project, opts.dataset)
        cycles = load_dataset_cycles(project, record)
        self.classes = list(record.get("classes") or sorted({c.label for c in cycles}))
        # The test split is never loaded by training: selection uses val only.
        self.train_cycles = [c for c in cycles if c.split == "train"]
        self.val_cycles = [c for c in cycles if c.split == "val"]
        if not self.train_cycles:
            raise ConfigError(f"dataset {self.dataset_name!r} has no train cycles")
        if not self.val_cycles:
            self.log("warning: no validation split (analyze --val-fraction 0): the last "
                     "epoch is kept as best and no early stopping happens")
        cache = feature_cache(project.state_dir())
        clip = ClipConfig(sample_rate=opts.sample_rate, clip_seconds=opts.clip_seconds,
                          fbank=FbankConfig(sample_rate=opts.sample_rate,
                                            num_mel_bins=opts.num_mel_bins))
        if opts.norm == "dataset":
            mean, std = dataset_statistics(self.train_cycles, clip, cache, seed=opts.seed)
        else:
            mean, std = AUDIOSET_MEAN, AUDIOSET_STD
        self.clip = clip.with_norm(mean, std)
        self.meta_encoder = MetadataEncoder.fit(self.train_cycles)
        num_outputs = 2 if opts.task == "multilabel" else len(self.classes)
        model_kwargs = dict(opts.model_cfg)
        if opts.size is not None:
            model_kwargs["size"] = opts.size
        if opts.pretrained is not None:
            model_kwargs["pretrained"] = opts.pretrained
        self.model = create_model(opts.model, num_classes=num_outputs,
                                  input_tdim=self.clip.frames,
                                  input_fdim=self.clip.fbank.num_mel_bins,
                                  meta_spec=self.meta_encoder.spec(), **model_kwargs)
        self.model.to(device)
        if any(isinstance(m, torch.nn.Conv2d) for m in self.model.modules()):
            # oneDNN/cuDNN convolutions run ~2x faster on NHWC than on NCHW tensors
            # (measured on CPU: docs/benchmarks.md); values are unchanged.
            self.model.to(memory_format=torch.channels_last)
        enc = self.meta_encoder if getattr(self.model, "needs_metadata", False) else None
        self.train_set = CycleDataset(self.train_cycles, self.classes, self.clip, cache, enc,
                                      opts.task)
        self.val_set = CycleDataset(self.val_cycles, self.classes, self.clip, cache, enc,
                                    opts.task) if self.val_cycles else None
        self.sample_weights = (class_balanced_weights(self.train_set.targets,
                                                      len(self.classes))
                               if opts.balanced else None)
        loss_kwargs = dict(opts.loss_cfg)
        if opts.task == "multilabel":
            ml = self.train_set.multilabel
            pos = ml.sum(0).clamp(min=1)
            loss_kwargs.setdefault("pos_weight",
                                   ((len(ml) - pos) / pos * opts.sensitivity_bias).tolist())
        self.loss_fn = build_loss(opts.loss, num_classes=num_outputs, task=opts.task,
                                  **loss_kwargs).to(device)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=opts.lr,
            weight_decay=opts.weight_decay)
        self.steps_per_epoch = math.ceil(len(self.train_set) / opts.batch_size)
        self.total_steps = self.steps_per_epoch * opts.epochs
        if opts.max_steps is not None:
            self.total_steps = min(self.total_steps, opts.max_steps)
        self.warmup_steps = int(round(opts.warmup_epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_with_warmup(s, self.total_steps, self.warmup_steps))
        self.use_amp = opts.amp and device == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.step = 0
        self.epoch = 0
        self.best_select: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.thresholds: list[float] | None = None

    # ----- state -----------------------------------------------------------------------
    def run_config(self) -> dict[str, Any]:
        """What `eval`, `export` and `predict` need to rebuild and feed the model."""
        return {
            "run": self.run_name,
            "options": asdict(self.opts),
            "model": self.model.config,
            "classes": self.classes,
            "task": self.opts.task,
            "clip": self.clip.to_dict(),
            "metadata_encoder": self.meta_encoder.to_dict(),
            "needs_metadata": bool(getattr(self.model, "needs_metadata", False)),
            "dataset": self.dataset_name,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
        }

    def _state(self) -> dict[str, Any]:
        return {
            "config": self.run_config(),
            "step": self.step,
            "epoch": self.epoch,
            "best_select": self.best_select,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "thresholds": self.thresholds,
            "scaler": self.scaler.state_dict() if self.use_amp else None,
        }

    def save(self, name: str, *, full: bool = True) -> Path:
        from rsctool.checkpoint import save_checkpoint

        path = self.dir / name
        save_checkpoint(path, model=self.model, state=self._state(),
                        optimizer=self.optimizer if full else None, rng=full)
        return path

    def restore(self, path: Path) -> None:
        from rsctool.checkpoint import load_checkpoint

        ck = load_checkpoint(path)
        st = ck.state
        self.model.load_state_dict(ck.model_state)
        if ck.optimizer_state is not None:
            self.optimizer.load_state_dict(ck.optimizer_state)
        self.step, self.epoch = int(st["step"]), int(st["epoch"])
        self.best_select, self.best_epoch = st.get("best_select"), st.get("best_epoch")
        self.bad_epochs = int(st.get("bad_epochs", 0))
        self.history = list(st.get("history", []))
        self.thresholds = st.get("thresholds")
        if st.get("scaler") and self.use_amp:
            self.scaler.load_state_dict(st["scaler"])
        # LambdaLR's only state is the step count: rebuild it from `step`.
        self.scheduler.last_epoch = self.step
        for g, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
            g["lr"] = base * cosine_with_warmup(self.step, self.total_steps, self.warmup_steps)
        ck.restore_rng()

    # ----- loops -----------------------------------------------------------------------
    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        dev = self.device
        out = {k: (v.to(dev, non_blocking=True) if hasattr(v, "to") else v)
               for k, v in batch.items() if k != "meta"}
        if "meta" in batch:
            out["meta"] = {k: v.to(dev, non_blocking=True) for k, v in batch["meta"].items()}
        return out

    def _loader(self, dataset: Any, indices: Any) -> Any:
        import torch

        from rsctool.data.dataset import collate

        subset = torch.utils.data.Subset(dataset, indices.tolist())
        return torch.utils.data.DataLoader(
            subset, batch_size=self.opts.batch_size, shuffle=False, collate_fn=collate,
            num_workers=self.opts.num_workers, pin_memory=self.device == "cuda",
            persistent_workers=False, generator=_loader_generator(self.opts.seed, self.epoch))

    def train_epoch(self, on_step: Callable[[], None] | None = None) -> dict[str, float]:
        import torch

        from rsctool.data.dataset import epoch_order, mixup, spec_augment

        opts = self.opts
        self.model.train()
        order = epoch_order(len(self.train_set), self.epoch, opts.seed, self.sample_weights)
        done_in_epoch = self.step - self.epoch * self.steps_per_epoch
        order = order[done_in_epoch * opts.batch_size:]
        total_loss, n_seen, t0 = 0.0, 0, time.perf_counter()
        set_progress = getattr(self.model, "set_progress", None)
        for batch in self._loader(self.train_set, order):
            if self.step >= self.total_steps:
                break
            if set_progress is not None:
                set_progress(self.step / max(1, self.total_steps))
            b = self._to_device(batch)
            x, y = b["x"], b["y"]
            if opts.specaugment:
                x = spec_augment(x)
            if opts.mixup > 0:
                x, y = mixup(x, y, len(self.classes), opts.mixup)
            with torch.autocast("cuda", enabled=self.use_amp):
                out = self.model(x, b.get("meta"))
                loss = self.loss_fn(out, y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            total_loss += float(loss.detach()) * len(x)
            n_seen += len(x)
            if on_step is not None:
                on_step()
            if opts.checkpoint_every and self.step % opts.checkpoint_every == 0:
                self.save("last.safetensors")
            self._bar.update(loss=float(loss.detach()), epoch=self.epoch + 1)
        dt = time.perf_counter() - t0
        return {"train_loss": total_loss / max(1, n_seen),
                "samples_per_s": n_seen / dt if dt > 0 else 0.0}

    @staticmethod
    def predict(model: Any, dataset: Any, batch_size: int, device: str, task: str,
                thresholds: list[float] | None = None, embeddings: bool = False
                ) -> dict[str, Any]:
        """Predictions on a whole dataset: ``pred`` class indices, ``probs`` `(N, C)`
        (multilabel: `(N, 2)` sigmoid probabilities), optional ``embedding`` `(N, D)`."""
        import torch

        from rsctool.data.dataset import collate
        from rsctool.metrics import multilabel_to_class

        model.eval()
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                             collate_fn=collate, generator=_loader_generator(0))
        probs, embs = [], []
        with torch.no_grad():
            for batch in loader:
                meta = ({k: v.to(device) for k, v in batch["meta"].items()}
                        if "meta" in batch else None)
                out = model(batch["x"].to(device), meta)
                logits = out["logits"].float()
                probs.append((torch.sigmoid(logits) if task == "multilabel"
                              else torch.softmax(logits, -1)).cpu())
                if embeddings:
                    embs.append(out["embedding"].float().cpu())
        p = torch.cat(probs) if probs else torch.zeros(0, 2 if task == "multilabel" else 1)
        if task == "multilabel":
            t = thresholds or [0.5, 0.5]
            pred = multilabel_to_class((p[:, 0] >= t[0]).numpy(), (p[:, 1] >= t[1]).numpy())
            pred = [int(v) for v in pred]
        else:
            pred = p.argmax(-1).tolist()
        res = {"pred": pred, "probs": p}
        if embeddings:
            res["embedding"] = torch.cat(embs) if embs else torch.zeros(0)
        return res

    def validate(self) -> dict[str, Any]:
        from rsctool.metrics import choose_thresholds

        assert self.val_set is not None
        out = self.predict(self.model, self.val_set, self.opts.batch_size * 2, self.device,
                           self.opts.task, self.thresholds)
        if self.opts.task == "multilabel":
            t = choose_thresholds(out["probs"].numpy(), self.val_set.multilabel.numpy())
            self.thresholds = [float(t[0]), float(t[1])]
            out = self.predict(self.model, self.val_set, self.opts.batch_size * 2, self.device,
                               self.opts.task, self.thresholds)
        return selection_metrics(self.classes, self.val_set.targets.tolist(), out["pred"])

    def fit(self) -> TrainResult:
        opts = self.opts
        start_step = self.step
        self._bar = _Progress(self.progress, self.total_steps, self.step)
        try:
            while self.epoch < opts.epochs and self.step < self.total_steps:
                t0 = time.perf_counter()
                stats = self.train_epoch()
                row: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.step,
                                       "lr": self.optimizer.param_groups[0]["lr"], **stats}
                epoch_complete = self.step % self.steps_per_epoch == 0 or \
                    self.step >= self.total_steps
                improved = False
                if self.val_set is not None:
                    m = self.validate()
                    row.update(val_score=m["score"], val_sp=m["sp"], val_se=m["se"],
                               val_accuracy=m["accuracy"], val_select=m["select"])
                    sel = m["select"] if m["select"] is not None else 0.0
                    improved = self.best_select is None or sel > self.best_select
                else:
                    improved = True
                row["seconds"] = time.perf_counter() - t0
                self.history.append(row)
                if epoch_complete:
                    self.epoch += 1
                if improved:
                    self.best_select = row.get("val_select")
                    self.best_epoch = row["epoch"]
                    self.bad_epochs = 0
                    self.save("best.safetensors", full=False)
                else:
                    self.bad_epochs += 1
                self.save("last.safetensors")
                self._write_history()
                self.project.update_record("runs", self.run_name, epoch=self.epoch,
                                           step=self.step, best_score=self.best_select,
                                           best_epoch=self.best_epoch)
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


def _loader_generator(seed: int, epoch: int = 0) -> Any:
    """A DataLoader's own generator: without one, creating the loader draws its worker
    base seed from the global RNG, and a resumed run (which creates one more loader
    mid-epoch) would drift from the uninterrupted one."""
    import torch

    return torch.Generator().manual_seed(int(seed) * 7919 + int(epoch))


def _epoch_line(row: dict[str, Any]) -> str:
    parts = [f"epoch {row['epoch']}", f"loss {row['train_loss']:.4f}"]
    for k in ("val_score", "val_sp", "val_se", "val_accuracy"):
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
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def run(project: Any, opts: TrainOptions, *, device: str = "auto", progress: bool = False,
        force: bool = False, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume, or skip) a run; records it in the project file."""
    log = log or (lambda msg: None)
    opts = opts.resolve()
    dev = resolve_device(device)
    runs = project.section("runs")
    resume_from: Path | None = None
    name: str | None = None
    if opts.run is not None and opts.run in runs:
        rec = runs[opts.run]
        name = opts.run
        run_dir = (project.abs(rec["dir"]) if rec.get("dir")
                   else project.state_dir() / "runs" / name)
        last = run_dir / "last.safetensors"
        if rec.get("status") == "done" and not force:
            return TrainResult(name, run_dir, project.abs(rec["best"]) if rec.get("best")
                               else None, rec.get("best_score"), int(rec.get("epoch", 0)),
                               int(rec.get("step", 0)), skipped=True)
        if rec.get("status") != "done" and last.exists() and not force:
            # Resume with the options the run was started with.
            from rsctool.checkpoint import load_checkpoint

            opts = TrainOptions(**load_checkpoint(last).state["config"]["options"])
            resume_from = last
    _seed_everything(opts.seed, opts.deterministic)
    # Build everything (dataset, model, loss) before touching the project file, so a bad
    # option fails with the project byte-identical.
    trainer = Trainer(project, opts, name or "(new)", Path(), dev, progress=progress, log=log)
    if name is None:
        name = project.reserve_name("runs", opts.run or opts.model,
                                    {"model": opts.model, "status": "running"})
        opts.run = name
        run_dir = project.state_dir() / "runs" / name
    trainer.run_name, trainer.dir = name, run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume_from is not None:
        trainer.restore(resume_from)
        log(f"resuming run {name!r} at epoch {trainer.epoch + 1}, step {trainer.step}")
    config = trainer.run_config()
    atomic_write_json(run_dir / "config.json", config)
    project.update_record(
        "runs", name, model=opts.model, dataset=trainer.dataset_name, status="running",
        dir=project.rel(run_dir), last=project.rel(run_dir / "last.safetensors"),
        best=project.rel(run_dir / "best.safetensors"), task=opts.task,
        classes=trainer.classes, device=dev, seed=opts.seed,
        params_hash=params_hash(asdict(opts)),
        dataset_sha256=project.get("datasets", trainer.dataset_name).get("sha256"),
        split_hash=project.get("datasets", trainer.dataset_name).get("split_hash"))
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            trainer.save("last.safetensors")
            project.update_record("runs", name, status="interrupted", epoch=trainer.epoch,
                                  step=trainer.step)
        raise
    project.update_record("runs", name, status="done", epoch=result.epochs_done,
                          step=result.steps, best_score=result.best_score)
    atomic_write_json(run_dir / "summary.json", {
        "run": name, "best_score": result.best_score, "best_epoch": trainer.best_epoch,
        "epochs": result.epochs_done, "steps": result.steps, "history": result.history})
    return result


# --------------------------------------------------------------------------- command

def _parse_sets(items: list[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``--set key=value``: ``model.KEY`` and ``loss.KEY`` go to the model/loss config,
    anything else must be a TrainOptions field. Values are parsed as JSON when they can
    be (numbers, true/false, lists), else kept as strings; never evaluated as code."""
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
    return model_cfg, loss_cfg, top


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


def command(
    ctx: typer.Context,
    *,
    model: Annotated[str | None, typer.Option(
        help="Model name: ast, grf, film, tafilm, softfilm, add, cnn, resnet.")] = None,
    size: Annotated[str | None, typer.Option(
        help="Model size (tiny, small, base; default per model).")] = None,
    pretrained: Annotated[str | None, typer.Option(
        help="Hub id or local directory of pretrained weights; 'none' for random init.")
    ] = None,
    dataset: Annotated[str | None, typer.Option(
        help="Dataset name in the project (default: the last analysed).")] = None,
    run_name: Annotated[str | None, typer.Option(
        "--run", help="Run name; an unfinished run of that name is resumed.")] = None,
    config: Annotated[Path | None, typer.Option(
        help="TOML file with train options (a [train] table or top-level keys).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default 50).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (default 16).")] = None,
    lr: Annotated[float | None, typer.Option(
        help="Peak learning rate (default 3e-5 for AST/ADD, 1e-3 for CNNs).")] = None,
    task: Annotated[str | None, typer.Option(
        help="multiclass (4-way softmax) or multilabel (crackle/wheeze sigmoids).")] = None,
    loss: Annotated[str | None, typer.Option(
        help="ce, focal, bce, ghm or bias-denoising.")] = None,
    balanced: Annotated[bool | None, typer.Option(
        "--balanced/--no-balanced", help="Class-balanced sampling.")] = None,
    norm: Annotated[str | None, typer.Option(
        help="Feature normalisation: audioset (-4.27/4.57) or dataset (train statistics).")
    ] = None,
    patience: Annotated[int | None, typer.Option(
        help="Early stopping after this many epochs without validation gain (0: off).")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(
        help="Stop after this many optimizer steps (quick runs).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Any option as KEY=VALUE; model.KEY / loss.KEY for model/loss config.")
    ] = None,
    deterministic: Annotated[bool, typer.Option(
        help="Deterministic algorithms (bit-exact reruns on CPU).")] = False,
    force: Annotated[bool, typer.Option(help="Retrain a finished run from scratch.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
    = False,
) -> None:
    """Train a classifier on the dataset registered by `rsctool analyze` (resumable)."""
    state = get_state(ctx)
    values: dict[str, Any] = _load_config_file(config)
    model_cfg, loss_cfg, top = _parse_sets(set_ or [])
    values.update(top)
    cli = {"model": model, "size": size, "dataset": dataset, "run": run_name,
           "epochs": epochs, "batch_size": batch_size, "lr": lr, "task": task, "loss": loss,
           "balanced": balanced, "norm": norm, "patience": patience, "max_steps": max_steps}
    values.update({k: v for k, v in cli.items() if v is not None})
    if pretrained is not None:
        values["pretrained"] = pretrained  # "none" (random init) is the builder's to read
    values["model_cfg"] = {**values.get("model_cfg", {}), **model_cfg}
    values["loss_cfg"] = {**values.get("loss_cfg", {}), **loss_cfg}
    values["seed"] = values.get("seed", state.seed)
    if deterministic:
        values["deterministic"] = True
    try:
        opts = TrainOptions(**values)
    except TypeError as e:
        raise ConfigError(f"invalid train options: {e}") from None
    project = state.load_project(must_exist=True)
    lines: list[str] = []

    def log(msg: str) -> None:
        lines.append(msg)
        info(state, msg)

    result = run(project, opts, device=state.device, progress=not state.quiet and not json_out,
                 force=force, log=log)
    doc = {"run": result.run, "dir": str(result.dir), "best": str(result.best),
           "best_score": result.best_score, "epochs": result.epochs_done,
           "steps": result.steps, "skipped": result.skipped, "resumed": result.resumed}
    if json_out:
        print_json(doc)
    if result.skipped:
        info(state, f"run {result.run!r} is already done: nothing to do (--force retrains)")
    else:
        score = "n/a" if result.best_score is None else f"{result.best_score:.4f}"
        info(state, f"run {result.run!r}: best validation score {score}; "
                    f"checkpoints in {result.dir}")
