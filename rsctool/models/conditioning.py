"""Metadata-conditioned ASTs: GRF, FiLM, TAFiLM and SoftFiLM.

Conditioning on recording metadata (device, chest site, sex, age, BMI, cycle
duration; see `metadata.py`) as in "Metadata-Conditioned Audio Transformers for
Adaptive Respiratory Sound Classification" (Kontogiannis et al.):

- ``grf``      gated residual fusion: a projected metadata embedding is added to every
               token through a sigmoid gate that starts almost closed;
- ``film``     per-layer scale/shift from metadata on the input of each block's MLP
               (the output of ``layernorm_after``): ``y = (1 + dgamma) * y + beta``;
- ``tafilm``   FiLM with separate generators for the CLS/distillation tokens and for
               the patch tokens;
- ``softfilm`` one encoder per factor (device, site, demographics); each factor's
               modulation is confined to the hidden dimensions of a learned soft mask
               ``sigmoid(m_f / tau)``, tau annealed 1 -> 0.2 by `set_progress`, with
               overlap and coverage regularisers returned as ``"reg_loss"``.

The conditioning acts through forward hooks on the unchanged transformers modules,
so every model's state dict is the plain `ast` state dict plus its conditioning
parameters: an `ast` checkpoint loads into any of them. FiLM generators end in a
zero-initialised layer, so at initialisation film/tafilm/softfilm compute exactly the
plain AST. The hooks read the modulation the current `forward` computed from `meta`;
they are bound methods of the model, so `copy.deepcopy` and pickling keep them attached
to the right copy, and they trace under ``torch.onnx.export(dynamo=False)`` with the
metadata tensors as extra graph inputs. Defaults follow the paper's configuration
(8-d device/site embeddings, 64-unit FiLM encoder, dropout 0.4, all layers conditioned,
mask init scale 2.0, overlap weight 0.01).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rsctool.errors import ConfigError
from rsctool.models.ast import ASTClassifier, build_ast, check_float, check_int
from rsctool.models.metadata import META_FIELDS, META_KEYS, NUM_FIELDS, check_meta_spec
from rsctool.models.registry import ModelTraits, register_model

#: Config keys every conditioned model adds to the AST keys, with defaults.
META_DEFAULTS: dict[str, Any] = {
    "meta_dim": 64,            # width of the metadata embedding
    "meta_hidden": 64,         # hidden width of the metadata MLP
    "device_embed_dim": 8,
    "site_embed_dim": 8,
    "sex_embed_dim": 4,
    "meta_dropout": 0.4,       # dropout inside metadata encoders / generators
}
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "grf": {"grf_layer": None,       # block index whose output is fused; None: final norm
            "gate": "vector",        # vector: per-dim sigmoid gate; scalar: MCAT's alpha
            "gate_bias": -4.0,       # vector gate's initial logit: sigmoid(-4) = 0.018
            "gate_init": 0.5},       # scalar gate's initial value (MCAT's init_gate: 0.5)
    "film": {"film_layers": None,    # block indices to modulate; None: all
             "film_hidden": 64},
    "tafilm": {"film_layers": None, "film_hidden": 64},
    "softfilm": {"film_layers": None, "film_hidden": 64,
                 "mask_init": "thirds",    # thirds: MCAT's fixed partition; random
                 "mask_init_scale": 2.0,   # +-logit of the partition (random: std)
                 "tau_start": 1.0, "tau_end": 0.2,
                 "overlap_weight": 0.01, "coverage_weight": 0.01},
}
#: SoftFiLM factors and the metadata parts each one sees.
FACTORS: dict[str, tuple[str, ...]] = {
    "device": ("device",), "site": ("site",), "demographics": ("sex", "num")}


GATES = ("vector", "scalar")
MASK_INITS = ("thirds", "random")


def mask_init_logits(n_factors: int, d: int, scale: float, mode: str = "thirds"
                     ) -> torch.Tensor:
    """Initial SoftFiLM mask logits (n_factors, d).

    ``thirds`` (MCAT): factor k owns the k-th of n equal blocks of the D dimensions
    (block size D // n, the last block takes the remainder): +scale there, -scale
    elsewhere, so the masks start as a partition with no hard overlap.
    ``random``: N(0, scale^2) per logit (the earlier default; about 25 % of dimensions
    start shared by two of three factors).
    """
    if mode == "random":
        return torch.randn(n_factors, d) * scale
    logits = torch.full((n_factors, d), -float(scale))
    block = d // n_factors
    for k in range(n_factors):
        logits[k, k * block:(k + 1) * block if k < n_factors - 1 else d] = float(scale)
    return logits


class MetadataEmbedding(nn.Module):
    """Metadata batch -> (B, out_dim).

    Concatenates the chosen `parts`: device and site embeddings (index 0 = unknown),
    a sex embedding, and the numeric features with their presence masks (a missing
    value is 0 with mask 0, so the MLP can tell missing from average; with median
    imputation, ``spec["num_mask"]`` false, the masks are left out); then
    Linear -> GELU -> Dropout -> Linear -> GELU. Only the metadata fields of
    ``spec["fields"]`` (default: all) are read: a part with no listed field is dropped,
    and of ``num`` only the listed columns are used.
    """

    def __init__(self, spec: dict[str, Any], cfg: dict[str, Any],
                 parts: Sequence[str] = ("device", "site", "sex", "num")):
        super().__init__()
        fields = spec.get("fields", META_FIELDS)
        self.num_cols = [j for j, f in enumerate(NUM_FIELDS) if f in fields]
        self.num_mask = bool(spec.get("num_mask", True))
        self.parts = tuple(p for p in parts
                           if (p in fields) or (p == "num" and self.num_cols))
        if not self.parts:
            raise ConfigError(f"metadata embedding of {list(parts)}: none of them is in the "
                              f"metadata field list {list(fields)}")
        self.embeds = nn.ModuleDict()
        width = 0
        for part, n, dim in (("device", spec["n_devices"], cfg["device_embed_dim"]),
                             ("site", spec["n_sites"], cfg["site_embed_dim"]),
                             ("sex", 3, cfg["sex_embed_dim"])):
            if part in self.parts:
                self.embeds[part] = nn.Embedding(n, dim)
                width += dim
        if "num" in self.parts:
            width += len(self.num_cols) * (2 if self.num_mask else 1)
        self.mlp = nn.Sequential(
            nn.Linear(width, cfg["meta_hidden"]), nn.GELU(), nn.Dropout(cfg["meta_dropout"]),
            nn.Linear(cfg["meta_hidden"], cfg["meta_dim"]), nn.GELU())

    def forward(self, meta: dict[str, torch.Tensor]) -> torch.Tensor:
        feats = [self.embeds[p](meta[p]) for p in self.parts if p != "num"]
        if "num" in self.parts:
            # a Python-level choice (not the tensor's shape), so ONNX tracing stays exact
            select = len(self.num_cols) < len(NUM_FIELDS)
            num = meta["num"].float()
            num = num[:, self.num_cols] if select else num
            if self.num_mask:
                mask = meta["num_mask"].float()
                mask = mask[:, self.num_cols] if select else mask
                feats += [num * mask, mask]
            else:
                feats.append(num)
        return self.mlp(torch.cat(feats, dim=-1))


def _has_fields(spec: dict[str, Any], parts: Sequence[str]) -> bool:
    fields = spec.get("fields", META_FIELDS)
    return any(p in fields or (p == "num" and any(f in fields for f in NUM_FIELDS))
               for p in parts)


class FiLMGenerator(nn.Module):
    """(B, in_dim) -> (dgamma, beta), each (B, n_layers, D); last layer zero-initialised."""

    def __init__(self, in_dim: int, hidden: int, n_layers: int, d: int, dropout: float):
        super().__init__()
        self.n_layers, self.d = n_layers, d
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, n_layers * 2 * d))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(z).reshape(z.shape[0], self.n_layers, 2, self.d)
        return out[:, :, 0], out[:, :, 1]


def _resolve_layers(value: Any, n: int, key: str) -> list[int]:
    """Block indices (negative counts from the end; None: all) -> sorted list; ConfigError."""
    if value is None:
        return list(range(n))
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or any(
            isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n for i in value):
        raise ConfigError(f"{key} must be null or a non-empty list of block indices in "
                          f"[{-n}, {n - 1}], got {value!r}")
    idx = sorted({i % n for i in value})
    if len(idx) != len(value):
        raise ConfigError(f"{key} lists a block twice: {value!r}")
    return idx


class ConditionedAST(ASTClassifier):
    """AST whose `forward(x, meta)` computes a conditioning state read by module hooks.

    Subclasses implement `condition(meta) -> dict` (tensors for the hooks) and register
    hooks in `__init__`; `forward` returns the AST outputs (+ ``"reg_loss"`` if any).
    """

    needs_metadata = True

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        self.meta_spec = config["meta_spec"]
        for key in ("meta_dim", "meta_hidden", "device_embed_dim", "site_embed_dim",
                    "sex_embed_dim"):
            check_int(key, config[key])
        config["meta_dropout"] = check_float("meta_dropout", config["meta_dropout"], 0.0, 0.99)
        self._state: dict[str, torch.Tensor] | None = None

    def condition(self, meta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def regularizer(self, state: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return None

    def _check_meta(self, meta: dict[str, torch.Tensor] | None) -> None:
        name = self.config["name"]
        if meta is None:
            raise ConfigError(f"model {name!r} conditions on metadata: pass meta (a "
                              f"MetadataEncoder batch; .unknown(n) when nothing is known)")
        missing = [k for k in META_KEYS if k not in meta]
        if missing:
            raise ConfigError(f"model {name!r}: metadata batch lacks {missing}")
        if not torch.jit.is_tracing() and meta["num"].shape[-1] != self.meta_spec["n_num"]:
            raise ConfigError(f"model {name!r}: metadata has {meta['num'].shape[-1]} numeric "
                              f"features, the model was built for {self.meta_spec['n_num']}")

    def forward(self, x: torch.Tensor, meta: dict[str, torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor]:
        self._check_meta(meta)
        state = self.condition(meta)
        self._state = state
        try:
            out = super().forward(x)
        finally:
            self._state = None
        reg = self.regularizer(state)
        if reg is not None:
            out["reg_loss"] = reg
        return out


class GRFAST(ConditionedAST):
    """Gated residual fusion: tokens += sigmoid(W [pooled; m] + b) * m, m = proj(meta)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        d, n = self.embed_dim, len(self.layers)
        layer = config["grf_layer"]
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)
                                  or not -n <= layer < n):
            raise ConfigError(f"grf_layer must be null or a block index in [{-n}, {n - 1}], "
                              f"got {layer!r}")
        config["gate_bias"] = check_float("gate_bias", config["gate_bias"], -20.0, 20.0)
        config["gate_init"] = check_float("gate_init", config["gate_init"], -100.0, 100.0)
        if config["gate"] not in GATES:
            raise ConfigError(f"gate must be one of {GATES}, got {config['gate']!r}")
        self.meta_embed = MetadataEmbedding(self.meta_spec, config)
        self.proj = nn.Linear(config["meta_dim"], d)
        if config["gate"] == "scalar":
            # MCAT's GRF: h + alpha * m with one learned alpha, 0.5 at the start
            # (public code ast_fus_config.yaml: `init_gate: 0.5`).
            self.gate_alpha = nn.Parameter(torch.tensor(config["gate_init"]))
        else:
            # The gate sees the audio summary and the metadata; zero weights and a negative
            # bias start it almost closed, so fine-tuning starts close to the plain AST.
            self.gate = nn.Linear(2 * d, d)
            nn.init.zeros_(self.gate.weight)
            nn.init.constant_(self.gate.bias, config["gate_bias"])
        target = self.backbone.layernorm if layer is None else self.layers[layer]
        target.register_forward_hook(self._fuse)

    def condition(self, meta):
        return {"m": self.proj(self.meta_embed(meta))}

    def _fuse(self, module, args, out):
        if self._state is None:
            return None
        h = out[0] if isinstance(out, tuple) else out
        m = self._state["m"]
        if self.config["gate"] == "scalar":
            g = self.gate_alpha
        else:
            g = torch.sigmoid(self.gate(torch.cat([(h[:, 0] + h[:, 1]) / 2, m], dim=-1)))
        h = h + (g * m).unsqueeze(1)
        return (h, *out[1:]) if isinstance(out, tuple) else h


class FiLMAST(ConditionedAST):
    """FiLM on the MLP input (output of ``layernorm_after``) of the blocks in `film_layers`."""

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        self.film_layers = _resolve_layers(config["film_layers"], len(self.layers), "film_layers")
        if config["film_layers"] is not None:
            config["film_layers"] = list(self.film_layers)
        check_int("film_hidden", config["film_hidden"])
        self._build_generators(config)
        for j, i in enumerate(self.film_layers):
            self.layers[i].layernorm_after.register_forward_hook(
                functools.partial(self._modulate, j))

    def _build_generators(self, config: dict[str, Any]) -> None:
        self.meta_embed = MetadataEmbedding(self.meta_spec, config)
        self.generator = self._generator(config, config["meta_dim"])

    def _generator(self, config: dict[str, Any], in_dim: int) -> FiLMGenerator:
        return FiLMGenerator(in_dim, config["film_hidden"], len(self.film_layers),
                             self.embed_dim, config["meta_dropout"])

    def condition(self, meta):
        dgamma, beta = self.generator(self.meta_embed(meta))
        return {"gamma": 1.0 + dgamma, "beta": beta}

    def _modulate(self, j: int, module, args, out):
        if self._state is None:
            return None
        s = self._state
        return out * s["gamma"][:, j].unsqueeze(1) + s["beta"][:, j].unsqueeze(1)


class TAFiLMAST(FiLMAST):
    """Token-aware FiLM: CLS/distillation tokens and patch tokens get their own (gamma, beta)."""

    def _build_generators(self, config: dict[str, Any]) -> None:
        self.meta_embed = MetadataEmbedding(self.meta_spec, config)
        self.generator_cls = self._generator(config, config["meta_dim"])
        self.generator_patch = self._generator(config, config["meta_dim"])

    def condition(self, meta):
        z = self.meta_embed(meta)
        dg_c, b_c = self.generator_cls(z)
        dg_p, b_p = self.generator_patch(z)
        return {"gamma_cls": 1.0 + dg_c, "beta_cls": b_c, "gamma": 1.0 + dg_p, "beta": b_p}

    def _modulate(self, j: int, module, args, out):
        if self._state is None:
            return None
        s = self._state
        special = out[:, :2] * s["gamma_cls"][:, j].unsqueeze(1) + s["beta_cls"][:, j].unsqueeze(1)
        patches = out[:, 2:] * s["gamma"][:, j].unsqueeze(1) + s["beta"][:, j].unsqueeze(1)
        return torch.cat([special, patches], dim=1)


class SoftFiLMAST(FiLMAST):
    """Soft-factorised FiLM: per-factor modulations confined by learned soft masks.

    dgamma = sum_f mask_f * dgamma_f (same for beta), mask_f = sigmoid(m_f / tau) over the
    D hidden dimensions (shared by all conditioned blocks). Regulariser (``"reg_loss"``):
    overlap_weight * mean over factor pairs of mean_d(mask_f * mask_g)
    + coverage_weight * mean_d prod_f (1 - mask_f)   (dimensions no factor covers).
    """

    def _build_generators(self, config: dict[str, Any]) -> None:
        for key in ("tau_start", "tau_end"):
            config[key] = check_float(key, config[key], 1e-3, 100.0)
        for key in ("mask_init_scale", "overlap_weight", "coverage_weight"):
            config[key] = check_float(key, config[key], 0.0, 1e6)
        # a factor none of whose fields is in the metadata list has no mask (seed 001:
        # demographics = age, BMI, duration, without sex)
        self.factors = tuple(f for f, parts in FACTORS.items() if _has_fields(
            self.meta_spec, parts))
        if not self.factors:
            raise ConfigError("softfilm: the metadata field list leaves no factor")
        self.factor_embed = nn.ModuleDict(
            {f: MetadataEmbedding(self.meta_spec, config, FACTORS[f]) for f in self.factors})
        self.factor_generator = nn.ModuleDict(
            {f: self._generator(config, config["meta_dim"]) for f in self.factors})
        if config["mask_init"] not in MASK_INITS:
            raise ConfigError(f"mask_init must be one of {MASK_INITS}, "
                              f"got {config['mask_init']!r}")
        self.mask_logits = nn.Parameter(mask_init_logits(
            len(self.factors), self.embed_dim, config["mask_init_scale"], config["mask_init"]))
        # Persistent, so a checkpoint taken mid-training evaluates with its own tau.
        self.register_buffer("tau", torch.tensor(float(config["tau_start"])))

    def set_progress(self, p: float) -> None:
        """Cosine-anneal tau from tau_start (p=0) to tau_end (p=1)."""
        p = min(max(float(p), 0.0), 1.0)
        a, b = self.config["tau_start"], self.config["tau_end"]
        self.tau.fill_(b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * p)))

    def masks(self) -> torch.Tensor:
        """Soft masks (n_factors, D) in [0, 1]."""
        return torch.sigmoid(self.mask_logits / self.tau)

    def condition(self, meta):
        masks = self.masks()
        dgamma = beta = 0.0
        for k, f in enumerate(self.factors):
            dg_f, b_f = self.factor_generator[f](self.factor_embed[f](meta))
            dgamma = dgamma + masks[k] * dg_f
            beta = beta + masks[k] * b_f
        return {"gamma": 1.0 + dgamma, "beta": beta, "masks": masks}

    def regularizer(self, state):
        m = state["masks"]
        pairs = list(itertools.combinations(range(len(self.factors)), 2))
        # one factor (a metadata list with a single factor's fields) has no pair
        overlap = (torch.stack([(m[i] * m[j]).mean() for i, j in pairs]).mean() if pairs
                   else m.sum() * 0.0)
        coverage = torch.prod(1.0 - m, dim=0).mean()
        return self.config["overlap_weight"] * overlap + self.config["coverage_weight"] * coverage

    @torch.no_grad()
    def mask_stats(self) -> dict[str, Any]:
        """JSON-safe mask analysis: per-factor dims with mask > 0.5, pairwise overlaps."""
        m = self.masks().float().cpu()
        hard = m > 0.5
        pairs = list(itertools.combinations(range(len(self.factors)), 2))
        name = dict(enumerate(self.factors))
        return {
            "factors": list(self.factors),
            "tau": float(self.tau),
            "hidden": int(m.shape[1]),
            "allocated": {name[k]: int(hard[k].sum()) for k in name},
            "overlap": {f"{name[i]}-{name[j]}": float((hard[i] & hard[j]).float().mean())
                        for i, j in pairs},
            "soft_overlap": {f"{name[i]}-{name[j]}": float((m[i] * m[j]).mean())
                             for i, j in pairs},
            "uncovered": int((~hard.any(dim=0)).sum()),
            "masks": m.tolist(),
        }


_CLASSES: dict[str, type[ConditionedAST]] = {
    "grf": GRFAST, "film": FiLMAST, "tafilm": TAFiLMAST, "softfilm": SoftFiLMAST}


def _create_conditioned(kind: str, *, num_classes: int, size: str, input_tdim: int,
                        input_fdim: int, meta_spec: dict | None, **cfg: Any) -> ConditionedAST:
    """Build conditioned AST `kind`; config = AST keys + META_DEFAULTS + KIND_DEFAULTS[kind]."""
    spec = check_meta_spec(meta_spec)
    return build_ast(kind, _CLASSES[kind], num_classes=num_classes, size=size,
                     input_tdim=input_tdim, input_fdim=input_fdim, cfg=cfg,
                     extra_defaults={**META_DEFAULTS, **KIND_DEFAULTS[kind]},
                     extra_config={"meta_spec": spec})


_SIZES = ("tiny", "small", "base")
#: the AST backbone's traits (models/ast.py), plus metadata
_TRAITS = ModelTraits(family="ast", transformer=True, window="hanning", metadata=True,
                      pretrained=True)


@register_model("grf", sizes=_SIZES, traits=_TRAITS)
def grf(*, num_classes: int = 4, size: str = "base", input_tdim: int = 798,
        input_fdim: int = 128, meta_spec: dict | None = None, **cfg: Any) -> ConditionedAST:
    """AST + gated residual fusion of metadata."""
    return _create_conditioned("grf", num_classes=num_classes, size=size, input_tdim=input_tdim,
                               input_fdim=input_fdim, meta_spec=meta_spec, **cfg)


@register_model("film", sizes=_SIZES, traits=_TRAITS)
def film(*, num_classes: int = 4, size: str = "base", input_tdim: int = 798,
         input_fdim: int = 128, meta_spec: dict | None = None, **cfg: Any) -> ConditionedAST:
    """AST + per-layer FiLM from metadata."""
    return _create_conditioned("film", num_classes=num_classes, size=size,
                               input_tdim=input_tdim, input_fdim=input_fdim,
                               meta_spec=meta_spec, **cfg)


@register_model("tafilm", sizes=_SIZES, traits=_TRAITS)
def tafilm(*, num_classes: int = 4, size: str = "base", input_tdim: int = 798,
           input_fdim: int = 128, meta_spec: dict | None = None, **cfg: Any) -> ConditionedAST:
    """AST + token-aware FiLM (separate CLS/dist and patch modulation)."""
    return _create_conditioned("tafilm", num_classes=num_classes, size=size,
                               input_tdim=input_tdim, input_fdim=input_fdim,
                               meta_spec=meta_spec, **cfg)


@register_model("softfilm", sizes=_SIZES, traits=_TRAITS)
def softfilm(*, num_classes: int = 4, size: str = "base", input_tdim: int = 798,
             input_fdim: int = 128, meta_spec: dict | None = None, **cfg: Any) -> ConditionedAST:
    """AST + soft-factorised FiLM (device / site / demographics masks)."""
    return _create_conditioned("softfilm", num_classes=num_classes, size=size,
                               input_tdim=input_tdim, input_fdim=input_fdim,
                               meta_spec=meta_spec, **cfg)
