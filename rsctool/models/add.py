"""ADD stand-alone (``--model add-standalone``): the ADD blocks as a ViT-sized network.

A randomly initialised, AST-free variant built from the parts of ADD-RSC (Dong et al.,
Interspeech 2025); ``--model add`` is ADD-RSC itself (`rsctool.models.add_rsc`: the ADD
front end in front of an AudioSet-pretrained AST).

Pipeline on normalised log-mel features `(B, T, F)`:

1. Patch embedding as in AST: the spectrogram as a `(B, 1, F, T)` image, 16 x 16
   patches at stride 10 in both axes (configurable) -> a `(f, t)` grid of tokens
   (``f = (F - 16) // 10 + 1``, ``t = (T - 16) // 10 + 1``; 12 x 79 for 128 x 798), plus
   learned position embeddings (CLS token included).
2. Adaptive Frequency Filter (AFF) blocks on the patch tokens: a real DFT along the
   time axis of the token grid, a complex block-diagonal MLP (AFNO-style) that turns
   the spectrum into an input-dependent complex mask, soft-shrink
   ``S_a(x) = sign(x) max(|x| - a, 0)`` on the mask (sparse: most spectral components
   of the noise are zeroed), mask x spectrum, inverse DFT, residual; then an MLP.
3. Differential Denoise Layers (DDL): pre-norm transformer blocks whose attention is
   multi-head *differential* attention (Diff Transformer, Ye et al. 2024)
   ``(softmax(Q1 K1^T / sqrt d) - lambda softmax(Q2 K2^T / sqrt d)) V``: the second map
   estimates common-mode attention "noise" that the difference cancels.
4. Heads: the main classifier on the CLS token (``logits``, ``embedding`` = the
   normalised CLS token) and an auxiliary classifier on the mean patch token
   (``aux_logits``), used by `rsctool.losses.BiasDenoisingLoss`.

The DFT is implemented as matrix products with precomputed cos/sin matrices (the
token count is fixed by ``input_tdim``/``input_fdim``) and matches ``torch.fft.rfft`` /
``irfft`` with ``norm="ortho"``. This keeps the whole model real-valued, so it exports
to ONNX (``torch.onnx.export(..., dynamo=False, opset_version=17)``), where complex FFT
ops are not available, and runs the same code in training and export.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsctool.errors import ConfigError, DataError
from rsctool.models.registry import ModelTraits, register_model

__all__ = [
    "ADD_SIZES",
    "ADDNet",
    "AdaptiveFrequencyFilter",
    "DifferentialAttention",
    "RMSNorm",
    "differential_attention",
    "lambda_init_fn",
    "real_dft_matrices",
    "soft_shrink",
]

#: Model sizes. Differential attention uses ``num_heads`` heads of width
#: ``embed_dim / num_heads / 2`` for each of the two softmax maps (half the heads of a
#: plain transformer of the same width, as in the Diff Transformer paper).
ADD_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"embed_dim": 32, "depth": 2, "num_heads": 2, "aff_depth": 1, "aff_blocks": 2,
             "mlp_ratio": 2.0},
    "small": {"embed_dim": 384, "depth": 6, "num_heads": 3, "aff_depth": 1, "aff_blocks": 4,
              "mlp_ratio": 4.0},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 6, "aff_depth": 1, "aff_blocks": 8,
             "mlp_ratio": 4.0},
}
#: The registered name (``--model add-standalone``).
_NAME = "add-standalone"
ADD_DEFAULTS: dict[str, Any] = {
    "patch_size": 16,
    "fstride": 10,
    "tstride": 10,
    "dropout": 0.0,
    "attn_dropout": 0.0,
    "sparsity": 0.01,  # soft-shrink threshold a of the AFF mask
    "aff_hidden_factor": 1,  # hidden width of the complex MLP = block size * factor
}


# ------------------------------------------------------------------- building blocks

def soft_shrink(x: Tensor, a: float) -> Tensor:
    """``S_a(x) = sign(x) * max(|x| - a, 0)`` elementwise (``a >= 0``)."""
    return torch.sign(x) * F.relu(x.abs() - a)


def lambda_init_fn(layer: int) -> float:
    """Initial lambda of differential attention in layer `layer` (1-based).

    ``lambda_init = 0.8 - 0.6 exp(-0.3 (layer - 1))``: 0.2 in the first layer, rising
    towards 0.8 with depth (Diff Transformer).
    """
    if layer < 1:
        raise ValueError(f"layer index is 1-based, got {layer}")
    return 0.8 - 0.6 * math.exp(-0.3 * (layer - 1))


def real_dft_matrices(n: int, dtype: torch.dtype = torch.float32,
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Matrices of the orthonormal real DFT of length `n` and its inverse.

    Returns ``(fc, fs, ic, is_)`` with ``K = n // 2 + 1`` frequencies: for ``x`` `(..., n, D)`,
    ``fc @ x`` and ``fs @ x`` are the real and imaginary parts `(..., K, D)` of
    ``torch.fft.rfft(x, dim=-2, norm="ortho")``, and ``ic @ re + is_ @ im`` `(..., n, D)` is
    ``torch.fft.irfft(re + 1j im, n, dim=-2, norm="ortho")`` (which, like this, ignores
    the imaginary parts of the DC and Nyquist terms).
    """
    k = torch.arange(n // 2 + 1, dtype=torch.float64)
    t = torch.arange(n, dtype=torch.float64)
    ang = 2 * math.pi * k[:, None] * t[None, :] / n  # (K, n)
    scale = 1.0 / math.sqrt(n)
    fc = torch.cos(ang) * scale
    fs = -torch.sin(ang) * scale
    # Hermitian symmetry: each k strictly between DC and Nyquist stands for two bins.
    w = torch.full((k.numel(),), 2.0, dtype=torch.float64)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    ic = (torch.cos(ang) * w[:, None] * scale).T.contiguous()  # (n, K)
    is_ = (-torch.sin(ang) * w[:, None] * scale).T.contiguous()
    return fc.to(dtype), fs.to(dtype), ic.to(dtype), is_.to(dtype)


class RMSNorm(nn.Module):
    """RMS normalisation over the last dim with a learned gain (ONNX-friendly ops only)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class AdaptiveFrequencyFilter(nn.Module):
    """Input-adaptive, sparse spectral filter along the time axis of the token grid.

    Input and output `(B, f, t, D)`. With ``X = rfft(x)`` over `t` (orthonormal, via
    `real_dft_matrices`), a complex two-layer MLP with block-diagonal weights
    (``num_blocks`` blocks over the channels D, as in AFNO) maps ``X`` to a mask ``M``,
    soft-shrink sparsifies it (``S_a`` on real and imaginary parts), and the output is
    ``irfft(X * M)``. The caller adds the residual.
    """

    def __init__(self, dim: int, n_time: int, num_blocks: int, hidden_factor: int = 1,
                 sparsity: float = 0.01):
        super().__init__()
        if dim % num_blocks:
            raise ConfigError(f"AFF: embed_dim {dim} is not divisible by aff_blocks {num_blocks}")
        self.num_blocks = num_blocks
        self.block = dim // num_blocks
        self.sparsity = float(sparsity)
        hidden = self.block * hidden_factor
        scale = 0.02
        # Index 0: real part, 1: imaginary part of the complex weights / biases.
        self.w1 = nn.Parameter(scale * torch.randn(2, num_blocks, self.block, hidden))
        self.b1 = nn.Parameter(scale * torch.randn(2, num_blocks, hidden))
        self.w2 = nn.Parameter(scale * torch.randn(2, num_blocks, hidden, self.block))
        self.b2 = nn.Parameter(scale * torch.randn(2, num_blocks, self.block))
        fc, fs, ic, is_ = real_dft_matrices(n_time)
        # Not saved in checkpoints: they follow from n_time.
        self.register_buffer("dft_cos", fc, persistent=False)
        self.register_buffer("dft_sin", fs, persistent=False)
        self.register_buffer("idft_cos", ic, persistent=False)
        self.register_buffer("idft_sin", is_, persistent=False)

    def _cmul(self, xr: Tensor, xi: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """Block-diagonal complex affine map: `(..., nb, c)` -> `(..., nb, h)`."""
        rr = torch.einsum("bftnc,nch->bftnh", xr, w[0])
        ii = torch.einsum("bftnc,nch->bftnh", xi, w[1])
        ri = torch.einsum("bftnc,nch->bftnh", xr, w[1])
        ir = torch.einsum("bftnc,nch->bftnh", xi, w[0])
        return rr - ii + b[0], ri + ir + b[1]

    def mask(self, xr: Tensor, xi: Tensor) -> tuple[Tensor, Tensor]:
        """Spectrum `(B, f, K, D)` (real, imaginary) -> sparse complex mask, same shape."""
        shape = xr.shape
        xr = xr.reshape(*shape[:-1], self.num_blocks, self.block)
        xi = xi.reshape(*shape[:-1], self.num_blocks, self.block)
        hr, hi = self._cmul(xr, xi, self.w1, self.b1)
        hr, hi = F.relu(hr), F.relu(hi)
        mr, mi = self._cmul(hr, hi, self.w2, self.b2)
        mr = soft_shrink(mr, self.sparsity).reshape(shape)
        mi = soft_shrink(mi, self.sparsity).reshape(shape)
        return mr, mi

    def forward(self, x: Tensor) -> Tensor:
        xr = torch.matmul(self.dft_cos, x)  # (B, f, K, D)
        xi = torch.matmul(self.dft_sin, x)
        mr, mi = self.mask(xr, xi)
        yr = xr * mr - xi * mi
        yi = xr * mi + xi * mr
        return torch.matmul(self.idft_cos, yr) + torch.matmul(self.idft_sin, yi)


class AFFBlock(nn.Module):
    """Pre-norm residual block: ``x + AFF(LN(x))``, then ``x + MLP(LN(x))``; `(B, f, t, D)`."""

    def __init__(self, dim: int, n_time: int, num_blocks: int, hidden_factor: int,
                 sparsity: float, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.filter = AdaptiveFrequencyFilter(dim, n_time, num_blocks, hidden_factor, sparsity)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.filter(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


def differential_attention(q1: Tensor, k1: Tensor, q2: Tensor, k2: Tensor, v: Tensor,
                           lam: Tensor | float, dropout_p: float = 0.0) -> Tensor:
    """``(softmax(q1 k1^T / sqrt d) - lam softmax(q2 k2^T / sqrt d)) v``.

    Shapes: `q*`, `k*` `(B, H, N, d)`, `v` `(B, H, N, dv)` -> `(B, H, N, dv)`. With
    ``lam = 0`` this is standard scaled dot-product attention of (q1, k1, v).

    Computed as ``A1 v - lam A2 v`` with two fused scaled-dot-product attentions, which
    is the same product but never materialises the `(N, N)` maps (949 tokens for an
    8 s window): several times faster and far lighter on memory. `dropout_p` drops
    attention weights of each map independently (training only).
    """
    o1 = F.scaled_dot_product_attention(q1, k1, v, dropout_p=dropout_p)
    o2 = F.scaled_dot_product_attention(q2, k2, v, dropout_p=dropout_p)
    return o1 - lam * o2


class DifferentialAttention(nn.Module):
    """Multi-head differential attention (Diff Transformer) for layer `layer` (1-based).

    ``lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init`` (learned vectors of size
    d, so lambda can move freely while its initial value follows `lambda_init_fn`);
    each head's `(N, 2d)` output goes through RMSNorm and is scaled by
    ``1 - lambda_init`` so the output scale matches standard attention at init.
    Input / output `(B, N, D)`.
    """

    def __init__(self, dim: int, num_heads: int, layer: int, attn_dropout: float = 0.0,
                 proj_dropout: float = 0.0):
        super().__init__()
        if dim % (2 * num_heads):
            raise ConfigError(f"differential attention: embed_dim {dim} must be divisible by "
                              f"2 * num_heads = {2 * num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads // 2
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.lambda_init = lambda_init_fn(layer)
        d = self.head_dim
        self.lambda_q1 = nn.Parameter(torch.randn(d) * 0.1)
        self.lambda_k1 = nn.Parameter(torch.randn(d) * 0.1)
        self.lambda_q2 = nn.Parameter(torch.randn(d) * 0.1)
        self.lambda_k2 = nn.Parameter(torch.randn(d) * 0.1)
        self.subln = RMSNorm(2 * d)
        self.attn_dropout = float(attn_dropout)
        self.proj_drop = nn.Dropout(proj_dropout)

    def lambda_full(self) -> Tensor:
        """The current lambda (scalar tensor)."""
        return (torch.exp(torch.sum(self.lambda_q1 * self.lambda_k1))
                - torch.exp(torch.sum(self.lambda_q2 * self.lambda_k2)) + self.lambda_init)

    def forward(self, x: Tensor) -> Tensor:
        b, n, dim = x.shape
        h, d = self.num_heads, self.head_dim
        # 2h query/key heads of width d, paired as (2i, 2i + 1); h value heads of width 2d.
        q = self.q_proj(x).reshape(b, n, h, 2, d).permute(3, 0, 2, 1, 4)  # (2, B, h, N, d)
        k = self.k_proj(x).reshape(b, n, h, 2, d).permute(3, 0, 2, 1, 4)
        v = self.v_proj(x).reshape(b, n, h, 2 * d).transpose(1, 2)  # (B, h, N, 2d)
        out = differential_attention(q[0], k[0], q[1], k[1], v, self.lambda_full(),
                                     self.attn_dropout if self.training else 0.0)
        out = self.subln(out) * (1.0 - self.lambda_init)
        out = out.transpose(1, 2).reshape(b, n, dim)
        return self.proj_drop(self.out_proj(out))


class DDLBlock(nn.Module):
    """Differential Denoise Layer: pre-norm differential attention + MLP; `(B, N, D)`."""

    def __init__(self, dim: int, num_heads: int, layer: int, mlp_ratio: float, dropout: float,
                 attn_dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = DifferentialAttention(dim, num_heads, layer, attn_dropout, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# ----------------------------------------------------------------------------- model

class ADDNet(nn.Module):
    """Adaptive Differential Denoising classifier.

    ``forward(x (B, T, F), meta=None)`` -> ``{"logits": (B, C), "aux_logits": (B, C),
    "embedding": (B, D)}``. `T` and `F` must equal ``input_tdim`` / ``input_fdim`` (the
    position embeddings and DFT matrices are sized for them).
    """

    needs_metadata = False

    def __init__(self, *, num_classes: int, input_tdim: int, input_fdim: int, embed_dim: int,
                 depth: int, num_heads: int, aff_depth: int, aff_blocks: int, mlp_ratio: float,
                 patch_size: int, fstride: int, tstride: int, dropout: float,
                 attn_dropout: float, sparsity: float, aff_hidden_factor: int,
                 config: dict[str, Any]):
        super().__init__()
        self.config = config
        self.embed_dim = embed_dim
        self.input_tdim = input_tdim
        self.input_fdim = input_fdim
        self.f_dim = (input_fdim - patch_size) // fstride + 1
        self.t_dim = (input_tdim - patch_size) // tstride + 1
        self.num_patches = self.f_dim * self.t_dim
        self.patch_embed = nn.Conv2d(1, embed_dim, kernel_size=patch_size,
                                     stride=(fstride, tstride))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(dropout)
        self.aff = nn.ModuleList(
            AFFBlock(embed_dim, self.t_dim, aff_blocks, aff_hidden_factor, sparsity, mlp_ratio,
                     dropout) for _ in range(aff_depth))
        self.blocks = nn.ModuleList(
            DDLBlock(embed_dim, num_heads, i + 1, mlp_ratio, dropout, attn_dropout)
            for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self.aux_head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, meta: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            if x.ndim != 3 or x.shape[1] != self.input_tdim or x.shape[2] != self.input_fdim:
                raise DataError(f"model {_NAME!r}: expected features (B, {self.input_tdim}, "
                                f"{self.input_fdim}), got shape {tuple(x.shape)}")
        b = x.shape[0]
        d = self.embed_dim
        # AST layout: (B, T, F) -> (B, 1, F, T) image, patches -> (B, D, f, t).
        p = self.patch_embed(x.unsqueeze(1).transpose(2, 3))
        p = p.permute(0, 2, 3, 1)  # (B, f, t, D)
        pos = self.pos_embed[:, 1:].reshape(1, self.f_dim, self.t_dim, d)
        p = self.pos_drop(p + pos)
        for blk in self.aff:
            p = blk(p)
        tokens = p.reshape(b, self.num_patches, d)
        cls = self.cls_token.expand(b, -1, -1) + self.pos_embed[:, :1]
        h = torch.cat([cls, tokens], dim=1)  # (B, 1 + N, D)
        for blk in self.blocks:
            h = blk(h)
        h = self.norm(h)
        emb = h[:, 0]
        return {"logits": self.head(emb), "aux_logits": self.aux_head(h[:, 1:].mean(dim=1)),
                "embedding": emb}


def _resolve(size: str, cfg: dict[str, Any]) -> dict[str, Any]:
    if size not in ADD_SIZES:
        raise ConfigError(f"model {_NAME!r}: unknown size {size!r}; known sizes: "
                          f"{', '.join(ADD_SIZES)}")
    known = set(ADD_SIZES[size]) | set(ADD_DEFAULTS)
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"model {_NAME!r}: unknown config key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    return {**ADD_DEFAULTS, **ADD_SIZES[size], **cfg}


def _check(opts: dict[str, Any], num_classes: Any, input_tdim: Any, input_fdim: Any) -> None:
    ints = {"num_classes": num_classes, "input_tdim": input_tdim, "input_fdim": input_fdim,
            **{k: opts[k] for k in ("embed_dim", "depth", "num_heads", "aff_blocks",
                                     "patch_size", "fstride", "tstride", "aff_hidden_factor")}}
    for k, v in ints.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"model {_NAME!r}: {k} must be a positive integer, got {v!r}")
    a = opts["aff_depth"]
    if isinstance(a, bool) or not isinstance(a, int) or a < 0:
        raise ConfigError(f"model {_NAME!r}: aff_depth must be an integer >= 0, got {a!r}")
    for k in ("dropout", "attn_dropout"):
        v = opts[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise ConfigError(f"model {_NAME!r}: {k} must be in [0, 1), got {v!r}")
    for k, lo_ok in (("sparsity", True), ("mlp_ratio", False)):
        v = opts[k]
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) \
            and (v >= 0 if lo_ok else v > 0)
        if not ok:
            what = "non-negative" if lo_ok else "positive"
            raise ConfigError(f"model {_NAME!r}: {k} must be a {what} number, got {v!r}")
    ps = opts["patch_size"]
    if input_tdim < ps or input_fdim < ps:
        raise ConfigError(f"model {_NAME!r}: input {input_tdim} x {input_fdim} is smaller than one "
                          f"{ps} x {ps} patch")
    if opts["embed_dim"] % (2 * opts["num_heads"]):
        raise ConfigError(f"model {_NAME!r}: embed_dim {opts['embed_dim']} must be divisible by "
                          f"2 * num_heads = {2 * opts['num_heads']}")
    if opts["embed_dim"] % opts["aff_blocks"]:
        raise ConfigError(f"model {_NAME!r}: embed_dim {opts['embed_dim']} must be divisible by "
                          f"aff_blocks {opts['aff_blocks']}")


@register_model(_NAME, sizes=tuple(ADD_SIZES),
                traits=ModelTraits(family="add", transformer=True))
def add_standalone(*, num_classes: int = 4, size: str = "base", input_tdim: int = 798,
        input_fdim: int = 128, meta_spec: dict | None = None, **cfg: Any) -> ADDNet:
    """Build the stand-alone ADD network (randomly initialised; no AST, no `pretrained`).

    Config (defaults from the size table / `ADD_DEFAULTS`): ``embed_dim``, ``depth``
    (DDL blocks), ``num_heads`` (differential heads), ``aff_depth`` (AFF blocks, 0 turns
    the filter off), ``aff_blocks`` (channel blocks of the complex MLP),
    ``aff_hidden_factor``, ``sparsity`` (soft-shrink threshold), ``mlp_ratio``,
    ``patch_size``, ``fstride``, ``tstride``, ``dropout``, ``attn_dropout``.
    The model takes no metadata (`meta_spec` is recorded, not used).
    """
    opts = _resolve(size, cfg)
    _check(opts, num_classes, input_tdim, input_fdim)
    for k in ("dropout", "attn_dropout", "sparsity", "mlp_ratio"):
        opts[k] = float(opts[k])
    config = {"name": _NAME, "num_classes": num_classes, "size": size, "input_tdim": input_tdim,
              "input_fdim": input_fdim, "meta_spec": copy.deepcopy(meta_spec), **opts}
    return ADDNet(num_classes=num_classes, input_tdim=input_tdim, input_fdim=input_fdim,
                  config=config, **opts)
