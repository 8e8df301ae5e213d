"""Classifier heads on the pooled AST embedding (B, D) -> logits (B, num_classes).

``linear``  LayerNorm -> Linear (the AST paper's head; rsctool's default).
``mcat``    LayerNorm -> Dropout(p) -> Linear(D, hidden) -> ReLU -> Dropout(p) ->
            Linear(hidden, num_classes): the classifier of seed 001's public code
            (``self.classifier`` of every MCAT model, ``hidden`` 64, ``p`` its model
            ``dropout`` 0.4).

`build_head` returns ``(norm, head)`` so that the linear head keeps its state-dict
names (``head_norm``, ``head``) and old checkpoints load unchanged; the MCAT head
puts its LayerNorm inside ``head`` and ``norm`` is an identity.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from rsctool.errors import ConfigError

HEADS: tuple[str, ...] = ("linear", "mcat")
#: Config keys of the heads, with defaults (added to every AST model's keys).
HEAD_DEFAULTS: dict[str, Any] = {
    "head": "linear",          # linear | mcat (see rsctool.models.heads)
    "head_hidden": 64,         # mcat head: hidden width
    "head_dropout": 0.4,       # mcat head: dropout before each Linear
}


def build_head(config: dict[str, Any], d: int, num_classes: int, eps: float = 1e-12
               ) -> tuple[nn.Module, nn.Module]:
    """(norm, head) for `config["head"]`; validates the head keys (ConfigError)."""
    kind = config.get("head", "linear")
    if kind not in HEADS:
        raise ConfigError(f"head must be one of {HEADS}, got {kind!r}")
    if kind == "linear":
        return nn.LayerNorm(d, eps=eps), nn.Linear(d, num_classes)
    hidden, p = config.get("head_hidden", 64), config.get("head_dropout", 0.4)
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ConfigError(f"head_hidden must be an integer >= 1, got {hidden!r}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ConfigError(f"head_dropout must be a number in [0, 1), got {p!r}")
    head = nn.Sequential(nn.LayerNorm(d, eps=eps), nn.Dropout(float(p)), nn.Linear(d, hidden),
                         nn.ReLU(), nn.Dropout(float(p)), nn.Linear(hidden, num_classes))
    return nn.Identity(), head
