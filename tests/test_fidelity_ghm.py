"""Seed 004's GHM as its recipe sets it: 10 bins, per-batch density (no moving
average), weights count^-0.75 (issue 18)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import tomllib
import torch

from rsctool.losses import build_loss
from rsctool.train import TrainOptions

RECIPE = Path(__file__).resolve().parents[1] / "examples" / "seed-004-ghm.toml"


def _logits_for(g: list[float]) -> torch.Tensor:
    """2-class logits whose GHM gradient norm g = 1 - p_y is `g` for label 0."""
    return torch.tensor([[0.0, math.log(x / (1 - x))] for x in g])


def test_seed_004_recipe_sets_per_batch_density_with_count_power_minus_0_75():
    o = TrainOptions(**tomllib.loads(RECIPE.read_text())["train"]).resolve()
    assert o.loss == "ghm"
    assert o.loss_cfg == {"bins": 10, "alpha": 0.75, "momentum": 0}
    loss = build_loss("ghm", num_classes=2, **o.loss_cfg)
    y = torch.zeros(4, dtype=torch.long)
    # hand-worked: three easy examples (g = 0.05, bin 0) and one hard (g = 0.95, bin 9):
    # weight ~ count^-0.75, normalised to mean 1 -> easy 4 / (3 + 3^0.75), hard 3^0.75 x that
    loss({"logits": _logits_for([0.05, 0.05, 0.05, 0.95])}, y)
    st = loss.last_stats
    assert st["counts"][0] == 3 and st["counts"][9] == 1
    easy = 4 / (3 + 3 ** 0.75)
    assert st["bin_weights"][0] == pytest.approx(easy, rel=1e-5)
    assert st["bin_weights"][9] == pytest.approx(easy * 3 ** 0.75, rel=1e-5)
    # no moving average: the next batch's weights depend on that batch only
    loss({"logits": _logits_for([0.95, 0.95, 0.95, 0.05])}, y)
    st = loss.last_stats
    assert st["bin_weights"][9] == pytest.approx(easy, rel=1e-5)
    assert st["bin_weights"][0] == pytest.approx(easy * 3 ** 0.75, rel=1e-5)
