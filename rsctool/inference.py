"""Batched prediction shared by the stages: a model's class predictions, probabilities and
embeddings over a whole dataset (`predict`: eval, and training's validation), and class
indices from probabilities (`predictions`)."""

from __future__ import annotations

from typing import Any


def predict(model: Any, dataset: Any, batch_size: int, device: str, task: str,
            thresholds: list[float] | None = None, embeddings: bool = False
            ) -> dict[str, Any]:
    """Predictions on a whole dataset: ``pred`` class indices, ``probs`` `(N, C)`
    (multilabel: `(N, 2)` sigmoid probabilities; ranking: `(N, 1)` scores, classes
    from the score `thresholds`), optional ``embedding`` `(N, D)`."""
    import torch

    from rsctool.data.dataset import collate

    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         collate_fn=collate, generator=loader_generator(0))
    probs, embs = [], []
    call = call_size(model, device)
    with torch.no_grad():
        for batch in loader:
            meta = ({k: v.to(device) for k, v in batch["meta"].items()}
                    if "meta" in batch else None)
            out = forward_in_calls(model, batch["x"].to(device), meta, call)
            logits = out["logits"].float()
            if task == "ranking":  # one score per example, kept as is
                probs.append(logits[:, :1].cpu())
            else:
                probs.append((torch.sigmoid(logits) if task == "multilabel"
                              else torch.softmax(logits, -1)).cpu())
            if embeddings:
                embs.append(out["embedding"].float().cpu())
    p = torch.cat(probs) if probs else torch.zeros(0, 2 if task == "multilabel" else 1)
    res = {"pred": predictions(p, task, thresholds), "probs": p}
    if embeddings:
        res["embedding"] = torch.cat(embs) if embs else torch.zeros(0)
    return res


def call_size(model: Any, device: str) -> int | None:
    """Examples per model call: on the CPU a model whose AST blocks run the fused bf16
    path is fastest per clip at `FUSED_CPU_BATCH` (rsctool.models.ast_backbone); None:
    the whole batch at once."""
    from rsctool.models.ast_backbone import FUSED_CPU_BATCH, Layer

    fused = any(isinstance(m, Layer) and m.packed is not None for m in model.modules())
    return FUSED_CPU_BATCH if fused and not device.startswith("cuda") else None


def forward_in_calls(model: Any, x: Any, meta: dict[str, Any] | None, call: int | None
                     ) -> dict[str, Any]:
    """`model(x, meta)` for a batch `x` (B, ...), run `call` examples at a time (None: all
    at once); the per-example outputs (B, ...) concatenated along the batch. Outputs of a
    whole call (a regulariser's scalar) are left out when there are several calls."""
    import torch

    if call is None or len(x) <= call:
        return model(x, meta)
    outs, sizes = [], []
    for i in range(0, len(x), call):
        part = None if meta is None else {k: v[i:i + call] for k, v in meta.items()}
        outs.append(model(x[i:i + call], part))
        sizes.append(len(x[i:i + call]))
    return {k: torch.cat([o[k] for o in outs]) for k in outs[0]
            if all(o[k].dim() > 0 and len(o[k]) == n for o, n in zip(outs, sizes, strict=True))}


def predictions(probs: Any, task: str, thresholds: list[float] | None = None) -> list[int]:
    """Class indices from probabilities `(N, C)` (multilabel: `(N, 2)` sigmoid outputs
    and their `thresholds`, default 0.5 each; ranking: `(N, 1)` scores and the class
    boundaries `thresholds`)."""
    if task == "ranking":  # (N, 1) scores -> classes between the score thresholds
        from rsctool.metrics import scores_to_classes

        return scores_to_classes(probs[:, 0].numpy(), thresholds or []).tolist()
    if task == "multilabel":
        from rsctool.metrics import multilabel_to_class

        t = thresholds or [0.5, 0.5]
        pred = multilabel_to_class((probs[:, 0] >= t[0]).numpy(),
                                   (probs[:, 1] >= t[1]).numpy())
        return [int(v) for v in pred]
    return probs.argmax(-1).tolist()


def loader_generator(seed: int, epoch: int = 0) -> Any:
    """A DataLoader's own generator: without one, creating the loader draws its worker
    base seed from the global RNG, and a resumed run (which creates one more loader
    mid-epoch) would drift from the uninterrupted one."""
    import torch

    return torch.Generator().manual_seed(int(seed) * 7919 + int(epoch))
