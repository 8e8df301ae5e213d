"""ICBHI 2017 challenge metrics, threshold selection and per-group breakdowns.

Definitions (DESIGN.md, "Metrics"; the official ICBHI 2017 challenge scoring):

* Sp (specificity) = normal cycles predicted normal / all normal cycles.
* Se (sensitivity) = abnormal cycles (crackle, wheeze, both) predicted as *exactly* their
  own class / all abnormal cycles. A crackle cycle predicted "both" is a miss.
* Score = (Sp + Se) / 2.
* 2-class view (normal vs abnormal): Sp as above; Se = abnormal cycles predicted as
  *any* abnormal class / all abnormal cycles.

Everything returned is JSON-safe (plain floats, ints, lists, dicts). A ratio whose
denominator is zero (for example Se on a group without abnormal cycles) is ``None``,
never a division by zero or NaN. Labels are given as class indices (into `classes`) or
as class names; the confusion matrix has rows = true class, columns = predicted class.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from rsctool.data.manifest import ICBHI_CLASSES
from rsctool.errors import ConfigError, DataError

__all__ = [
    "ICBHI_CLASSES",
    "breakdown",
    "choose_thresholds",
    "confusion_matrix",
    "icbhi_metrics",
    "multilabel_to_class",
]

#: Name of the class that counts as "normal" for Sp/Se.
NORMAL = "normal"


def _ratio(num: float, den: float) -> float | None:
    """``num / den`` as a float, or None when ``den == 0``."""
    return None if den == 0 else float(num) / float(den)


def _to_indices(labels: Any, classes: Sequence[str], what: str) -> np.ndarray:
    """Labels (indices or class names) -> int64 array of indices into `classes`.

    Raises DataError naming `what` on an unknown name or an out-of-range index.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1:
        if arr.ndim == 0:
            arr = arr.reshape(1)
        else:
            raise DataError(f"{what}: expected a 1-D sequence of labels, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind in "USO":
        lookup = {name: i for i, name in enumerate(classes)}
        out = np.empty(arr.shape[0], dtype=np.int64)
        for i, v in enumerate(arr.tolist()):
            if isinstance(v, str):
                if v not in lookup:
                    raise DataError(f"{what}: unknown class {v!r} (known: {', '.join(classes)})")
                out[i] = lookup[v]
            elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                out[i] = int(v)
            else:
                raise DataError(f"{what}: label {v!r} is neither a class name nor an index")
        arr = out
    elif arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise DataError(f"{what}: class indices must be whole numbers")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise DataError(f"{what}: cannot read labels of dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= len(classes))
    if bad.any():
        raise DataError(
            f"{what}: class index {int(arr[bad][0])} out of range 0..{len(classes) - 1}")
    return arr


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    classes = tuple(str(c) for c in classes)
    if not classes:
        raise ConfigError("metrics: the class list is empty")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"metrics: duplicate class names in {list(classes)}")
    return classes


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """`(C, C)` int64 counts; row = true class index, column = predicted class index."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _scores_from_cm(cm: np.ndarray, normal: int) -> dict[str, float | None]:
    """Sp, Se, Score and the 2-class view from a confusion matrix (normal class index)."""
    n_normal = int(cm[normal].sum())
    abnormal = [c for c in range(cm.shape[0]) if c != normal]
    n_abnormal = int(sum(cm[c].sum() for c in abnormal))
    sp = _ratio(cm[normal, normal], n_normal)
    se = _ratio(sum(cm[c, c] for c in abnormal), n_abnormal)
    # 2-class: an abnormal cycle predicted as any abnormal class counts as detected.
    se2 = _ratio(n_abnormal - sum(cm[c, normal] for c in abnormal), n_abnormal)
    return {"sp": sp, "se": se, "score": _mean2(sp, se), "se2": se2,
            "score2": _mean2(sp, se2)}


def _mean2(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else (a + b) / 2.0


def icbhi_metrics(y_true: Any, y_pred: Any,
                  classes: Sequence[str] = ICBHI_CLASSES) -> dict[str, Any]:
    """ICBHI 2017 metrics of predicted vs true labels.

    Args:
        y_true, y_pred: `(N,)` class indices into `classes` or class names.
        classes: class names in index order; the class named ``"normal"`` is the
            negative class of Sp/Se. Without a ``"normal"`` class (a folder dataset),
            ``sp``, ``se``, ``score`` and ``two_class`` are None.

    Returns:
        JSON-safe dict::

            n, classes, sp, se, score, accuracy, macro_recall,
            per_class_recall {name: float|None}, support {name: int},
            predicted {name: int}, confusion_matrix [[int]] (rows true, cols predicted),
            two_class {sp, se, score, confusion_matrix [[TN, FP], [FN, TP]]}

        Ratios with an empty denominator are None.
    """
    classes = _check_classes(classes)
    t = _to_indices(y_true, classes, "y_true")
    p = _to_indices(y_pred, classes, "y_pred")
    if t.shape[0] != p.shape[0]:
        raise DataError(f"metrics: y_true has {t.shape[0]} labels but y_pred has {p.shape[0]}")
    c = len(classes)
    cm = confusion_matrix(t, p, c)
    support = cm.sum(axis=1)
    recall = {name: _ratio(cm[i, i], support[i]) for i, name in enumerate(classes)}
    present = [r for r in recall.values() if r is not None]
    out: dict[str, Any] = {
        "n": int(t.shape[0]),
        "classes": list(classes),
        "sp": None,
        "se": None,
        "score": None,
        "accuracy": _ratio(np.trace(cm), cm.sum()),
        "macro_recall": float(np.mean(present)) if present else None,
        "per_class_recall": recall,
        "support": {name: int(support[i]) for i, name in enumerate(classes)},
        "predicted": {name: int(cm[:, i].sum()) for i, name in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
        "two_class": None,
    }
    if NORMAL in classes:
        normal = classes.index(NORMAL)
        s = _scores_from_cm(cm, normal)
        out.update(sp=s["sp"], se=s["se"], score=s["score"])
        is_ab_t = t != normal
        is_ab_p = p != normal
        cm2 = confusion_matrix(is_ab_t.astype(np.int64), is_ab_p.astype(np.int64), 2)
        out["two_class"] = {"sp": s["sp"], "se": s["se2"], "score": s["score2"],
                            "confusion_matrix": cm2.tolist()}
    return out


def multilabel_to_class(crackle_pred: Any, wheeze_pred: Any) -> np.ndarray:
    """Two binary decisions -> ICBHI class indices `(N,)`.

    0 normal, 1 crackle, 2 wheeze, 3 both (the `ICBHI_CLASSES` order, which is
    ``crackle + 2 * wheeze``). Inputs are `(N,)` booleans or 0/1 values.
    """
    c = np.asarray(crackle_pred)
    w = np.asarray(wheeze_pred)
    if c.shape != w.shape:
        raise DataError(f"multilabel_to_class: crackle shape {c.shape} != wheeze shape {w.shape}")
    for name, a in (("crackle", c), ("wheeze", w)):
        if a.size and not np.isin(a.astype(np.float64), (0.0, 1.0)).all():
            raise DataError(f"multilabel_to_class: {name} decisions must be 0/1 or booleans")
    return c.astype(np.int64) + 2 * w.astype(np.int64)


def _candidates(p: np.ndarray, max_candidates: int) -> np.ndarray:
    """Thresholds between consecutive distinct probabilities (plus both extremes).

    Midpoints rather than the observed values themselves, so a threshold does not
    sit exactly on a validation example. Capped at `max_candidates` by quantiles.
    """
    u = np.unique(p)
    if u.size > max_candidates:
        u = np.unique(np.quantile(p, np.linspace(0.0, 1.0, max_candidates)))
    mids = (u[:-1] + u[1:]) / 2.0
    lo = min(0.0, float(u[0])) - 1e-6
    hi = max(1.0, float(u[-1])) + 1e-6
    return np.concatenate([[lo], mids, [hi]])


def choose_thresholds(probs: Any, y: Any, *, max_candidates: int = 512,
                      ) -> tuple[float, float]:
    """Crackle and wheeze thresholds that maximise the ICBHI Score on (`probs`, `y`).

    Use validation data only: tuning thresholds on the test split inflates the
    reported Score (a known flaw of the seed systems, DESIGN.md).

    Every pair of candidate thresholds is scored exactly, in O(N + K^2) with 2-D
    cumulative counts per true class (K candidates per column) instead of
    re-classifying all N examples K^2 times.

    Args:
        probs: `(N, 2)` predicted probabilities (crackle, wheeze), in [0, 1].
        y: `(N, 2)` true 0/1 flags (crackle, wheeze).
        max_candidates: at most this many candidate thresholds per column.

    Returns:
        ``(t_crackle, t_wheeze)``: a cycle has crackles when ``p_crackle >= t_crackle``.
        Among equally good pairs the one closest to (0.5, 0.5) wins, so the choice is
        deterministic and not needlessly extreme.
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    if probs.ndim != 2 or probs.shape[1] != 2:
        raise DataError(f"choose_thresholds: probs must be (N, 2), got {probs.shape}")
    if y.shape != probs.shape:
        raise DataError(f"choose_thresholds: y must be {probs.shape}, got {y.shape}")
    if probs.shape[0] == 0:
        raise DataError("choose_thresholds: no examples")
    if not np.all(np.isfinite(probs)):
        raise DataError("choose_thresholds: probabilities contain NaN or inf")
    if max_candidates < 2:
        raise ConfigError("choose_thresholds: max_candidates must be >= 2")
    true = multilabel_to_class(y[:, 0], y[:, 1])
    tc = _candidates(probs[:, 0], max_candidates)
    tw = _candidates(probs[:, 1], max_candidates)
    kc, kw = tc.size, tw.size
    # Example n is predicted positive at threshold index a iff a < idx[n]
    # (idx = how many thresholds are <= its probability).
    ic = np.searchsorted(tc, probs[:, 0], side="right")
    iw = np.searchsorted(tw, probs[:, 1], side="right")
    hist = np.zeros((4, kc + 1, kw + 1), dtype=np.int64)
    np.add.at(hist, (true, ic, iw), 1)
    cum = hist.cumsum(axis=1).cumsum(axis=2)  # cum[k, i, j] = #class k with ic <= i, iw <= j
    le = cum[:, :kc, :kw]  # crackle negative and wheeze negative at (a, b)
    row = cum[:, :kc, kw][:, :, None]  # crackle negative, any wheeze
    col = cum[:, kc, :kw][:, None, :]  # wheeze negative, any crackle
    total = cum[:, kc, kw][:, None, None]
    correct_normal = le[0]
    correct_abnormal = ((col[1] - le[1])  # crackle: crackle yes, wheeze no
                        + (row[2] - le[2])  # wheeze: crackle no, wheeze yes
                        + (total[3] - row[3] - col[3] + le[3]))  # both: both yes
    n_normal = int(hist[0].sum())
    n_abnormal = int(hist[1:].sum())
    parts = []
    if n_normal:
        parts.append(correct_normal / n_normal)  # Sp for every (a, b)
    if n_abnormal:
        parts.append(correct_abnormal / n_abnormal)  # Se for every (a, b)
    # With one of the two groups absent the Score degenerates to the other ratio.
    score = np.round(sum(parts) / len(parts), 12).ravel()  # rounding makes float ties exact
    dist = ((tc[:, None] - 0.5) ** 2 + (tw[None, :] - 0.5) ** 2).ravel()
    best = int(np.lexsort((dist, -score))[0])  # highest score, then nearest to 0.5
    a, b = divmod(best, kw)
    return float(tc[a]), float(tw[b])


def breakdown(y_true: Any, y_pred: Any, groups: Sequence[Hashable | None],
              classes: Sequence[str] = ICBHI_CLASSES) -> dict[str, dict[str, Any]]:
    """`icbhi_metrics` per group (recording device, chest site, source, ...).

    Args:
        y_true, y_pred: `(N,)` labels as for `icbhi_metrics`.
        groups: `(N,)` group of each example; None (missing metadata) becomes
            ``"unknown"``.

    Returns:
        ``{str(group): metrics}`` sorted by group name.
    """
    classes = _check_classes(classes)
    t = _to_indices(y_true, classes, "y_true")
    p = _to_indices(y_pred, classes, "y_pred")
    g = ["unknown" if v is None else str(v) for v in groups]
    if not (len(g) == t.shape[0] == p.shape[0]):
        raise DataError(
            f"breakdown: {t.shape[0]} true labels, {p.shape[0]} predictions, {len(g)} groups")
    keys = np.asarray(g, dtype=object)
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(g)):
        m = keys == name
        out[name] = icbhi_metrics(t[m], p[m], classes)
    return out
