"""`rsctool eval`: score a trained run on the test (or validation) split.

The model is rebuilt from the config stored in the run's checkpoint and fed exactly as
in training: the clip length, filter bank and normalisation statistics and the metadata
encoder all come from the checkpoint, never from the evaluated data, and a multilabel
run's crackle/wheeze thresholds are the ones chosen on validation during training. The
test split is touched here and nowhere else; nothing here tunes anything on it.

Outputs, in the run directory (``<tag>`` is the split, plus ``_last`` for the last
checkpoint): ``metrics_<tag>.json`` (the `--json` document), ``predictions_<tag>.jsonl``
(one line per cycle: id, label, pred, class probabilities, device, site) and PNG plots
under ``plots/`` (confusion matrix, training curves, t-SNE of the embeddings, FiLM
gamma/beta statistics, SoftFiLM masks). A summary (``eval_<tag>_score`` ...) goes into
the run's record in the project file. `rsctool eval --runs A 'cnn*'` evaluates several
runs and prints one comparison table. Re-evaluating an unchanged checkpoint on an
unchanged manifest is a no-op unless ``--force``.

Cross-dataset evaluation (`--dataset OTHER`): the run scored on another analysed dataset of
the project, seen through a label map (`rsctool.data.labelmap`), with the run's classes,
metrics and feature settings; its outputs carry ``_on_<OTHER>`` in the tag and a
``cross_dataset`` block naming the map. Several runs or datasets make the cross-dataset
table (rows: runs and their training sets, columns: test sets, cells: Score).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from rsctool import __version__
from rsctool.console import err_console, get_state, info, print_json, warn
from rsctool.errors import ConfigError, DataError
from rsctool.runs import LoadedRun, checkpoint_path, load_run, rebuild_model, select_runs
from rsctool.utils import atomic_write_json, atomic_write_text, params_hash

if TYPE_CHECKING:
    from rsctool.project import Project

SPLITS = ("test", "val")
#: `--split all` (cross-dataset only): every split of a dataset the run was not trained on.
CROSS_SPLITS = (*SPLITS, "all")
#: What `--plots` can ask for: ``standard`` (confusion, training curves, t-SNE, FiLM)
#: and ``ghm`` (the GHM loss's bin statistics); ``all`` is both, ``none`` neither.
PLOT_KINDS = ("standard", "ghm")
CHECKPOINTS = ("best", "last")
#: `--protocol`: ``honest`` (default: only the validation-selected checkpoint) or ``paper``
#: (also the seeds' test-selected epoch, labelled optimistic; needs kept epochs).
PROTOCOLS = ("honest", "paper")
#: How a run keeps the per-epoch weights `--protocol paper` scores.
KEEP_EPOCHS_OPTION = "--set keep_epochs=true"
#: Bumped when the metrics document changes shape or a metric's definition changes, so
#: stored results are recomputed (3: SPRSound SE without poor-quality records; 4: record-
#: level datasets scored per recording).
DOC_VERSION = 4
#: Columns of the comparison table (`--runs`, `--group`, `--csv`).
TABLE_COLUMNS = ("run", "model", "group", "seed", "dataset", "split", "split_spec",
                 "split_hash", "checkpoint", "n", "specificity", "sensitivity", "score",
                 "two_class_score", "accuracy", "pairwise_accuracy", "spearman")
#: Extra comparison/CSV columns of runs evaluated with `--protocol paper` (only then).
PAPER_COLUMNS = ("paper_test_selected_optimistic_epoch", "paper_test_selected_optimistic_sp",
                 "paper_test_selected_optimistic_se", "paper_test_selected_optimistic_score")
#: The metrics a seed group's summary gives mean and standard deviation of.
GROUP_METRICS = ("specificity", "sensitivity", "score", "two_class_score", "accuracy")


@dataclass
class EvalOptions:
    """What to evaluate and how.

    Attributes:
        run: one run name (default: the last finished run in the project).
        runs: run names or glob patterns (``cnn*``) to evaluate and compare; comma
            separated lists are split.
        split: ``test`` or ``val``.
        checkpoint: ``best`` (selected on validation) or ``last``.
        plots: which PNG plots to write into the run's ``plots/`` folder: True or
            ``"all"`` (every kind that applies), False or ``"none"``, or kinds from
            `PLOT_KINDS` (``"ghm"``, ``"standard,ghm"``).
        ghm_epochs: epochs compared in the GHM comparison plot (default: up to four,
            evenly spread from the first to the last).
        batch_size: inference batch size.
        tsne_max_points: t-SNE on at most this many cycles (a seeded subsample above).
        seed: seeds the t-SNE subsample and initialisation.
        force: re-evaluate even when stored metrics match the checkpoint and manifest.
        precision: compute precision of the model: ``auto`` (bf16 where the CPU has bf16
            units or the GPU supports it), ``fp32`` or ``bf16``
            (`rsctool.devices.resolve_precision`). In bf16 the first `parity_cycles`
            cycles are also predicted in fp32 and the difference is recorded.
        parity_cycles: cycles compared between bf16 and fp32 (bf16 only).
        csv: write the comparison table to this CSV file.
        group: a seed group (`rsctool train --seeds`): evaluate every run in it and
            report mean and standard deviation over the seeds.
        datasets: score the run(s) on these other datasets of the project (cross-dataset
            evaluation; comma separated lists are split); a run's own dataset in the list
            is its ordinary evaluation.
        label_map: with `datasets`: a built-in label map name or TOML file that maps the
            other datasets' labels onto the run's classes (a map recorded by
            ``analyze --map`` comes first).
        protocol: ``honest`` (the validation-selected or last checkpoint only) or
            ``paper``: also score every kept epoch (``train --set keep_epochs=true``)
            on the test split and report the best one as the seeds do, labelled
            test-selected and optimistic (see `paper_protocol`).
    """

    run: str | None = None
    runs: list[str] = field(default_factory=list)
    group: str | None = None
    split: str = "test"
    checkpoint: str = "best"
    plots: bool | str = "all"
    ghm_epochs: list[int] | None = None
    batch_size: int = 32
    tsne_max_points: int = 3000
    seed: int = 0
    force: bool = False
    csv: Path | None = None
    datasets: list[str] = field(default_factory=list)
    label_map: str | None = None
    protocol: str = "honest"
    precision: str = "auto"
    parity_cycles: int = 64

    def validate(self) -> EvalOptions:
        from rsctool.devices import check_precision

        check_precision(self.precision)
        self.datasets = list(dict.fromkeys(
            d.strip() for item in self.datasets for d in str(item).split(",") if d.strip()))
        _validate_cross(self)
        if self.split not in SPLITS and not (self.datasets and self.split in CROSS_SPLITS):
            raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r} "
                              "(the train split is never evaluated)")
        if self.checkpoint not in CHECKPOINTS:
            raise ConfigError(f"--checkpoint must be one of {', '.join(CHECKPOINTS)}, "
                              f"got {self.checkpoint!r}")
        if sum((self.run is not None, bool(self.runs), self.group is not None)) > 1:
            raise ConfigError("give one of --run NAME, --runs NAMES... or --group NAME, "
                              "not both")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got "
                              f"{self.protocol!r}")
        if self.protocol == "paper" and self.split != "test":
            raise ConfigError("--protocol paper selects the epoch on the test split, as the "
                              "seed papers do; use it with --split test")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        self.plot_kinds  # noqa: B018 - validates --plots
        if self.tsne_max_points < 2:
            raise ConfigError(f"--tsne-max-points must be >= 2, got {self.tsne_max_points}")
        return self

    @property
    def plot_kinds(self) -> tuple[str, ...]:
        """The plot kinds `plots` asks for (ConfigError for an unknown one)."""
        p = self.plots
        if p is True or p == "all":
            return PLOT_KINDS
        if p is False or p in ("none", None, ""):
            return ()
        kinds = [k.strip() for k in str(p).split(",") if k.strip()]
        bad = [k for k in kinds if k not in PLOT_KINDS]
        if bad:
            raise ConfigError(f"--plots: unknown kind {bad[0]!r}; use all, none, or "
                              f"{', '.join(PLOT_KINDS)} (comma separated)")
        return tuple(k for k in PLOT_KINDS if k in kinds)

    @property
    def ghm_explicit(self) -> bool:
        """GHM plots asked for by name (not just as part of "all")."""
        return isinstance(self.plots, str) and "ghm" in self.plots

    @property
    def compare(self) -> bool:
        """Comparison mode: --runs or --group given (JSON output is then a list, or the
        group summary)."""
        return bool(self.runs) or self.group is not None or len(self.datasets) > 1


@dataclass
class EvalResult:
    """`results`: one metrics document per run (see `evaluate_run`); `table`: the
    comparison rows (`comparison_row`); `csv`: the CSV written, if any."""

    results: list[dict[str, Any]]
    table: list[dict[str, Any]]
    compare: bool
    csv: Path | None = None
    group: dict[str, Any] | None = None  # `group_summary`, with --group
    cross: dict[str, Any] | None = None  # `cross_table`, with --dataset and several cells


# --------------------------------------------------------------------------- runs

def _run_files(files: dict[str, Any], run_dir: Path, *, absolute: bool = False
               ) -> dict[str, Any]:
    """The ``files`` of a metrics document relative to `run_dir` (as stored, so that a
    moved project folder still finds them), or back to absolute paths."""
    def one(p: str) -> str:
        return (str(run_dir / p) if absolute
                else Path(os.path.relpath(p, run_dir)).as_posix())

    return {k: [one(p) for p in v] if isinstance(v, list) else
            one(v) if isinstance(v, str) else v for k, v in files.items()}


# --------------------------------------------------------------------------- t-SNE

def _joint_probabilities(x: np.ndarray, perplexity: float, tol: float = 1e-5,
                         max_iter: int = 100) -> np.ndarray:
    """Symmetric t-SNE affinities P `(N, N)` (float64, sums to 1) of points `x` `(N, D)`.

    Each row's Gaussian precision beta is found by bisection (all rows at once) so that
    the conditional distribution p(j | i) has entropy log(perplexity) nats.
    """
    n = x.shape[0]
    sq = (x * x).sum(1)
    d = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    np.fill_diagonal(d, np.inf)
    # Shifting a row by its smallest distance leaves p(j | i) unchanged and keeps exp()
    # from underflowing for far-away points.
    d -= d.min(axis=1, keepdims=True)
    np.fill_diagonal(d, 0.0)
    off = ~np.eye(n, dtype=bool)
    target = math.log(perplexity)
    beta = 1.0 / np.maximum(d.sum(1) / (n - 1), 1e-12)
    lo = np.zeros(n)
    hi = np.full(n, np.inf)
    p = np.empty_like(d)
    for _ in range(max_iter):
        np.multiply(d, -beta[:, None], out=p)
        np.exp(p, out=p)
        p *= off
        sum_p = np.maximum(p.sum(1), 1e-300)
        h = np.log(sum_p) + beta * (d * p).sum(1) / sum_p
        diff = h - target
        if np.all(np.abs(diff) < tol):
            break
        # Entropy too high: the distribution is too flat, so sharpen it (raise beta).
        up = diff > 0
        lo = np.where(up, beta, lo)
        hi = np.where(up, hi, beta)
        beta = np.where(np.isinf(hi), beta * 2.0, (lo + hi) / 2.0)
    p /= np.maximum(p.sum(1, keepdims=True), 1e-300)
    p = (p + p.T) / (2.0 * n)
    return np.maximum(p, 1e-12)


def tsne(x: Any, *, perplexity: float = 30.0, n_iter: int = 1000, seed: int = 0,
         pca_dims: int = 50, device: str = "cpu") -> tuple[np.ndarray, float]:
    """Exact t-SNE (van der Maaten & Hinton 2008) of `x` `(N, D)` -> `(N, 2)`.

    O(N^2) time and memory per iteration, meant for N up to a few thousand (callers
    subsample above that). The input is centred and reduced to `pca_dims` principal
    components; affinities use a per-point perplexity bisection (perplexity is capped at
    (N - 1) / 3); the map is optimised by gradient descent with momentum (0.5, then 0.8),
    per-parameter gains, early exaggeration 12 for the first 250 iterations and learning
    rate max(N / 48, 50) (the "auto" rule), stopping early once the KL divergence has not
    improved for 300 iterations. The optimisation runs in numpy (float32) on ``cpu`` and
    in torch on ``cuda`` (the same arithmetic). Seeded: same input and seed, same map.

    Returns:
        ``(coords, kl)``: `(N, 2)` float64 coordinates and the final KL(P || Q).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"tsne: expected an (N, D) array, got shape {x.shape}")
    n = x.shape[0]
    if n < 3:
        return np.zeros((n, 2)), 0.0
    if not np.all(np.isfinite(x)):
        raise DataError("tsne: the embeddings contain NaN or inf")
    x = x - x.mean(0)
    if x.shape[1] > pca_dims:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        x = x @ vt[:pca_dims].T
    perplexity = float(min(perplexity, max(1.0, (n - 1) / 3.0)))
    p_np = _joint_probabilities(x, perplexity).astype(np.float32)
    y_np = (np.random.default_rng(seed).standard_normal((n, 2)) * 1e-4).astype(np.float32)
    if device == "cuda":
        import torch

        xp: Any = torch
        p, y = (torch.as_tensor(a, device="cuda") for a in (p_np, y_np))
    else:
        xp, p, y = np, p_np, y_np
    diag = xp.arange(n)
    update = y * 0.0
    gains = update + 1.0
    exaggeration, exaggeration_iters = 12.0, min(250, n_iter // 4)
    lr = max(n / exaggeration / 4.0, 50.0)
    best_kl, best_it, kl = math.inf, 0, math.nan
    num = z = None
    for it in range(n_iter):
        exag = exaggeration if it < exaggeration_iters else 1.0
        momentum = 0.5 if it < exaggeration_iters else 0.8
        # num_ij = 1 / (1 + |y_i - y_j|^2), the Student-t kernel; Q = num / sum(num).
        sq = (y * y).sum(1)
        num = y @ y.T
        num *= -2.0
        num += sq[:, None]
        num += sq[None, :]
        num = 1.0 / (1.0 + num.clip(0.0, None))
        num[diag, diag] = 0.0
        z = float(num.sum())
        # grad_i = 4 sum_j (exag * p_ij - q_ij) num_ij (y_i - y_j)
        pq = (p * exag if exag != 1.0 else p) - num * (1.0 / z)
        pq *= num
        grad = 4.0 * (pq.sum(1)[:, None] * y - pq @ y)
        gains = xp.where(xp.sign(grad) == xp.sign(update), gains * 0.8, gains + 0.2)
        gains = gains.clip(0.01, None)
        update = momentum * update - lr * (gains * grad)
        y = y + update
        y = y - y.mean(0)
        if it >= exaggeration_iters and (it % 50 == 0 or it == n_iter - 1):
            kl = _kl(xp, p, num, z)
            if kl < best_kl - 1e-6:
                best_kl, best_it = kl, it
            elif it - best_it >= 300:
                break
    if not math.isfinite(kl):
        kl = _kl(xp, p, num, z)
    coords = y.cpu().numpy() if device == "cuda" else y
    return np.asarray(coords, dtype=np.float64), kl


def _kl(xp: Any, p: Any, num: Any, z: float) -> float:
    """KL(P || Q) with Q = num / z."""
    q = (num * (1.0 / z)).clip(1e-12, None)
    return float((p * xp.log(p / q)).sum())


# --------------------------------------------------------------------------- FiLM stats

def film_statistics(model: Any, meta: dict[str, Any], groups: Sequence[str] | None = None,
                    batch_size: int = 256, device: str = "cpu") -> dict[str, Any] | None:
    """Per-layer statistics of the FiLM (gamma, beta) a film/tafilm/softfilm model
    generates for the metadata batch `meta` (one row per cycle).

    Uses the model's `condition(meta)` (``rsctool.models.conditioning.ConditionedAST``),
    which returns ``gamma``/``beta`` `(B, L, D)` for the L conditioned blocks (TAFiLM also
    ``gamma_cls``/``beta_cls`` for the CLS/distillation tokens); gamma = 1 + dgamma.
    Models without FiLM (grf, ast, cnn, ...) return None.

    Returns (JSON-safe)::

        layers: block indices; n: cycles;
        groups: {"patch"|"cls"|"all": {gamma_mean, gamma_std, gamma_abs_dev (mean |gamma-1|),
                 gamma_sample_std (mean over D of the std across cycles), beta_mean,
                 beta_std, beta_abs (mean |beta|), beta_sample_std}}   each a list over L
        by_device: {device: {n, gamma_shift, beta_shift}}  RMS over D of (device mean -
                 overall mean) per layer (only with `groups`)
    """
    import torch

    if not callable(getattr(model, "condition", None)) or not hasattr(model, "film_layers"):
        return None
    n = int(meta["device"].shape[0])
    if n == 0:
        return None
    group_names = sorted(set(groups)) if groups is not None else []
    gindex = ({g: i for i, g in enumerate(group_names)} if groups is not None else {})
    gid = (torch.tensor([gindex[g] for g in groups], dtype=torch.long)
           if groups is not None else None)
    acc: dict[str, dict[str, Any]] = {}
    model.eval()
    with torch.no_grad():
        for s in range(0, n, batch_size):
            batch = {k: v[s:s + batch_size].to(device) for k, v in meta.items()}
            state = model.condition(batch)
            for key_g, key_b, name in (("gamma", "beta", "patch"),
                                       ("gamma_cls", "beta_cls", "cls")):
                if key_g not in state:
                    continue
                gam = state[key_g].double().cpu()
                bet = state[key_b].double().cpu()
                a = acc.setdefault(name, {})
                for tag, t in (("gamma", gam), ("beta", bet)):
                    a[f"{tag}_sum"] = a.get(f"{tag}_sum", 0) + t.sum(0)
                    a[f"{tag}_sq"] = a.get(f"{tag}_sq", 0) + (t * t).sum(0)
                    ref = 1.0 if tag == "gamma" else 0.0
                    a[f"{tag}_abs"] = a.get(f"{tag}_abs", 0) + (t - ref).abs().sum((0, 2))
                    if gid is not None:
                        part = torch.zeros(len(group_names), *t.shape[1:], dtype=t.dtype)
                        part.index_add_(0, gid[s:s + batch_size], t)
                        a[f"{tag}_gsum"] = a.get(f"{tag}_gsum", 0) + part
    if not acc:
        return None
    out_groups: dict[str, Any] = {}
    for name, a in acc.items():
        row: dict[str, Any] = {}
        for tag in ("gamma", "beta"):
            mean_ld = a[f"{tag}_sum"] / n  # (L, D)
            var_ld = (a[f"{tag}_sq"] / n - mean_ld ** 2).clamp_min(0.0)
            mean_l = mean_ld.mean(1)
            var_l = (a[f"{tag}_sq"].mean(1) / n - mean_l ** 2).clamp_min(0.0)
            row[f"{tag}_mean"] = mean_l.tolist()
            row[f"{tag}_std"] = var_l.sqrt().tolist()
            row[f"{tag}_sample_std"] = var_ld.sqrt().mean(1).tolist()
            row["gamma_abs_dev" if tag == "gamma" else "beta_abs"] = (
                a[f"{tag}_abs"] / (n * mean_ld.shape[1])).tolist()
        out_groups[name] = row
    out: dict[str, Any] = {"layers": [int(i) for i in model.film_layers], "n": n,
                           "groups": out_groups,
                           "accessor": "model.condition(meta) -> gamma/beta (B, L, D)"}
    if gid is not None:
        counts = torch.bincount(gid, minlength=len(group_names))
        main = acc["patch"] if "patch" in acc else next(iter(acc.values()))
        by: dict[str, Any] = {}
        for i, g in enumerate(group_names):
            k = int(counts[i])
            entry: dict[str, Any] = {"n": k}
            for tag in ("gamma", "beta"):
                overall = main[f"{tag}_sum"] / n
                dev_mean = main[f"{tag}_gsum"][i] / max(k, 1)
                entry[f"{tag}_shift"] = ((dev_mean - overall) ** 2).mean(1).sqrt().tolist()
            by[g] = entry
        out["by_device"] = by
    return out


# --------------------------------------------------------------------------- evaluation

def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100.0 * v:.2f}"


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    """Compact metrics of a group (per device / site)."""
    two = m.get("two_class") or {}
    return {"n": m["n"], "specificity": m["sp"], "sensitivity": m["se"], "score": m["score"],
            "accuracy": m["accuracy"], "two_class_score": two.get("score"),
            "support": m["support"]}


def _class_probs(probs: np.ndarray, task: str, classes: Sequence[str]) -> np.ndarray:
    """`(N, C)` class probabilities. Multilabel runs output independent crackle/wheeze
    sigmoids; the four ICBHI classes then get (1-c)(1-w), c(1-w), (1-c)w, cw."""
    if task != "multilabel":
        return probs
    c, w = probs[:, 0], probs[:, 1]
    return np.stack([(1 - c) * (1 - w), c * (1 - w), (1 - c) * w, c * w], axis=1)


def _predict(loaded: LoadedRun, dataset: Any, batch_size: int, device: str,
             progress: bool) -> dict[str, Any]:
    """`rsctool.inference.predict` over the dataset in chunks, so a progress bar can advance."""
    import torch

    from rsctool.inference import predict

    n = len(dataset)
    chunk = batch_size * 4
    bar = None
    if progress and n > chunk:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        bar = Progress("[progress.description]{task.description}", BarColumn(),
                       MofNCompleteColumn(), TimeRemainingColumn(), console=err_console,
                       transient=True)
        task = bar.add_task(f"eval {loaded.name}", total=n)
        bar.start()
    preds: list[int] = []
    probs, embs = [], []
    try:
        for s in range(0, n, chunk):
            sub = torch.utils.data.Subset(dataset, list(range(s, min(n, s + chunk))))
            out = predict(loaded.model, sub, batch_size, device, loaded.task,
                          loaded.thresholds, embeddings=True)
            preds += [int(p) for p in out["pred"]]
            probs.append(out["probs"])
            embs.append(out["embedding"])
            if bar is not None:
                bar.advance(task, len(sub))
    finally:
        if bar is not None:
            bar.stop()
    return {"pred": preds, "probs": torch.cat(probs).numpy().astype(np.float64),
            "embedding": torch.cat(embs).numpy()}


def precision_parity(loaded: LoadedRun, dataset: Any, out: dict[str, Any], batch_size: int,
                     device: str, cycles: int) -> dict[str, Any]:
    """How far reduced-precision predictions `out` (of `_predict` on `dataset`) are from
    fp32 ones, on the first `cycles` cycles (as `export --quantize` reports its accuracy
    change): ``{n, probs_max_abs, label_agreement}`` (max abs difference of the class
    probabilities, or of the scores of a ranking run; fraction of equal labels)."""
    import torch

    n = min(len(dataset), max(0, cycles))
    if n == 0:
        return {"n": 0, "probs_max_abs": None, "label_agreement": None}
    ref = _predict(loaded, torch.utils.data.Subset(dataset, list(range(n))), batch_size,
                   device, False)
    diff = np.abs(ref["probs"] - out["probs"][:n])
    same = np.asarray(ref["pred"]) == np.asarray(out["pred"][:n])
    return {"n": n, "probs_max_abs": float(diff.max()), "label_agreement": float(same.mean())}


def _inputs_hash(loaded: LoadedRun, record: dict[str, Any], opts: EvalOptions,
                 kinds: Sequence[str], precision: str, cross: Any, kept: list) -> str:
    """What stored metrics must have been computed from to be up to date: checkpoint,
    manifest and split, options that change the result, precision, cross target, kept
    epochs. Keys appear only where they differ from before they existed, so stored
    results of older versions stay valid."""
    from rsctool.data.manifest import file_sha256

    return params_hash({
        **({"ghm_epochs": list(opts.ghm_epochs)} if "ghm" in kinds and opts.ghm_epochs
           else {}),
        "doc": DOC_VERSION, "version": __version__,
        "checkpoint": file_sha256(loaded.checkpoint), "manifest": record.get("sha256"),
        "split": opts.split, "split_hash": record.get("split_hash"),
        "tsne_max_points": opts.tsne_max_points, "seed": opts.seed,
        # bf16 results differ slightly from fp32 ones; fp32 keeps the hashes of before
        **({"precision": precision} if precision != "fp32" else {}),
        **({"cross": cross.info} if cross is not None else {}),
        # only with --protocol paper, so stored honest results stay valid
        **({"protocol": "paper", "kept": [(p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                          for _, p in kept]} if kept else {})})


def _predict_in_precision(loaded: LoadedRun, dataset: Any, opts: EvalOptions, precision: str,
                          device: str, progress: bool
                          ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """`_predict` in `precision` (resolved ``fp32``/``bf16``), and in bf16 its
    `precision_parity` against fp32 on the first ``opts.parity_cycles`` cycles (else None)."""
    from rsctool.devices import inference_precision

    with inference_precision(precision, device, loaded.model):
        out = _predict(loaded, dataset, opts.batch_size, device, progress)
    parity = (precision_parity(loaded, dataset, out, opts.batch_size, device,
                               opts.parity_cycles) if precision != "fp32" else None)
    return out, parity


def evaluate_run(project: Project, name: str, opts: EvalOptions, *, device: str = "cpu",
                 progress: bool = False, log: Callable[[str], None] | None = None,
                 other: str | None = None) -> dict[str, Any]:
    """Evaluate run `name` on ``opts.split``; write its outputs; return the metrics doc.

    `other`: score the run on that dataset of the project instead (`_cross_target`); the
    document then has a ``cross_dataset`` block and its files an ``_on_<other>`` tag.

    The document (also ``metrics_<tag>.json``)::

        run, model, dataset, dataset_format, split, split_spec, official_split,
        split_hash, group (seed group, or null), seed, norm, checkpoint, checkpoint_epoch,
        task, thresholds, n, classes,
        specificity, sensitivity, score, accuracy, macro_recall, per_class_recall,
        support, confusion (rows true, cols predicted),
        two_class {specificity, sensitivity, score, confusion [[TN, FP], [FN, TP]]},
        aggregation {unit "record", windows, window, hop, method "mean probability"} or
        null (record-level datasets, `_eval_windows`: the metrics count recordings),
        sprsound {task, se, sp, as, hs, score, per_set {set: {n, se, sp, as, hs, score}}
        or null} (SPRSound datasets, `_sprsound_block`),
        per_device / per_site {group: {n, specificity, sensitivity, score, accuracy,
        two_class_score, support}}, film (FiLM models), softfilm (SoftFiLM),
        tsne {n, perplexity, kl}, files {metrics, predictions, plots}, seconds

    Ratios with an empty denominator are null (e.g. Se on a split without abnormal cycles).
    """
    from rsctool.data.dataset import CycleDataset, feature_cache
    from rsctool.devices import resolve_precision

    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    precision = resolve_precision(opts.precision, device)
    loaded = load_run(project, name, opts.checkpoint, device)
    kept = kept_epochs(loaded.dir) if opts.protocol == "paper" else []
    if opts.protocol == "paper" and not kept:
        raise ConfigError(f"--protocol paper: run {name!r} kept no per-epoch checkpoints "
                          f"({loaded.dir / 'epochs'}); retrain it with `rsctool train "
                          f"{KEEP_EPOCHS_OPTION}`")
    cross = _cross_target(project, loaded, opts, other)
    ds_name, record, cycles = (_eval_cycles(project, loaded, opts) if cross is None
                               else (cross.name, cross.record, cross.cycles))

    tag = _eval_tag(opts, cross)
    run_dir = loaded.dir
    metrics_path = run_dir / f"metrics_{tag}.json"
    pred_path = run_dir / f"predictions_{tag}.jsonl"
    plot_dir = run_dir / "plots"
    kinds, ghm_stats = _ghm_plot_kinds(loaded, opts)
    inputs_hash = _inputs_hash(loaded, record, opts, kinds, precision, cross, kept)
    if not opts.force:
        old = _stored_doc(metrics_path, pred_path, run_dir, inputs_hash, kinds)
        if old is not None:
            log(f"run {name!r}: {opts.split} metrics are up to date ({metrics_path}); "
                "--force re-evaluates")
            old["skipped"] = True
            return old

    enc = loaded.encoder if loaded.config.needs_metadata else None
    if loaded.config.needs_metadata and enc is None:
        raise DataError("checkpoint of a metadata model lacks its metadata encoder",
                        loaded.checkpoint)
    agg, items = _eval_windows(loaded, record, cycles)
    dataset = CycleDataset(items, loaded.classes, loaded.clip,
                           feature_cache(project.state_dir()), enc, loaded.task)
    out, parity = _predict_in_precision(loaded, dataset, opts, precision, device, progress)
    out, y_true = _aggregate_records(out, dataset, cycles, agg)
    doc = _metrics_doc(loaded, ds_name, record if cross is None else cross.metrics_record,
                       cycles, y_true, out, opts)
    doc["precision"], doc["precision_parity"], doc["aggregation"] = precision, parity, agg
    if cross is not None:
        doc["dataset_format"] = record.get("format")
        doc["cross_dataset"] = cross.info
    _write_predictions(pred_path, cycles, doc["classes"], out, loaded.task)
    if kept:
        doc["paper_protocol"] = paper_protocol(project, loaded, dataset, kept,
                                               opts.batch_size, device)

    # FiLM / SoftFiLM analysis (metadata models only).
    devices = [c.device or "unknown" for c in dataset.cycles]  # windows of records
    film = (film_statistics(loaded.model, dataset.meta, devices, device=device)
            if dataset.meta is not None else None)
    if film is not None:
        doc["film"] = film
    mask_stats = getattr(loaded.model, "mask_stats", None)
    soft = mask_stats() if callable(mask_stats) else None
    if soft is not None:
        doc["softfilm"] = {k: v for k, v in soft.items() if k != "masks"}

    plots: list[str] = []
    if "standard" in kinds:
        plots = _write_plots(loaded, doc, out["embedding"], cycles, film, soft, plot_dir, tag,
                             opts, device, log)
    if "standard" in kinds and "paper_protocol" in doc:
        from rsctool.plots import paper_protocol_plot

        pp = doc["paper_protocol"]
        plots.append(str(paper_protocol_plot(
            pp, plot_dir / f"paper_protocol_{tag}.png",
            title=f"{name}: test Score per kept epoch; epoch {pp['epoch']} is "
                  "TEST-SELECTED (paper protocol, optimistic)")))
    if "ghm" in kinds and ghm_stats:
        plots += write_ghm_plots(ghm_stats, plot_dir / "ghm", run=name,
                                 epochs=opts.ghm_epochs)
    doc["plot_kinds"] = list(kinds)
    doc["files"] = {"metrics": str(metrics_path), "predictions": str(pred_path),
                    "plots": plots}
    doc["inputs_hash"] = inputs_hash
    doc["seconds"] = round(time.perf_counter() - t0, 3)
    atomic_write_json(metrics_path, {**doc, "files": _run_files(doc["files"], run_dir)})
    _record_eval(project, name, tag, doc, metrics_path)
    if cross is not None:
        _record_cross(project, name, tag, cross)
    doc["skipped"] = False
    return doc


def _eval_windows(loaded: LoadedRun, record: dict[str, Any], cycles: list
                  ) -> tuple[dict[str, Any] | None, list]:
    """The aggregation block and the items to predict: for a record-level dataset
    (`rsctool.data.windows.is_record_level`) and a multiclass or binary run, the windows
    of the recordings (the run's clip long, every half clip); else None and `cycles` (one
    clip per record for other tasks, with a warning)."""
    from rsctool.data import windows as rw

    if not rw.is_record_level(record):
        return None, cycles
    if loaded.task not in ("multiclass", "binary"):
        warn(f"run {loaded.name!r}: a {loaded.task} run is scored on one clip per "
             "recording of this record-level dataset (windows are aggregated for "
             "multiclass and binary runs only)")
        return None, cycles
    window = float(loaded.clip.clip_seconds)
    hop = rw.default_hop(window)
    windows = rw.record_windows(cycles, window, hop)
    return {"unit": "record", "windows": len(windows), "window": window, "hop": hop,
            "method": rw.AGGREGATION_METHOD}, windows


def _aggregate_records(out: dict[str, Any], dataset: Any, cycles: list,
                       agg: dict[str, Any] | None) -> tuple[dict[str, Any], list[int]]:
    """The predictions `out` of `dataset` and its targets, per recording when `agg` (the
    windows of `cycles`, `_eval_windows`): mean class probabilities (and embeddings)
    over each recording's windows, the argmax as its prediction, ``windows`` per
    recording. Else `out` and the targets as they are."""
    from collections import Counter

    from rsctool.data.windows import aggregate_windows, window_parents

    y_true = dataset.targets.tolist()
    if agg is None:
        return out, y_true
    parents = window_parents(dataset.cycles)
    ids, probs = aggregate_windows(parents, out["probs"])
    if ids != [c.id for c in cycles]:
        raise DataError("record ids are not unique in the manifest; cannot aggregate "
                        "windows per recording")
    first: dict[str, int] = {}
    for i, pid in enumerate(parents):
        first.setdefault(pid, i)
    counts = Counter(parents)
    emb = out.get("embedding")
    if emb is not None and len(emb) == len(parents):
        emb = aggregate_windows(parents, emb)[1].astype(np.float32)
    return ({"pred": [int(p) for p in probs.argmax(axis=1)], "probs": probs,
             "embedding": emb, "windows": [counts[r] for r in ids]},
            [y_true[first[r]] for r in ids])


def _eval_cycles(project: Project, loaded: LoadedRun, opts: EvalOptions
                 ) -> tuple[str, dict[str, Any], list]:
    """The run's dataset name and project record, and its cycles of ``opts.split``.

    Raises:
        ConfigError: the dataset is gone, was re-split since training, or has no cycles
            in the split.
    """
    from rsctool.datasets import load_dataset_cycles

    name = loaded.name
    ds_name = loaded.config.dataset or loaded.record.get("dataset")
    record = project.get("datasets", ds_name) if ds_name else None
    if record is None:
        raise ConfigError(f"run {name!r} was trained on dataset {ds_name!r}, which is no "
                          "longer in the project (re-run `rsctool analyze` with that name)")
    run_split = loaded.record.get("split_hash")
    if run_split and record.get("split_hash") and run_split != record["split_hash"]:
        # Another split assignment: test cycles may have been training cycles of this run.
        raise ConfigError(f"dataset {ds_name!r} was re-analysed with a different split since "
                          f"run {name!r} was trained; its {opts.split} split may overlap the "
                          "run's training data (retrain, or analyze it again with the old "
                          "split options)")
    if (loaded.record.get("dataset_sha256") and record.get("sha256")
            and loaded.record["dataset_sha256"] != record["sha256"]):
        warn(f"run {name!r}: the manifest of dataset {ds_name!r} changed since training "
             "(same split); evaluating on the current manifest")
    cycles = [c for c in load_dataset_cycles(project, record) if c.split == opts.split]
    if not cycles:
        raise ConfigError(f"dataset {ds_name!r} has no {opts.split} cycles"
                          + (" (analyze with --val-fraction > 0)" if opts.split == "val" else ""))
    if loaded.record.get("status") not in (None, "done"):
        warn(f"run {name!r} is {loaded.record.get('status')}: evaluating its current "
             f"{opts.checkpoint} checkpoint")
    return ds_name, record, cycles


def _ghm_plot_kinds(loaded: LoadedRun, opts: EvalOptions
                    ) -> tuple[tuple[str, ...], list[dict[str, Any]] | None]:
    """The plot kinds to write (``ghm`` dropped for a run without GHM statistics unless
    asked for by name) and the run's GHM statistics when they are plotted.

    Raises:
        ConfigError: GHM plots asked for by name but the run has none, or
            ``--ghm-epochs`` names epochs without statistics.
    """
    name = loaded.name
    kinds = opts.plot_kinds
    ghm_stats = load_ghm_stats(loaded) if "ghm" in kinds else None
    if "ghm" in kinds and not ghm_stats:
        if opts.ghm_explicit:
            raise ConfigError(f"--plots ghm: run {name!r} has no GHM statistics (they are "
                              "saved by runs trained with --loss ghm)")
        kinds = tuple(k for k in kinds if k != "ghm")
    if "ghm" in kinds and opts.ghm_epochs:
        have = sorted({int(st["epoch"]) for st in ghm_stats or []})
        missing = [e for e in opts.ghm_epochs if e not in have]
        if missing:
            raise ConfigError(f"--ghm-epochs: no GHM statistics for epoch(s) "
                              f"{', '.join(map(str, missing))} (run {name!r} has epochs "
                              f"{have[0]}-{have[-1]})")
    return kinds, ghm_stats


def _stored_doc(metrics_path: Path, pred_path: Path, run_dir: Path, inputs_hash: str,
                kinds: Sequence[str]) -> dict[str, Any] | None:
    """The stored metrics document when it is up to date (same inputs, and every plot
    kind asked for still on disk), else None."""
    if not (metrics_path.exists() and pred_path.exists()):
        return None
    try:
        old = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict):
        return None
    # stored relative to the run folder (it may have moved)
    old["files"] = _run_files(old.get("files") or {}, run_dir, absolute=True)
    old_kinds = set(old.get("plot_kinds", PLOT_KINDS))
    if (old.get("inputs_hash") == inputs_hash
            and (not kinds or (set(kinds) <= old_kinds
                               and old.get("files", {}).get("plots")
                               and all(Path(p).exists() for p in old["files"]["plots"])))):
        return old
    return None


def _metrics_doc(loaded: LoadedRun, ds_name: str, record: dict[str, Any], cycles: list,
                 y_true: list[int], out: dict[str, Any], opts: EvalOptions) -> dict[str, Any]:
    """The metrics document of the predictions `out` (see `evaluate_run`), without the
    plots, files and timing."""
    from rsctool.metrics import breakdown, icbhi_metrics

    name, config, classes = loaded.name, loaded.config, loaded.classes
    y_pred = out["pred"]
    m = icbhi_metrics(y_true, y_pred, classes)
    ranking = None
    if loaded.task == "ranking":
        from rsctool.metrics import pairwise_accuracy, spearman

        scores = out["probs"][:, 0]
        ranking = {"pairwise_accuracy": pairwise_accuracy(scores, y_true),
                   "spearman": spearman(scores, y_true)}
        if not loaded.thresholds:
            warn(f"run {name!r}: no score thresholds stored; every cycle gets the lowest "
                 "class")
    devices = [c.device or "unknown" for c in cycles]
    sites = [c.site or "unknown" for c in cycles]
    per_device = {k: _summary(v) for k, v in breakdown(y_true, y_pred, devices, classes).items()}
    per_site = {k: _summary(v) for k, v in breakdown(y_true, y_pred, sites, classes).items()}
    two = m["two_class"]
    spec = str(record.get("split", "unknown"))
    seed = config.seed if "seed" in (config.options or {}) else loaded.record.get("seed")
    doc: dict[str, Any] = {
        "run": name,
        "model": config.model.get("name", loaded.record.get("model")),
        "size": config.model.get("size"),
        "dataset": ds_name,
        "dataset_format": record.get("format"),
        "split": opts.split,
        "split_spec": spec,
        "official_split": spec == "official",
        "split_hash": record.get("split_hash"),
        "group": loaded.record.get("group"),
        "seed": seed,
        "norm": config.norm,
        "checkpoint": opts.checkpoint,
        "checkpoint_epoch": (loaded.state.get("best_epoch") if opts.checkpoint == "best"
                             else loaded.state.get("epoch")),
        "task": loaded.task,
        "thresholds": loaded.thresholds if loaded.task in ("multilabel", "ranking") else None,
        "thresholds_source": _thresholds_source(loaded),
        "n": m["n"],
        "classes": classes,
        "specificity": m["sp"],
        "sensitivity": m["se"],
        "score": m["score"],
        "accuracy": m["accuracy"],
        "macro_recall": m["macro_recall"],
        "per_class_recall": m["per_class_recall"],
        "support": m["support"],
        "predicted": m["predicted"],
        "confusion": m["confusion_matrix"],
        "two_class": None if two is None else {
            "specificity": two["sp"], "sensitivity": two["se"], "score": two["score"],
            "confusion": two["confusion_matrix"]},
        "per_device": per_device,
        "per_site": per_site,
    }
    if ranking is not None:
        doc.update(ranking)
    if record.get("format") == "sprsound" and "normal" in classes:
        doc["sprsound"] = _sprsound_block(record.get("task"), cycles, y_true, y_pred, classes)
    if loaded.task == "multilabel" and loaded.thresholds is None:
        warn(f"run {name!r}: no validation thresholds stored; using 0.5 / 0.5")
    return doc


def _sprsound_block(task: str | None, cycles: list, y_true: list[int], y_pred: Any,
                    classes: list[str]) -> dict[str, Any]:
    """The challenge's scores (`rsctool.metrics.sprsound_metrics`) of the whole split,
    and per challenge set (``per_set``: e.g. the 2022 inter- and intra-subject test sets,
    which the challenge ranks apart) where the split holds items of several sets."""
    from rsctool.metrics import sprsound_metrics

    keys = ("se", "sp", "as", "hs", "score")
    spr = sprsound_metrics(y_true, y_pred, classes)
    block: dict[str, Any] = {"task": task, **{k: spr[k] for k in keys}, "per_set": None}
    sets = [str((c.meta or {}).get("set") or "unknown") for c in cycles]
    if len(set(sets)) > 1:
        block["per_set"] = {}
        for name in sorted(set(sets)):
            idx = [i for i, s in enumerate(sets) if s == name]
            m = sprsound_metrics([y_true[i] for i in idx], [y_pred[i] for i in idx], classes)
            block["per_set"][name] = {"n": m["n"], **{k: m[k] for k in keys}}
    return block


def _write_predictions(path: Path, cycles: list, classes: Sequence[str], out: dict[str, Any],
                       task: str) -> None:
    """``predictions_<tag>.jsonl``: one line per cycle (id, label, pred, class
    probabilities or ranking score, device, site, patient, source), or per recording of
    a record-level dataset (mean probabilities, and ``windows``: how many)."""
    cprobs = _class_probs(out["probs"], task, classes)
    y_pred = out["pred"]
    lines = []
    for i, c in enumerate(cycles):
        row: dict[str, Any] = {"id": c.id, "label": c.label, "pred": classes[y_pred[i]]}
        if task == "ranking":
            row["score"] = round(float(out["probs"][i, 0]), 6)
        else:
            row["probs"] = {k: round(float(cprobs[i, j]), 6) for j, k in enumerate(classes)}
        row.update(device=c.device, site=c.site, patient=c.patient, source=c.source)
        if "windows" in out:  # a recording of a record-level dataset
            row["windows"] = out["windows"][i]
        if task == "multilabel":
            row["sigmoid"] = {"crackle": round(float(out["probs"][i, 0]), 6),
                              "wheeze": round(float(out["probs"][i, 1]), 6)}
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(path, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- paper protocol

def kept_epochs(run_dir: Path) -> list[tuple[int, Path]]:
    """The per-epoch weights a run kept (``train --set keep_epochs=true``), as
    ``(epoch, path)`` sorted by epoch; empty when it kept none."""
    out = []
    for p in (run_dir / "epochs").glob("epoch-*.safetensors"):
        try:
            out.append((int(p.stem.split("-", 1)[1]), p))
        except ValueError:
            continue
    return sorted(out)


def _selection_key(row: dict[str, Any]) -> float:
    """What the seeds maximise: the ICBHI Score (macro recall without a normal class)."""
    v = row["score"] if row["score"] is not None else row.get("macro_recall")
    return -math.inf if v is None else float(v)


def paper_protocol(project: Project, loaded: LoadedRun, dataset: Any,
                   kept: Sequence[tuple[int, Path]], batch_size: int, device: str
                   ) -> dict[str, Any]:
    """The seeds' protocol, for comparison with published tables: every kept epoch is
    scored on the test split (with the thresholds chosen on validation at that epoch)
    and the best one is reported, labelled ``selected_on: test`` and ``optimistic``:
    choosing on the test split inflates the number, it is no held-out estimate.
    Multilabel runs also get crackle/wheeze thresholds tuned on the test split (MCAT's
    protocol), labelled the same way. Next to them, the honest numbers from the same
    kept weights: the validation-selected epoch and the last epoch. ::

        selected_on "test", optimistic true, protocol "paper", epoch, score, sp, se,
        thresholds, validation_selected {selected_on "val", optimistic false, epoch, ...},
        last_epoch {epoch, ...}, epochs [{epoch, score, sp, se, macro_recall}],
        test_tuned_thresholds {selected_on "test", optimistic true, epoch, thresholds,
        score, sp, se} (multilabel)

    A kept epoch whose history disagrees with the run's last checkpoint (left over from
    an earlier training of the same run name) is skipped with a warning.
    """
    from rsctool.checkpoint import load_checkpoint
    from rsctool.inference import predict, predictions
    from rsctool.metrics import choose_thresholds, icbhi_metrics

    last_state = loaded.state
    if loaded.which != "last":
        last = checkpoint_path(project, loaded.name, loaded.record, "last")
        if last.exists():
            last_state = load_checkpoint(last).state
    history = {int(r["epoch"]): r for r in last_state.get("history") or []}
    model = rebuild_model(loaded.config, skip_init=True)  # each epoch loads strictly
    model.to(device)
    y_true = dataset.targets.tolist()
    rows: list[dict[str, Any]] = []
    for epoch, path in kept:
        ck = load_checkpoint(path)
        own = ck.state.get("history") or []
        if history and (not own or history.get(epoch) != own[-1]):
            warn(f"run {loaded.name!r}: {path} is not from the current training of the run "
                 "(its history differs); skipped")
            continue
        try:
            model.load_state_dict(ck.model_state, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise DataError(f"kept epoch weights do not fit the run's model ({first})",
                            path) from None
        thr = ck.state.get("thresholds")
        thr = [float(t) for t in thr] if thr else None
        out = predict(model, dataset, batch_size, device, loaded.task, thr)
        m = icbhi_metrics(y_true, [int(p) for p in out["pred"]], loaded.classes)
        row: dict[str, Any] = {"epoch": epoch, "score": m["score"], "sp": m["sp"],
                               "se": m["se"], "macro_recall": m["macro_recall"],
                               "thresholds": thr}
        if loaded.task == "multilabel":
            probs = out["probs"]
            t = choose_thresholds(probs.numpy(), dataset.multilabel.numpy())  # on TEST
            tuned = [float(t[0]), float(t[1])]
            mt = icbhi_metrics(y_true, predictions(probs, loaded.task, tuned), loaded.classes)
            row["test_tuned"] = {"thresholds": tuned, "score": mt["score"], "sp": mt["sp"],
                                 "se": mt["se"], "macro_recall": mt["macro_recall"]}
        rows.append(row)
    if not rows:
        raise ConfigError(f"--protocol paper: run {loaded.name!r} has no usable kept epochs; "
                          f"retrain it with `rsctool train {KEEP_EPOCHS_OPTION}`")

    def pick(r: dict[str, Any]) -> dict[str, Any]:
        return {k: r.get(k) for k in ("epoch", "score", "sp", "se", "thresholds")}

    best = max(rows, key=_selection_key)  # ties: the earliest epoch
    by_epoch = {r["epoch"]: r for r in rows}
    val_epoch = last_state.get("best_epoch")
    doc: dict[str, Any] = {
        "selected_on": "test", "optimistic": True, "protocol": "paper",
        "note": "epoch chosen on the test split as in the seed papers: optimistic, not a "
                "held-out estimate; compare with published tables only",
        **pick(best),
        "validation_selected": ({"selected_on": "val", "optimistic": False,
                                 **pick(by_epoch[val_epoch])}
                                if val_epoch in by_epoch else None),
        "last_epoch": {"selected_on": None, "optimistic": False, **pick(rows[-1])},
        "epochs": [{k: r[k] for k in ("epoch", "score", "sp", "se", "macro_recall")}
                   for r in rows],
    }
    if loaded.task == "multilabel":
        tb = max(rows, key=lambda r: _selection_key(r["test_tuned"]))
        doc["test_tuned_thresholds"] = {
            "selected_on": "test", "optimistic": True, "epoch": tb["epoch"],
            **{k: tb["test_tuned"][k] for k in ("thresholds", "score", "sp", "se")}}
    return doc


def _record_eval(project: Project, name: str, tag: str, doc: dict[str, Any],
                 metrics_path: Path) -> None:
    """The summary of `doc` in run `name`'s project record (``eval_<tag>_score`` ...)."""
    two = doc["two_class"]
    project.update_record(
        "runs", name, **{
            f"eval_{tag}_score": doc["score"], f"eval_{tag}_sp": doc["specificity"],
            f"eval_{tag}_se": doc["sensitivity"], f"eval_{tag}_accuracy": doc["accuracy"],
            f"eval_{tag}_score2": None if two is None else two["score"],
            f"eval_{tag}_n": doc["n"], f"eval_{tag}_split": doc["split_spec"],
            f"eval_{tag}_metrics": project.rel(metrics_path),
            **({f"eval_{tag}_pairwise_accuracy": doc["pairwise_accuracy"],
                f"eval_{tag}_spearman": doc["spearman"]} if "spearman" in doc else {})})


def load_ghm_stats(loaded: LoadedRun) -> list[dict[str, Any]]:
    """The per-epoch GHM statistics of a run: its ``ghm_stats.json``, else those stored
    in the checkpoint (empty for runs without a GHM loss)."""
    path = loaded.dir / "ghm_stats.json"
    if path.exists():
        try:
            stats = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise DataError("not valid JSON (GHM statistics)", path) from None
        if isinstance(stats, list):
            return [s for s in stats if isinstance(s, dict) and "fraction" in s]
    return list(loaded.state.get("ghm_stats") or [])


def default_ghm_epochs(epochs: Sequence[int], n: int = 4) -> list[int]:
    """Up to `n` of `epochs`, evenly spread, always with the first and the last."""
    epochs = sorted(set(epochs))
    if len(epochs) <= n:
        return epochs
    idx = np.linspace(0, len(epochs) - 1, n).round().astype(int)
    return [epochs[i] for i in sorted(set(idx.tolist()))]


def write_ghm_plots(stats: Sequence[dict[str, Any]], out_dir: Path, *, run: str = "",
                    epochs: Sequence[int] | None = None) -> list[str]:
    """GHM plots from per-epoch statistics: ``epoch_NNN.png`` per epoch (histogram and
    weights), ``compare.png`` (the chosen `epochs` overlaid) and ``summary.png`` (the
    whole training). ConfigError when an epoch asked for has no statistics."""
    from rsctool.plots import ghm_compare_plot, ghm_epoch_plot, ghm_summary_plot

    by_epoch = {int(s["epoch"]): s for s in stats}
    if epochs:
        missing = [e for e in epochs if e not in by_epoch]
        if missing:
            raise ConfigError(f"--ghm-epochs: no GHM statistics for epoch(s) "
                              f"{', '.join(map(str, missing))} (run {run!r} has epochs "
                              f"{min(by_epoch)}-{max(by_epoch)})")
        chosen = list(epochs)
    else:
        chosen = default_ghm_epochs(list(by_epoch))
    paths = [ghm_epoch_plot(by_epoch[e], out_dir / f"epoch_{e:03d}.png",
                            title=f"{run}: GHM statistics") for e in sorted(by_epoch)]
    paths.append(ghm_compare_plot([by_epoch[e] for e in chosen], out_dir / "compare.png",
                                  title=f"{run}: GHM statistics, epochs "
                                        f"{', '.join(map(str, chosen))}"))
    paths.append(ghm_summary_plot([by_epoch[e] for e in sorted(by_epoch)],
                                  out_dir / "summary.png",
                                  title=f"{run}: GHM statistics over training"))
    return [str(p) for p in paths]


def _thresholds_source(loaded: LoadedRun) -> str | None:
    """Where a run's decision thresholds come from (multilabel and ranking runs)."""
    if loaded.task == "multilabel":
        return ("validation (training)" if loaded.thresholds else
                "default 0.5 (the run had no validation split)")
    if loaded.task == "ranking":
        if not loaded.thresholds:
            return None
        has_val = any(r.get("val_loss") is not None
                      for r in loaded.state.get("history") or [])
        return ("validation (training)" if has_val else
                "train split (the run had no validation split)")
    return None


def _write_plots(loaded: LoadedRun, doc: dict[str, Any], emb: np.ndarray, cycles: list,
                 film: dict[str, Any] | None, soft: dict[str, Any] | None, plot_dir: Path,
                 tag: str, opts: EvalOptions, device: str,
                 log: Callable[[str], None]) -> list[str]:
    from rsctool.plots import (
        confusion_plot,
        embedding_plot,
        film_plot,
        softfilm_mask_plot,
        training_curves_plot,
    )

    name = loaded.name
    split_text = f"{opts.split} ({doc['split_spec']})"
    paths = [confusion_plot(doc["confusion"], doc["classes"], plot_dir / f"confusion_{tag}.png",
                            title=f"{name}: {split_text}, {opts.checkpoint} checkpoint, "
                                  f"Score {_pct(doc['score'])}")]
    history = None
    hist_file = loaded.dir / "history.json"
    if hist_file.exists():
        try:
            history = json.loads(hist_file.read_text(encoding="utf-8"))
        except ValueError:
            warn(f"{hist_file}: not valid JSON; training curves from the checkpoint instead")
    if not isinstance(history, list):
        history = loaded.state.get("history") or []
    if history:
        paths.append(training_curves_plot(history, plot_dir / "training_curves.png",
                                          best_epoch=loaded.state.get("best_epoch"),
                                          title=f"{name}: training"))
    # t-SNE of the embeddings (a seeded subsample above the cap).
    n = emb.shape[0]
    idx = np.arange(n)
    if n > opts.tsne_max_points:
        rng = np.random.default_rng(opts.seed)
        idx = np.sort(rng.choice(n, opts.tsne_max_points, replace=False))
    if idx.size >= 3:
        if idx.size > 1000:
            log(f"t-SNE of {idx.size} embeddings (O(N^2); --tsne-max-points caps it)")
        perplexity = float(min(30.0, max(1.0, (idx.size - 1) / 3.0)))
        xy, kl = tsne(emb[idx], perplexity=perplexity, seed=opts.seed, device=device)
        doc["tsne"] = {"n": int(idx.size), "of": int(n), "perplexity": perplexity,
                       "kl": round(kl, 4)}
        paths.append(embedding_plot(
            xy, [cycles[i].label for i in idx], [cycles[i].device or "unknown" for i in idx],
            plot_dir / f"tsne_{tag}.png", classes=doc["classes"],
            title=f"{name}: t-SNE of embeddings, {split_text}"
                  + (f", {idx.size} of {n} cycles" if idx.size < n else "")))
    if film is not None:
        paths.append(film_plot(film, plot_dir / f"film_{tag}.png",
                               title=f"{name}: FiLM gamma/beta on {split_text}"))
    if soft is not None:
        paths.append(softfilm_mask_plot(soft, plot_dir / f"softfilm_masks_{opts.checkpoint}.png",
                                        title=f"{name}: SoftFiLM masks "
                                              f"({opts.checkpoint} checkpoint)"))
    return [str(p) for p in paths]


# --------------------------------------------------------------------------- comparison

def comparison_row(doc: dict[str, Any]) -> dict[str, Any]:
    """One row of the comparison table (`TABLE_COLUMNS`) from a metrics document."""
    two = doc.get("two_class") or {}
    return {"run": doc["run"], "model": doc["model"], "group": doc.get("group"),
            "seed": doc.get("seed"), "dataset": doc["dataset"],
            "split": doc["split"], "split_spec": doc["split_spec"],
            "split_hash": doc.get("split_hash"),
            "checkpoint": doc["checkpoint"], "n": doc["n"],
            "specificity": doc["specificity"], "sensitivity": doc["sensitivity"],
            "score": doc["score"], "two_class_score": two.get("score"),
            "accuracy": doc["accuracy"], "pairwise_accuracy": doc.get("pairwise_accuracy"),
            "spearman": doc.get("spearman"),
            # --protocol paper only: the seeds' test-selected epoch, named as optimistic
            **({} if not doc.get("paper_protocol") else {
                "paper_test_selected_optimistic_epoch": doc["paper_protocol"]["epoch"],
                "paper_test_selected_optimistic_sp": doc["paper_protocol"]["sp"],
                "paper_test_selected_optimistic_se": doc["paper_protocol"]["se"],
                "paper_test_selected_optimistic_score": doc["paper_protocol"]["score"]})}


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """The comparison table as CSV (fractions in [0, 1]; empty cell = not defined), with
    the `PAPER_COLUMNS` when a run was evaluated with ``--protocol paper``."""
    cols = list(TABLE_COLUMNS)
    if any(PAPER_COLUMNS[0] in r for r in rows):
        cols += PAPER_COLUMNS
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in cols})
    path = Path(path)
    try:
        atomic_write_text(path, buf.getvalue())
    except OSError as e:
        raise ConfigError(f"cannot write the CSV file: {e.strerror or e}") from None
    return path


def _mean_std(values: list[float | None]) -> tuple[str, str]:
    """Mean and sample std (in %) of the defined values, as table cells."""
    v = [x for x in values if x is not None]
    if not v:
        return "-", "-"
    return _pct(float(np.mean(v))), (_pct(float(np.std(v, ddof=1))) if len(v) > 1 else "-")


def print_comparison(rows: Sequence[dict[str, Any]]) -> None:
    """Rich table on stderr: one row per run (values in %), plus mean ± std per model
    and split when a model has several runs (e.g. seeds)."""
    from rich.table import Table

    def _where(r: dict[str, Any]) -> str:
        h = f", hash {str(r['split_hash'])[:8]}" if r.get("split_hash") else ""
        return f"{r['dataset']} {r['split']} ({r['split_spec']}{h})"

    specs = sorted({_where(r) for r in rows})
    mixed = len(specs) > 1
    title = "evaluation, values in %" + ("" if mixed else f": {specs[0]}")
    t = Table(title=title, title_justify="left")
    t.add_column("run", no_wrap=True)
    t.add_column("model", no_wrap=True)
    if mixed:
        t.add_column("data split")
    cols = ["n", "Sp", "Se", "Score", "2-class", "acc"]
    keys: tuple[str, ...] = ("specificity", "sensitivity", "score", "two_class_score",
                             "accuracy")
    if any(r.get("pairwise_accuracy") is not None for r in rows):  # ranking runs
        cols += ["pairs", "Spearman"]
        keys += ("pairwise_accuracy", "spearman")
    if any(PAPER_COLUMNS[0] in r for r in rows):  # --protocol paper
        cols += ["test-sel. Score*"]  # footnote below: the header must stay narrow
        keys += ("paper_test_selected_optimistic_score",)
    for col in cols:
        t.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        where = [_where(r)] if mixed else []
        t.add_row(r["run"], r["model"], *where, str(r["n"]), *(_pct(r.get(k)) for k in keys))
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in rows:
        # a seed group (train --seeds) is its own set; other runs are pooled per model
        who = f"group {r['group']}" if r.get("group") else r["model"]
        groups.setdefault((who, _where(r)), []).append(r)
    for (who, place), rs in groups.items():
        if len(rs) < 2:
            continue
        model = rs[0]["model"] if who.startswith("group ") else who
        where = [place] if mixed else []
        stats = [_mean_std([r.get(k) for r in rs]) for k in keys]
        t.add_row(f"mean of {len(rs)}" + (f" ({who})" if who != model else ""), model,
                  *where, str(rs[0]["n"]), *(m for m, _ in stats), style="bold")
        t.add_row("std", model, *where, "", *(sd for _, sd in stats))
    err_console.print(t)
    if any(PAPER_COLUMNS[0] in r for r in rows):
        err_console.print("* --protocol paper: the epoch with the best Score on the TEST split, "
                          "as the seed papers select it: test-selected, optimistic (not a "
                          "held-out estimate)")
    unofficial = sorted({r["split_spec"] for r in rows if r["split_spec"] != "official"})
    if unofficial:
        err_console.print(f"note: split(s) {', '.join(unofficial)} are not the official ICBHI "
                          "2017 split; do not compare these numbers with published ones")


def print_eval(doc: dict[str, Any]) -> None:
    """Rich tables on stderr: headline metrics, per-class recall, confusion, groups."""
    from rich.table import Table

    spec = doc["split_spec"]
    note = ("  [yellow](not the official ICBHI split)[/yellow]"
            if doc.get("dataset_format") == "icbhi" and not doc["official_split"] else "")
    err_console.print(
        f"[bold]{doc['run']}[/bold] ({doc['model']}, {doc['checkpoint']} checkpoint, epoch "
        f"{doc['checkpoint_epoch']}) on {doc['dataset']} {doc['split']} split "
        f"'{spec}' (hash {str(doc.get('split_hash'))[:12]}): {doc['n']} cycles{note}")
    agg = doc.get("aggregation")
    if agg:
        err_console.print(f"  per recording: {doc['n']} recordings from {agg['windows']} "
                          f"windows of {agg['window']:g} s every {agg['hop']:g} s "
                          f"({agg['method']})")
    t = Table(title="ICBHI metrics (%)" + cross_title(doc), title_justify="left")
    for col in ("", "Sp", "Se", "Score", "accuracy"):
        t.add_column(col, justify="right" if col else "left")
    t.add_row(f"{len(doc['classes'])}-class", _pct(doc["specificity"]),
              _pct(doc["sensitivity"]), _pct(doc["score"]), _pct(doc["accuracy"]),
              style="bold")
    two = doc.get("two_class")
    if two:
        t.add_row("2-class (normal vs abnormal)", _pct(two["specificity"]),
                  _pct(two["sensitivity"]), _pct(two["score"]), "")
    err_console.print(t)
    par = doc.get("precision_parity")
    if par and par.get("n"):
        err_console.print(
            f"  {doc.get('precision')} vs fp32 on the first {par['n']} {doc['split']} cycles: "
            f"max abs probability difference {par['probs_max_abs']:.2e}, same label on "
            f"{100 * par['label_agreement']:.1f} %")
    pp = doc.get("paper_protocol")
    if pp:
        _print_paper_protocol(pp)
    spr = doc.get("sprsound")
    if spr:
        rows = [("", spr), *((f" {k} ({v['n']})", v) for k, v in (spr.get("per_set") or {}
                                                                  ).items())]
        for label, r in rows:
            err_console.print(
                f"SPRSound Task {spr.get('task')}{label} (%): SE {_pct(r['se'])}, SP "
                f"{_pct(r['sp'])}, AS {_pct(r['as'])}, HS {_pct(r['hs'])}, Score "
                f"{_pct(r['score'])}")
    if doc.get("task") == "ranking":
        sp = doc.get("spearman")
        err_console.print(
            f"ranking: pairwise accuracy {_pct(doc.get('pairwise_accuracy'))} %, Spearman "
            f"{'-' if sp is None else f'{sp:.3f}'}, class accuracy {_pct(doc['accuracy'])} % "
            f"(score thresholds from {doc.get('thresholds_source') or 'nowhere'})")
    elif doc["score"] is None:
        err_console.print(f"no 'normal' class, so no ICBHI Sp/Se/Score; macro recall "
                          f"{_pct(doc['macro_recall'])} %")
    classes = doc["classes"]
    cm = Table(title="confusion (rows true, columns predicted) and recall",
               title_justify="left")
    cm.add_column("true \\ pred")
    for k in classes:
        cm.add_column(k, justify="right")
    cm.add_column("n", justify="right")
    cm.add_column("recall %", justify="right")
    for k, row in zip(classes, doc["confusion"], strict=True):
        cm.add_row(k, *(str(v) for v in row), str(doc["support"][k]),
                   _pct(doc["per_class_recall"][k]))
    err_console.print(cm)
    for title, key in (("per device", "per_device"), ("per site", "per_site")):
        if set(doc[key]) <= {"unknown"}:  # no device/site recorded (e.g. folder data)
            continue
        g = Table(title=f"{title} (%)", title_justify="left")
        for col in (title.split()[1], "n", "Sp", "Se", "Score", "2-class Score", "accuracy"):
            g.add_column(col, justify="left" if col == title.split()[1] else "right")
        for name, s in doc[key].items():
            g.add_row(name, str(s["n"]), _pct(s["specificity"]), _pct(s["sensitivity"]),
                      _pct(s["score"]), _pct(s["two_class_score"]), _pct(s["accuracy"]))
        err_console.print(g)
    soft = doc.get("softfilm")
    if soft:
        alloc = ", ".join(f"{k} {v}" for k, v in soft["allocated"].items())
        ov = ", ".join(f"{k} {100 * v:.1f}%" for k, v in soft["overlap"].items())
        err_console.print(f"SoftFiLM masks (tau {soft['tau']:.3g}, D {soft['hidden']}): "
                          f"dims {alloc}, uncovered {soft['uncovered']}; overlap {ov}")
    if doc.get("files", {}).get("plots"):
        err_console.print(f"plots: {Path(doc['files']['plots'][0]).parent}")


def _print_paper_protocol(pp: dict[str, Any]) -> None:
    """The `--protocol paper` table: honest rows next to the test-selected ones."""
    from rich.table import Table

    t = Table(title="paper protocol (%): rows selected on the TEST split are optimistic",
              title_justify="left")
    for col in ("selection", "epoch", "Sp", "Se", "Score"):
        t.add_column(col, justify="left" if col == "selection" else "right")

    def add(label: str, r: dict[str, Any] | None, **kw: Any) -> None:
        if r is not None:
            t.add_row(label, str(r["epoch"]), _pct(r["sp"]), _pct(r["se"]), _pct(r["score"]),
                      **kw)

    add("validation-selected (honest)", pp.get("validation_selected"))
    add("last epoch (honest)", pp.get("last_epoch"))
    add("test-selected epoch (optimistic)", pp, style="yellow")
    tt = pp.get("test_tuned_thresholds")
    if tt:
        thr = "/".join(f"{x:.3f}" for x in tt["thresholds"])
        add(f"test-tuned thresholds {thr} (optimistic)", tt, style="yellow")
    err_console.print(t)


# --------------------------------------------------------------------------- run

def run(project: Project, opts: EvalOptions, *, device: str = "auto", progress: bool = False,
        log: Callable[[str], None] | None = None) -> EvalResult:
    """Evaluate the selected run(s); see `evaluate_run` for what each writes."""
    from rsctool.devices import resolve_device

    opts.validate()
    dev = resolve_device(device)
    names = (group_runs(project, opts.group) if opts.group is not None
             else select_runs(project, opts.run, opts.runs))
    _check_cross_datasets(project, opts)
    results: list[dict[str, Any]] = []
    for name, explicit in names:
        if not explicit:
            rec = project.get("runs", name) or {}
            if not checkpoint_path(project, name, rec, opts.checkpoint).exists():
                how = "in the group" if opts.group is not None else "matched by a pattern"
                warn(f"run {name!r} ({how}) has no {opts.checkpoint} checkpoint yet: "
                     "skipped")
                continue
        for other in opts.datasets or [None]:
            results.append(evaluate_run(project, name, opts, device=dev, progress=progress,
                                        log=log, other=other))
    if not results:
        raise ConfigError(f"none of the selected runs has a {opts.checkpoint} checkpoint")
    table = [comparison_row(d) for d in results]
    cross = cross_table(results, opts) if opts.datasets and opts.compare else None
    csv_path = (None if opts.csv is None else write_cross_csv(cross, opts.csv)
                if cross is not None else write_csv(table, opts.csv))
    summary = None
    if opts.group is not None:
        summary = group_summary(opts.group, results, members=len(names))
        tag = opts.split if opts.checkpoint == "best" else f"{opts.split}_last"
        project.update_record("groups", opts.group, **{
            f"eval_{tag}_{k}_{stat}": summary[stat][k]
            for k in ("specificity", "sensitivity", "score") for stat in ("mean", "std")},
            **{f"eval_{tag}_runs": summary["n_runs"], f"eval_{tag}_split": summary["split_spec"]})
    return EvalResult(results=results, table=table, compare=opts.compare, csv=csv_path,
                      group=summary, cross=cross)


def group_runs(project: Project, group: str) -> list[tuple[str, bool]]:
    """The runs of seed group `group` (`rsctool train --seeds`), each marked as not
    named exactly (a member without a checkpoint yet is skipped with a warning)."""
    rec = project.get("groups", group)
    if rec is None:
        known = ", ".join(project.section("groups")) or "none"
        raise ConfigError(f"--group {group!r} is not in the project (known groups: {known}; "
                          "`rsctool train --seeds N --run NAME` makes one)")
    runs = project.section("runs")
    members = [m for m in rec.get("runs") or [] if m in runs]
    # runs that name the group but are missing from its list (e.g. a hand-edited file)
    members += [n for n, r in runs.items() if r.get("group") == group and n not in members]
    if not members:
        raise ConfigError(f"seed group {group!r} has no runs in the project")
    return [(m, False) for m in members]


def _mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    v = [float(x) for x in values if x is not None]
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


def group_summary(group: str, docs: Sequence[dict[str, Any]], members: int | None = None
                  ) -> dict[str, Any]:
    """The `eval --group` document: mean and sample standard deviation (ddof 1; null for
    one run) over the seeds of Sp, Se, Score, 2-class Score and accuracy, every seed's
    numbers (``runs``), and which split they are on::

        group, model, dataset, split, split_spec, official_split, split_hash, checkpoint,
        n (cycles), n_runs, members, seeds, mean {metric}, std {metric},
        runs [{run, seed, specificity, sensitivity, score, two_class_score, accuracy,
        metrics (file)}]
    """
    rows = [comparison_row(d) for d in docs]
    first = docs[0]
    specs = sorted({d["split_spec"] for d in docs})
    hashes = sorted({str(d.get("split_hash")) for d in docs})
    if len(hashes) > 1:
        warn(f"seed group {group!r}: its runs were evaluated on different splits "
             f"({', '.join(h[:12] for h in hashes)}); the mean mixes them")
    metrics = GROUP_METRICS
    if any(r.get("pairwise_accuracy") is not None for r in rows):  # a ranking group
        metrics = (*GROUP_METRICS, "pairwise_accuracy", "spearman")
    return {
        "group": group,
        "model": first["model"],
        "dataset": first["dataset"],
        "split": first["split"],
        "split_spec": specs[0] if len(specs) == 1 else ",".join(specs),
        "official_split": all(d["official_split"] for d in docs),
        "split_hash": first.get("split_hash") if len(hashes) == 1 else None,
        "checkpoint": first["checkpoint"],
        "n": first["n"],
        "n_runs": len(docs),
        "members": members if members is not None else len(docs),
        "seeds": [r["seed"] for r in rows],
        "std_kind": "sample standard deviation over seeds (ddof=1)",
        "mean": {k: _mean_sd([r[k] for r in rows])[0] for k in metrics},
        "std": {k: _mean_sd([r[k] for r in rows])[1] for k in metrics},
        "runs": [{**{k: r[k] for k in ("run", "seed", *metrics)},
                  "metrics": d.get("files", {}).get("metrics")}
                 for r, d in zip(rows, docs, strict=True)],
    }


def print_group(summary: dict[str, Any]) -> None:
    """One line on stderr: the group's mean +- std, and which split it is on."""
    m, sd = summary["mean"], summary["std"]

    def pm(k: str) -> str:
        return f"{_pct(m[k])}" + (f" +- {_pct(sd[k])}" if sd[k] is not None else "")

    note = ("" if summary["official_split"] else
            "  [yellow](not the official ICBHI split: not comparable with published "
            "numbers)[/yellow]")
    missing = summary["members"] - summary["n_runs"]
    err_console.print(
        f"[bold]group {summary['group']}[/bold] ({summary['model']}, {summary['n_runs']} "
        f"seeds{f', {missing} without a checkpoint' if missing else ''}) on "
        f"{summary['dataset']} {summary['split']} split '{summary['split_spec']}' "
        f"(hash {str(summary['split_hash'])[:12]}): Sp {pm('specificity')}, "
        f"Se {pm('sensitivity')}, Score {pm('score')} %{note}")


# --------------------------------------------------------------------------- cross-dataset

@dataclass
class _Cross:
    """Another dataset to score a run on (`_cross_target`).

    Attributes:
        name, record: the dataset's name and project record.
        cycles: its cycles of the split, labels mapped onto the run's classes.
        metrics_record: `record` with the run's own dataset format and task, so that the
            metrics follow the run's classes (ICBHI Sp/Se/Score for an ICBHI-class run).
        info: the ``cross_dataset`` block of the metrics document: trained_on,
            scored_on, split, map {name, source, sha256, classes} (null: no map needed).
    """

    name: str
    record: dict[str, Any]
    cycles: list
    metrics_record: dict[str, Any]
    info: dict[str, Any]


def _validate_cross(opts: EvalOptions) -> None:
    """Option checks of cross-dataset evaluation (`EvalOptions.validate`)."""
    if not opts.datasets:
        if opts.label_map is not None:
            raise ConfigError("--map maps another dataset's labels: give it with "
                              "--dataset OTHER")
        if opts.split == "all":
            raise ConfigError("--split all needs --dataset OTHER (a run's own dataset is "
                              "scored on its test or val split only)")
        return
    if opts.group is not None:
        raise ConfigError("--dataset with --group is not supported; use --runs "
                          "'GROUP-s*' --dataset OTHER for the cross-dataset table")


def _check_cross_datasets(project: Project, opts: EvalOptions) -> None:
    """Every `--dataset` is in the project (ConfigError before anything is evaluated)."""
    known = project.section("datasets")
    for d in opts.datasets:
        if d not in known:
            raise ConfigError(f"--dataset {d!r} is not in the project (known: "
                              f"{', '.join(sorted(known)) or 'none'}); run `rsctool analyze "
                              "DATA_DIR --name NAME` first")


def _slug(name: str) -> str:
    """A dataset name as a file-name part (letters, digits, ``-``, ``_``, ``.``)."""
    import re

    return re.sub(r"[^0-9A-Za-z._-]+", "-", name).strip("-.") or "dataset"


def _eval_tag(opts: EvalOptions, cross: _Cross | None) -> str:
    """``test``, ``test_last``, ``test_on_<other>``, ``all_on_<other>_last`` ...: the tag
    of the output files and project-record keys, so cross-dataset results never overwrite
    the run's own evaluation."""
    tag = opts.split if cross is None else f"{opts.split}_on_{_slug(cross.name)}"
    return tag if opts.checkpoint == "best" else f"{tag}_last"


def _run_input_labels(loaded: LoadedRun) -> set[str]:
    """The cycle labels run `loaded` can be scored on: its classes (the ICBHI classes
    for multilabel and binary runs, whose targets are derived from them)."""
    from rsctool.data.manifest import BINARY_CLASSES, ICBHI_CLASSES

    if loaded.task == "binary":
        return set(ICBHI_CLASSES) | set(BINARY_CLASSES)
    if loaded.task == "multilabel":
        return set(ICBHI_CLASSES)
    return set(loaded.classes)


def _cross_target(project: Project, loaded: LoadedRun, opts: EvalOptions,
                  other: str | None) -> _Cross | None:
    """Dataset `other` seen through the run's classes, or None for the run's own dataset
    (or no `other`): the ordinary evaluation.

    The label map is the one recorded with `other` by ``analyze --map``, else none when
    `other`'s labels already are the run's classes, else ``opts.label_map``.

    Raises:
        ConfigError: labels the run cannot score and no map for them, a map that leaves
            labels unmapped or gives classes the run lacks, ``--split all`` on the run's own
            dataset, `other` sharing recordings with the run's training data, or no
            cycles in the split.
    """
    from rsctool.datasets import load_dataset_cycles

    own = loaded.config.dataset or loaded.record.get("dataset")
    if other is None or other == own:
        if opts.split == "all":
            raise ConfigError(f"--split all: dataset {other!r} is the one run "
                              f"{loaded.name!r} was trained on; use --split test")
        return None
    record = project.get("datasets", other) or {}
    cycles = [c for c in load_dataset_cycles(project, record)
              if opts.split == "all" or c.split == opts.split]
    if not cycles:
        raise ConfigError(f"--dataset {other!r} has no {opts.split} cycles")
    cycles, map_rec = _cross_map(loaded, other, record, cycles, opts.label_map)
    _check_no_overlap(project, loaded, own, other, cycles)
    own_rec = project.get("datasets", own) or {} if own else {}
    metrics_record = {**record, "format": own_rec.get("format"), "task": own_rec.get("task")}
    info = {"trained_on": own, "scored_on": other, "split": opts.split, "map": map_rec}
    return _Cross(other, record, cycles, metrics_record, info)


def _cross_map(loaded: LoadedRun, other: str, record: dict[str, Any], cycles: list,
               spec: str | None) -> tuple[list, dict[str, Any] | None]:
    """`cycles` of dataset `other` mapped onto the run's classes, and the map's record
    (`LabelMap.record`; None when no map was needed)."""
    from rsctool.data.labelmap import apply_map, builtin_maps, load_map

    accepted = _run_input_labels(loaded)
    recorded = record.get("label_map")
    map_rec: dict[str, Any] | None = None
    if recorded:  # analyze --map: the manifest's labels are already mapped
        if spec is not None and load_map(spec).sha256 != recorded.get("sha256"):
            raise ConfigError(f"--map {spec}: dataset {other!r} was analysed with label map "
                              f"{recorded.get('name')!r}, so its labels are mapped already; "
                              "drop --map, or analyze it again with this map")
        map_rec = {k: recorded.get(k) for k in ("name", "source", "sha256", "classes")}
    elif spec is not None and not {c.label for c in cycles} <= accepted:
        # (a dataset whose labels already are the run's classes is scored as it is, so
        # one --map serves a table of mapped and unmapped test sets)
        lm = load_map(spec)
        res = apply_map(cycles, lm, strict=False)
        if res.unmapped:
            listed = ", ".join(f"{k!r} ({v})" for k, v in res.unmapped.items())
            raise ConfigError(f"--map {spec}: label map {lm.name} has no entry for label(s) "
                              f"{listed} of dataset {other!r}; add them to the map")
        cycles, map_rec = res.cycles, lm.record()
    stray = sorted({c.label for c in cycles} - accepted)
    if stray and map_rec is not None:
        raise ConfigError(f"--dataset {other!r}: label map {map_rec['name']} gives class(es) "
                          f"{', '.join(map(repr, stray))} that run {loaded.name!r} does not "
                          f"have (its classes: {', '.join(loaded.classes)})")
    if stray:
        raise ConfigError(f"--dataset {other!r}: label(s) {', '.join(map(repr, stray))} are "
                          f"not classes of run {loaded.name!r} ({', '.join(loaded.classes)}) "
                          "and unmapped; give --map NAME|FILE (built-in: "
                          f"{', '.join(builtin_maps()) or 'none'})")
    return cycles, map_rec


def _check_no_overlap(project: Project, loaded: LoadedRun, own: str | None, other: str,
                      cycles: list) -> None:
    """ConfigError when `cycles` come from recordings the run was trained or validated
    on (the same audio analysed under another name), so no score is training data."""
    from rsctool.datasets import load_dataset_cycles
    from rsctool.errors import UserError

    record = project.get("datasets", own) if own else None
    if record is None:
        warn(f"run {loaded.name!r}: its dataset {own!r} is gone from the project, so "
             f"whether {other!r} shares recordings with its training data is unchecked")
        return
    try:
        seen = {str(Path(c.audio).resolve()) for c in load_dataset_cycles(project, record)
                if c.split != "test"}
    except UserError as e:
        warn(f"run {loaded.name!r}: cannot read its dataset {own!r} ({e}); whether "
             f"{other!r} shares recordings with its training data is unchecked")
        return
    shared = {c.audio for c in cycles if str(Path(c.audio).resolve()) in seen}
    if shared:
        raise ConfigError(f"--dataset {other!r}: {len(shared)} of its recordings (e.g. "
                          f"{sorted(shared)[0]}) are in the train/val data of run "
                          f"{loaded.name!r} (dataset {own!r}); scores on them would not be "
                          "cross-dataset")


def _record_cross(project: Project, name: str, tag: str, cross: _Cross) -> None:
    """The map of a cross-dataset evaluation in the run's project record."""
    m = cross.info["map"] or {}
    project.update_record("runs", name, **{
        f"eval_{tag}_dataset": cross.name, f"eval_{tag}_map": m.get("name", "none"),
        f"eval_{tag}_map_sha256": m.get("sha256")})


def cross_title(doc: dict[str, Any]) -> str:
    """``", trained on A, scored on B all (map M sha256 1234abcd)"`` for a cross-dataset
    document, else ``""``."""
    x = doc.get("cross_dataset")
    if not x:
        return ""
    m = x.get("map")
    how = (f"map {m['name']} sha256 {str(m.get('sha256'))[:12]}" if m
           else "no label map: same classes")
    return f", trained on {x['trained_on']}, scored on {x['scored_on']} {x['split']} ({how})"


def cross_table(docs: Sequence[dict[str, Any]], opts: EvalOptions) -> dict[str, Any]:
    """The cross-dataset table of `docs`: one row per run (with its training set), one
    column per test set (``opts.datasets``), cells = Score (null: not defined)::

        split, checkpoint, columns [dataset], maps {dataset: map record or null},
        rows [{run, model, trained_on, scores {dataset: score}, n {dataset: n}}]
    """
    rows: dict[str, dict[str, Any]] = {}
    maps: dict[str, Any] = {}
    for d in docs:
        x = d.get("cross_dataset") or {}
        col = d["dataset"]
        row = rows.setdefault(d["run"], {"run": d["run"], "model": d["model"],
                                         "trained_on": x.get("trained_on", d["dataset"]),
                                         "scores": {}, "n": {}})
        row["scores"][col] = d["score"]
        row["n"][col] = d["n"]
        maps.setdefault(col, x.get("map"))
    return {"split": opts.split, "checkpoint": opts.checkpoint, "columns": list(opts.datasets),
            "maps": {c: maps.get(c) for c in opts.datasets}, "rows": list(rows.values())}


def write_cross_csv(table: dict[str, Any], path: Path) -> Path:
    """The cross-dataset table as CSV: run, model, trained_on, split, checkpoint, one
    Score column per test set (fractions; empty = not defined) and a ``<dataset> map``
    column naming each test set's label map (``name@sha256``, empty: none)."""
    cols = table["columns"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "model", "trained_on", "split", "checkpoint", *cols,
                *(f"{c} map" for c in cols)])
    for r in table["rows"]:
        maps = [table["maps"].get(c) for c in cols]
        w.writerow([r["run"], r["model"], r["trained_on"], table["split"], table["checkpoint"],
                    *("" if r["scores"].get(c) is None else r["scores"][c] for c in cols),
                    *("" if m is None else f"{m['name']}@{m['sha256']}" for m in maps)])
    path = Path(path)
    try:
        atomic_write_text(path, buf.getvalue())
    except OSError as e:
        raise ConfigError(f"cannot write the CSV file: {e.strerror or e}") from None
    return path


def print_cross(table: dict[str, Any]) -> None:
    """The cross-dataset table on stderr (rows: runs, columns: test sets, Score in %)."""
    from rich.table import Table

    maps = "; ".join(f"{c}: {m['name']} ({str(m['sha256'])[:12]})" if m else f"{c}: no map"
                     for c, m in table["maps"].items())
    t = Table(title=f"cross-dataset Score (%), {table['split']} split, {table['checkpoint']} "
                    f"checkpoint; label maps: {maps}", title_justify="left")
    for col in ("run", "trained on", *table["columns"]):
        t.add_column(col, justify="left" if col in ("run", "trained on") else "right")
    for r in table["rows"]:
        t.add_row(r["run"], r["trained_on"], *(_pct(r["scores"].get(c))
                                               for c in table["columns"]))
    err_console.print(t)


# --------------------------------------------------------------------------- command

#: The defaults of the command's options: `EvalOptions` is where each is written.
_D = EvalOptions()


def command(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(
        metavar="RUNS", show_default=False,
        help="More run names or glob patterns for --runs (so `--runs A B C` works).")] = None,
    *,
    run_name: Annotated[str | None, typer.Option(
        "--run", help="Run to evaluate (default: the last finished run in the project).")] = None,
    runs: Annotated[list[str] | None, typer.Option(
        "--runs", help="Runs to evaluate and compare: names or glob patterns ('cnn*'); "
                       "repeat, separate with commas, or list them after the option.")] = None,
    group: Annotated[str | None, typer.Option(
        "--group", help="A seed group (train --seeds): evaluate all its runs and report "
                        "mean and std of Sp, Se and Score over the seeds.")] = None,
    split: Annotated[str, typer.Option(
        help="Split to evaluate: test or val; with --dataset also all (every split of "
             "the other dataset).")] = _D.split,
    checkpoint: Annotated[str, typer.Option(
        help="Checkpoint: best (selected on validation) or last.")] = _D.checkpoint,
    plots: Annotated[str, typer.Option(
        "--plots", help="PNG plots to write into the run's plots/ folder: all, none, "
                        "standard (confusion, curves, t-SNE), ghm (GHM bin statistics per "
                        "epoch, compared, summary), or a comma list.")] = str(_D.plots),
    no_plots: Annotated[bool, typer.Option(
        "--no-plots", help="Write no plots (same as --plots none).")] = False,
    ghm_epochs: Annotated[str | None, typer.Option(
        help="Epochs compared in the GHM comparison plot, comma separated (default: up "
             "to four, first to last).")] = None,
    csv_file: Annotated[Path | None, typer.Option(
        "--csv", help="Write the comparison table (one row per run) to this CSV file.")]
    = None,
    batch_size: Annotated[int, typer.Option(help="Inference batch size.")] = _D.batch_size,
    precision: Annotated[str, typer.Option(
        help="Compute precision: auto (bf16 where the CPU has bf16 units, AMX/AVX512-BF16, "
             "or the GPU supports it; else fp32), fp32 or bf16. In bf16 the first 64 "
             "cycles are also run in fp32 and the difference is reported.")] = _D.precision,
    tsne_max_points: Annotated[int, typer.Option(
        help="t-SNE on at most this many cycles (seeded subsample above).")]
    = _D.tsne_max_points,
    force: Annotated[bool, typer.Option(
        help="Re-evaluate even if the stored metrics are up to date.")] = _D.force,
    protocol: Annotated[str, typer.Option(
        "--protocol", help="honest: only the validation-selected (or last) checkpoint. "
                           "paper: also the seed papers' epoch selected on the TEST split "
                           "(and, multilabel, test-tuned thresholds), labelled optimistic; "
                           "needs a run trained with --set keep_epochs=true.")]
    = _D.protocol,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the metrics as JSON on stdout (a list with --runs; the "
                       "group summary with every seed's numbers with --group).")] = False,
    datasets: Annotated[list[str] | None, typer.Option(
        "--dataset", help="Score the run(s) on another analysed dataset of the project "
                          "(cross-dataset evaluation); repeat or comma-separate for the "
                          "cross-dataset table (rows: runs, columns: datasets).")] = None,
    label_map: Annotated[str | None, typer.Option(
        "--map", help="With --dataset: label map (built-in name or TOML file) from the "
                      "other dataset's labels to the run's classes, when analyze --map "
                      "did not record one.")] = None,
) -> None:
    """Evaluate trained runs on the test split: ICBHI Sp/Se/Score, confusion, plots."""
    state = get_state(ctx)
    patterns = [*(runs or []), *(names or [])]
    epochs_list = None
    if ghm_epochs is not None:
        try:
            epochs_list = [int(e) for e in ghm_epochs.replace(",", " ").split()]
        except ValueError:
            raise ConfigError(f"--ghm-epochs expects epoch numbers, got {ghm_epochs!r}") \
                from None
    opts = EvalOptions(run=run_name, runs=patterns, split=split, checkpoint=checkpoint,
                       plots="none" if no_plots else plots, ghm_epochs=epochs_list,
                       batch_size=batch_size, tsne_max_points=tsne_max_points,
                       seed=state.seed, force=force, csv=csv_file, group=group,
                       datasets=list(datasets or []), label_map=label_map,
                       protocol=protocol, precision=precision)
    opts.validate()
    project = state.load_project(must_exist=True)
    result = run(project, opts, device=state.device, progress=not state.quiet and not json_out,
                 log=lambda msg: info(state, msg))
    if json_out:
        print_json(result.group if result.group is not None
                   else {"cross_dataset_table": result.cross, "results": result.results}
                   if result.cross is not None
                   else result.results if result.compare else result.results[0])
    if not state.quiet:
        if result.compare:
            print_comparison(result.table)
        else:
            print_eval(result.results[0])
        if result.cross is not None:
            print_cross(result.cross)
        if result.group is not None:
            print_group(result.group)
        if result.csv is not None:
            info(state, f"comparison table: {result.csv}")
