"""Losses: reductions to known cases, GHM density weighting and EMA, gradient reversal."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rsctool.errors import ConfigError
from rsctool.losses import (
    LOSSES,
    DomainDiscriminator,
    GHMRankingLoss,
    GradientReversal,
    build_loss,
    grad_reverse,
    grl_coefficient,
    list_losses,
    ranking_pairs,
)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 4, generator=g) * 2
    target = torch.randint(0, 4, (16,), generator=g)
    return logits, target


def test_all_losses_listed():
    assert set(list_losses()) == set(LOSSES) == {
        "ce", "focal", "bce", "ghm", "ghm-ranking", "margin", "bias-denoising"}


def test_ce_matches_torch_with_smoothing_and_weights(batch):
    logits, target = batch
    w = [1.0, 2.0, 3.0, 0.5]
    loss = build_loss("ce", num_classes=4, class_weights=w, label_smoothing=0.1)
    ref = F.cross_entropy(logits, target, weight=torch.tensor(w), label_smoothing=0.1)
    assert loss({"logits": logits}, target).item() == pytest.approx(ref.item(), rel=1e-6)


def test_reg_loss_is_added(batch):
    logits, target = batch
    loss = build_loss("ce", num_classes=4)
    plain = loss({"logits": logits}, target)
    with_reg = loss({"logits": logits, "reg_loss": torch.tensor(0.25)}, target)
    assert with_reg.item() == pytest.approx(plain.item() + 0.25, rel=1e-6)


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 3.0, 0.5]])
def test_focal_with_gamma_zero_equals_ce(batch, weights):
    logits, target = batch
    focal = build_loss("focal", num_classes=4, gamma=0.0, class_weights=weights)
    ce = build_loss("ce", num_classes=4, class_weights=weights)
    assert focal({"logits": logits}, target).item() == \
        pytest.approx(ce({"logits": logits}, target).item(), rel=1e-5)
    # Soft targets too.
    soft = torch.softmax(torch.randn(16, 4), dim=1)
    assert focal(logits, soft).item() == pytest.approx(ce(logits, soft).item(), rel=1e-5)


def test_focal_hand_value_and_down_weighting():
    # One example, logits [2, 0]: p_t = e^2 / (e^2 + 1) = 0.880797; CE = -log p_t = 0.126928;
    # focal(gamma=2) = (1 - p_t)^2 * CE = 0.119203^2 * 0.126928 = 0.0018036.
    logits, target = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    focal = build_loss("focal", num_classes=2, gamma=2.0)
    assert focal(logits, target).item() == pytest.approx(0.0018036, rel=1e-4)
    alpha = build_loss("focal", num_classes=2, gamma=2.0, alpha=[0.25, 0.75])
    assert alpha(logits, target).item() == pytest.approx(0.25 * 0.0018036, rel=1e-4)


def test_focal_multilabel_gamma_zero_equals_bce():
    x = torch.randn(8, 2)
    y = torch.randint(0, 2, (8, 2)).float()
    pw = [2.0, 3.0]
    focal = build_loss("focal", num_classes=2, task="multilabel", gamma=0.0, pos_weight=pw)
    bce = build_loss("bce", num_classes=2, task="multilabel", pos_weight=pw)
    assert focal(x, y).item() == pytest.approx(bce(x, y).item(), rel=1e-6)


def test_bce_pos_weight_matches_formula():
    x = torch.tensor([[0.5, -1.0]])
    y = torch.tensor([[1.0, 0.0]])
    bce = build_loss("bce", num_classes=2, task="multilabel", pos_weight=[3.0, 3.0])
    # positive term x3 for the first output, plain negative term for the second.
    expected = (3.0 * -math.log(torch.sigmoid(torch.tensor(0.5)).item())
                - math.log(1 - torch.sigmoid(torch.tensor(-1.0)).item())) / 2
    assert bce({"logits": x}, y).item() == pytest.approx(expected, rel=1e-6)


def _ghm_batch():
    # 90 easy examples (p_y ~ 0.99, g ~ 0.01) and 10 hard ones (p_y ~ 0.05, g ~ 0.95).
    logits = torch.zeros(100, 2)
    logits[:90, 0] = 5.0
    logits[90:, 1] = 3.0
    target = torch.zeros(100, dtype=torch.long)
    return logits, target


def test_ghm_down_weights_dense_easy_examples():
    logits, target = _ghm_batch()
    loss = build_loss("ghm", num_classes=2, bins=10, alpha=1.0, momentum=0.0)
    value = loss(logits, target)
    w = loss.ghm(0.5 * (torch.softmax(logits, 1) - F.one_hot(target, 2)).abs().sum(1))
    assert w.mean().item() == pytest.approx(1.0, rel=1e-6)
    # alpha = 1: each non-empty bin gets the same total weight (here 2 bins -> 50 each).
    assert w[:90].sum().item() == pytest.approx(50.0, rel=1e-5)
    assert w[90:].sum().item() == pytest.approx(50.0, rel=1e-5)
    assert w[0] < w[95]
    stats = loss.last_stats
    assert stats["counts"][0] == 90 and stats["counts"][9] == 10 and stats["n"] == 100
    assert len(stats["edges"]) == 11 and stats["bin_weights"][1] == 0.0  # empty bin
    ce = F.cross_entropy(logits, target, reduction="none")
    assert value.item() == pytest.approx((w * ce).mean().item(), rel=1e-5)
    # Hard examples dominate the GHM loss much more than they do plain CE.
    assert (w * ce)[90:].sum() / (w * ce).sum() > ce[90:].sum() / ce.sum()


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 3.0, 0.5]])
def test_ghm_alpha_zero_is_plain_ce(batch, weights):
    logits, target = batch
    ghm = build_loss("ghm", num_classes=4, alpha=0.0, momentum=0.0, class_weights=weights)
    w = None if weights is None else torch.tensor(weights)
    assert ghm(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target, weight=w).item(), rel=1e-6)
    soft = torch.softmax(torch.randn(16, 4), dim=1)
    assert ghm(logits, soft).item() == pytest.approx(
        F.cross_entropy(logits, soft, weight=w).item(), rel=1e-6)


def test_ghm_ema_momentum_and_eval_freeze():
    loss = build_loss("ghm", num_classes=2, bins=10, alpha=1.0, momentum=0.75)
    ghm = loss.ghm
    ghm(torch.tensor([0.05, 0.05, 0.05, 0.95]))  # fractions: bin0 0.75, bin9 0.25
    assert ghm.density[0].item() == pytest.approx(0.75)  # first value, not 0.25 * 0.75
    ghm(torch.tensor([0.05, 0.55, 0.55, 0.55]))  # bin0 0.25, bin5 0.75
    assert ghm.density[0].item() == pytest.approx(0.75 * 0.75 + 0.25 * 0.25)
    assert ghm.density[5].item() == pytest.approx(0.75)  # first seen now
    assert ghm.density[9].item() == pytest.approx(0.25)  # absent this call: unchanged
    before = ghm.density.clone()
    loss.eval()
    ghm(torch.tensor([0.95, 0.95]))
    assert torch.equal(ghm.density, before)


def test_ghm_multilabel_shapes_and_mean_one():
    loss = build_loss("ghm", num_classes=2, task="multilabel", momentum=0.0, pos_weight=[1, 2])
    x = torch.randn(32, 2, requires_grad=True)
    y = torch.randint(0, 2, (32, 2)).float()
    value = loss({"logits": x}, y)
    value.backward()
    assert x.grad is not None and sum(loss.last_stats["counts"]) == 64


def test_ranking_pairs_and_margin_loss():
    scores = torch.tensor([0.0, 1.0, 3.0])
    keys = torch.tensor([0.0, 2.0, 2.0])
    si, sj, y = ranking_pairs(scores, keys)
    # pairs (0,1) and (0,2); (1,2) has equal keys and is skipped. y = sign(k_i - k_j) = -1.
    assert si.tolist() == [0.0, 0.0] and sj.tolist() == [1.0, 3.0] and y.tolist() == [-1, -1]
    loss = build_loss("margin", num_classes=1, margin=2.0)
    # hinge max(0, 2 - (-1)(0 - 1)) = 1, max(0, 2 - 3) = 0 -> mean 0.5
    assert loss({"logits": scores[:, None]}, keys).item() == pytest.approx(0.5)


def test_ranking_without_pairs_is_zero_with_graph():
    s = torch.randn(4, 1, requires_grad=True)
    for name in ("margin", "ghm-ranking"):
        value = build_loss(name, num_classes=1)({"logits": s}, torch.ones(4))
        value.backward()
        assert value.item() == 0.0


def test_ghm_ranking_weights_hard_pairs_up():
    loss = GHMRankingLoss(margin=0.5, bins=10, alpha=1.0, momentum=0.0)
    # Nine well-ordered pairs with a wide gap and one inverted pair.
    s_i = torch.tensor([5.0] * 9 + [0.0])
    s_j = torch.tensor([0.0] * 9 + [1.0])
    y = torch.ones(10)
    value = loss.pairwise(s_i, s_j, y)
    w = loss.ghm(torch.sigmoid(0.5 - y * (s_i - s_j)))
    assert w[9] > w[0]
    assert value.item() == pytest.approx((w * F.relu(0.5 - (s_i - s_j))).mean().item())
    assert value.item() == pytest.approx(w[9].item() * 1.5 / 10)
    with pytest.raises(ConfigError, match="output='score'"):
        loss({"logits": torch.randn(4, 3)}, torch.arange(4.0))


def test_bias_denoising_reduces_to_ce_and_matches_formula(batch):
    logits, target = batch
    aux = torch.randn(16, 4)
    out = {"logits": logits, "aux_logits": aux}
    ce = F.cross_entropy(logits, target).item()
    zero = build_loss("bias-denoising", num_classes=4, weight=0.0)
    assert zero(out, target).item() == pytest.approx(ce, rel=1e-6)
    # L = CE + w * mean(-sum_c [y_c (1 - eps) + eps / C] log softmax(s * p / ||p||)_c)
    eps, w, s = 0.2, 0.5, 10.0
    loss = build_loss("bias-denoising", num_classes=4, eps=eps, weight=w, scale=s)
    q = F.one_hot(target, 4) * (1 - eps) + eps / 4
    logp = F.log_softmax(s * aux / aux.norm(dim=1, keepdim=True), dim=1)
    expected = ce + w * (-(q * logp).sum(1)).mean().item()
    assert loss(out, target).item() == pytest.approx(expected, rel=1e-5)
    # norm='none': the aux term is label-smoothed CE of the raw aux logits.
    raw = build_loss("bias-denoising", num_classes=4, eps=eps, weight=1.0, norm="none")
    smoothed = F.cross_entropy(aux, target, label_smoothing=eps).item()
    assert raw(out, target).item() == pytest.approx(ce + smoothed, rel=1e-5)
    with pytest.raises(ConfigError, match="aux_logits"):
        loss({"logits": logits}, target)


def test_gradient_reversal_flips_and_scales_gradients():
    x = torch.randn(5, 3, requires_grad=True)
    grad_reverse(x, 0.3).sum().backward()
    assert torch.allclose(x.grad, torch.full((5, 3), -0.3))
    x.grad = None
    y = GradientReversal(2.0)(x)
    assert torch.equal(y, x)  # identity forward
    (y * y).sum().backward()
    assert torch.allclose(x.grad, -2.0 * 2 * x.detach())


def test_domain_discriminator_reverses_gradient_into_the_embedding():
    torch.manual_seed(0)
    disc = DomainDiscriminator(8, num_domains=2, coeff=0.5)
    emb = torch.randn(6, 8, requires_grad=True)
    domain = torch.tensor([0, 1, 0, 1, 0, 1])
    logits = disc(emb)
    assert logits.shape == (6, 2)
    F.cross_entropy(logits, domain).backward()
    reversed_grad = emb.grad.clone()
    emb.grad = None
    F.cross_entropy(disc.head(disc.norm(emb)), domain).backward()  # no reversal
    assert torch.allclose(reversed_grad, -0.5 * emb.grad, atol=1e-7)
    assert disc.head.weight.grad is not None  # the discriminator itself still learns
    disc.coeff = 1.0
    assert disc.reverse.coeff == 1.0


def test_grl_schedule():
    assert grl_coefficient(0.0) == 0.0
    assert grl_coefficient(1.0) == pytest.approx(1.0, abs=1e-4)
    assert 0 < grl_coefficient(0.1) < grl_coefficient(0.5) < 1


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "hinge"}, "unknown loss 'hinge'"),
    ({"name": "ce", "gamma": 2.0}, "unknown option"),
    ({"name": "bce"}, "does not support task='multiclass'"),
    ({"name": "ce", "task": "regression"}, "unknown task"),
    ({"name": "ce", "pos_weight": [1, 1, 1, 1]}, "multilabel only"),
    ({"name": "ce", "class_weights": [1, 2]}, "2 values, expected 4"),
    ({"name": "ce", "class_weights": [1, 2, -1, 1]}, "positive"),
    ({"name": "focal", "alpha": 0.25}, "per-class"),
    ({"name": "ghm", "bins": 0}, "bins"),
    ({"name": "ghm", "momentum": 1.0}, "momentum"),
    ({"name": "margin", "class_weights": [1, 1, 1, 1]}, "ranking"),
    ({"name": "bias-denoising", "norm": "l1"}, "norm"),
])
def test_build_loss_rejects_bad_config(kwargs, message):
    kwargs = {"num_classes": 4, **kwargs}
    with pytest.raises(ConfigError, match=message):
        build_loss(**kwargs)


def test_shape_mismatch_is_a_config_error():
    bce = build_loss("bce", num_classes=2, task="multilabel")
    with pytest.raises(ConfigError, match="num_classes=2"):
        bce({"logits": torch.randn(3, 4)}, torch.zeros(3, 2))
    ce = build_loss("ce", num_classes=4)
    with pytest.raises(ConfigError, match="targets"):
        ce({"logits": torch.randn(3, 4)}, torch.zeros(2, dtype=torch.long))


def test_ghm_ema_and_normalisation_by_hand():
    """Two calls with momentum 0.5 and alpha 0.5, checked against a hand computation."""
    ghm = build_loss("ghm", num_classes=2, bins=4, alpha=0.5, momentum=0.5).ghm
    # call 1: g in bins 0, 0, 0, 3 -> fractions 0.75, 0, 0, 0.25; the EMA starts there
    w1 = ghm(torch.tensor([0.1, 0.2, 0.05, 0.9]))
    beta = [0.75 ** -0.5] * 3 + [0.25 ** -0.5]
    norm = sum(beta) / 4
    assert w1.tolist() == pytest.approx([b / norm for b in beta], rel=1e-6)
    assert w1.mean().item() == pytest.approx(1.0)
    # call 2: g in bins 0, 1, 1, 1 -> fractions 0.25, 0.75, 0, 0
    w2 = ghm(torch.tensor([0.0, 0.3, 0.4, 0.45]))
    d0 = 0.5 * 0.75 + 0.5 * 0.25  # seen before: moving average
    d1 = 0.75  # first seen now: its own fraction, not (1 - momentum) * 0.75
    assert ghm.density.tolist() == pytest.approx([d0, d1, 0.0, 0.25])  # bin 3 kept
    beta = [d0 ** -0.5] + [d1 ** -0.5] * 3
    norm = sum(beta) / 4
    assert w2.tolist() == pytest.approx([b / norm for b in beta], rel=1e-6)
    stats = ghm.last_stats
    assert stats["counts"] == [1, 3, 0, 0] and stats["n"] == 4
    assert stats["bin_weights"] == pytest.approx([d0 ** -0.5 / norm, d1 ** -0.5 / norm, 0, 0])
    assert stats["g_mean"] == pytest.approx(0.2875)


def test_ghm_without_momentum_matches_li_et_al():
    """momentum 0, alpha 1: w = N / (count(bin) * non-empty bins), Li et al.'s GHM-C."""
    ghm = build_loss("ghm", num_classes=2, bins=10, alpha=1.0, momentum=0.0).ghm
    g = torch.tensor([0.01, 0.02, 0.03, 0.55, 0.56, 0.99])
    counts = {0: 3, 5: 2, 9: 1}
    n, valid = 6, 3
    want = [n / (counts[int(x * 10)] * valid) for x in g.tolist()]
    assert ghm(g).tolist() == pytest.approx(want, rel=1e-6)
    assert torch.equal(ghm.density, torch.zeros(10))  # no state without momentum
