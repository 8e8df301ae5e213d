"""SPRSound challenge scores (SE, SP, AS, HS, Score) against hand computations."""

from __future__ import annotations

import pytest

from rsctool.errors import ConfigError
from rsctool.metrics import sprsound_metrics

TASK12 = ("normal", "rhonchi", "wheeze", "stridor", "coarse_crackle", "fine_crackle",
          "wheeze_crackle")


def test_task_1_2_hand_example_with_empty_classes():
    # 4 normal (3 kept), 6 adventitious (4 exactly right); stridor and wheeze_crackle empty
    true = ["normal"] * 4 + ["rhonchi", "wheeze", "wheeze", "fine_crackle", "fine_crackle",
                             "coarse_crackle"]
    pred = ["normal", "normal", "wheeze", "normal", "rhonchi", "wheeze", "fine_crackle",
            "fine_crackle", "normal", "coarse_crackle"]
    m = sprsound_metrics(true, pred, TASK12)
    assert m["sp"] == pytest.approx(3 / 4)
    assert m["se"] == pytest.approx(4 / 6)
    assert m["as"] == pytest.approx(17 / 24)
    assert m["hs"] == pytest.approx(12 / 17)  # 2 * 3/4 * 2/3 / (17/12)
    assert m["score"] == pytest.approx((17 / 24 + 12 / 17) / 2)
    assert m["support"]["stridor"] == 0 and m["support"]["wheeze_crackle"] == 0
    assert m["n"] == 10


def test_task_2_1_poor_quality_counts_for_se():
    classes = ("normal", "adventitious", "poor_quality")
    m = sprsound_metrics([0, 2, 1, 1], [0, 2, 0, 1], classes)
    assert (m["sp"], m["se"]) == (1.0, pytest.approx(2 / 3))
    assert m["as"] == pytest.approx(5 / 6)
    assert m["hs"] == pytest.approx(0.8)
    assert m["score"] == pytest.approx((5 / 6 + 0.8) / 2)


def test_all_wrong_gives_zero_harmonic_score_not_a_division_by_zero():
    m = sprsound_metrics(["normal", "cas"], ["cas", "normal"],
                         ("normal", "cas", "das", "cas_das", "poor_quality"))
    assert (m["se"], m["sp"], m["as"], m["hs"], m["score"]) == (0.0, 0.0, 0.0, 0.0, 0.0)


def test_empty_side_gives_none_scores():
    m = sprsound_metrics(["normal", "normal"], ["normal", "adventitious"],
                         ("normal", "adventitious"))
    assert m["sp"] == 0.5 and m["se"] is None
    assert m["as"] is None and m["hs"] is None and m["score"] is None


def test_needs_a_normal_class():
    with pytest.raises(ConfigError, match="normal"):
        sprsound_metrics([0], [0], ("cas", "das"))
