"""ICBHI 2017 metrics against a hand-computed confusion matrix, thresholds, breakdowns."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from rsctool.errors import DataError
from rsctool.metrics import (
    ICBHI_CLASSES,
    breakdown,
    choose_thresholds,
    confusion_matrix,
    icbhi_metrics,
    multilabel_to_class,
)

# Hand example (rows = true class, columns = predicted; order normal, crackle, wheeze, both):
#
#              N   C   W   B   | total
#   normal    50   5   3   2   |  60
#   crackle    4  10   1   5   |  20
#   wheeze     3   2   8   2   |  15
#   both       1   1   1   2   |   5
#
# Sp = 50 / 60 = 0.833333
# Se = (10 + 8 + 2) / (20 + 15 + 5) = 20 / 40 = 0.5       (exact class only)
# Score = (0.833333 + 0.5) / 2 = 0.666667
# accuracy = (50 + 10 + 8 + 2) / 100 = 0.70
# recall: normal 50/60, crackle 10/20 = 0.5, wheeze 8/15 = 0.533333, both 2/5 = 0.4
# 2-class: abnormal predicted normal = 4 + 3 + 1 = 8, so Se = (40 - 8) / 40 = 0.8,
#          Score = (0.833333 + 0.8) / 2 = 0.816667; matrix [[TN 50, FP 10], [FN 8, TP 32]].
HAND_CM = np.array([[50, 5, 3, 2],
                    [4, 10, 1, 5],
                    [3, 2, 8, 2],
                    [1, 1, 1, 2]])


def _labels_from_cm(cm: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    t, p = [], []
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            t += [i] * int(cm[i, j])
            p += [j] * int(cm[i, j])
    order = np.random.default_rng(seed).permutation(len(t))
    return np.array(t)[order], np.array(p)[order]


def test_hand_example_icbhi_scores():
    y_true, y_pred = _labels_from_cm(HAND_CM)
    m = icbhi_metrics(y_true, y_pred)
    assert m["n"] == 100
    assert m["classes"] == list(ICBHI_CLASSES)
    assert m["confusion_matrix"] == HAND_CM.tolist()
    assert m["sp"] == pytest.approx(50 / 60)
    assert m["se"] == pytest.approx(0.5)
    assert m["score"] == pytest.approx((50 / 60 + 0.5) / 2)
    assert m["score"] == pytest.approx(0.666667, abs=1e-6)
    assert m["accuracy"] == pytest.approx(0.70)
    assert m["per_class_recall"] == pytest.approx(
        {"normal": 50 / 60, "crackle": 0.5, "wheeze": 8 / 15, "both": 0.4})
    assert m["macro_recall"] == pytest.approx((50 / 60 + 0.5 + 8 / 15 + 0.4) / 4)
    assert m["support"] == {"normal": 60, "crackle": 20, "wheeze": 15, "both": 5}
    assert m["predicted"] == {"normal": 58, "crackle": 18, "wheeze": 13, "both": 11}
    two = m["two_class"]
    assert two["confusion_matrix"] == [[50, 10], [8, 32]]
    assert two["sp"] == pytest.approx(50 / 60)
    assert two["se"] == pytest.approx(0.8)
    assert two["score"] == pytest.approx(0.816667, abs=1e-6)
    json.dumps(m, allow_nan=False)  # JSON-safe: plain types, no NaN


def test_class_names_give_the_same_result_as_indices():
    y_true, y_pred = _labels_from_cm(HAND_CM, seed=3)
    names = np.array(ICBHI_CLASSES)
    assert icbhi_metrics(list(names[y_true]), list(names[y_pred])) == \
        icbhi_metrics(y_true, y_pred)


def test_crackle_predicted_as_both_is_a_miss_for_se_but_a_hit_for_two_class():
    m = icbhi_metrics(["crackle", "wheeze"], ["both", "crackle"])
    assert m["se"] == 0.0
    assert m["two_class"]["se"] == 1.0
    assert m["sp"] is None and m["score"] is None  # no normal cycles: no division by zero


def test_empty_classes_report_none_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = icbhi_metrics([0, 0, 0], [0, 1, 0])
        empty = icbhi_metrics([], [])
    assert m["sp"] == pytest.approx(2 / 3)
    assert m["se"] is None and m["score"] is None
    assert m["per_class_recall"]["crackle"] is None
    assert m["two_class"]["se"] is None
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["macro_recall"] is None
    json.dumps(m, allow_nan=False)


def test_classes_without_normal_have_no_sp_se():
    m = icbhi_metrics(["cat", "dog", "dog"], ["cat", "cat", "dog"], classes=("cat", "dog"))
    assert m["sp"] is None and m["two_class"] is None
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["confusion_matrix"] == [[1, 0], [1, 1]]


@pytest.mark.parametrize("y_true, y_pred, message", [
    (["normal", "rattle"], ["normal", "normal"], "unknown class 'rattle'"),
    ([0, 4], [0, 0], "out of range"),
    ([0, 1, 2], [0, 1], "3 labels"),
    ([0.5], [0], "whole numbers"),
])
def test_bad_labels_raise_data_error(y_true, y_pred, message):
    with pytest.raises(DataError, match=message):
        icbhi_metrics(y_true, y_pred)


def test_confusion_matrix_rows_are_true_classes():
    cm = confusion_matrix([0, 0, 1], [1, 1, 1], 3)
    assert cm.tolist() == [[0, 2, 0], [0, 1, 0], [0, 0, 0]]


def test_multilabel_to_class():
    c = np.array([0, 1, 0, 1, True])
    w = np.array([0, 0, 1, 1, False])
    assert multilabel_to_class(c, w).tolist() == [0, 1, 2, 3, 1]
    assert [ICBHI_CLASSES[i] for i in multilabel_to_class([1], [1])] == ["both"]
    with pytest.raises(DataError, match="shape"):
        multilabel_to_class([0, 1], [1])
    with pytest.raises(DataError, match="0/1"):
        multilabel_to_class([0.3], [1])


def _score(probs, y, t):
    pred = multilabel_to_class(probs[:, 0] >= t[0], probs[:, 1] >= t[1])
    return icbhi_metrics(multilabel_to_class(y[:, 0], y[:, 1]), pred)["score"]


def test_choose_thresholds_finds_separating_thresholds():
    # Crackle positives score 0.30-0.40, negatives 0.10-0.20; wheeze positives 0.80-0.90,
    # negatives 0.60-0.70. Default 0.5 misses every crackle and flags every wheeze.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(200, 2))
    probs = np.where(y == 1, [0.3, 0.8], [0.1, 0.6]) + rng.uniform(0, 0.1, size=(200, 2))
    t = choose_thresholds(probs, y)
    assert 0.2 < t[0] < 0.3 and 0.7 < t[1] < 0.8
    assert _score(probs, y, t) == pytest.approx(1.0)
    assert _score(probs, y, (0.5, 0.5)) < 0.6


def test_choose_thresholds_beats_every_grid_point():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=(150, 2))
    probs = np.clip(0.25 * y + rng.uniform(0, 0.75, size=(150, 2)), 0, 1)
    best = _score(probs, y, choose_thresholds(probs, y))
    grid = np.linspace(0, 1, 41)
    assert all(best >= _score(probs, y, (a, b)) - 1e-12 for a in grid for b in grid)
    assert choose_thresholds(probs, y) == choose_thresholds(probs, y)  # deterministic


def test_choose_thresholds_rejects_bad_shapes():
    with pytest.raises(DataError, match=r"\(N, 2\)"):
        choose_thresholds(np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(DataError, match="y must be"):
        choose_thresholds(np.zeros((3, 2)), np.zeros((2, 2)))
    with pytest.raises(DataError, match="NaN"):
        choose_thresholds(np.full((1, 2), np.nan), np.zeros((1, 2)))


def test_breakdown_per_group():
    y_true = ["normal", "crackle", "normal", "wheeze", "both", "normal"]
    y_pred = ["normal", "crackle", "crackle", "normal", "both", "normal"]
    groups = ["Meditron", "Meditron", "LittC2SE", "LittC2SE", None, None]
    out = breakdown(y_true, y_pred, groups)
    assert list(out) == ["LittC2SE", "Meditron", "unknown"]
    # Meditron: normal ok, crackle ok -> Sp 1, Se 1. LittC2SE: normal -> crackle (Sp 0),
    # wheeze -> normal (Se 0). unknown: both ok, normal ok.
    assert (out["Meditron"]["sp"], out["Meditron"]["se"]) == (1.0, 1.0)
    assert (out["LittC2SE"]["sp"], out["LittC2SE"]["se"], out["LittC2SE"]["score"]) == \
        (0.0, 0.0, 0.0)
    assert out["unknown"]["n"] == 2 and out["unknown"]["score"] == 1.0
    with pytest.raises(DataError, match="groups"):
        breakdown(y_true, y_pred, groups[:-1])


def test_choose_thresholds_without_abnormal_cycles_maximises_sp():
    probs = np.array([[0.2, 0.9], [0.4, 0.1], [0.7, 0.3]])
    t = choose_thresholds(probs, np.zeros((3, 2), dtype=int))
    assert (probs[:, 0] < t[0]).all() and (probs[:, 1] < t[1]).all()
