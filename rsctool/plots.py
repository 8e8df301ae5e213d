"""PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Colour per ICBHI class, kept the same in every plot.
CLASS_COLOURS = {"normal": "#4C72B0", "crackle": "#DD8452", "wheeze": "#55A868",
                 "both": "#C44E52"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colour(i: int, name: str) -> str:
    if name in CLASS_COLOURS:
        return CLASS_COLOURS[name]
    return f"C{i % 10}"


def _save(fig: Any, path: Path) -> Path:
    """Save atomically: a killed run never leaves a truncated PNG under the final name."""
    import os

    from rsctool.utils import mkstemp_for

    fd, tmp = mkstemp_for(path, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        _plt().close(fig)
    return path


#: File names written by `analyze_plots`, in order.
ANALYZE_PLOTS = ("class_distribution.png", "cycle_durations.png", "devices.png")


def analyze_plots(report: dict[str, Any], cycles: Sequence[Any], out_dir: Path) -> list[Path]:
    """Class distribution per split, cycle-duration histogram, per-device counts.

    Returns the written PNG paths.
    """
    plt = _plt()
    classes = report["classes"]
    out = []

    # 1. cycles per split and class (grouped bars)
    splits = list(report["splits"])
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(classes), 1)
    x = np.arange(len(splits))
    for i, k in enumerate(classes):
        vals = [report["splits"][s].get(k, 0) for s in splits]
        bars = ax.bar(x + (i - (len(classes) - 1) / 2) * width, vals, width, label=k,
                      color=_colour(i, k))
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x, splits)
    ax.set_ylabel("cycles")
    ax.set_title(f"{report['dataset']}: class distribution per split ({report['split']['spec']})")
    ax.legend()
    out.append(_save(fig, out_dir / "class_distribution.png"))

    # 2. cycle durations per class
    fig, ax = plt.subplots(figsize=(7, 4))
    durations = [[c.duration for c in cycles if c.label == k] for k in classes]
    hi = max((max(d) for d in durations if d), default=1.0)
    bins = np.linspace(0, hi, 40)
    for i, (k, d) in enumerate(zip(classes, durations, strict=True)):
        if d:
            ax.hist(d, bins=bins, alpha=0.6, label=f"{k} (n={len(d)})", color=_colour(i, k))
    ax.set_xlabel("cycle duration (s)")
    ax.set_ylabel("cycles")
    ax.set_title("cycle durations")
    ax.legend()
    out.append(_save(fig, out_dir / "cycle_durations.png"))

    # 3. cycles per device, stacked by class
    devices = list(report["devices"])
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = np.zeros(len(devices))
    for i, k in enumerate(classes):
        vals = np.array([report["devices"][d].get(k, 0) for d in devices], dtype=float)
        ax.bar(devices, vals, bottom=bottom, label=k, color=_colour(i, k))
        bottom += vals
    ax.set_ylabel("cycles")
    ax.set_title("cycles per recording device")
    ax.legend()
    out.append(_save(fig, out_dir / "devices.png"))
    return out


# --------------------------------------------------------------------------- eval plots

def confusion_plot(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: Path,
                   title: str = "") -> Path:
    """Confusion matrix as counts (left) and row-normalised (right; each row = recall).

    Args:
        confusion: `(C, C)` counts, rows = true class, columns = predicted class.
        classes: the C class names.
    """
    plt = _plt()
    cm = np.asarray(confusion, dtype=np.float64).reshape(len(classes), len(classes))
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(4.0, 1.0 + 0.9 * len(classes))
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 0.5, size), layout="constrained")
    # No colour bars: every cell is annotated with its value.
    for ax, data, fmt, vmax in ((axes[0], cm, "{:.0f}", max(float(cm.max(initial=0)), 1.0)),
                                (axes[1], norm, "{:.2f}", 1.0)):
        ax.imshow(data, cmap="Blues", vmin=0.0, vmax=vmax)
        ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if data[i, j] > 0.6 * vmax else "black")
    axes[0].set_title("counts")
    axes[1].set_title("row-normalised (recall on the diagonal)")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def training_curves_plot(history: Sequence[dict[str, Any]], path: Path, *,
                         best_epoch: int | None = None, title: str = "") -> Path:
    """Training loss (left) and validation Score / Sp / Se (right) per epoch.

    Args:
        history: rows of the run's ``history.json`` (``epoch``, ``train_loss``,
            ``val_score``, ``val_sp``, ``val_se``; missing values are skipped).
        best_epoch: marked with a dashed line (the epoch of the best checkpoint).
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(float(r["epoch"]), float(r[key])) for r in history
               if r.get(key) is not None and r.get("epoch") is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    x, y = series("train_loss")
    axes[0].plot(x, y, marker="o", ms=3, label="train loss")
    x, y = series("val_loss")
    if x:
        axes[0].plot(x, y, marker="o", ms=3, label="val loss")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].set_title("loss")
    axes[0].legend()
    plotted = False
    for key, label in (("val_score", "Score"), ("val_sp", "Sp"), ("val_se", "Se"),
                       ("val_accuracy", "accuracy")):
        x, y = series(key)
        if x:
            axes[1].plot(x, y, marker="o", ms=3, label=label,
                         lw=2.0 if key == "val_score" else 1.2)
            plotted = True
    axes[1].set_xlabel("epoch")
    axes[1].set_ylim(-0.02, 1.02)
    axes[1].set_title("validation")
    if plotted:
        axes[1].legend()
    else:
        axes[1].text(0.5, 0.5, "no validation split", ha="center", va="center",
                     transform=axes[1].transAxes)
    if best_epoch is not None:
        for ax in axes:
            ax.axvline(best_epoch, color="grey", ls="--", lw=1, label="best checkpoint")
        axes[0].legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def embedding_plot(xy: np.ndarray, labels: Sequence[str], groups: Sequence[str], path: Path, *,
                   classes: Sequence[str] | None = None, group_name: str = "device",
                   title: str = "") -> Path:
    """2-D embedding (e.g. t-SNE) coloured by class (left) and by `group_name` (right).

    Args:
        xy: `(N, 2)` coordinates.
        labels: `(N,)` class names; `classes` fixes their legend order.
        groups: `(N,)` group names (recording device, ...).
    """
    plt = _plt()
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(list(labels), dtype=object)
    groups = np.asarray(list(groups), dtype=object)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), layout="constrained")
    order = list(classes) if classes is not None else sorted(set(labels.tolist()))
    for i, k in enumerate(order):
        m = labels == k
        if m.any():
            axes[0].scatter(xy[m, 0], xy[m, 1], s=9, alpha=0.75, color=_colour(i, k),
                            label=f"{k} ({int(m.sum())})")
    for i, g in enumerate(sorted(set(groups.tolist()))):
        m = groups == g
        axes[1].scatter(xy[m, 0], xy[m, 1], s=9, alpha=0.75, color=f"C{i % 10}",
                        label=f"{g} ({int(m.sum())})")
    axes[0].set_title("by class")
    axes[1].set_title(f"by {group_name}")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, markerscale=1.5)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def film_plot(stats: dict[str, Any], path: Path, title: str = "") -> Path:
    """FiLM modulation per conditioned block, from `rsctool.eval.film_statistics`.

    Top: mean |gamma - 1| and mean |beta| per layer (error bars: mean over hidden
    dimensions of the std across cycles, i.e. how much the modulation varies with the
    metadata). Bottom: per device, RMS distance of that device's mean gamma / beta
    from the overall mean (how device-specific the modulation is).
    """
    plt = _plt()
    layers = stats["layers"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True, layout="constrained")
    for g, (name, group) in enumerate(stats["groups"].items()):
        for col, (key, spread, label) in enumerate((
                ("gamma_abs_dev", "gamma_sample_std", "mean |gamma - 1|"),
                ("beta_abs", "beta_sample_std", "mean |beta|"))):
            ax = axes[0, col]
            ax.errorbar(np.asarray(layers) + 0.08 * g, group[key], yerr=group[spread],
                        marker="o", ms=4, capsize=3, label=name)
            ax.set_ylabel(label)
    for col, key in enumerate(("gamma_shift", "beta_shift")):
        ax = axes[1, col]
        for i, (dev, d) in enumerate(stats.get("by_device", {}).items()):
            ax.plot(layers, d[key], marker="o", ms=3, color=f"C{i % 10}",
                    label=f"{dev} ({d['n']})")
        ax.set_xlabel("transformer block")
        ax.set_ylabel(f"device shift of {key.split('_')[0]} (RMS)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in axes[0]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[1, 0].set_xticks(layers)
    fig.suptitle(title or "FiLM modulation per layer")
    return _save(fig, path)


def softfilm_mask_plot(stats: dict[str, Any], path: Path, title: str = "") -> Path:
    """SoftFiLM masks from `SoftFiLMAST.mask_stats()`.

    Left: the soft masks (factors x hidden dimensions, dimensions sorted by the factor
    with the largest mask). Middle: dimensions allocated per factor (mask > 0.5) and the
    uncovered ones. Right: pairwise overlap (share of dimensions two factors both hold).
    """
    plt = _plt()
    factors = list(stats["factors"])
    masks = np.asarray(stats["masks"], dtype=np.float64)
    order = np.lexsort((-masks.max(axis=0), masks.argmax(axis=0)))
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), layout="constrained",
                             gridspec_kw={"width_ratios": [3.0, 1.2, 1.2]})
    im = axes[0].imshow(masks[:, order], aspect="auto", cmap="viridis", vmin=0, vmax=1,
                        interpolation="nearest")
    axes[0].set_yticks(range(len(factors)), factors)
    axes[0].set_xlabel(f"hidden dimension (sorted), D = {stats['hidden']}")
    axes[0].set_title(f"soft masks (tau {stats['tau']:.3g})")
    fig.colorbar(im, ax=axes[0], fraction=0.03, pad=0.01)
    names = [*factors, "uncovered"]
    vals = [stats["allocated"][f] for f in factors] + [stats["uncovered"]]
    bars = axes[1].bar(names, vals, color=[f"C{i}" for i in range(len(factors))] + ["grey"])
    axes[1].bar_label(bars, fontsize=8)
    axes[1].set_ylabel("dimensions with mask > 0.5")
    axes[1].tick_params(axis="x", rotation=30)
    axes[1].set_title("allocation")
    k = len(factors)
    ov = np.eye(k)
    hard = masks > 0.5
    for i in range(k):
        for j in range(k):
            if i != j:
                key = f"{factors[min(i, j)]}-{factors[max(i, j)]}"
                ov[i, j] = stats["overlap"].get(key, float((hard[i] & hard[j]).mean()))
            else:
                ov[i, j] = float(hard[i].mean())
    im = axes[2].imshow(ov, cmap="magma", vmin=0, vmax=1)
    axes[2].set_xticks(range(k), factors, rotation=30, ha="right")
    axes[2].set_yticks(range(k), factors)
    for i in range(k):
        for j in range(k):
            axes[2].text(j, i, f"{ov[i, j]:.2f}", ha="center", va="center", fontsize=8,
                         color="white" if ov[i, j] < 0.6 else "black")
    axes[2].set_title("overlap (diag: share held)")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# --------------------------------------------------------------------------- GHM

def _ghm_centres(stat: dict[str, Any]) -> tuple[np.ndarray, float]:
    edges = np.asarray(stat["edges"], dtype=float)
    return (edges[:-1] + edges[1:]) / 2, float(edges[1] - edges[0])


def ghm_epoch_plot(stat: dict[str, Any], path: Path, *, title: str = "") -> Path:
    """One epoch of GHM statistics (an entry of a run's ``ghm_stats.json``).

    Left: the share of examples (pairs, for ranking) per gradient-norm bin over the
    epoch, and the moving-average density at its end. Right: the mean weight the loss
    gave an example of each bin (1 = the plain loss's weight).
    """
    plt = _plt()
    centres, width = _ghm_centres(stat)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    axes[0].bar(centres, stat["fraction"], width=width * 0.9, color="C0",
                label=f"share of {stat['n']} examples")
    if stat.get("ema_density") is not None:
        axes[0].plot(centres, stat["ema_density"], "o-", color="C3", ms=3,
                     label="density (moving average)")
    axes[0].set_xlabel("gradient norm g")
    axes[0].set_ylabel("share")
    axes[0].set_xlim(0, 1)
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"epoch {stat['epoch']}: g histogram (mean g {stat['g_mean']:.3f})")
    w = [np.nan if v is None else v for v in stat["mean_weight"]]
    axes[1].bar(centres, w, width=width * 0.9, color="C1")
    axes[1].axhline(1.0, color="k", lw=0.8, ls="--")
    axes[1].set_xlabel("gradient norm g")
    axes[1].set_ylabel("mean GHM weight")
    axes[1].set_xlim(0, 1)
    axes[1].set_title(f"weights (alpha {stat['alpha']:g}, momentum {stat['momentum']:g})")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def ghm_compare_plot(stats: Sequence[dict[str, Any]], path: Path, *,
                     title: str = "") -> Path:
    """The g histograms and mean weights of several epochs, overlaid."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for i, stat in enumerate(stats):
        centres, _ = _ghm_centres(stat)
        colour = plt.get_cmap("viridis")(i / max(1, len(stats) - 1))
        axes[0].plot(centres, stat["fraction"], "o-", ms=3, color=colour,
                     label=f"epoch {stat['epoch']}")
        w = [np.nan if v is None else v for v in stat["mean_weight"]]
        axes[1].plot(centres, w, "o-", ms=3, color=colour, label=f"epoch {stat['epoch']}")
    axes[0].set_xlabel("gradient norm g")
    axes[0].set_ylabel("share of examples")
    axes[0].set_title("g histogram")
    axes[1].set_xlabel("gradient norm g")
    axes[1].set_ylabel("mean GHM weight")
    axes[1].set_yscale("log")
    axes[1].set_title("weights")
    for ax in axes:
        ax.set_xlim(0, 1)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def ghm_summary_plot(stats: Sequence[dict[str, Any]], path: Path, *, title: str = "") -> Path:
    """The whole training: share per bin and epoch (heat map), mean g per epoch, and
    the share of easy (g < 0.2) and hard (g >= 0.8) examples."""
    plt = _plt()
    epochs = [s["epoch"] for s in stats]
    grid = np.array([s["fraction"] for s in stats], dtype=float).T  # bins x epochs
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    im = axes[0].imshow(grid, aspect="auto", origin="lower", cmap="magma",
                        extent=(min(epochs) - 0.5, max(epochs) + 0.5, 0, 1))
    fig.colorbar(im, ax=axes[0], label="share of examples")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("gradient norm g")
    axes[0].set_title("g histogram per epoch")
    centres = [_ghm_centres(s)[0] for s in stats]
    easy = [float(np.sum(np.asarray(s["fraction"])[c < 0.2])) for s, c in zip(stats, centres,
                                                                             strict=True)]
    hard = [float(np.sum(np.asarray(s["fraction"])[c >= 0.8])) for s, c in zip(stats, centres,
                                                                              strict=True)]
    axes[1].plot(epochs, [s["g_mean"] for s in stats], "o-", ms=3, label="mean g")
    axes[1].plot(epochs, easy, "s-", ms=3, label="share g < 0.2 (easy)")
    axes[1].plot(epochs, hard, "^-", ms=3, label="share g >= 0.8 (hard)")
    axes[1].set_ylim(-0.02, 1.02)
    axes[1].set_xlabel("epoch")
    axes[1].set_title("over training")
    axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def paper_protocol_plot(pp: dict[str, Any], path: Path, title: str = "") -> Path:
    """Test Score per kept epoch (`rsctool.eval.paper_protocol`), the test-selected
    epoch marked as optimistic and the validation-selected one as honest."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    rows = [r for r in pp["epochs"] if r.get("score") is not None]
    ax.plot([r["epoch"] for r in rows], [100 * r["score"] for r in rows], "o-",
            label="test Score per epoch")
    if pp.get("score") is not None:
        ax.plot([pp["epoch"]], [100 * pp["score"]], "r*", markersize=14,
                label=f"test-selected, epoch {pp['epoch']} (optimistic)")
    val = pp.get("validation_selected")
    if val and val.get("score") is not None:
        ax.plot([val["epoch"]], [100 * val["score"]], "gs", markersize=9,
                label=f"validation-selected, epoch {val['epoch']} (honest)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test Score (%)")
    ax.legend(fontsize=8)
    ax.set_title(title or "paper protocol: test-selected epoch (optimistic)", fontsize=9)
    return _save(fig, path)

