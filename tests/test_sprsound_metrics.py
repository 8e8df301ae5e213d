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


def test_task_2_1_poor_quality_counts_in_neither_se_nor_sp():
    """As the public challenge implementations compute it (rsctool.metrics docstring):
    SE over the adventitious rows only, which start after normal and poor quality."""
    classes = ("normal", "adventitious", "poor_quality")
    # normal -> normal; poor -> poor (left out); adventitious -> normal, adventitious
    m = sprsound_metrics([0, 2, 1, 1], [0, 2, 0, 1], classes)
    assert (m["sp"], m["se"]) == (1.0, 0.5)
    assert m["as"] == pytest.approx(3 / 4)
    assert m["hs"] == pytest.approx(2 / 3)  # 2 * 1 * 1/2 / (3/2)
    assert m["score"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert m["support"]["poor_quality"] == 1


def test_predicting_poor_quality_is_an_error_for_normal_and_adventitious_records():
    classes = ("normal", "cas", "das", "cas_das", "poor_quality")
    true = ["normal", "normal", "cas", "das", "poor_quality", "poor_quality"]
    pred = ["normal", "poor_quality", "poor_quality", "das", "normal", "cas"]
    m = sprsound_metrics(true, pred, classes)
    assert m["sp"] == 0.5 and m["se"] == 0.5  # the poor-quality rows change nothing
    assert m["hs"] == 0.5 and m["score"] == 0.5


def test_only_poor_quality_records_leave_se_undefined():
    m = sprsound_metrics(["normal", "poor_quality"], ["normal", "normal"],
                         ("normal", "adventitious", "poor_quality"))
    assert m["sp"] == 1.0 and m["se"] is None and m["score"] is None


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


def test_eval_scores_each_challenge_test_set_apart():
    """The 2022 inter- and intra-subject test sets are ranked apart by the challenge:
    eval's SPRSound block has their scores beside the whole split's."""
    from types import SimpleNamespace as NS

    from rsctool.eval import _sprsound_block

    classes = ["normal", "adventitious"]
    sets = ["inter_test", "inter_test", "intra_test", "intra_test", "intra_test"]
    cycles = [NS(meta={"set": s}) for s in sets]
    true = [0, 1, 0, 1, 1]
    pred = [0, 1, 1, 1, 0]
    block = _sprsound_block("1-1", cycles, true, pred, classes)
    assert (block["sp"], block["se"]) == (0.5, pytest.approx(2 / 3))
    inter, intra = block["per_set"]["inter_test"], block["per_set"]["intra_test"]
    assert inter["n"] == 2 and (inter["sp"], inter["se"], inter["score"]) == (1.0, 1.0, 1.0)
    assert intra["n"] == 3 and (intra["sp"], intra["se"]) == (0.0, 0.5)
    assert intra["hs"] == 0.0 and intra["score"] == pytest.approx(0.125)
    one = _sprsound_block("1-1", cycles[:2], true[:2], pred[:2], classes)
    assert one["per_set"] is None  # one set: the whole split is that set
