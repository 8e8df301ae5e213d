"""Small convolutional baselines: ``cnn`` (plain conv stack) and ``resnet`` (ResNet-18 style).

Both take normalised log-mel features `(B, T, F)` (frames x mel bins), treat them as
a one-channel image `(B, 1, T, F)` and end in global pooling, so they accept any
input length at least as long as their total down-sampling. Global pooling is the
mean over frequency followed by mean + max over time: crackles are short
transients that a plain mean over an 8 s window would wash out.

``output="logits"`` (default) gives class logits `(B, num_classes)`;
``output="score"`` gives one ranking score per example (``"logits"`` `(B, 1)`),
trained with the pairwise ranking losses of `rsctool.losses` (the angle-ranking seed's
use). The models take no metadata (``needs_metadata = False``; a ``meta`` argument is
accepted and ignored).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rsctool.errors import ConfigError, DataError
from rsctool.models.registry import ModelTraits, register_model

__all__ = ["ConvNet", "ResNet", "BasicBlock", "CNN_SIZES", "RESNET_SIZES"]

OUTPUTS = ("logits", "score")

#: ``cnn`` sizes: channels of the conv-BN-ReLU-pool blocks.
CNN_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"channels": [8, 16]},
    "small": {"channels": [16, 32, 64]},
    "base": {"channels": [32, 64, 128, 256]},
}
CNN_DEFAULTS: dict[str, Any] = {"dropout": 0.3, "output": "logits"}

#: ``resnet`` sizes: stage widths and BasicBlocks per stage (base = ResNet-18).
RESNET_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"widths": [8, 16], "blocks": [1, 1]},
    "small": {"widths": [32, 64, 128, 256], "blocks": [2, 2, 2, 2]},
    "base": {"widths": [64, 128, 256, 512], "blocks": [2, 2, 2, 2]},
}
RESNET_DEFAULTS: dict[str, Any] = {"dropout": 0.2, "output": "logits"}


def _resolve(model: str, sizes: dict[str, dict[str, Any]], defaults: dict[str, Any],
             size: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Size table + defaults + user config -> resolved options (ConfigError on bad keys)."""
    if size not in sizes:
        raise ConfigError(f"model {model!r}: unknown size {size!r}; known sizes: "
                          f"{', '.join(sizes)}")
    known = set(sizes[size]) | set(defaults)
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"model {model!r}: unknown config key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    return {**copy.deepcopy(defaults), **copy.deepcopy(sizes[size]), **cfg}


def _positive_int(value: Any, what: str, model: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"model {model!r}: {what} must be a positive integer, got {value!r}")
    return value


def _int_list(value: Any, what: str, model: str) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ConfigError(f"model {model!r}: {what} must be a non-empty list of positive "
                          f"integers, got {value!r}")
    return [_positive_int(v, what, model) for v in value]


def _check_common(model: str, num_classes: Any, input_tdim: Any, input_fdim: Any,
                  opts: dict[str, Any]) -> None:
    _positive_int(num_classes, "num_classes", model)
    _positive_int(input_tdim, "input_tdim", model)
    _positive_int(input_fdim, "input_fdim", model)
    if opts["output"] not in OUTPUTS:
        raise ConfigError(f"model {model!r}: output must be one of {', '.join(OUTPUTS)}, "
                          f"got {opts['output']!r}")
    d = opts["dropout"]
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
        raise ConfigError(f"model {model!r}: dropout must be in [0, 1), got {d!r}")


def _pool(h: Tensor) -> Tensor:
    """`(B, C, T, F)` feature map -> `(B, C)`: mean over F, then mean + max over T."""
    h = h.mean(dim=3)
    return h.mean(dim=2) + h.amax(dim=2)


def _check_input(model: nn.Module, x: Tensor) -> None:
    # Shape checks only in eager mode: they are constant while tracing for ONNX.
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return
    if x.ndim != 3:
        raise DataError(f"model {model.config['name']!r}: expected features (B, T, F), "
                        f"got shape {tuple(x.shape)}")
    t_min = f_min = model.min_input
    if x.shape[1] < t_min or x.shape[2] < f_min:
        raise DataError(f"model {model.config['name']!r}: input of {x.shape[1]} frames x "
                        f"{x.shape[2]} bins is smaller than the minimum {t_min} x {f_min}")


class ConvNet(nn.Module):
    """conv3x3-BN-ReLU-maxpool2 blocks, global pooling, dropout, linear head.

    Input `(B, T, F)`; output dict ``logits`` `(B, num_classes)` (or `(B, 1)` scores) and
    ``embedding`` `(B, channels[-1])`.
    """

    needs_metadata = False

    def __init__(self, *, num_classes: int, channels: Sequence[int], dropout: float,
                 output: str, config: dict[str, Any]):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c_in, 1 if output == "score" else num_classes)
        self.embed_dim = c_in
        self.min_input = 2 ** len(channels)
        self.config = config
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor, meta: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        _check_input(self, x)
        emb = _pool(self.features(x.unsqueeze(1)))
        return {"logits": self.head(self.dropout(emb)), "embedding": emb}


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with BN, identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        # Zero-initialised last BN: each block starts as the identity, which makes deep
        # stacks train as stably as shallow ones (Goyal et al. 2017).
        nn.init.zeros_(self.bn2.weight)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return self.relu(h + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-18-style network on `(B, 1, T, F)` spectrogram images.

    Stem conv7x7/2 + maxpool3x3/2, then one stage per width (first at stride 1, the
    rest at stride 2) of `blocks[i]` BasicBlocks, global pooling, dropout, linear head.
    Output dict ``logits`` `(B, num_classes)` (or `(B, 1)` scores), ``embedding``
    `(B, widths[-1])`.
    """

    needs_metadata = False

    def __init__(self, *, num_classes: int, widths: Sequence[int], blocks: Sequence[int],
                 dropout: float, output: str, config: dict[str, Any]):
        super().__init__()
        w0 = widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(1, w0, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(w0),
            nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        stages: list[nn.Module] = []
        c_in = w0
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            stride = 1 if i == 0 else 2
            layer = [BasicBlock(c_in, w, stride)] + [BasicBlock(w, w) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layer))
            c_in = w
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c_in, 1 if output == "score" else num_classes)
        self.embed_dim = c_in
        # Total down-sampling: stem 4x, then 2x per later stage.
        self.min_input = 4 * 2 ** (len(widths) - 1)
        self.config = config
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor, meta: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        _check_input(self, x)
        emb = _pool(self.stages(self.stem(x.unsqueeze(1))))
        return {"logits": self.head(self.dropout(emb)), "embedding": emb}


def _config(name: str, *, num_classes: int, size: str, input_tdim: int, input_fdim: int,
            meta_spec: dict | None, opts: dict[str, Any]) -> dict[str, Any]:
    # Resolved values (not only the user's overrides) so a checkpoint rebuilds the same
    # network even if a size table changes later.
    return {"name": name, "num_classes": num_classes, "size": size, "input_tdim": input_tdim,
            "input_fdim": input_fdim, "meta_spec": copy.deepcopy(meta_spec), **opts}


@register_model("cnn", sizes=tuple(CNN_SIZES),
                traits=ModelTraits(family="cnn", score_output=True))
def cnn(*, num_classes: int = 4, size: str = "base", input_tdim: int = 798,
        input_fdim: int = 128, meta_spec: dict | None = None, **cfg: Any) -> ConvNet:
    """Plain CNN baseline (fast on CPU).

    Config: ``channels`` (list of block widths; tiny [8, 16], small [16, 32, 64],
    base [32, 64, 128, 256]), ``dropout`` (0.3), ``output`` (``logits`` | ``score``).
    """
    opts = _resolve("cnn", CNN_SIZES, CNN_DEFAULTS, size, cfg)
    _check_common("cnn", num_classes, input_tdim, input_fdim, opts)
    opts["channels"] = _int_list(opts["channels"], "channels", "cnn")
    opts["dropout"] = float(opts["dropout"])
    need = 2 ** len(opts["channels"])
    if min(input_tdim, input_fdim) < need:
        raise ConfigError(f"model 'cnn': {len(opts['channels'])} pooling blocks need inputs of "
                          f"at least {need} x {need}, got {input_tdim} x {input_fdim}")
    config = _config("cnn", num_classes=num_classes, size=size, input_tdim=input_tdim,
                     input_fdim=input_fdim, meta_spec=meta_spec, opts=opts)
    return ConvNet(num_classes=num_classes, channels=opts["channels"], dropout=opts["dropout"],
                   output=opts["output"], config=config)


@register_model("resnet", sizes=tuple(RESNET_SIZES),
                traits=ModelTraits(family="cnn", score_output=True))
def resnet(*, num_classes: int = 4, size: str = "base", input_tdim: int = 798,
           input_fdim: int = 128, meta_spec: dict | None = None, **cfg: Any) -> ResNet:
    """ResNet-18-style network (base = ResNet-18 widths and depth).

    Config: ``widths`` (stage widths), ``blocks`` (BasicBlocks per stage, same length),
    ``dropout`` (0.2), ``output`` (``logits`` | ``score``).
    """
    opts = _resolve("resnet", RESNET_SIZES, RESNET_DEFAULTS, size, cfg)
    _check_common("resnet", num_classes, input_tdim, input_fdim, opts)
    opts["widths"] = _int_list(opts["widths"], "widths", "resnet")
    opts["blocks"] = _int_list(opts["blocks"], "blocks", "resnet")
    opts["dropout"] = float(opts["dropout"])
    if len(opts["widths"]) != len(opts["blocks"]):
        raise ConfigError(f"model 'resnet': widths {opts['widths']} and blocks {opts['blocks']} "
                          f"must have the same length")
    need = 4 * 2 ** (len(opts["widths"]) - 1)
    if min(input_tdim, input_fdim) < need:
        raise ConfigError(f"model 'resnet': {len(opts['widths'])} stages need inputs of at "
                          f"least {need} x {need}, got {input_tdim} x {input_fdim}")
    config = _config("resnet", num_classes=num_classes, size=size, input_tdim=input_tdim,
                     input_fdim=input_fdim, meta_spec=meta_spec, opts=opts)
    return ResNet(num_classes=num_classes, widths=opts["widths"], blocks=opts["blocks"],
                  dropout=opts["dropout"], output=opts["output"], config=config)
