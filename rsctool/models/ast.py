"""Audio Spectrogram Transformer (AST, Gong et al. 2021) classifiers.

The backbone (`rsctool.models.ast_backbone`) is transformers' `ASTModel` rewritten in
plain PyTorch with the same parameter names (patch embedding with overlapping 16x16
patches, CLS + distillation tokens, pre-norm ViT blocks): building it does not import
transformers (2.3 s), and it has a fused bf16 inference path. The head is the original
AST's: LayerNorm + Linear on the mean of the CLS and distillation tokens. We run the
backbone's blocks in our own loop so that stochastic depth can be applied and the
metadata-conditioned variants in `conditioning.py` can hook into the blocks: their state
dicts stay key-compatible with this one.

Pretrained weights (`pretrained=HUB_ID|DIR`) are read with `ASTModel.from_pretrained`;
when the checkpoint was trained on another input size (AudioSet AST: 1024 frames x 128
mel bins), the patch position embeddings are resized to the new patch grid, and the
load is checked key by key: a checkpoint that lacks any backbone weight is refused,
because a silently random position embedding is exactly the failure this guards against.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rsctool.errors import ConfigError
from rsctool.models.ast_backbone import (
    ATTENTION,
    ASTBackbone,
    Attention,
    BackboneConfig,
    patch_grid,
    rename_legacy,
)
from rsctool.models.heads import HEAD_DEFAULTS, build_head
from rsctool.models.registry import ModelTraits, register_model

# transformers is imported only where pretrained weights are read: it takes seconds.

log = logging.getLogger(__name__)

PATCH_SIZE = 16
#: Size table: the transformer's width, depth, heads and MLP width.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64},
    "small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
              "intermediate_size": 1536},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072},
}
#: `pretrained` default per size (others: random initialisation).
DEFAULT_PRETRAINED: dict[str, str] = {"base": "MIT/ast-finetuned-audioset-10-10-0.4593"}
#: Config keys of every AST model, with defaults.
AST_DEFAULTS: dict[str, Any] = {
    "pretrained": None,        # hub id or local directory; None / "none": random init
    "fstride": 10,             # patch stride along frequency (bins)
    "tstride": 10,             # patch stride along time (frames)
    "dropout": 0.0,            # hidden-state dropout in every block
    "attn_dropout": 0.0,       # attention-probability dropout
    "drop_path": 0.0,          # stochastic depth rate of the last block (linear in depth)
    # position-embedding resize: interpolate (bilinear) | crop (centre crop of an axis that
    # shrinks, as the ICBHI AST papers' public code does; set in the AST recipes)
    "pos_resize": "interpolate",
    "attention": "sdpa",       # sdpa (fused kernels) | eager (what ONNX export uses)
    **HEAD_DEFAULTS,           # head: linear | mcat (rsctool.models.heads)
}
POS_RESIZE = ("interpolate", "crop")


# -- config validation (shared with conditioning.py) ---------------------------------

def check_int(key: str, value: Any, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{key} must be an integer >= {lo}, got {value!r}")
    return value


def check_float(key: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ConfigError(f"{key} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def resolve_config(name: str, *, num_classes: int, size: str, input_tdim: int,
                   input_fdim: int, cfg: dict[str, Any],
                   extra_defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge defaults and `cfg` into a validated, JSON-safe model config.

    Raises:
        ConfigError: unknown size or key, or a value out of its domain.
    """
    if size not in SIZES:
        raise ConfigError(f"model {name!r}: unknown size {size!r}; known: {list(SIZES)}")
    defaults = {**AST_DEFAULTS, **(extra_defaults or {})}
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise ConfigError(f"model {name!r}: unknown config key(s) {unknown}; "
                          f"known: {sorted(defaults)}")
    config = {"name": name, "num_classes": num_classes, "size": size,
              "input_tdim": input_tdim, "input_fdim": input_fdim, **defaults, **cfg}
    if "pretrained" not in cfg:
        config["pretrained"] = DEFAULT_PRETRAINED.get(size)
    pre = config["pretrained"]
    if pre is not None and not isinstance(pre, (str, os.PathLike)):
        raise ConfigError(f"pretrained must be a hub id, a directory or 'none', got {pre!r}")
    pre = None if pre is None or str(pre).strip().lower() in ("", "none") else os.fspath(pre)
    config["pretrained"] = pre
    check_int("num_classes", num_classes)
    check_int("input_tdim", input_tdim, PATCH_SIZE)
    check_int("input_fdim", input_fdim, PATCH_SIZE)
    check_int("fstride", config["fstride"])
    check_int("tstride", config["tstride"])
    for key in ("dropout", "attn_dropout", "drop_path"):
        config[key] = check_float(key, config[key], 0.0, 0.99)
    if config["attention"] not in ATTENTION:
        raise ConfigError(f"attention must be one of {ATTENTION}, got {config['attention']!r}")
    if config["pos_resize"] not in POS_RESIZE:
        raise ConfigError(f"pos_resize must be one of {POS_RESIZE}, got {config['pos_resize']!r}")
    return config


def backbone_config(config: dict[str, Any]) -> BackboneConfig:
    """The backbone sizes for a resolved model config.

    Attention defaults to PyTorch's fused scaled-dot-product kernels: 2.3-2.6x faster
    AST-base training steps than the eager softmax(QK^T)V on an H100 (bf16, batch 16,
    798 frames; docs/benchmarks.md), same function. Export switches to eager
    (`set_attention`), the faster graph in onnxruntime.
    """
    return BackboneConfig(**SIZES[config["size"]], patch_size=PATCH_SIZE,
                          frequency_stride=config["fstride"], time_stride=config["tstride"],
                          max_length=config["input_tdim"], num_mel_bins=config["input_fdim"],
                          hidden_dropout_prob=config["dropout"],
                          attention_probs_dropout_prob=config["attn_dropout"],
                          attention=config.get("attention", "sdpa"))


def set_attention(model: nn.Module, implementation: str) -> nn.Module:
    """Switch every AST block inside `model` to ``sdpa`` or ``eager`` attention in place
    (weights untouched); returns `model`."""
    if implementation not in ATTENTION:
        raise ConfigError(f"attention must be one of {ATTENTION}, got {implementation!r}")
    for m in model.modules():
        if isinstance(m, Attention):
            m.implementation = implementation
        elif isinstance(m, ASTBackbone):
            m.config.attention = implementation
    return model


# -- the model ------------------------------------------------------------------------

class ASTClassifier(nn.Module):
    """AST backbone + a head (`config["head"]`: LayerNorm/Linear, or MCAT's MLP; heads.py).

    `forward(x (B, T, F), meta=None)` -> ``{"logits": (B, num_classes), "embedding": (B, D)}``
    where T = input_tdim frames (10 ms), F = input_fdim mel bins and the embedding is the
    mean of the final CLS and distillation tokens. `meta` is ignored.
    """

    needs_metadata = False

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = config
        self.ast_config = backbone_config(config)
        self.backbone = ASTBackbone(self.ast_config)
        d = self.ast_config.hidden_size
        self.embed_dim = d
        self.num_classes = config["num_classes"]
        self.head_norm, self.head = build_head(config, d, self.num_classes,
                                               self.ast_config.layer_norm_eps)
        self.load_report: dict[str, Any] | None = None
        n = len(self.layers)
        self._drop_rates = [config["drop_path"] * i / max(n - 1, 1) for i in range(n)]
        # HF initialises position embeddings and CLS/dist tokens to zero (they are
        # always overwritten by a checkpoint there); trained from scratch, ViT's small
        # random init gives the tokens distinct positions from the first step.
        emb = self.backbone.embeddings
        for p in (emb.position_embeddings, emb.cls_token, emb.distillation_token):
            nn.init.trunc_normal_(p, std=0.02)

    @property
    def layers(self) -> nn.ModuleList:
        return self.backbone.layers

    def encode(self, x: torch.Tensor, first: int | None = None) -> torch.Tensor:
        """Final normalised token sequence (B, 2 + patches, D) for input (B, T, F), or
        only its first `first` tokens (B, first, D).

        With `first`, the last block takes only those tokens as queries (every token
        stays a key and value) and runs its MLP on them: the same values for those
        tokens, for 1/12 less work in AST base (the other tokens' last-block outputs are
        what the head never reads). The conditioning hooks (conditioning.py) act token by
        token or read the CLS/distillation tokens, so they give the same values too;
        `tests/test_ast_backbone.py` checks every registered AST-family model.
        """
        want = (self.config["input_tdim"], self.config["input_fdim"])
        if not torch.jit.is_tracing() and (x.dim() != 3 or tuple(x.shape[1:]) != want):
            raise ConfigError(f"model {self.config['name']!r} expects features (B, {want[0]} "
                              f"frames, {want[1]} mel bins), got {tuple(x.shape)}")
        h = self.backbone.embeddings(x)
        last = len(self.layers) - 1
        for i, (layer, rate) in enumerate(zip(self.layers, self._drop_rates, strict=True)):
            queries = first if i == last else None
            out = layer(h, queries)
            if self.training and rate > 0:
                # Stochastic depth on the whole pre-norm block (both residual branches).
                keep = (torch.rand(h.shape[0], 1, 1, device=h.device) >= rate).to(h.dtype)
                h = h if queries is None else h[:, :queries]
                out = h + (out - h) * keep / (1.0 - rate)
            h = out
        return self.backbone.layernorm(h)

    def forward(self, x: torch.Tensor, meta: dict[str, torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor]:
        tokens = self.encode(x, first=2)  # the head reads the CLS and distillation tokens
        pooled = (tokens[:, 0] + tokens[:, 1]) / 2
        return {"logits": self.head(self.head_norm(pooled)), "embedding": pooled}


# -- pretrained weights -----------------------------------------------------------------

def resize_pos_embed(pos: torch.Tensor, src: tuple[int, int], dst: tuple[int, int],
                     mode: str = "interpolate") -> torch.Tensor:
    """Resize AST position embeddings (1, 2 + f*t, D) from patch grid `src` to `dst`.

    The first two rows (CLS, distillation) are kept as they are. Patch rows are laid
    out frequency-major (row = fi * t + ti, as the patch convolution flattens them).
    ``interpolate``: bilinear over both axes. ``crop``: the original AST recipe — a
    centre crop along an axis that shrinks, bilinear along one that grows.
    """
    if tuple(src) == tuple(dst):
        return pos
    d = pos.shape[-1]
    special = pos[:, :2]
    grid = pos[:, 2:].float().reshape(1, src[0], src[1], d).permute(0, 3, 1, 2)
    if mode == "crop":
        # the public AST code's offsets: src // 2 - dst // 2 (AudioSet 101 time patches
        # -> 79 for 798 frames keeps patches 11..89); one more than (src - dst) // 2 when
        # src is even and dst odd
        f0 = src[0] // 2 - dst[0] // 2 if dst[0] < src[0] else 0
        t0 = src[1] // 2 - dst[1] // 2 if dst[1] < src[1] else 0
        grid = grid[:, :, f0:f0 + min(src[0], dst[0]), t0:t0 + min(src[1], dst[1])]
    if tuple(grid.shape[-2:]) != tuple(dst):
        grid = F.interpolate(grid, size=tuple(dst), mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, dst[0] * dst[1], d).to(pos.dtype)
    return torch.cat([special, grid], dim=1)


def _is_local(source: str) -> bool:
    p = Path(source).expanduser()
    return p.exists() or source.startswith(("/", ".", "~")) or "\\" in source \
        or source.count("/") > 1


#: What works without the hub, appended to every load failure of a hub id.
_OFFLINE_HINT = ("; without the hub give {field} none (random initialisation) or "
                 "{field} DIR (a folder written by save_pretrained, e.g. copied from a "
                 "machine with access)")


def load_pretrained(model: ASTClassifier, source: str) -> dict[str, Any]:
    """Load AST backbone weights from a hub id or a `save_pretrained` directory.

    Returns the load report: ``source``, ``loaded`` and ``missing`` (model state keys
    that were / were not set from the checkpoint; missing are the head and any
    conditioning modules), ``unused`` (checkpoint keys without a place, e.g. the
    AudioSet classifier) and ``pos_embed`` (source and target patch grids, resize mode).

    Raises:
        ConfigError: the source cannot be read (offline and not cached, no such
            directory), has another architecture, or lacks backbone weights.
    """
    if _is_local(source) and not Path(source).expanduser().is_dir():
        raise ConfigError(f"{{field}}: pretrained AST directory {source!r} not found",
                          field="pretrained")
    local_only = False
    if not _is_local(source):
        from rsctool.hub import plan_load

        # asked first: an uncached id offline would otherwise retry for ~30 s, a line a try
        local_only, why = plan_load(source, "config.json")
        if why is not None:
            raise ConfigError(f"{{field}}: cannot load pretrained AST {source!r}: {why}"
                              f"{_OFFLINE_HINT}", field="pretrained")
    from transformers import ASTModel

    path = str(Path(source).expanduser()) if _is_local(source) else source
    try:
        src, info = ASTModel.from_pretrained(path, attn_implementation="eager",
                                             output_loading_info=True,
                                             local_files_only=local_only)
    except Exception as e:  # any unreadable source is bad input, reported in one line
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if _is_local(source):
            reason = detail
        elif local_only:
            reason = f"the local Hugging Face cache has it only in part ({detail})"
        else:
            reason = f"not available from the hub or the local cache ({detail})"
        hint = ("; give a directory written by save_pretrained, or {field} none for "
                "random initialisation") if _is_local(source) else _OFFLINE_HINT
        raise ConfigError(f"{{field}}: cannot load pretrained AST {source!r}: {reason}"
                          f"{hint}", field="pretrained") from None
    size = model.config["size"]
    for attr in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "patch_size"):
        have, want = getattr(src.config, attr), getattr(model.ast_config, attr)
        if have != want:
            raise ConfigError(f"pretrained AST {source!r} has {attr}={have}, size {size!r} "
                              f"needs {want}; choose the size that matches the checkpoint")
    if info["missing_keys"]:
        raise ConfigError(f"pretrained AST {source!r} lacks {len(info['missing_keys'])} backbone "
                          f"weight(s), e.g. {sorted(info['missing_keys'])[:3]}; refusing a "
                          f"partly random backbone")
    state = {rename_legacy(k): v for k, v in src.state_dict().items()}  # 4.x names
    key = "embeddings.position_embeddings"
    src_grid, dst_grid = patch_grid(src.config), patch_grid(model.ast_config)
    state[key] = resize_pos_embed(state[key], src_grid, dst_grid, model.config["pos_resize"])
    result = model.backbone.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ConfigError(f"pretrained AST {source!r}: backbone weight(s) not in the checkpoint: "
                          f"{sorted(result.missing_keys)[:3]}")
    loaded = sorted(f"backbone.{k}" for k in state if k not in set(result.unexpected_keys))
    report = {
        "source": source,
        "loaded": loaded,
        "missing": sorted(set(model.state_dict()) - set(loaded)),
        "unused": sorted(set(info["unexpected_keys"]) | set(result.unexpected_keys)),
        "pos_embed": {"from": list(src_grid), "to": list(dst_grid),
                      "mode": "copy" if src_grid == dst_grid else model.config["pos_resize"]},
    }
    log.info("loaded %d pretrained AST tensors from %s (position grid %s -> %s); "
             "newly initialised: %s", len(loaded), source, src_grid, dst_grid, report["missing"])
    return report


def build_ast(name: str, model_cls: type[ASTClassifier] = ASTClassifier, *,
              num_classes: int, size: str, input_tdim: int, input_fdim: int,
              cfg: dict[str, Any], extra_defaults: dict[str, Any] | None = None,
              extra_config: dict[str, Any] | None = None) -> ASTClassifier:
    """Resolve the config, build `model_cls` and load pretrained weights if asked."""
    config = resolve_config(name, num_classes=num_classes, size=size, input_tdim=input_tdim,
                            input_fdim=input_fdim, cfg=cfg, extra_defaults=extra_defaults)
    config.update(extra_config or {})
    model = model_cls(config)
    if config["pretrained"]:
        model.load_report = load_pretrained(model, config["pretrained"])
    return model


def _create_ast(name: str, *, num_classes: int, size: str, input_tdim: int, input_fdim: int,
                meta_spec: dict | None = None, **cfg: Any) -> ASTClassifier:
    # meta_spec is part of every builder's signature; plain AST has no use for it.
    return build_ast(name, ASTClassifier, num_classes=num_classes, size=size,
                     input_tdim=input_tdim, input_fdim=input_fdim, cfg=cfg)


#: AudioSet AST: Hanning-window fbanks (the checkpoints' setting), paper lr / warm-up
@register_model("ast", sizes=tuple(SIZES),
                traits=ModelTraits(family="ast", transformer=True, window="hanning",
                                   pretrained=True))
def ast(*, num_classes: int = 4, size: str = "base", input_tdim: int = 798,
        input_fdim: int = 128, meta_spec: dict | None = None, **cfg: Any) -> ASTClassifier:
    """Plain AST; base defaults to the AudioSet checkpoint. Keys: see `AST_DEFAULTS`."""
    return _create_ast("ast", num_classes=num_classes, size=size, input_tdim=input_tdim,
                       input_fdim=input_fdim, meta_spec=meta_spec, **cfg)
