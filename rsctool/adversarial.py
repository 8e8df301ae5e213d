"""Adversarial fine-tuning on real + synthetic cycles (seed 002, DANN-style).

A discriminator head reads the classifier's embedding through a gradient-reversal layer
and learns to tell real cycles (domain 0) from synthetic ones (domain 1). Its loss is
added to the task loss; going back through the reversal the encoder receives the
negated, ``lambda``-scaled gradient of that loss, i.e. it is pushed to make embeddings
on which the discriminator fails, so the classifier cannot lean on synthesis artefacts::

    L = L_task(model(x), y) + w * CE(D(GRL_lambda(embedding)), domain)

The defaults are those of seed 002's public code (kaen2891/adversarial_fine-tuning_using_
generated_respiratory_sound): a LayerNorm + Linear discriminator on the embedding, the
domain loss weighted by ``w = 0.2`` (``adv_loss_weight``; its ``--alpha``) and the
reversal coefficient ``lambda(p) = 2 / (1 + exp(-10 p)) - 1`` (the DANN schedule) of
training progress `p` in [0, 1], scaled by `--adv-weight` (default 1). The
discriminator learns from ``w * CE``; the encoder receives ``-lambda * w`` times its
gradient. (The public code computes `p` as ``(step_in_epoch + epoch * steps) / epochs +
1 / steps``, which is above 1 from the first step, so its lambda is ~1 throughout;
rsctool uses the training progress, as in DANN.) ``adv_schedule="constant"`` keeps
``lambda = --adv-weight``; ``adv_hidden=H`` adds a hidden layer (Linear(D, H), ReLU,
Dropout) before the output.

The model is not wrapped: its state dict, `eval`, `export` and `predict` are unchanged.
`AdversarialObjective` is a separate module the trainer adds to its optimizer and
stores in the checkpoint's ``extra.adversary.*`` tensors; per epoch it reports the
discriminator's accuracy on the training batches (``disc_accuracy``; near the share
of the majority domain, or 0.5 balanced, means the embedding no longer separates them).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsctool.errors import ConfigError
from rsctool.losses import GradientReversal, grl_coefficient

SCHEDULES: tuple[str, ...] = ("constant", "dann")


def embedding_dim(model: nn.Module) -> int:
    """Width D of ``model(x)["embedding"]`` `(B, D)`.

    Read from the model's ``embed_dim`` attribute (AST family, ADD) or from its
    classification head's input (CNNs: ``head = Linear(D, C)``).

    Raises:
        ConfigError: the model exposes neither.
    """
    dim = getattr(model, "embed_dim", None)
    if isinstance(dim, int) and dim > 0:
        return dim
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return int(head.in_features)
    raise ConfigError(f"{{field}}: model {type(model).__name__} exposes no embedding width "
                      "(an `embed_dim` attribute or a Linear `head`)", field="adversarial")


class AdversarialObjective(nn.Module):
    """Real-vs-synthetic discriminator with gradient reversal, as a loss term.

    ``forward(outputs, domain, progress)`` returns the domain cross-entropy (a scalar to
    add to the task loss, already multiplied by `loss_weight`). Architecture: GRL ->
    LayerNorm(D) -> Linear(D, 2) (seed 002's public code; ``hidden=H``: LayerNorm(D) ->
    Linear(D, H) -> ReLU -> Dropout -> Linear(H, 2)).

    Args:
        embed_dim: D.
        weight: lambda's scale: the reversed gradient's scale into the encoder (times
            the DANN ramp with ``schedule="dann"``).
        hidden: H (0 for none).
        schedule: ``constant`` or ``dann`` (lambda ramped with training progress).
        dropout: dropout before the last layer (with a hidden layer).
        loss_weight: w, the domain loss's weight in the total loss (0.2 in seed 002's
            code).
    """

    def __init__(self, embed_dim: int, *, weight: float = 1.0, hidden: int = 0,
                 schedule: str = "dann", dropout: float = 0.1, loss_weight: float = 0.2):
        super().__init__()
        if schedule not in SCHEDULES:
            raise ConfigError(f"must be one of {', '.join(SCHEDULES)}, got {schedule!r}",
                              field="adv_schedule")
        if not weight >= 0:
            raise ConfigError(f"must be >= 0, got {weight}", field="adv_weight")
        if not loss_weight >= 0:
            raise ConfigError(f"must be >= 0, got {loss_weight}", field="adv_loss_weight")
        self.weight = float(weight)
        self.loss_weight = float(loss_weight)
        self.schedule = schedule
        self.reverse = GradientReversal(self.weight)
        layers: list[nn.Module] = [nn.LayerNorm(embed_dim)]
        if hidden > 0:
            layers += [nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                       nn.Linear(hidden, 2)]
        else:
            layers += [nn.Linear(embed_dim, 2)]
        self.head = nn.Sequential(*layers)
        self.reset_stats()

    @classmethod
    def for_model(cls, model: nn.Module, **kwargs: Any) -> AdversarialObjective:
        return cls(embedding_dim(model), **kwargs)

    def coefficient(self, progress: float) -> float:
        """lambda at training progress `progress` in [0, 1]."""
        if self.schedule == "dann":
            return self.weight * grl_coefficient(progress)
        return self.weight

    def logits(self, embedding: Tensor, progress: float = 1.0) -> Tensor:
        """`(B, D)` embedding -> `(B, 2)` domain logits (reversal applied)."""
        self.reverse.coeff = self.coefficient(progress)
        return self.head(self.reverse(embedding.float()))

    def forward(self, outputs: dict[str, Tensor] | Tensor, domain: Tensor,
                progress: float = 1.0) -> Tensor:
        emb = outputs["embedding"] if isinstance(outputs, dict) else outputs
        if emb.dim() != 2:
            raise ConfigError(f"{{field}}: embedding must be (B, D), got {tuple(emb.shape)}",
                              field="adversarial")
        domain = domain.to(emb.device).long()
        logits = self.logits(emb, progress)
        loss = F.cross_entropy(logits, domain)
        weighted = loss * self.loss_weight
        with torch.no_grad():
            pred = logits.argmax(-1)
            for d in (0, 1):
                mask = domain == d
                self._seen[d] += int(mask.sum())
                self._right[d] += int((pred[mask] == d).sum())
            self._loss += float(loss.detach()) * len(domain)
        return weighted

    def reset_stats(self) -> None:
        self._seen = [0, 0]
        self._right = [0, 0]
        self._loss = 0.0

    def epoch_stats(self) -> dict[str, float | None]:
        """Discriminator statistics since the last call (then reset).

        ``disc_accuracy`` over all training items, ``disc_balanced_accuracy`` (mean of
        the real and synthetic recalls; None unless both domains were seen), and
        ``disc_loss`` (mean domain cross-entropy).
        """
        n = sum(self._seen)
        recalls = [self._right[d] / self._seen[d] for d in (0, 1) if self._seen[d]]
        out = {
            "disc_accuracy": sum(self._right) / n if n else None,
            "disc_balanced_accuracy": sum(recalls) / 2 if len(recalls) == 2 else None,
            "disc_loss": self._loss / n if n else None,
        }
        self.reset_stats()
        return out
