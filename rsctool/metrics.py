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

import re
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from rsctool.data.manifest import ICBHI_CLASSES
from rsctool.errors import ConfigError, DataError

__all__ = [
    "ICBHI_CLASSES",
    "breakdown",
    "choose_rank_thresholds",
    "choose_thresholds",
    "class_rank_order",
    "confusion_matrix",
    "icbhi_metrics",
    "multilabel_to_class",
    "pairwise_accuracy",
    "ranking_metrics",
    "scores_to_classes",
    "spearman",
    "sprsound_metrics",
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


#: The record-level class that SPRSound's SE and SP leave out (`sprsound_metrics`).
POOR_QUALITY = "poor_quality"


def sprsound_metrics(y_true: Any, y_pred: Any, classes: Sequence[str]) -> dict[str, Any]:
    """The SPRSound challenge scores (BioCAS 2022/2023 Tasks 1-1, 1-2, 2-1, 2-2).

    The repository READMEs name SE, SP, AS and HS without formulas (docs/datasets.md);
    these are the definitions two independent public challenge implementations agree on
    (chenzizhao/biocas-challenge-22 ``model/metric.py``; HUJH511/BioCAS-2023-Grand_Challenge
    ``src/utils/metric.py``):

    * SP = items of the ``normal`` class predicted ``normal`` / all ``normal`` items.
    * SE = adventitious items (every class but ``normal`` and, in the record tasks,
      ``poor_quality``) predicted as *exactly* their own class / all adventitious items.
      ``poor_quality`` records count in neither SE nor SP (both implementations start
      the adventitious rows after it); predicting ``poor_quality`` for a normal or
      adventitious record is an error like any other.
    * AS (average score) = (SE + SP) / 2.
    * HS (harmonic score) = 2 SE SP / (SE + SP); 0 when SE = SP = 0.
    * Score = (AS + HS) / 2, the challenge's ranking score.

    Args:
        y_true, y_pred: `(N,)` class indices into `classes` or class names.
        classes: class names in index order; one must be ``"normal"``.

    Returns:
        ``{n, classes, se, sp, as, hs, score, support}``; a score whose denominator is
        empty (no normal items: SP; no adventitious items: SE) is None, and so is every
        score built from it.

    Raises:
        ConfigError: `classes` has no ``normal`` class.
    """
    classes = _check_classes(classes)
    if NORMAL not in classes:
        raise ConfigError(f"SPRSound metrics need a {NORMAL!r} class, got {list(classes)}")
    m = icbhi_metrics(y_true, y_pred, classes)
    cm = np.asarray(m["confusion_matrix"])
    adventitious = [i for i, c in enumerate(classes) if c not in (NORMAL, POOR_QUALITY)]
    sp = m["sp"]
    se = _ratio(sum(cm[i, i] for i in adventitious), sum(cm[i].sum() for i in adventitious))
    hs = None if se is None or sp is None else (
        0.0 if se + sp == 0 else 2.0 * se * sp / (se + sp))
    avg = _mean2(se, sp)
    return {"n": m["n"], "classes": list(classes), "se": se, "sp": sp, "as": avg, "hs": hs,
            "score": _mean2(avg, hs), "support": m["support"]}


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


# --------------------------------------------------------------------------- ranking
#
# Ordinal ("ranking") runs output one score per example; classes have a numeric order
# (``0_degree < 45_degree < ...``) and the class index in that order is the rank key.

_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)")


def class_rank_order(classes: Sequence[str], order: Sequence[str] | None = None) -> list[str]:
    """The classes from lowest to highest rank.

    With `order` (``train --class-order``): exactly those classes, in that order. Else
    each class name must start with a number (``0_degree``, ``45deg``, ``-10``, ``2.5``),
    and the classes are sorted by it.

    Raises:
        ConfigError: a class without a leading number, two classes with the same
            number, or an `order` that does not list each class exactly once.
    """
    classes = [str(c) for c in classes]
    if order is not None:
        order = [str(c).strip() for c in order]
        unknown = [c for c in order if c not in classes]
        missing = [c for c in classes if c not in order]
        if unknown or missing or len(set(order)) != len(order):
            parts = []
            if unknown:
                parts.append(f"unknown class(es) {', '.join(unknown)}")
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if len(set(order)) != len(order):
                parts.append("a class is listed twice")
            raise ConfigError(f"must list each class once ({'; '.join(parts)}); "
                              f"the classes are {', '.join(classes)}", field="class_order")
        return list(order)
    values: dict[str, float] = {}
    for c in classes:
        m = _NUMBER.match(c)
        if m is None:
            raise ConfigError(f"ranking needs ordered classes: class {c!r} does not start with "
                              f"a number (e.g. 0_degree, 45_degree); give the order with "
                              f"{{field}} {','.join(classes)}", field="class_order")
        values[c] = float(m.group(0))
    by_value: dict[float, str] = {}
    for c, v in values.items():
        if v in by_value:
            raise ConfigError(f"ranking: classes {by_value[v]!r} and {c!r} have the same "
                              f"number {v:g}; give the order with {{field}}",
                              field="class_order")
        by_value[v] = c
    return sorted(classes, key=lambda c: values[c])


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of `x`, ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(scores: Any, keys: Any) -> float | None:
    """Spearman rank correlation (ties get average ranks); None when either side is
    constant or there are fewer than 2 examples."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    k = np.asarray(keys, dtype=np.float64).reshape(-1)
    if s.shape != k.shape:
        raise DataError(f"spearman: {s.shape[0]} scores but {k.shape[0]} keys")
    if s.size < 2:
        return None
    rs, rk = _average_ranks(s), _average_ranks(k)
    rs -= rs.mean()
    rk -= rk.mean()
    den = float(np.sqrt((rs * rs).sum() * (rk * rk).sum()))
    return None if den == 0 else float((rs * rk).sum() / den)


def pairwise_accuracy(scores: Any, keys: Any, *, chunk: int = 2048) -> float | None:
    """Share of pairs with different keys whose scores are in the same order (the higher
    key has the higher score); a score tie counts one half. None without such pairs."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    k = np.asarray(keys, dtype=np.float64).reshape(-1)
    if s.shape != k.shape:
        raise DataError(f"pairwise accuracy: {s.shape[0]} scores but {k.shape[0]} keys")
    good = 0.0
    total = 0
    for a in range(0, s.size, chunk):
        ks = np.sign(k[a:a + chunk, None] - k[None, :])
        ss = np.sign(s[a:a + chunk, None] - s[None, :])
        pos = ks > 0  # each unordered pair once: from its higher-key member
        total += int(pos.sum())
        good += float((ss[pos] > 0).sum()) + 0.5 * float((ss[pos] == 0).sum())
    return None if total == 0 else good / total


def scores_to_classes(scores: Any, thresholds: Sequence[float]) -> np.ndarray:
    """Class index per score: the number of (ascending) `thresholds` it reaches."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    t = np.sort(np.asarray(list(thresholds), dtype=np.float64))
    return np.searchsorted(t, s, side="right").astype(np.int64)


def choose_rank_thresholds(scores: Any, y: Any, num_classes: int) -> list[float]:
    """`num_classes - 1` ascending score thresholds that turn scores into classes.

    The thresholds maximise the class accuracy of `scores_to_classes` on the given
    examples (dynamic programming over the sorted distinct scores: each score gets one
    class, classes never decrease with the score); each threshold lies midway between
    the neighbouring scores. Choose them on the validation split, never on the split
    that is reported.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    t = np.asarray(y, dtype=np.int64).reshape(-1)
    if s.shape != t.shape:
        raise DataError(f"thresholds: {s.shape[0]} scores but {t.shape[0]} labels")
    if num_classes < 2:
        return []
    if s.size == 0:
        return [float(i) for i in range(num_classes - 1)]
    uniq, inv = np.unique(s, return_inverse=True)
    g_n, k_n = len(uniq), num_classes
    cnt = np.zeros((g_n, k_n), dtype=np.int64)
    np.add.at(cnt, (inv, np.clip(t, 0, k_n - 1)), 1)
    f = np.zeros((g_n, k_n), dtype=np.int64)
    back = np.zeros((g_n, k_n), dtype=np.int64)  # class of the previous group
    f[0] = cnt[0]
    for g in range(1, g_n):
        prev = f[g - 1]
        # best previous class <= c (ties: the highest such class, i.e. the latest cut)
        best_c = np.zeros(k_n, dtype=np.int64)
        for c in range(1, k_n):
            best_c[c] = c if prev[c] >= prev[best_c[c - 1]] else best_c[c - 1]
        f[g] = cnt[g] + prev[best_c]
        back[g] = best_c
    labels = np.zeros(g_n, dtype=np.int64)
    c = int(np.argmax(f[-1]))
    for g in range(g_n - 1, -1, -1):
        labels[g] = c
        c = int(back[g, c])
    out: list[float] = []
    for k in range(1, k_n):
        first = np.flatnonzero(labels >= k)
        if first.size == 0:
            out.append(float(uniq[-1] + 1.0))
        elif first[0] == 0:
            out.append(float(uniq[0] - 1.0))
        else:
            out.append(float((uniq[first[0] - 1] + uniq[first[0]]) / 2))
    return out


def ranking_metrics(scores: Any, y: Any, classes: Sequence[str],
                    thresholds: Sequence[float]) -> dict[str, Any]:
    """Metrics of an ordinal run: `icbhi_metrics` of the classes given by `thresholds`
    (accuracy, macro recall, confusion; Sp/Se/Score are None without a ``normal``
    class), plus ``pairwise_accuracy`` and ``spearman`` of the scores against the class
    ranks `y` (indices in rank order)."""
    pred = scores_to_classes(scores, thresholds)
    m = icbhi_metrics(np.asarray(y, dtype=np.int64), pred, classes)
    m["pairwise_accuracy"] = pairwise_accuracy(scores, y)
    m["spearman"] = spearman(scores, y)
    m["pred"] = pred.tolist()
    return m
