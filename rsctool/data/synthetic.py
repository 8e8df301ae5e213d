"""The training mix: which synthetic cycles (sets made by `rsctool synth`) join a training
run's train split (`mix_synthetic`, used by `rsctool train`), selected reproducibly by
`select_synthetic`."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rsctool.data.manifest import Cycle
from rsctool.errors import ConfigError, DataError
from rsctool.utils import atomic_write_text

if TYPE_CHECKING:
    from rsctool.project import Project


def load_synthetic(project: Project, names: Sequence[str]) -> list[Cycle]:
    """The cycles of finished synthetic sets `names` (manifests verified by sha256).

    Raises:
        ConfigError: an unknown or unfinished set.
        DataError: a missing or changed manifest, or a record that is not synthetic
            training data.
    """
    from rsctool.data.manifest import file_sha256, read_manifest

    sets = project.section("synthetic")
    out: list[Cycle] = []
    for name in names:
        rec = sets.get(name)
        if rec is None:
            known = ", ".join(sets) or "none"
            raise ConfigError(f"{name!r} is not in the project (known synthetic "
                              f"sets: {known}); make it with `rsctool synth`",
                              field="synthetic")
        if rec.get("status") != "done":
            raise ConfigError(f"{name!r} is not finished (status "
                              f"{rec.get('status')}); run `rsctool synth --name {name}` again "
                              "to complete it", field="synthetic")
        path = project.abs(rec["manifest"])
        if not path.exists():
            raise DataError("synthetic manifest is missing (re-run `rsctool synth`)", path)
        if rec.get("sha256") and file_sha256(path) != rec["sha256"]:
            raise DataError("synthetic manifest changed since synth recorded it", path)
        for c in read_manifest(path):
            if c.source != "synthetic" or c.split != "train":
                raise DataError(f"{c.id}: not a synthetic training record", path)
            out.append(c)
    ids = [c.id for c in out]
    if len(ids) != len(set(ids)):
        raise ConfigError("{field}: a set is named twice", field="synthetic")
    return out


def _rank(seed: int, cycle_id_: str) -> str:
    return hashlib.sha256(f"{seed}:{cycle_id_}".encode()).hexdigest()


def select_synthetic(synthetic: Sequence[Cycle], real_train: Sequence[Cycle],
                     classes: Sequence[str], *, ratio: float | None = None,
                     max_per_class: int | None = None, seed: int = 0) -> list[Cycle]:
    """Which synthetic cycles join the training split.

    Each class's synthetic cycles are ranked by a hash of ``(seed, id)``; a class keeps
    its first `max_per_class`. With `ratio`, at most ``floor(ratio * len(real_train))``
    synthetic cycles are used in all, shared out evenly across classes (a class with
    fewer takes what it has, the rest is split among the others). Because ranks do not
    depend on the caps, the selection for N is a prefix of the one for any larger N:
    a sweep over `max_per_class` adds cycles, never swaps them.

    Args:
        synthetic: candidate cycles (``source == "synthetic"``).
        real_train: the real training cycles (the ratio's reference).
        classes: the run's classes; a synthetic label outside them is an error.
        ratio: synthetic-to-real budget (> 0), or None for no budget.
        max_per_class: cap per class (>= 0), or None for no cap.
        seed: ranking seed.

    Returns:
        The selected cycles, by class (in `classes` order) then rank.

    Raises:
        ConfigError: a label the run does not train, a bad ratio or cap.
    """
    if ratio is not None and not ratio > 0:
        raise ConfigError(f"must be > 0, got {ratio}", field="synthetic_ratio")
    if max_per_class is not None and max_per_class < 0:
        raise ConfigError(f"must be >= 0, got {max_per_class}",
                          field="max_synthetic_per_class")
    by_class: dict[str, list[Cycle]] = {c: [] for c in classes}
    for c in synthetic:
        if c.source != "synthetic":
            raise ConfigError(f"{c.id}: not a synthetic cycle")
        if c.label not in by_class:
            raise ConfigError(f"synthetic cycle {c.id} has label {c.label!r}, which the run "
                              f"does not train (classes: {', '.join(classes)})")
        by_class[c.label].append(c)
    for items in by_class.values():
        items.sort(key=lambda c: _rank(seed, c.id))
        if max_per_class is not None:
            del items[max_per_class:]
    if ratio is not None:
        budget = math.floor(ratio * len(real_train))
        take = dict.fromkeys(by_class, 0)
        left = budget
        open_ = [label for label in by_class if by_class[label]]
        while left > 0 and open_:  # water-filling: equal shares, capped by availability
            share = max(1, left // len(open_))
            for label in list(open_):
                extra = min(share, len(by_class[label]) - take[label], left)
                take[label] += extra
                left -= extra
                if take[label] >= len(by_class[label]):
                    open_.remove(label)
                if left == 0:
                    break
        for label in by_class:
            del by_class[label][take[label]:]
    return [c for label in classes for c in by_class[label]]


@dataclass
class SyntheticSelection:
    """The synthetic cycles a run trains on, and how to name them.

    Attributes:
        names: the synthetic sets asked for.
        cycles: the selected cycles.
        counts: selected per class.
        sha256: hash of the sorted id list (the ids file's content).
    """

    names: list[str] = field(default_factory=list)
    cycles: list[Cycle] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    sha256: str | None = None

    def ids_text(self) -> str:
        return "".join(f"{i}\n" for i in sorted(c.id for c in self.cycles))

    def summary(self) -> dict[str, Any] | None:
        """What the run config records (None when no synthetic set is used)."""
        if not self.names:
            return None
        return {"sets": self.names, "count": len(self.cycles), "counts": self.counts,
                "sha256": self.sha256, "ids_file": "synthetic_ids.txt"}

    def write(self, run_dir: Path) -> Path | None:
        """``run_dir/synthetic_ids.txt``: one id per line, sorted (None when unused)."""
        if not self.names:
            return None
        path = Path(run_dir) / "synthetic_ids.txt"
        atomic_write_text(path, self.ids_text())
        return path


def mix_synthetic(project: Project, opts: Any, real_train: Sequence[Cycle], classes: Sequence[str],
                  log: Callable[[str], None] | None = None) -> SyntheticSelection:
    """The synthetic selection of a training run (`TrainOptions`: ``synthetic``,
    ``synthetic_ratio``, ``max_synthetic_per_class``, ``seed``); empty without sets."""
    names = list(getattr(opts, "synthetic", None) or [])
    if not names:
        return SyntheticSelection()
    pool = load_synthetic(project, names)
    chosen = select_synthetic(pool, real_train, classes, ratio=opts.synthetic_ratio,
                              max_per_class=opts.max_synthetic_per_class, seed=opts.seed)
    sel = SyntheticSelection(names=names, cycles=chosen,
                             counts={c: sum(1 for x in chosen if x.label == c)
                                     for c in classes})
    sel.sha256 = hashlib.sha256(sel.ids_text().encode("utf-8")).hexdigest()
    if log is not None:
        log(f"synthetic: {len(chosen)} of {len(pool)} cycles from {', '.join(names)} join the "
            "training split (" + ", ".join(f"{k} +{v}" for k, v in sel.counts.items() if v)
            + ")")
    return sel
