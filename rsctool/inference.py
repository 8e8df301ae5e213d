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
    with torch.no_grad():
        for batch in loader:
            meta = ({k: v.to(device) for k, v in batch["meta"].items()}
                    if "meta" in batch else None)
            out = model(batch["x"].to(device), meta)
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
