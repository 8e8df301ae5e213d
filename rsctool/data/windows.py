"""Record-level datasets: recordings split into windows, and window predictions
aggregated back into one decision per recording.

A dataset whose project record says ``items = "records"`` (`is_record_level`; written by
`rsctool analyze` for SPRSound Tasks 2-1 and 2-2) has one manifest item per recording.
Training and evaluation do not crop such an item to the run's clip: they split it into
clip-long windows (`record_windows`, hop half a window), train on the windows, and
evaluation averages the class probabilities of a recording's windows
(`aggregate_windows`) into the recording's decision.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rsctool.data.manifest import Cycle
from rsctool.errors import ConfigError

#: The dataset record's ``items`` value of a record-level dataset.
RECORD_ITEMS = "records"
#: How window probabilities become a recording's (the metrics document's ``method``).
AGGREGATION_METHOD = "mean probability"
#: Window ids: ``<record id>@<k>``.
WINDOW_SEP = "@"

_EPS = 1e-6


def is_record_level(record: Mapping[str, Any] | None) -> bool:
    """Whether a dataset's project record describes record-level items (one per
    recording, ``items = "records"``). Records without the field (written before it
    existed, or of event/cycle-level data) are not."""
    return bool(record) and record.get("items") == RECORD_ITEMS


def default_hop(window: float) -> float:
    """The hop between windows when none is given: half a window (seconds)."""
    return window / 2.0


def window_starts(start: float, end: float, window: float, hop: float) -> list[float]:
    """Start times (seconds) of the windows of the span `start`..`end` (seconds).

    Windows are `window` seconds long and start every `hop` seconds from `start`; the
    last one ends at `end` (so it may overlap the one before it by more than
    ``window - hop``), so the whole span is covered. A span no longer than one window
    is one window starting at `start` (its length is the span's).

    Example: 0..10 s, window 4 s, hop 2 s -> ``[0, 2, 4, 6]``; 0..9 s -> ``[0, 2, 4, 5]``.

    Raises:
        ConfigError: `window` or `hop` is not positive, or `hop` is longer than `window`
            (the windows would leave gaps).
    """
    if not (math.isfinite(window) and window > 0):
        raise ConfigError(f"must be a positive number of seconds, got {window}",
                          field="window")
    if not (math.isfinite(hop) and 0 < hop <= window):
        raise ConfigError(f"must be positive and at most the window ({window} s), "
                          f"got {hop}", field="hop")
    if end - start <= window + _EPS:
        return [start]
    starts = []
    k = 0
    while start + k * hop + window < end - _EPS:
        starts.append(round(start + k * hop, 6))
        k += 1
    starts.append(round(end - window, 6))
    return starts


def record_windows(items: Sequence[Cycle], window: float, hop: float | None = None
                   ) -> list[Cycle]:
    """Each item split into windows of `window` seconds every `hop` seconds (default
    `default_hop`: half a window); the last window of an item ends at the item's end
    (`window_starts`). An item no longer than one window stays one window.

    Every window is a copy of its item (label, split, patient, device, metadata ...)
    with id ``<id>@<k>`` (k = 0, 1, ... in time order), its own ``start``/``end``
    (seconds in the item's audio) and ``meta["parent"] = <id>``; the windows of an item
    follow each other, in the items' order.
    """
    hop = default_hop(window) if hop is None else hop
    out: list[Cycle] = []
    for item in items:
        for k, s in enumerate(window_starts(item.start, item.end, window, hop)):
            out.append(dataclasses.replace(
                item, id=f"{item.id}{WINDOW_SEP}{k}", start=s,
                end=min(item.end, round(s + window, 6)),
                meta={**(item.meta or {}), "parent": item.id}))
    return out


def window_parents(windows: Sequence[Cycle]) -> list[str]:
    """The recording id of each window (``meta["parent"]``, else its own id)."""
    return [str((w.meta or {}).get("parent", w.id)) for w in windows]


def aggregate_windows(parents: Sequence[str], probs: Any
                      ) -> tuple[list[str], np.ndarray]:
    """One probability row per recording: the mean of its windows' rows.

    Args:
        parents: the recording id of each window (`window_parents`), `N` entries.
        probs: `(N, C)` class probabilities of the windows.

    Returns:
        ``(record_ids, mean_probs)``: the recordings in order of their first window, and
        their `(R, C)` mean probabilities (float64); the decision is the argmax of a row.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) != len(parents):
        raise ValueError(f"probs must be (N, C) with N = {len(parents)} windows, got "
                         f"shape {p.shape}")
    index: dict[str, int] = {}
    rows = np.array([index.setdefault(pid, len(index)) for pid in parents], dtype=np.int64)
    sums = np.zeros((len(index), p.shape[1]), dtype=np.float64)
    np.add.at(sums, rows, p)
    counts = np.bincount(rows, minlength=len(index)).astype(np.float64)
    return list(index), sums / counts[:, None]
