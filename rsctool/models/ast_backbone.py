"""The AST backbone in plain PyTorch, parameter for parameter transformers 5's `ASTModel`.

Why not transformers' own module: importing it costs 2.3 s of every command's start-up
(`import torch` alone is 1.1 s; docs/benchmarks.md), and its blocks cannot take the fused
bf16 inference path below. The module tree and state-dict keys are those of
transformers 5 (``embeddings.*``, ``layers.N.attention.{q,k,v,o}_proj``,
``layers.N.mlp.fc{1,2}``, ``layers.N.layernorm_{before,after}``, ``layernorm``), so
checkpoints written before and pretrained weights read by `ASTModel.from_pretrained` load
unchanged; the 4.x layout (``encoder.layer.N.attention.attention.query`` ...) is renamed
on load. `tests/test_models_ast.py` checks the outputs against `ASTModel` with the same
weights.

Inference fast path (`pack_for_inference`): weights in bf16, the three attention
projections as one (D, 3D) product, oneDNN-packed weights in the layout that splits each
product best over the cores for the rows of the call (one 8 s clip gives 950), with the
GELU and the residual additions fused into the products (docs/benchmarks.md, "AST base:
the fused bf16 path" and "AST base: weight layouts by call size"). Hooks on
``layernorm_after`` and on whole blocks (the metadata-conditioned variants) fire as in the
training path.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION = ("sdpa", "eager")
#: Below this many rows (tokens in a call: one 8 s AST clip gives 950) the fused path
#: takes the weight layouts packed for few rows (see `_Packed`).
SMALL_M = 1024
#: Clips per model call for the fused path on the CPU: AST base, 8 s clips, 2-core AMX CPU:
#: 173 / 164 / 170 / 157 / 192 ms per clip at 1 / 2 / 3 / 4 / 8 (docs/benchmarks.md; 4 is
#: within the noise of 2 and holds twice the activations); `rsctool.inference.predict`
#: and `predict` call it so.
FUSED_CPU_BATCH = 2


@dataclass
class BackboneConfig:
    """Sizes of an AST backbone, named as transformers' `ASTConfig` names them."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    patch_size: int
    frequency_stride: int
    time_stride: int
    max_length: int          # input frames (T)
    num_mel_bins: int        # input mel bins (F)
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    attention: str = "sdpa"  # sdpa (fused kernels) | eager (explicit softmax; ONNX export)


class PatchEmbeddings(nn.Module):
    def __init__(self, c: BackboneConfig):
        super().__init__()
        self.projection = nn.Conv2d(1, c.hidden_size, kernel_size=(c.patch_size, c.patch_size),
                                    stride=(c.frequency_stride, c.time_stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) features -> (B, patches, D), patches ordered frequency-major."""
        x = x.unsqueeze(1).transpose(2, 3)  # (B, 1, F, T)
        return self.projection(x).flatten(2).transpose(1, 2)


class Embeddings(nn.Module):
    def __init__(self, c: BackboneConfig):
        super().__init__()
        f, t = patch_grid(c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.hidden_size))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, c.hidden_size))
        self.patch_embeddings = PatchEmbeddings(c)
        self.position_embeddings = nn.Parameter(torch.zeros(1, f * t + 2, c.hidden_size))
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) -> tokens (B, 2 + patches, D): CLS, distillation, patches."""
        e = self.patch_embeddings(x)
        b = e.shape[0]
        e = torch.cat((self.cls_token.expand(b, -1, -1).to(e.dtype),
                       self.distillation_token.expand(b, -1, -1).to(e.dtype), e), dim=1)
        return self.dropout(e + self.position_embeddings.to(e.dtype))


class Attention(nn.Module):
    def __init__(self, c: BackboneConfig):
        super().__init__()
        d = c.hidden_size
        self.heads = c.num_attention_heads
        self.head_dim = d // c.num_attention_heads
        self.dropout_p = c.attention_probs_dropout_prob
        self.implementation = c.attention
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, queries: int | None = None) -> torch.Tensor:
        """(B, N, D) -> (B, Q, D): multi-head self-attention, no mask, for the first
        Q = `queries` tokens (all N when None) over all N keys."""
        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

        q = heads(self.q_proj(x if queries is None else x[:, :queries]))
        k, v = heads(self.k_proj(x)), heads(self.v_proj(x))
        a = attend(q, k, v, self.implementation, self.dropout_p if self.training else 0.0)
        return self.o_proj(a.transpose(1, 2).flatten(2))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, implementation: str,
           dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(Dh)) v for (B, H, N, Dh) queries, keys and values; ``eager`` is
    transformers' eager_attention_forward (softmax in fp32, then back), else PyTorch's
    fused scaled-dot-product kernels. Attention-probability dropout `dropout_p`."""
    if implementation == "eager":
        w = torch.matmul(q, k.transpose(2, 3)) * q.shape[-1] ** -0.5
        w = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(F.dropout(w, dropout_p, dropout_p > 0), v)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


class MLP(nn.Module):
    def __init__(self, c: BackboneConfig):
        super().__init__()
        self.fc1 = nn.Linear(c.hidden_size, c.intermediate_size)
        self.fc2 = nn.Linear(c.intermediate_size, c.hidden_size)
        self.activation_fn = nn.GELU()  # exact (erf) GELU, transformers' "gelu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(x)))


class Layer(nn.Module):
    """Pre-norm ViT block: h + attn(LN(h)), then h + MLP(LN(h)); (B, N, D) -> (B, N, D),
    or (B, Q, D) for the first Q = `queries` tokens only: every token is still a key and
    value, but only Q tokens are queries, and the MLP runs on Q rows. That is the same
    function for those tokens, for a last block whose other outputs nothing reads."""

    def __init__(self, c: BackboneConfig):
        super().__init__()
        self.attention = Attention(c)
        self.layernorm_before = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = MLP(c)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)
        self.packed: _Packed | None = None

    def forward(self, h: torch.Tensor, queries: int | None = None) -> torch.Tensor:
        if (self.packed is not None and not self.training and not torch.is_grad_enabled()
                and _autocast_dtype(h.device.type) == self.packed.dtype):
            return self.packed.forward(self, h, queries)
        a = self.attention(self.layernorm_before(h), queries)
        h = (h if queries is None else h[:, :queries]) + self.dropout(a)
        return h + self.dropout(self.mlp(self.layernorm_after(h)))


class ASTBackbone(nn.Module):
    """Patch embedding, `num_hidden_layers` blocks and the final LayerNorm; `forward` gives
    the normalised tokens (B, 2 + patches, D) of features (B, T, F)."""

    def __init__(self, c: BackboneConfig):
        super().__init__()
        self.config = c
        self.embeddings = Embeddings(c)
        self.layers = nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))
        self.layernorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.apply(self._init_weights)
        self.register_load_state_dict_pre_hook(_rename_legacy_keys)

    def _init_weights(self, m: nn.Module) -> None:
        # transformers' PreTrainedModel._init_weights for these module types
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.normal_(m.weight, std=self.config.initializer_range)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embeddings(x)
        for layer in self.layers:
            h = layer(h)
        return self.layernorm(h)


def patch_grid(c: Any) -> tuple[int, int]:
    """(frequency patches, time patches) of an AST config (transformers' formula)."""
    return ((c.num_mel_bins - c.patch_size) // c.frequency_stride + 1,
            (c.max_length - c.patch_size) // c.time_stride + 1)


#: transformers 4.x names -> 5.x names (this module's), for state dicts written with 4.x.
_LEGACY = [
    (re.compile(r"encoder\.layer\.(\d+)\."), r"layers.\1."),
    (re.compile(r"attention\.attention\.query\."), "attention.q_proj."),
    (re.compile(r"attention\.attention\.key\."), "attention.k_proj."),
    (re.compile(r"attention\.attention\.value\."), "attention.v_proj."),
    (re.compile(r"attention\.output\.dense\."), "attention.o_proj."),
    (re.compile(r"intermediate\.dense\."), "mlp.fc1."),
    (re.compile(r"(layers\.\d+\.)output\.dense\."), r"\1mlp.fc2."),
]


def rename_legacy(key: str) -> str:
    """A transformers 4.x AST state-dict key in this module's (5.x) naming."""
    for pattern, repl in _LEGACY:
        key = pattern.sub(repl, key)
    return key


def _rename_legacy_keys(module: nn.Module, state: dict[str, Any], prefix: str, *args: Any
                        ) -> None:
    for key in [k for k in state if k.startswith(prefix)]:
        new = prefix + rename_legacy(key[len(prefix):])
        if new != key:
            state[new] = state.pop(key)


# -- fused inference ----------------------------------------------------------------------

def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs `device_type` in now, or None when it is off."""
    try:
        on = torch.is_autocast_enabled(device_type)
        return torch.get_autocast_dtype(device_type) if on else None
    except TypeError:  # torch < 2.4: per-device functions
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def _mkldnn_ok(dtype: torch.dtype) -> bool:
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and dtype == torch.bfloat16
            and hasattr(ops, "_linear_pointwise") and hasattr(ops, "_reorder_linear_weight")
            and bool(getattr(ops, "_is_mkldnn_bf16_supported", lambda: False)()))


class _Packed:
    """Copies of one block's weights for the fused inference path, in `dtype`; the
    module's own parameters are left as they are (the LayerNorms run from them: bf16 in,
    fp32 weights, bf16 out).

    With oneDNN the weights are packed in its blocked layouts, and the layout decides how
    a product is split over the cores. ``_reorder_linear_weight(w, 1)`` (the layout for
    one row) splits the output columns, which is faster for the (D, D) and (4D, D)
    products when one clip gives the rows and slower from two clips on; the default
    layout is the other way round. So those two are packed both ways (`SMALL_M` rows
    picks one: +14 MB for AST base), the first MLP product (GELU fused) is faster in the
    one-row layout at both sizes, and q/k/v in the default one. AST base, 2-core AMX CPU,
    ms per product at 950 / 1,900 rows, default vs one-row layout, residual addition or
    GELU fused: (D, D) 1.16 / 1.10 vs 0.67 / 1.17; (4D, D) 4.47 / 4.60 vs 2.71 / 5.32;
    (D, 4D) + GELU 2.75 / 5.00 vs 2.49 / 4.94 (`bench_predict.py --layouts`;
    docs/benchmarks.md, "AST base: weight layouts by call size")."""

    def __init__(self, layer: Layer, dtype: torch.dtype):
        a, m = layer.attention, layer.mlp
        self.dtype = dtype

        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(dtype).contiguous()

        self.b = {"qkv": cast(torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])),
                  "o": cast(a.o_proj.bias), "1": cast(m.fc1.bias), "2": cast(m.fc2.bias)}
        w = {"qkv": cast(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])),
             "o": cast(a.o_proj.weight), "1": cast(m.fc1.weight), "2": cast(m.fc2.weight)}
        self.mkldnn = _mkldnn_ok(dtype) and w["qkv"].device.type == "cpu"
        if not self.mkldnn:
            self.w = {"wide": w, "narrow": w}
            return
        pack = torch.ops.mkldnn._reorder_linear_weight
        wide = {"qkv": pack(w["qkv"]), "o": pack(w["o"]), "2": pack(w["2"]),
                "1": pack(w["1"], 1)}
        self.w = {"wide": wide, "narrow": {**wide, "o": pack(w["o"], 1), "2": pack(w["2"], 1)}}

    def forward(self, layer: Layer, h: torch.Tensor, queries: int | None = None
                ) -> torch.Tensor:
        """The block's function on (B, N, D) -> (B, Q, D), as `Layer.forward` in eval
        mode."""
        b, n, d = h.shape
        nq = n if queries is None else min(queries, n)
        a, m, mq = layer.attention, b * n, b * nq
        h = h.to(self.dtype)
        x = layer.layernorm_before(h).to(self.dtype).reshape(m, d)
        qkv = self._linear(x, self._pick(m), "qkv").view(b, n, 3, a.heads, a.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        o = attend(qkv[0][:, :, :nq], qkv[1], qkv[2], a.implementation)
        w = self._pick(mq)
        h = self._linear(o.transpose(1, 2).reshape(mq, d), w, "o",
                         residual=h[:, :nq].reshape(mq, d))
        x = layer.layernorm_after(h.view(b, nq, d)).to(self.dtype).reshape(mq, d)
        return self._linear(self._linear(x, w, "1", gelu=True), w, "2",
                            residual=h).view(b, nq, d)

    def _pick(self, rows: int) -> dict[str, torch.Tensor]:
        """The weights packed for products of `rows` rows."""
        return self.w["narrow" if rows < SMALL_M else "wide"]

    def _linear(self, x: torch.Tensor, w: dict[str, torch.Tensor], name: str,
                gelu: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
        """(M, K) -> (M, N): ``x W^T + b``, then the exact GELU or ``+ residual`` (M, N),
        fused into the product where oneDNN runs it."""
        if not self.mkldnn:
            y = F.linear(x, w[name], self.b[name])
            y = F.gelu(y) if gelu else y
            return y if residual is None else residual + y
        ops = torch.ops.mkldnn
        if residual is not None:
            return ops._linear_pointwise.binary(x, residual, w[name], self.b[name], "add")
        return ops._linear_pointwise(x, w[name], self.b[name], "gelu" if gelu else "none", [],
                                     "none" if gelu else "")


def pack_for_inference(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> list[Layer]:
    """Give every AST block inside `model` that has none yet the fused inference path in
    `dtype`, taken when the block runs in eval mode without gradients under autocast to
    `dtype` (`rsctool.devices.inference_precision`); fp32 calls and training are
    unchanged. The copies take about a bf16 model's size (AST base: 230 MB) and go stale
    if the weights change: pack after loading, `unpack` before changing them. Returns the
    blocks packed now."""
    done = [m for m in model.modules() if isinstance(m, Layer) and m.packed is None]
    # oneDNN's weight reorders keep only part of the cores busy: two blocks at a time pack
    # AST base in 80 instead of 130 ms (2 cores).
    with ThreadPoolExecutor(max(1, min(2, torch.get_num_threads()))) as pool:
        for layer, packed in zip(done, pool.map(lambda m: _Packed(m, dtype), done),
                                 strict=True):
            layer.packed = packed
    return done


def unpack(layers: list[Layer]) -> None:
    """Drop the fused path (and its weight copies) of `layers`."""
    for layer in layers:
        layer.packed = None
