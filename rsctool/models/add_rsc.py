"""ADD-RSC: an Adaptive Differential Denoising front end in front of an AST (seed 003).

Seed 003 ("Adaptive Differential Denoising for Respiratory Sounds Classification", Dong,
Zhang, Sun, Zhang; Interspeech 2025) names three parts: an "Adaptive Frequency Filter
(AFF)" that "Learns spectral masks with soft shrink: S_a(x) = sign(x) max{|x| - a, 0}",
a "Differential Denoise Layer (DDL)" that "Uses Multi-Head Differential Attention (MHDA)"
``A = [softmax(Q1 K1^T / sqrt d) - lambda softmax(Q2 K2^T / sqrt d)] V``, and a "Bias
Denoising Loss" that "Jointly optimizes classification and denoising" with label
smoothing. The seed text is silent on where these sit, on their widths and on the
classifier; those follow the public code (its ``set_model``/``train``): one denoising
layer of width 256 (8 heads, SwiGLU feed-forward, RMSNorm) on the spectrogram frames,
whose output spectrogram goes into an AudioSet-pretrained AST; the AST's head gives the
main logits and a linear auxiliary head on the denoising layer gives ``aux_logits`` for
`rsctool.losses.BiasDenoisingLoss`.

Data flow for features ``x`` `(B, T, F)` (T frames, F mel bins):

1. ``u = x @ P`` `(B, T, W)`: the mel axis resampled to the front end's width W (linear
   interpolation, a fixed matrix; the public code resizes the spectrogram image to 256
   bins). With ``W == F``, ``P`` is the identity.
2. ADD layer on the frames as tokens: ``x1 = u + AFF(u)`` (real DFT along time, complex
   block-diagonal MLP, soft-shrink, inverse DFT), ``y = x1 + MHDA(RMSNorm(x1))``,
   ``z = y + SwiGLU(RMSNorm(y))``.
3. ``z @ pinv(P)`` `(B, T, F)` back on the AST's mel grid (exact inverse of step 1 when
   W >= F), then the AST (`rsctool.models.ast.ASTClassifier`): ``logits`` and
   ``embedding`` from the mean of its CLS and distillation tokens.
4. ``aux_logits = Linear(pool(z))`` `(B, C)`: pool = mean over frames (``aux_pool="mean"``)
   of the ADD output (``aux_from="output"``).

`--pretrained` (hub id, a `save_pretrained` directory or ``none``) loads the AST backbone
exactly as for ``--model ast``; the front end and both heads start from random weights.
The whole model is real-valued (DFT as matrix products), so it exports to ONNX.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsctool.errors import ConfigError
from rsctool.models.add import (
    AdaptiveFrequencyFilter,
    RMSNorm,
    differential_attention,
    lambda_init_fn,
)
from rsctool.models.ast import ASTClassifier, build_ast
from rsctool.models.registry import ModelTraits, register_model

__all__ = ["ADD_FRONT_DEFAULTS", "ADD_FRONT_SIZES", "ADDFrontEnd", "ADDRSCClassifier",
           "DiffAttention", "SwiGLU", "mel_resample_matrix"]

#: Front-end width / heads / AFF channel blocks per size. Public code:
#: ``DiffTransformerLayer(d_model=256, num_heads=8, depth=6)`` and ``AFNO1D(num_blocks=8)``.
ADD_FRONT_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"width": 16, "heads": 2, "aff_blocks": 2},
    "small": {"width": 256, "heads": 8, "aff_blocks": 8},
    "base": {"width": 256, "heads": 8, "aff_blocks": 8},
}
#: Other front-end keys (same for every size), with the public code's values.
ADD_FRONT_DEFAULTS: dict[str, Any] = {
    "sparsity": 0.01,        # AFNO1D(sparsity_threshold=0.01): soft-shrink threshold
    "aff_hidden_factor": 1,  # AFNO1D(hidden_size_factor=1)
    # "mask": filtered = spectrum x soft-shrunk MLP(spectrum), the seed's "spectral masks";
    # "afno": filtered = soft-shrunk MLP(spectrum), what the public code's AFNO1D computes.
    "aff_mode": "mask",
    "lambda_depth": 6,       # lambda_init = 0.8 - 0.6 exp(-0.3 * 6), as depth=6 in the code
    "aux_from": "output",    # aux head input: "output" (ADD output) | "filter" (after AFF)
    "aux_pool": "mean",      # "mean" over frames | "first2" (mean of frames 0 and 1, the code)
}
AFF_MODES = ("mask", "afno")
AUX_FROM = ("output", "filter")
AUX_POOL = ("mean", "first2")


def mel_resample_matrix(n_in: int, n_out: int) -> Tensor:
    """`(n_in, n_out)` float32 matrix of linear interpolation along the mel axis.

    ``x @ P`` resamples `(..., n_in)` to `(..., n_out)` like ``F.interpolate(...,
    mode="linear", align_corners=False)``; identity when the sizes agree.
    """
    if n_in == n_out:
        return torch.eye(n_in)
    eye = torch.eye(n_in, dtype=torch.float64).unsqueeze(0)  # (1, n_in, n_in)
    p = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0]
    return p.float()


class _AFF(AdaptiveFrequencyFilter):
    """`AdaptiveFrequencyFilter` on a `(B, N, D)` token sequence, mask or AFNO mode.

    Weights initialised as the public code's ``AFNO1D`` (Kaiming-uniform, zero biases).
    """

    def __init__(self, dim: int, n_time: int, num_blocks: int, hidden_factor: int,
                 sparsity: float, mode: str):
        super().__init__(dim, n_time, num_blocks, hidden_factor, sparsity)
        self.mode = mode
        nn.init.kaiming_uniform_(self.w1, mode="fan_in", nonlinearity="relu")
        nn.init.kaiming_uniform_(self.w2, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.b1)
        nn.init.zeros_(self.b2)

    def forward(self, x: Tensor) -> Tensor:
        """`(B, N, D)` -> the filtered part `(B, N, D)` (the caller adds the residual)."""
        g = x.unsqueeze(1)  # (B, 1, N, D): the parent works on a (f, t) token grid
        xr = torch.matmul(self.dft_cos, g)
        xi = torch.matmul(self.dft_sin, g)
        mr, mi = self.mask(xr, xi)
        if self.mode == "mask":
            mr, mi = xr * mr - xi * mi, xr * mi + xi * mr
        return (torch.matmul(self.idft_cos, mr) + torch.matmul(self.idft_sin, mi)).squeeze(1)


class DiffAttention(nn.Module):
    """Multi-head differential attention as laid out in the public code.

    `heads` heads; each has two query/key maps of width ``d = dim / heads`` and a value
    of width ``2 d`` (projections to ``2 dim``, no biases), a per-head
    ``lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init``, per-head RMSNorm of its
    output scaled by ``1 - lambda_init``. Input / output `(B, N, dim)`.
    """

    def __init__(self, dim: int, heads: int, lambda_init: float):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        inner = 2 * dim
        self.q_proj = nn.Linear(dim, inner, bias=False)
        self.k_proj = nn.Linear(dim, inner, bias=False)
        self.v_proj = nn.Linear(dim, inner, bias=False)
        self.out_proj = nn.Linear(inner, dim, bias=False)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(lin.weight)
        self.lambda_init = float(lambda_init)
        d = self.head_dim
        self.lambda_q1 = nn.Parameter(torch.randn(heads, d) * 0.1)
        self.lambda_k1 = nn.Parameter(torch.randn(heads, d) * 0.1)
        self.lambda_q2 = nn.Parameter(torch.randn(heads, d) * 0.1)
        self.lambda_k2 = nn.Parameter(torch.randn(heads, d) * 0.1)
        self.subln = RMSNorm(2 * d)

    def lambda_full(self) -> Tensor:
        """Per-head lambda `(heads,)`."""
        return (torch.exp((self.lambda_q1 * self.lambda_k1).sum(-1))
                - torch.exp((self.lambda_q2 * self.lambda_k2).sum(-1)) + self.lambda_init)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        h, d = self.heads, self.head_dim
        # per head: [q1 | q2] of width 2d, split in halves (the code's Q.chunk(2, -1))
        q = self.q_proj(x).reshape(b, n, h, 2, d).permute(3, 0, 2, 1, 4)  # (2, B, h, N, d)
        k = self.k_proj(x).reshape(b, n, h, 2, d).permute(3, 0, 2, 1, 4)
        v = self.v_proj(x).reshape(b, n, h, 2 * d).transpose(1, 2)  # (B, h, N, 2d)
        lam = self.lambda_full().reshape(1, h, 1, 1)
        out = differential_attention(q[0], k[0], q[1], k[1], v, lam)
        out = self.subln(out) * (1.0 - self.lambda_init)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, 2 * h * d))


class SwiGLU(nn.Module):
    """``W2(silu(Wg x) * W1 x)`` with hidden width ``2 dim`` (the public code's); `(B, N, dim)`."""

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Linear(dim, 2 * dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.down = nn.Linear(2 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class ADDFrontEnd(nn.Module):
    """The ADD denoising layer on frames: `(B, T, F)` -> (`(B, T, F)` denoised, aux `(B, W)`)."""

    def __init__(self, *, n_frames: int, n_mels: int, width: int, heads: int, aff_blocks: int,
                 aff_hidden_factor: int, sparsity: float, aff_mode: str, lambda_depth: int,
                 aux_from: str, aux_pool: str):
        super().__init__()
        self.width = width
        self.aux_from = aux_from
        self.aux_pool = aux_pool
        p = mel_resample_matrix(n_mels, width)
        # Fixed resampling, rebuilt from the config: not stored in checkpoints.
        self.register_buffer("to_width", p, persistent=False)
        self.register_buffer("from_width", torch.linalg.pinv(p.double()).float(),
                             persistent=False)
        self.aff = _AFF(width, n_frames, aff_blocks, aff_hidden_factor, sparsity, aff_mode)
        self.norm1 = RMSNorm(width)
        self.attn = DiffAttention(width, heads, lambda_init_fn(lambda_depth + 1))
        self.norm2 = RMSNorm(width)
        self.ff = SwiGLU(width)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u = torch.matmul(x, self.to_width)  # (B, T, W)
        x1 = u + self.aff(u)
        y = x1 + self.attn(self.norm1(x1))
        z = y + self.ff(self.norm2(y))
        src = z if self.aux_from == "output" else x1
        aux = src.mean(dim=1) if self.aux_pool == "mean" else (src[:, 0] + src[:, 1]) / 2
        return torch.matmul(z, self.from_width), aux


class ADDRSCClassifier(ASTClassifier):
    """ADD front end + AST backbone and head + auxiliary head.

    ``forward(x (B, T, F), meta=None)`` -> ``{"logits": (B, C), "aux_logits": (B, C),
    "embedding": (B, D)}`` (D = the AST width). `meta` is ignored.
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        self.front = ADDFrontEnd(
            n_frames=config["input_tdim"], n_mels=config["input_fdim"],
            **{k: config[k] for k in ("width", "heads", "aff_blocks", "aff_hidden_factor",
                                      "sparsity", "aff_mode", "lambda_depth", "aux_from",
                                      "aux_pool")})
        self.aux_head = nn.Linear(config["width"], self.num_classes)

    def forward(self, x: Tensor, meta: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        want = (self.config["input_tdim"], self.config["input_fdim"])
        if not torch.jit.is_tracing() and (x.dim() != 3 or tuple(x.shape[1:]) != want):
            raise ConfigError(f"model {self.config['name']!r} expects features (B, {want[0]} "
                              f"frames, {want[1]} mel bins), got {tuple(x.shape)}")
        denoised, aux = self.front(x)
        tokens = self.encode(denoised, first=2)  # the head reads these two tokens
        pooled = (tokens[:, 0] + tokens[:, 1]) / 2
        return {"logits": self.head(self.head_norm(pooled)), "aux_logits": self.aux_head(aux),
                "embedding": pooled}


def _front_config(size: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Front-end defaults for `size` merged with the front-end keys of `cfg`, validated."""
    front = {**ADD_FRONT_DEFAULTS, **ADD_FRONT_SIZES.get(size, ADD_FRONT_SIZES["base"])}
    front.update({k: cfg[k] for k in front if k in cfg})
    for key in ("width", "heads", "aff_blocks", "aff_hidden_factor", "lambda_depth"):
        v = front[key]
        lo = 0 if key == "lambda_depth" else 1
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"model 'add': {key} must be an integer >= {lo}, got {v!r}")
    s = front["sparsity"]
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s < float("inf"):
        raise ConfigError(f"model 'add': sparsity must be a non-negative number, got {s!r}")
    front["sparsity"] = float(s)
    for key, allowed in (("aff_mode", AFF_MODES), ("aux_from", AUX_FROM),
                         ("aux_pool", AUX_POOL)):
        if front[key] not in allowed:
            raise ConfigError(f"model 'add': {key} must be one of {', '.join(allowed)}, "
                              f"got {front[key]!r}")
    w = front["width"]
    if w % front["heads"]:
        raise ConfigError(f"model 'add': width {w} must be divisible by heads {front['heads']}")
    if w % front["aff_blocks"]:
        raise ConfigError(f"model 'add': width {w} must be divisible by aff_blocks "
                          f"{front['aff_blocks']}")
    return front


@register_model("add", sizes=("tiny", "small", "base"),
                traits=ModelTraits(family="add", transformer=True, window="hanning",
                                   pretrained=True))
def add_rsc(*, num_classes: int = 4, size: str = "base", input_tdim: int = 798,
            input_fdim: int = 128, meta_spec: dict | None = None,
            **cfg: Any) -> ADDRSCClassifier:
    """ADD-RSC: ADD front end (keys `ADD_FRONT_SIZES`, `ADD_FRONT_DEFAULTS`) + AST (keys
    `rsctool.models.ast.AST_DEFAULTS`; base defaults to the AudioSet checkpoint, as
    ``--model ast``). The model takes no metadata (`meta_spec` is not used)."""
    front = _front_config(size, cfg)
    ast_cfg = {k: v for k, v in cfg.items() if k not in front}
    return build_ast("add", ADDRSCClassifier, num_classes=num_classes, size=size,
                     input_tdim=input_tdim, input_fdim=input_fdim, cfg=ast_cfg,
                     extra_config=copy.deepcopy(front))
