"""Multilabel (crackle/wheeze sigmoids) pieces that seed 001's recipe depends on, with
tests that fail for a plausible bug: the per-label thresholds chosen on validation and
the multilabel GHM weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rsctool.cli import app
from rsctool.losses import build_loss
from rsctool.metrics import choose_thresholds, icbhi_metrics, multilabel_to_class


def _score(probs: np.ndarray, flags: np.ndarray, t) -> float:
    true = multilabel_to_class(flags[:, 0], flags[:, 1])
    pred = multilabel_to_class(probs[:, 0] >= t[0], probs[:, 1] >= t[1])
    return icbhi_metrics(true.tolist(), pred.tolist())["score"]


def test_stored_thresholds_are_the_ones_the_saved_val_predictions_choose(project):
    from rsctool.checkpoint import load_checkpoint
    from rsctool.train import TrainOptions, run

    res = run(project, TrainOptions(model="cnn", size="tiny", clip_seconds=2.0, batch_size=32,
                                    lr=3e-3, epochs=2, task="multilabel", run="ml"))
    stored = load_checkpoint(res.dir / "best.safetensors").state["thresholds"]
    r = CliRunner().invoke(app, ["--project", str(project.path), "-q", "eval", "--run", "ml",
                                 "--split", "val", "--no-plots", "--json",
                                 "--precision", "fp32"],  # training validated in fp32
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in
            (res.dir / "predictions_val.jsonl").read_text().splitlines()]
    probs = np.array([[row["sigmoid"]["crackle"], row["sigmoid"]["wheeze"]] for row in rows])
    flags = np.array([[row["label"] in ("crackle", "both"), row["label"] in ("wheeze", "both")]
                      for row in rows], dtype=int)
    again = choose_thresholds(probs, flags)
    # the data must be able to tell a chosen pair from the (0.5, 0.5) default
    assert _score(probs, flags, again) > _score(probs, flags, (0.5, 0.5))
    assert stored == pytest.approx(list(again), abs=1e-5)
    assert _score(probs, flags, stored) == pytest.approx(_score(probs, flags, again))


def test_multilabel_ghm_weights_use_the_distance_to_the_target_hand_worked():
    # 2 bins, alpha 1, no moving average. sigmoid(+-2) = 0.881 / 0.119, so
    # g = |sigmoid(x) - y| = [[0.119, 0.119], [0.881, 0.119]]: 3 terms in bin 0, 1 in bin 1;
    # densities 3/4 and 1/4 -> weights 4/3 and 4, normalised to mean 1: 2/3 and 2.
    # (g from sigmoid(x) alone would put 2 and 2 terms in the bins: uniform weights.)
    loss = build_loss("ghm", num_classes=2, task="multilabel", bins=2, alpha=1.0,
                      momentum=0.0)
    x = torch.tensor([[2.0, -2.0], [2.0, -2.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    easy, hard = np.log1p(np.exp(-2.0)), np.log1p(np.exp(2.0))   # BCE of the terms
    want = (3 * (2 / 3) * easy + 2 * hard) / 4
    assert loss({"logits": x}, y).item() == pytest.approx(want, rel=1e-5)
    stats = loss.last_stats
    assert stats["counts"] == [3, 1]
    assert stats["bin_weights"] == pytest.approx([2 / 3, 2.0], rel=1e-5)
