"""Training losses, gradient reversal and the domain discriminator.

Every loss built here has one calling convention::

    loss = build_loss("focal", num_classes=4, gamma=2.0)
    value = loss(outputs, target)        # scalar tensor

where `outputs` is the model's output dict (``"logits"`` `(B, C)`, optionally
``"aux_logits"`` `(B, C)` and ``"reg_loss"`` scalar; a bare logits tensor is accepted
too) and `target` is

* ``task="multiclass"``: `(B,)` int64 class indices, or `(B, C)` float class
  probabilities (soft targets, e.g. from mixup; rows sum to 1);
* ``task="multilabel"``: `(B, K)` float 0/1 flags (ICBHI: K = 2, crackle and wheeze),
  one sigmoid output per flag, so the model has ``num_classes = K``;
* ranking losses (``margin``, ``ghm-ranking``): `(B,)` rank keys (any ordered number,
  e.g. an angle or a severity); the model has ``output="score"`` (logits `(B, 1)`), and
  every in-batch pair with different keys is one ranking example.

``outputs["reg_loss"]`` (model regularisers such as SoftFiLM overlap terms) is added to
every loss when present. Shape mismatches raise `ConfigError` naming the loss, because
they come from a model/task combination that does not fit.

Losses: ``ce`` (label smoothing, class weights), ``focal`` (Lin et al. 2017),
``bce`` (multilabel with ``pos_weight``), ``ghm`` (GHM-C, Li et al. 2019),
``ghm-ranking`` (GHM on pairwise margin ranking), ``margin`` (pairwise margin ranking),
``bias-denoising`` (ADD-RSC: CE plus a label-smoothed term on the auxiliary head).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsctool.errors import ConfigError

__all__ = [
    "LOSSES",
    "TASKS",
    "BCELoss",
    "BiasDenoisingLoss",
    "CrossEntropyLoss",
    "DomainDiscriminator",
    "FocalLoss",
    "GHMCLoss",
    "GHMRankingLoss",
    "GradientReversal",
    "MarginRankingLoss",
    "OutputLoss",
    "build_loss",
    "grad_reverse",
    "grl_coefficient",
    "list_losses",
    "ranking_pairs",
]

TASKS: tuple[str, ...] = ("multiclass", "multilabel")


# ----------------------------------------------------------------------------- helpers

def _vector(values: Any, n: int, what: str, loss: str) -> Tensor | None:
    """`values` (sequence or tensor of `n` positive finite floats) -> float32 `(n,)`."""
    if values is None:
        return None
    try:
        t = torch.as_tensor(values, dtype=torch.float32).flatten().clone()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"loss {loss!r}: {what} must be {n} numbers ({exc})") from None
    if t.numel() != n:
        raise ConfigError(f"loss {loss!r}: {what} has {t.numel()} values, expected {n}")
    if not torch.isfinite(t).all() or (t <= 0).any():
        raise ConfigError(f"loss {loss!r}: {what} must be positive and finite, got {t.tolist()}")
    return t


def _number(value: Any, what: str, loss: str, *, lo: float | None = None,
            hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"loss {loss!r}: {what} must be a number, got {value!r}") from None
    bad = not math.isfinite(v)
    if lo is not None:
        bad |= v <= lo if lo_open else v < lo
    if hi is not None:
        bad |= v >= hi if hi_open else v > hi
    if bad:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ConfigError(f"loss {loss!r}: {what} must be in {lb}{lo}, {hi}{rb}, got {value!r}")
    return v


def _soft_targets(target: Tensor, logits: Tensor, loss: str) -> Tensor:
    """Multiclass targets -> `(B, C)` float probabilities (one-hot for indices)."""
    b, c = logits.shape
    if not target.is_floating_point():
        if target.shape != (b,):
            raise ConfigError(f"loss {loss!r}: class-index targets must be ({b},), "
                              f"got {tuple(target.shape)}")
        return F.one_hot(target.long(), c).to(logits.dtype)
    if target.shape != (b, c):
        raise ConfigError(f"loss {loss!r}: soft targets must be ({b}, {c}) like the logits, "
                          f"got {tuple(target.shape)}")
    return target.to(logits.dtype)


def _logits(outputs: dict[str, Tensor], loss: str, ndim: int = 2) -> Tensor:
    if "logits" not in outputs:
        raise ConfigError(f"loss {loss!r}: the model output has no 'logits'")
    logits = outputs["logits"]
    if logits.ndim != ndim:
        raise ConfigError(f"loss {loss!r}: expected logits of {ndim} dims, "
                          f"got shape {tuple(logits.shape)}")
    return logits


class OutputLoss(nn.Module):
    """Base class: ``forward(outputs, target) -> scalar``; adds ``outputs["reg_loss"]``.

    Subclasses implement `compute(outputs, target)`.
    """

    name = "loss"

    def forward(self, outputs: dict[str, Tensor] | Tensor, target: Tensor) -> Tensor:
        if isinstance(outputs, Tensor):
            outputs = {"logits": outputs}
        ref = outputs.get("logits")
        if ref is not None:
            # Follow the model's device, so a loss built on the CPU works on CUDA outputs
            # (class weights and GHM statistics are buffers).
            for buf in self.buffers():
                if buf.device != ref.device:
                    self.to(ref.device)
                    break
        loss = self.compute(outputs, target)
        reg = outputs.get("reg_loss")
        if reg is not None:
            loss = loss + reg
        return loss

    def compute(self, outputs: dict[str, Tensor], target: Tensor) -> Tensor:
        raise NotImplementedError


# ----------------------------------------------------------------------- classification

class CrossEntropyLoss(OutputLoss):
    """Softmax cross-entropy over `(B, C)` logits; optional label smoothing and class weights.

    With class weights (this is `F.cross_entropy`): class-index targets give the weighted
    mean ``sum_b w_{y_b} l_b / sum_b w_{y_b}``; probability targets give
    ``mean_b sum_c w_c q_bc (-log p_bc)``.
    """

    name = "ce"

    def __init__(self, num_classes: int, *, class_weights: Sequence[float] | Tensor | None = None,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.label_smoothing = _number(label_smoothing, "label_smoothing", self.name,
                                       lo=0.0, hi=1.0, hi_open=True)
        self.register_buffer("class_weights",
                             _vector(class_weights, num_classes, "class_weights", self.name))

    def compute(self, outputs: dict[str, Tensor], target: Tensor) -> Tensor:
        logits = _logits(outputs, self.name)
        _soft_targets(target, logits, self.name)  # shape check only
        if target.is_floating_point():
            target = target.to(logits.dtype)
        else:
            target = target.long()
        return F.cross_entropy(logits, target, weight=self.class_weights,
                               label_smoothing=self.label_smoothing)


class FocalLoss(OutputLoss):
    """Focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` (Lin et al. 2017).

    multiclass: softmax over `(B, C)`; `alpha` is None or C per-class factors; soft
    targets give ``-sum_c q_c alpha_c (1 - p_c)^gamma log p_c``. Class weights are
    applied and normalised exactly as in `CrossEntropyLoss`, so with ``gamma=0`` and no
    `alpha` this equals (weighted) cross-entropy.

    multilabel: sigmoid per output `(B, K)`; `alpha` is None or a float in (0, 1)
    weighting positives (``alpha``) against negatives (``1 - alpha``), as in RetinaNet;
    `pos_weight` and class weights as in `BCELoss`; mean over all B*K terms.
    """

    name = "focal"

    def __init__(self, num_classes: int, *, task: str = "multiclass", gamma: float = 2.0,
                 alpha: float | Sequence[float] | None = None,
                 class_weights: Sequence[float] | Tensor | None = None,
                 pos_weight: Sequence[float] | Tensor | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.task = task
        self.gamma = _number(gamma, "gamma", self.name, lo=0.0)
        self.register_buffer("class_weights",
                             _vector(class_weights, num_classes, "class_weights", self.name))
        self.register_buffer("pos_weight",
                             _vector(pos_weight, num_classes, "pos_weight", self.name))
        self.alpha_scalar: float | None = None
        alpha_vec = None
        if alpha is not None:
            if task == "multilabel":
                self.alpha_scalar = _number(alpha, "alpha", self.name, lo=0.0, hi=1.0,
                                            lo_open=True, hi_open=True)
            else:
                if isinstance(alpha, (int, float)):
                    raise ConfigError(f"loss {self.name!r}: for task=multiclass alpha must be a "
                                      f"list of {num_classes} per-class factors")
                alpha_vec = _vector(alpha, num_classes, "alpha", self.name)
        if pos_weight is not None and task != "multilabel":
            raise ConfigError(f"loss {self.name!r}: pos_weight applies to task=multilabel only")
        self.register_buffer("alpha", alpha_vec)

    def compute(self, outputs: dict[str, Tensor], target: Tensor) -> Tensor:
        logits = _logits(outputs, self.name)
        if self.task == "multilabel":
            y = _multilabel_target(target, logits, self.name)
            ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none",
                                                    pos_weight=self.pos_weight)
            p = torch.sigmoid(logits)
            p_t = p * y + (1 - p) * (1 - y)
            loss = ce * (1 - p_t).pow(self.gamma)
            if self.alpha_scalar is not None:
                loss = loss * (self.alpha_scalar * y + (1 - self.alpha_scalar) * (1 - y))
            if self.class_weights is not None:
                loss = loss * self.class_weights
            return loss.mean()
        q = _soft_targets(target, logits, self.name)
        logp = F.log_softmax(logits, dim=1)
        term = -q * (1 - logp.exp()).pow(self.gamma) * logp  # (B, C)
        if self.alpha is not None:
            term = term * self.alpha
        return _weighted_mean(term, q, target, self.class_weights)


def _weighted_mean(term: Tensor, q: Tensor, target: Tensor, class_weights: Tensor | None,
                   example_weights: Tensor | None = None) -> Tensor:
    """Reduce per-class terms `(B, C)` like `F.cross_entropy` reduces with class weights.

    Class-index targets: ``sum_b w_{y_b} l_b / sum_b w_{y_b}``; probability targets:
    ``mean_b sum_c w_c l_bc`` (PyTorch's two conventions, kept so that focal with
    ``gamma=0`` and GHM with ``alpha=0`` equal `F.cross_entropy` exactly).
    `example_weights` `(B,)` (GHM) multiply the numerator only.
    """
    ex = torch.ones(term.shape[0], dtype=term.dtype, device=term.device) \
        if example_weights is None else example_weights
    if class_weights is None:
        return (ex * term.sum(dim=1)).mean()
    if target.is_floating_point():
        return (ex * (term * class_weights).sum(dim=1)).mean()
    w = q @ class_weights
    return (ex * w * term.sum(dim=1)).sum() / w.sum().clamp_min(1e-12)


def _multilabel_target(target: Tensor, logits: Tensor, loss: str) -> Tensor:
    if target.shape != logits.shape:
        raise ConfigError(f"loss {loss!r}: multilabel targets {tuple(target.shape)} do not "
                          f"match logits {tuple(logits.shape)} (one sigmoid output per flag: "
                          f"build the model with num_classes={target.shape[-1]})")
    return target.to(logits.dtype)


class BCELoss(OutputLoss):
    """Multilabel binary cross-entropy over `(B, K)` sigmoid logits.

    `pos_weight` `(K,)` multiplies the positive term of each output (e.g. negatives /
    positives per flag, to counter imbalance); class weights `(K,)` weight each output.
    """

    name = "bce"

    def __init__(self, num_classes: int, *, class_weights: Sequence[float] | Tensor | None = None,
                 pos_weight: Sequence[float] | Tensor | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("class_weights",
                             _vector(class_weights, num_classes, "class_weights", self.name))
        self.register_buffer("pos_weight",
                             _vector(pos_weight, num_classes, "pos_weight", self.name))

    def compute(self, outputs: dict[str, Tensor], target: Tensor) -> Tensor:
        logits = _logits(outputs, self.name)
        y = _multilabel_target(target, logits, self.name)
        return F.binary_cross_entropy_with_logits(logits, y, weight=self.class_weights,
                                                  pos_weight=self.pos_weight)


# ------------------------------------------------------------------------------ GHM

class _GHMWeights(nn.Module):
    """Gradient-density weights shared by GHM-C and GHM ranking (Li et al. 2019).

    The gradient norms ``g`` in [0, 1] are put into `bins` equal-width bins. The
    density of a bin is the fraction of examples that fall into it, smoothed over
    calls with an exponential moving average of momentum `momentum` (0: this batch
    only). An example's weight is ``(1 / density(bin))^alpha``, normalised so the
    weights of one call have mean 1: with ``alpha=1`` every non-empty bin then gets
    the same total weight, so the many easy examples (small g) stop dominating the
    gradient; ``alpha=0`` gives uniform weights (the plain loss).

    Unlike the reference implementations: densities are fractions (a short last batch
    does not look sparse), a bin's EMA starts at its first observed value instead of
    at 0 (no 1 / (1 - momentum) blow-up in the first steps), and the weights are
    normalised to mean 1 so the loss keeps the scale of the unweighted loss. The EMA
    is only updated in training mode; evaluation reads it without changing it.
    """

    def __init__(self, bins: int, alpha: float, momentum: float, loss: str):
        super().__init__()
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ConfigError(f"loss {loss!r}: bins must be a positive integer, got {bins!r}")
        self.bins = bins
        self.alpha = _number(alpha, "alpha", loss, lo=0.0)
        self.momentum = _number(momentum, "momentum", loss, lo=0.0, hi=1.0, hi_open=True)
        self.register_buffer("density", torch.zeros(bins))
        self.register_buffer("seen", torch.zeros(bins, dtype=torch.bool))
        #: statistics of the last call (plain Python, for plots and logs).
        self.last_stats: dict[str, Any] | None = None

    @torch.no_grad()
    def forward(self, g: Tensor) -> Tensor:
        """`g`: gradient norms in [0, 1], any shape -> weights of the same shape, mean 1."""
        g = g.detach().float().clamp(0.0, 1.0)
        flat = g.reshape(-1)
        n = flat.numel()
        idx = (flat * self.bins).floor().long().clamp_(0, self.bins - 1)  # g == 1 -> last bin
        counts = torch.bincount(idx, minlength=self.bins).float()
        frac = counts / max(n, 1)
        present = counts > 0
        if self.momentum > 0:
            ema = torch.where(self.seen, self.momentum * self.density
                              + (1 - self.momentum) * frac, frac)
            ema = torch.where(present, ema, self.density)  # empty bins keep their history
            if self.training:
                self.density.copy_(ema)
                self.seen |= present
            density = torch.where(present, ema, frac)
        else:
            density = frac
        beta = torch.where(present, density.clamp_min(1e-12).pow(-self.alpha),
                           torch.zeros_like(density))
        w = beta[idx]
        norm = w.mean() if n else torch.ones((), device=g.device)
        w = w / norm
        # one device -> host copy for all statistics (each .tolist() would synchronise)
        k = self.bins
        host = torch.cat([counts, density, beta / norm,
                          (flat.mean() if n else norm).reshape(1)]).tolist()
        self.last_stats = {
            "edges": [i / k for i in range(k + 1)],
            "counts": [int(c) for c in host[:k]],
            "density": host[k:2 * k],
            "bin_weights": host[2 * k:3 * k],
            "g_mean": host[-1] if n else None,
            "n": n,
        }
        return w.reshape(g.shape)


class GHMCLoss(OutputLoss):
    """GHM-C: cross-entropy re-weighted by the density of gradient norms.

    multiclass: the gradient of softmax CE with respect to the logits is ``p - q``;
    its norm ``g = ||p - q||_1 / 2`` (= ``1 - p_y`` for a hard label) is in [0, 1].
    multilabel: per output, ``g = |sigmoid(x) - y|`` and the loss is BCE.
    See `_GHMWeights` for the weights; ``.last_stats`` holds the bin statistics of the
    last call (edges, counts, density, bin_weights, g_mean, n).
    """

    name = "ghm"

    def __init__(self, num_classes: int, *, task: str = "multiclass", bins: int = 10,
                 alpha: float = 1.0, momentum: float = 0.75,
                 class_weights: Sequence[float] | Tensor | None = None,
                 pos_weight: Sequence[float] | Tensor | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.task = task
        self.ghm = _GHMWeights(bins, alpha, momentum, self.name)
        self.register_buffer("class_weights",
                             _vector(class_weights, num_classes, "class_weights", self.name))
        if pos_weight is not None and task != "multilabel":
            raise ConfigError(f"loss {self.name!r}: pos_weight applies to task=multilabel only")
        self.register_buffer("pos_weight",
                             _vector(pos_weight, num_classes, "pos_weight", self.name))

    @property
    def last_stats(self) -> dict[str, Any] | None:
        return self.ghm.last_stats

    def compute(self, outputs: dict[str, Tensor], target: Tensor) -> Tensor:
        logits = _logits(outputs, self.name)
        if self.task == "multilabel":
            y = _multilabel_target(target, logits, self.name)
            per = F.binary_cross_entropy_with_logits(logits, y, reduction="none",
                                                     pos_weight=self.pos_weight)
            w = self.ghm((torch.sigmoid(logits) - y).abs())
            if self.class_weights is not None:
                per = per * self.class_weights
            return (w * per).mean()
        q = _soft_targets(target, logits, self.name)
        logp = F.log_softmax(logits, dim=1)
        w = self.ghm(0.5 * (logp.exp() - q).abs().sum(dim=1))
        return _weighted_mean(-q * logp, q, target, self.class_weights, w)


# -------------------------------------------------------------------------- ranking

def ranking_pairs(scores: Tensor, keys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """All in-batch pairs ``i < j`` with different rank keys.

    Args:
        scores: `(B,)` model scores.
        keys: `(B,)` rank keys (higher key should get a higher score).

    Returns:
        ``(s_i, s_j, y)``: `(P,)` scores of both members and ``y = sign(key_i - key_j)``
        in {-1, +1}, the `nn.MarginRankingLoss` convention.
    """
    b = scores.shape[0]
    i, j = torch.triu_indices(b, b, offset=1, device=scores.device)
    y = torch.sign(keys[i].float() - keys[j].float())
    keep = y != 0
    return scores[i[keep]], scores[j[keep]], y[keep].to(scores.dtype)


def _ranking_inputs(outputs: dict[str, Tensor], target: Tensor, loss: str) -> Tensor:
    if "logits" not in outputs:
        raise ConfigError(f"loss {loss!r}: the model output has no 'logits'")
    logits = outputs["logits"]
    if logits.ndim == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if logits.ndim != 1:
        raise ConfigError(f"loss {loss!r}: ranking needs one score per example (logits (B, 1)); "
                          f"got {tuple(outputs['logits'].shape)}: build the model with "
                          f"output='score'")
    if target.shape != logits.shape:
        raise ConfigError(f"loss {loss!r}: rank keys must be ({logits.shape[0]},), "
                          f"got {tuple(target.shape)}")
    return logits


class MarginRankingLoss(OutputLoss):
    """Pairwise hinge ``max(0, margin - y (s_i - s_j))`` over in-batch pairs (`ranking_pairs`).

    A batch without any pair of different keys gives a zero loss (still part of the graph).
    """

    name = "margin"

    def __init__(self, *, margin: float = 1.0):
        super().__init__()
        self.margin = _number(margin, "margin", self.name, lo=0.0)

    def compute(self, outputs: dict[str, Tensor], target: Tensor) -> Tensor:
        s = _ranking_inputs(outputs, target, self.name)
        si, sj, y = ranking_pairs(s, target)
        if y.numel() == 0:
            return s.sum() * 0.0
        return F.margin_ranking_loss(si, sj, y, margin=self.margin)


class GHMRankingLoss(OutputLoss):
    """Margin ranking loss with GHM weights over the pairs.

    The hinge's own gradient is 0 or 1, so the pair's difficulty is measured with its
    logistic surrogate ``g = sigmoid(margin - y (s_i - s_j))`` in (0, 1) (as in the
    angle-ranking seed): well-ordered pairs with a wide gap have g near 0 and are
    down-weighted where they are dense. ``pairwise(s_i, s_j, y)`` takes explicit pairs;
    ``.last_stats`` as in `GHMCLoss`.
    """

    name = "ghm-ranking"

    def __init__(self, *, margin: float = 1.0, bins: int = 10, alpha: float = 1.0,
                 momentum: float = 0.75):
        super().__init__()
        self.margin = _number(margin, "margin", self.name, lo=0.0)
        self.ghm = _GHMWeights(bins, alpha, momentum, self.name)

    @property
    def last_stats(self) -> dict[str, Any] | None:
        return self.ghm.last_stats

    def pairwise(self, s_i: Tensor, s_j: Tensor, y: Tensor) -> Tensor:
        """Loss of explicit pairs: `(P,)` scores and `(P,)` targets in {-1, +1}."""
        z = self.margin - y * (s_i - s_j)
        w = self.ghm(torch.sigmoid(z))
        return (w * F.relu(z)).mean()

    def compute(self, outputs: dict[str, Tensor], target: Tensor) -> Tensor:
        s = _ranking_inputs(outputs, target, self.name)
        si, sj, y = ranking_pairs(s, target)
        if y.numel() == 0:
            return s.sum() * 0.0
        return self.pairwise(si, sj, y)


# --------------------------------------------------------------------- bias denoising

class BiasDenoisingLoss(OutputLoss):
    """ADD-RSC bias denoising loss: CE on the main head + a smoothed term on the aux head.

    ``L = main_weight * CE(logits, y) + weight * mean_b( -sum_c [y_c (1 - eps) + eps / C]
    log softmax(Norm(aux_logits))_c )``

    Seed 003 describes the loss only as "Jointly optimizes classification and denoising"
    with "label smoothing: L = -Σ[y_c(1-ε) + ε/C]·log[ϕ(Norm(p))]"; it states neither the
    weights of the two terms nor ε. The defaults (``main_weight`` 1, ``weight`` 1: the plain
    sum, as the public code's first version ``loss = denoise_loss + class_loss``) keep the
    two terms equal. The public code's later version weighs them 0.5 / 0.5
    (``loss_beta * denoise_loss + (1 - loss_beta) * class_loss``) with label smoothing
    0.2 spread over the C - 1 other classes and no ``Norm``: ``main_weight=0.5,
    weight=0.5, norm="none"`` and ``eps = 0.2 C / (C - 1)`` (0.2667 for 4 classes) give
    the same targets (`examples/seed-003-add.toml` shows both).

    Shapes: ``outputs["logits"]`` and ``outputs["aux_logits"]`` `(B, C)`; target `(B,)`
    class indices or `(B, C)` probabilities (then ``y_c`` is the given probability).
    ``Norm(p) = scale * p / ||p||_2`` per example (``norm="l2"``): the auxiliary
    logits are bounded, so the smoothed term cannot be driven down by inflating them
    and stays a regulariser that tolerates noisy labels. ``norm="none"`` uses the raw
    aux logits (then the term is label-smoothed cross-entropy). The second term is the
    KL divergence from the smoothed target distribution to the aux prediction plus the
    (constant) entropy of the smoothed targets, so its gradients equal the KL's.
    With ``weight=0`` the loss is exactly ``main_weight`` x the (class-weighted) CE of
    the main head.
    """

    name = "bias-denoising"

    def __init__(self, num_classes: int, *, eps: float = 0.1, weight: float = 1.0,
                 main_weight: float = 1.0, norm: str = "l2", scale: float = 10.0,
                 class_weights: Sequence[float] | Tensor | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.eps = _number(eps, "eps", self.name, lo=0.0, hi=1.0)
        self.weight = _number(weight, "weight", self.name, lo=0.0)
        self.main_weight = _number(main_weight, "main_weight", self.name, lo=0.0)
        if norm not in ("l2", "none"):
            raise ConfigError(f"loss {self.name!r}: norm must be 'l2' or 'none', got {norm!r}")
        self.norm = norm
        self.scale = _number(scale, "scale", self.name, lo=0.0, lo_open=True)
        self.register_buffer("class_weights",
                             _vector(class_weights, num_classes, "class_weights", self.name))

    def compute(self, outputs: dict[str, Tensor], target: Tensor) -> Tensor:
        logits = _logits(outputs, self.name)
        q = _soft_targets(target, logits, self.name)
        ce_target = target.to(logits.dtype) if target.is_floating_point() else target.long()
        loss = self.main_weight * F.cross_entropy(logits, ce_target, weight=self.class_weights)
        if self.weight == 0:
            return loss
        aux = outputs.get("aux_logits")
        if aux is None:
            raise ConfigError(f"loss {self.name!r}: the model has no 'aux_logits' output "
                              f"(use a model with an auxiliary head, e.g. 'add')")
        if aux.shape != logits.shape:
            raise ConfigError(f"loss {self.name!r}: aux_logits {tuple(aux.shape)} do not match "
                              f"logits {tuple(logits.shape)}")
        if self.norm == "l2":
            aux = self.scale * F.normalize(aux, p=2, dim=1, eps=1e-6)
        c = logits.shape[1]
        smoothed = q * (1 - self.eps) + self.eps / c
        aux_term = -(smoothed * F.log_softmax(aux, dim=1)).sum(dim=1).mean()
        return loss + self.weight * aux_term


# ---------------------------------------------------------------- adversarial tuning

class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, coeff: float) -> Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.coeff * grad, None


def grad_reverse(x: Tensor, coeff: float = 1.0) -> Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-coeff`` going back."""
    return _GradReverse.apply(x, float(coeff))


def grl_coefficient(progress: float, gamma: float = 10.0) -> float:
    """DANN schedule ``2 / (1 + exp(-gamma p)) - 1``: 0 at the start, -> 1 at the end.

    Ramping the reversal up keeps the early, noisy discriminator from disturbing the
    encoder before it has learned the task (Ganin et al. 2016).
    """
    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


class GradientReversal(nn.Module):
    """`grad_reverse` as a module; set ``.coeff`` during training (e.g. `grl_coefficient`)."""

    def __init__(self, coeff: float = 1.0):
        super().__init__()
        self.coeff = float(coeff)

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.coeff)

    def extra_repr(self) -> str:
        return f"coeff={self.coeff}"


class DomainDiscriminator(nn.Module):
    """Real-vs-synthetic (or any domain) classifier on the model embedding.

    ``logits = Linear(LayerNorm(grad_reverse(embedding, coeff)))`` `(B, num_domains)`.
    Trained with CE on domain labels and added to the task loss, the reversed gradient
    makes the encoder produce embeddings the discriminator cannot tell apart
    (adversarial fine-tuning on generated respiratory sounds, seed 002).
    """

    def __init__(self, embed_dim: int, num_domains: int = 2, coeff: float = 1.0):
        super().__init__()
        if embed_dim < 1 or num_domains < 2:
            raise ConfigError(f"DomainDiscriminator: embed_dim must be >= 1 and num_domains "
                              f">= 2, got {embed_dim}, {num_domains}")
        self.reverse = GradientReversal(coeff)
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_domains)

    @property
    def coeff(self) -> float:
        return self.reverse.coeff

    @coeff.setter
    def coeff(self, value: float) -> None:
        self.reverse.coeff = float(value)

    def forward(self, embedding: Tensor) -> Tensor:
        """`(B, D)` embedding -> `(B, num_domains)` domain logits."""
        return self.head(self.norm(self.reverse(embedding)))


# ---------------------------------------------------------------------------- factory

#: loss name -> (class, config keys it accepts besides the common ones, tasks)
_SPECS: dict[str, tuple[type[OutputLoss], tuple[str, ...], tuple[str, ...]]] = {
    "ce": (CrossEntropyLoss, ("label_smoothing",), ("multiclass",)),
    "focal": (FocalLoss, ("gamma", "alpha"), TASKS),
    "bce": (BCELoss, (), ("multilabel",)),
    "ghm": (GHMCLoss, ("bins", "alpha", "momentum"), TASKS),
    "ghm-ranking": (GHMRankingLoss, ("margin", "bins", "alpha", "momentum"), TASKS),
    "margin": (MarginRankingLoss, ("margin",), TASKS),
    "bias-denoising": (BiasDenoisingLoss, ("eps", "weight", "main_weight", "norm", "scale"),
                       ("multiclass",)),
}
LOSSES: tuple[str, ...] = tuple(_SPECS)
_RANKING = ("ghm-ranking", "margin")


def sensitivity_pos_weight(flags: Tensor, bias: float) -> list[float]:
    """Seed 001's positive weights: per output, negatives / positives x `bias`.

    `flags` `(N, K)` 0/1 training targets (multilabel: crackle, wheeze; binary: one
    column, abnormal); an output without positives counts one. Returns `K` floats.
    """
    flags = flags.float()
    pos = flags.sum(0).clamp(min=1)
    return ((flags.shape[0] - pos) / pos * float(bias)).tolist()


def list_losses() -> list[str]:
    """Names accepted by `build_loss`."""
    return list(LOSSES)


def build_loss(name: str, *, num_classes: int, task: str = "multiclass",
               class_weights: Sequence[float] | Tensor | None = None,
               pos_weight: Sequence[float] | Tensor | None = None, **cfg: Any) -> OutputLoss:
    """Build loss `name` (one of `LOSSES`).

    Args:
        name: loss name.
        num_classes: C (multiclass) or K (multilabel outputs).
        task: ``multiclass`` or ``multilabel`` (ranking losses ignore it).
        class_weights: `(C,)` positive per-class weights (not for ranking losses).
        pos_weight: `(K,)` positive-term weights, multilabel ``bce``/``focal``/``ghm`` only.
        **cfg: loss options (ce: label_smoothing; focal: gamma, alpha; ghm: bins,
            alpha, momentum; ghm-ranking: margin, bins, alpha, momentum; margin: margin;
            bias-denoising: eps, weight, norm, scale).

    Raises:
        ConfigError: unknown name, task or option, or an option that does not fit.
    """
    if name not in _SPECS:
        raise ConfigError(f"unknown loss {name!r}; known losses: {', '.join(LOSSES)}")
    if task not in TASKS:
        raise ConfigError(f"loss {name!r}: unknown task {task!r}; known: {', '.join(TASKS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"loss {name!r}: num_classes must be a positive integer, "
                          f"got {num_classes!r}")
    cls, keys, tasks = _SPECS[name]
    if task not in tasks:
        raise ConfigError(f"loss {name!r} does not support task={task!r} "
                          f"(supported: {', '.join(tasks)})")
    unknown = sorted(set(cfg) - set(keys))
    if unknown:
        accepted = ", ".join(keys) or "none"
        raise ConfigError(f"loss {name!r}: unknown option(s) {', '.join(unknown)}; "
                          f"accepted: {accepted}")
    if name in _RANKING:
        if class_weights is not None or pos_weight is not None:
            raise ConfigError(f"loss {name!r}: class_weights/pos_weight do not apply to "
                              f"ranking losses")
        return cls(**cfg)
    kwargs: dict[str, Any] = dict(cfg)
    if class_weights is not None:
        kwargs["class_weights"] = class_weights
    if pos_weight is not None:
        if task != "multilabel":
            raise ConfigError(f"loss {name!r}: pos_weight applies to task=multilabel only")
        kwargs["pos_weight"] = pos_weight
    if name in ("focal", "ghm"):
        kwargs["task"] = task
    return cls(num_classes, **kwargs)
