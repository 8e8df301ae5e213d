"""Training helpers shared by test modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def crash_and_resume(monkeypatch: Any, train: Callable[..., Any], project: Any,
                     opts: dict[str, Any], crash_at: int) -> tuple[Any, Any]:
    """Train run ``straight`` without interruption; train ``crashy`` with the same
    options until a simulated crash in its `crash_at`-th training batch (SpecAugment runs
    once per batch, so `opts` must enable it), check the run is left ``running``, then
    re-run it, which resumes from its last checkpoint.

    Args:
        train: ``rsctool.train.run`` (or a partial of it), called as
            ``train(project, TrainOptions(run=NAME, **opts))``.

    Returns:
        ``(straight, resumed)`` training results.
    """
    import rsctool.data.dataset as ds
    from rsctool.train import TrainOptions

    straight = train(project, TrainOptions(run="straight", **opts))
    orig = ds.spec_augment
    calls = {"n": 0}

    def crashing(x, **kw):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise RuntimeError("simulated crash")
        return orig(x, **kw)

    monkeypatch.setattr(ds, "spec_augment", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(project, TrainOptions(run="crashy", **opts))
    assert project.get("runs", "crashy")["status"] == "running"
    monkeypatch.setattr(ds, "spec_augment", orig)
    resumed = train(project, TrainOptions(run="crashy", **opts))
    assert resumed.resumed and resumed.steps == straight.steps
    return straight, resumed
