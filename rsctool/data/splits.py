"""Train/val/test split logic, split hashing and the problem records of lenient readers.

A split is a first-class object: every reader assigns one to each cycle, and
`split_hash` fingerprints the assignment so a manifest, a run and a report can prove
they used the same one. Split specs (`parse_split_spec`):

* ``official``: the dataset's own split file (ICBHI 2017 only).
* ``patients:<train>``: whole patients at random, about `train` of the cycles in train,
  the rest in test.
* ``random:<train>:<val>``: item-wise random split stratified by label (folder data),
  about `train` and `val` of each class in train and val, the rest in test.

Validation data for ICBHI is never taken from the test split: `carve_validation` moves
whole patients out of the train split. Every function here is deterministic for a seed
and independent of the order of its input (items are sorted by id before shuffling).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rsctool.data.manifest import Cycle
from rsctool.errors import ConfigError, DataError

__all__ = [
    "Problem",
    "ProblemSink",
    "SplitSpec",
    "carve_validation",
    "check_splits",
    "group_key",
    "parse_split_spec",
    "patient_split",
    "random_split",
    "split_counts",
    "split_hash",
]

log = logging.getLogger("rsctool.data")

SPLIT_KINDS = ("official", "patients", "random")


# --------------------------------------------------------------------------- problems
# Shared by the dataset readers (icbhi.py, folder.py), which all depend on this module.

@dataclass(frozen=True)
class Problem:
    """One defect a lenient reader skipped over.

    Attributes:
        path: the file the problem is in.
        line: 1-based line inside `path`, or None when it concerns the whole file.
        message: what is wrong, one line.
    """

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "message": self.message}

    def to_error(self) -> DataError:
        return DataError(self.message, self.path, self.line)


class ProblemSink:
    """Where a reader sends a defect: raised at once (strict) or recorded and skipped.

    Args:
        strict: raise the first problem as `DataError` (``file:line: message``).
        problems: list that collects `Problem` records in lenient mode; when None,
            lenient problems are logged as warnings on the ``rsctool.data`` logger so
            they are never silently lost.
    """

    def __init__(self, strict: bool = True, problems: list[Problem] | None = None):
        self.strict = strict
        self.problems = problems
        self.count = 0

    def report(self, message: str, path: Any, line: int | None = None) -> None:
        """Raise (strict) or record one problem; returns only in lenient mode."""
        problem = Problem(str(path), line, message)
        if self.strict:
            raise problem.to_error()
        self.count += 1
        if self.problems is not None:
            self.problems.append(problem)
        else:
            log.warning("%s (skipped)", problem)

    def report_error(self, error: DataError) -> None:
        """Forward a `DataError` raised by a lower layer (e.g. `audio_info`)."""
        if self.strict:
            raise error
        self.report(error.message, error.path if error.path is not None else "?", error.line)


# --------------------------------------------------------------------------- specs

@dataclass(frozen=True)
class SplitSpec:
    """A parsed split spec.

    Attributes:
        kind: ``official|patients|random``.
        train: fraction of cycles in train (``patients``, ``random``); None for official.
        val: fraction of cycles in val (``random`` only); None otherwise.
    """

    kind: str
    train: float | None = None
    val: float | None = None

    @property
    def test(self) -> float | None:
        """Fraction left for test (None for ``official``)."""
        if self.train is None:
            return None
        return max(0.0, 1.0 - self.train - (self.val or 0.0))

    def __str__(self) -> str:
        if self.kind == "official":
            return "official"
        if self.kind == "patients":
            return f"patients:{self.train:g}"
        return f"random:{self.train:g}:{self.val:g}"


def _fraction(text: str, spec: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"split {spec!r}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"split {spec!r}: {what} must be finite")
    return value


def parse_split_spec(spec: str | SplitSpec) -> SplitSpec:
    """Parse ``official``, ``patients:<train>`` or ``random:<train>:<val>``.

    Raises:
        ConfigError: unknown kind, wrong number of parts, or fractions out of range
            (``patients``: 0 < train < 1; ``random``: train > 0, val >= 0,
            train + val <= 1).
    """
    if isinstance(spec, SplitSpec):
        spec = str(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("split spec must be official, patients:TRAIN or random:TRAIN:VAL, "
                          f"got {spec!r}")
    parts = [p.strip() for p in spec.strip().split(":")]
    kind = parts[0].lower()
    if kind == "official":
        if len(parts) != 1:
            raise ConfigError(f"split {spec!r}: 'official' takes no fractions")
        return SplitSpec("official")
    if kind == "patients":
        if len(parts) != 2:
            raise ConfigError(f"split {spec!r}: expected patients:TRAIN (e.g. patients:0.6)")
        train = _fraction(parts[1], spec, "train fraction")
        if not 0.0 < train < 1.0:
            raise ConfigError(f"split {spec!r}: train fraction must be in (0, 1), got {train:g}")
        return SplitSpec("patients", train)
    if kind == "random":
        if len(parts) != 3:
            raise ConfigError(
                f"split {spec!r}: expected random:TRAIN:VAL (e.g. random:0.7:0.15)")
        train = _fraction(parts[1], spec, "train fraction")
        val = _fraction(parts[2], spec, "val fraction")
        if not 0.0 < train <= 1.0 or not 0.0 <= val < 1.0 or train + val > 1.0 + 1e-9:
            raise ConfigError(f"split {spec!r}: need 0 < TRAIN, 0 <= VAL and TRAIN + VAL <= 1")
        return SplitSpec("random", train, val)
    raise ConfigError(f"unknown split {spec!r}: use official, patients:TRAIN or "
                      "random:TRAIN:VAL")


# --------------------------------------------------------------------------- grouping

def group_key(cycle: Cycle, group_by: str | None = None) -> Hashable:
    """The unit a split keeps on one side.

    With `group_by` None: the patient, else the recording, else the cycle itself.
    Otherwise `group_by` names a `Cycle` attribute or a key of `cycle.meta`; items
    without a value form singleton groups. Keys are tagged tuples so that a patient
    ``"101"`` and a recording ``"101"`` can never merge.
    """
    if group_by is None:
        if cycle.patient is not None:
            return ("patient", cycle.patient)
        if cycle.recording is not None:
            return ("recording", cycle.recording)
        return ("id", cycle.id)
    value = getattr(cycle, group_by, None) if group_by in _CYCLE_FIELDS else None
    if value is None:
        value = cycle.meta.get(group_by)
    if value is None:
        return ("id", cycle.id)
    if isinstance(value, list):  # e.g. meta["groups"]: a list is not hashable
        value = tuple(value)
    return (group_by, value)


_CYCLE_FIELDS = frozenset(f.name for f in dataclasses.fields(Cycle))


def _groups(cycles: Iterable[Cycle], key: Callable[[Cycle], Hashable]) -> dict[Hashable, int]:
    sizes: dict[Hashable, int] = Counter()
    for c in cycles:
        sizes[key(c)] += 1
    return dict(sizes)


def _sorted_keys(keys: Iterable[Hashable]) -> list[Hashable]:
    # repr makes mixed-type keys comparable; it is stable across runs and platforms.
    return sorted(keys, key=repr)


def _pick_groups(sizes: dict[Hashable, int], target: float, rng: random.Random,
                 min_groups: int, max_groups: int) -> set[Hashable]:
    """Whole groups, in seeded random order, whose sizes sum to about `target`.

    A group is taken only when it brings the total closer to `target`, so one huge
    patient does not blow the fraction; at least `min_groups` and at most `max_groups`
    are taken.
    """
    order = _sorted_keys(sizes)
    rng.shuffle(order)
    chosen: list[Hashable] = []
    total = 0
    for k in order:
        if len(chosen) >= max_groups:
            break
        s = sizes[k]
        if abs(total + s - target) < abs(total - target):
            chosen.append(k)
            total += s
    if len(chosen) < min_groups and max_groups >= min_groups:
        rest = [k for k in order if k not in chosen]
        # fall back to the group(s) whose size is closest to what is still missing
        while len(chosen) < min_groups and rest:
            best = min(rest, key=lambda k: abs(sizes[k] - (target - total)))
            rest.remove(best)
            chosen.append(best)
            total += sizes[best]
    return set(chosen)


def _pick_groups_stratified(counts: dict[Hashable, Counter], fraction: float,
                            rng: random.Random, min_groups: int, max_groups: int,
                            restarts: int = 64) -> set[Hashable]:
    """Whole groups whose per-class counts approximate `fraction` of every class.

    `counts` maps a group to its label counts. Greedy passes over seeded random group
    orders (as in `_pick_groups`, a group is taken only when it brings the selection
    closer to the target) are scored by the class-wise relative error plus the size
    error, and the best of `restarts` passes wins. Without stratification a small
    dataset easily moves most of one rare class into validation, which leaves training
    without it (and model selection measuring a different class mix).
    """
    classes = sorted({lab for c in counts.values() for lab in c})
    total = Counter()
    for c in counts.values():
        total.update(c)
    target = {lab: fraction * total[lab] for lab in classes}
    n_target = fraction * sum(total.values())

    def cost(sel: Counter, n: int) -> float:
        # relative error per class (a rare class counts as much as a common one) plus
        # the size error, each normalised by its target
        err = sum(abs(sel[lab] - target[lab]) / (target[lab] + 1.0) for lab in classes)
        return err / max(1, len(classes)) + abs(n - n_target) / (n_target + 1.0)

    keys = _sorted_keys(counts)
    best: tuple[float, list[Hashable]] | None = None
    for _ in range(max(1, restarts)):
        order = list(keys)
        rng.shuffle(order)
        chosen: list[Hashable] = []
        sel: Counter = Counter()
        n = 0
        for k in order:
            if len(chosen) >= max_groups:
                break
            size = sum(counts[k].values())
            cand = sel + counts[k]
            if len(chosen) < min_groups or cost(cand, n + size) < cost(sel, n):
                chosen.append(k)
                sel, n = cand, n + size
        c = cost(sel, n)
        if best is None or c < best[0]:
            best = (c, chosen)
    assert best is not None
    return set(best[1])


# --------------------------------------------------------------------------- splits

def carve_validation(cycles: Sequence[Cycle], fraction: float, seed: int = 0, *,
                     group_by: str | None = None) -> list[Cycle]:
    """Move whole groups (patients by default) from train to val, stratified by label:
    the moved groups are chosen so that every class keeps about `fraction` of its
    train cycles in val (as far as whole groups allow).

    Args:
        cycles: any mix of splits; only ``train`` cycles are considered.
        fraction: wanted share of the train cycles in val, in [0, 1); 0 disables.
        seed: the same seed and input give the same val set (input order does not matter).
        group_by: see `group_key` (default: patient, else recording).

    Returns:
        A new list in the input order; moved cycles are copies with ``split="val"``,
        the others are the input objects. At least one group moves when
        `fraction` > 0 and the train split has more than one group; at least one
        group always stays in train.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0.0 <= fraction < 1.0:
        raise ConfigError(f"validation fraction must be in [0, 1), got {fraction!r}")
    cycles = list(cycles)
    if fraction == 0:
        return cycles
    key = lambda c: group_key(c, group_by)  # noqa: E731
    counts: dict[Hashable, Counter] = defaultdict(Counter)
    for c in cycles:
        if c.split == "train":
            counts[key(c)][c.label] += 1
    if len(counts) < 2:
        return cycles
    chosen = _pick_groups_stratified(dict(counts), fraction, random.Random(f"val:{seed}"),
                                     1, len(counts) - 1)
    return [dataclasses.replace(c, split="val") if c.split == "train" and key(c) in chosen
            else c for c in cycles]


def patient_split(cycles: Sequence[Cycle], train_fraction: float, seed: int = 0, *,
                  group_by: str | None = None) -> list[Cycle]:
    """Assign every cycle to train or test by whole groups (patients by default).

    About `train_fraction` of the cycles go to train; with two or more groups each
    side gets at least one. Returns copies with `split` set, in the input order.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ConfigError(f"train fraction must be in (0, 1), got {train_fraction!r}")
    cycles = list(cycles)
    key = lambda c: group_key(c, group_by)  # noqa: E731
    sizes = _groups(cycles, key)
    if not sizes:
        return []
    n_min = 1 if len(sizes) >= 2 else len(sizes)
    n_max = len(sizes) - 1 if len(sizes) >= 2 else len(sizes)
    train = _pick_groups(sizes, train_fraction * len(cycles),
                         random.Random(f"patients:{seed}"), n_min, n_max)
    return [dataclasses.replace(c, split="train" if key(c) in train else "test")
            for c in cycles]


def random_split(cycles: Sequence[Cycle], train: float, val: float, seed: int = 0, *,
                 stratify: bool = True, group_by: str | None = None) -> list[Cycle]:
    """Random train/val/test split, stratified by label, optionally keeping groups whole.

    Args:
        cycles: items to split (their current `split` is ignored).
        train, val: wanted fractions (test gets the rest).
        seed: the same seed and input give the same split (input order does not matter).
        stratify: split each label separately so every class keeps its proportions.
        group_by: a `Cycle` field or `meta` key whose value must stay on one side
            (None: each item on its own). A group is stratified by its most common label.

    Returns:
        Copies with `split` set, in the input order. Within a stratum the shuffled groups
        are laid end to end and each goes where its midpoint falls, so a stratum of n
        items gets about n*train train and n*val val items (a lone item goes to train
        when train >= 0.5).
    """
    if not 0.0 < train <= 1.0 or not 0.0 <= val < 1.0 or train + val > 1.0 + 1e-9:
        raise ConfigError(f"need 0 < train, 0 <= val, train + val <= 1; got {train}, {val}")
    cycles = list(cycles)
    key: Callable[[Cycle], Hashable]
    if group_by is None:
        key = lambda c: ("id", c.id)  # noqa: E731
    else:
        key = lambda c: group_key(c, group_by)  # noqa: E731
    members: dict[Hashable, list[Cycle]] = defaultdict(list)
    for c in cycles:
        members[key(c)].append(c)
    strata: dict[str, list[Hashable]] = defaultdict(list)
    for k, cs in members.items():
        if stratify:
            counts = Counter(c.label for c in cs)
            label = sorted(counts, key=lambda lab: (-counts[lab], lab))[0]
        else:
            label = ""
        strata[label].append(k)
    assigned: dict[Hashable, str] = {}
    for label in sorted(strata):
        keys = _sorted_keys(strata[label])
        random.Random(f"random:{seed}:{label}").shuffle(keys)
        n = sum(len(members[k]) for k in keys)
        cum = 0
        for k in keys:
            size = len(members[k])
            mid = (cum + size / 2) / n
            cum += size
            # the epsilon keeps fractions like 0.7 + 0.15 = 0.8499999... on the intended side
            if mid <= train + 1e-9:
                assigned[k] = "train"
            elif mid <= train + val + 1e-9:
                assigned[k] = "val"
            else:
                assigned[k] = "test"
    return [dataclasses.replace(c, split=assigned[key(c)]) for c in cycles]


def _group_name(key: Hashable) -> str:
    value = key[1] if isinstance(key, tuple) and len(key) == 2 else key
    return "/".join(map(str, value)) if isinstance(value, tuple) else str(value)


def check_splits(cycles: Sequence[Cycle], required: Sequence[str], *, spec: str,
                 group_by: str | None = None, where: Any = None) -> None:
    """Refuse a split that a later stage needs but that got no items.

    `train` trains, `val` picks the checkpoint and thresholds, `test` is what `eval`
    scores: finding one empty at `train`/`eval` time wastes a run, so `analyze` calls
    this with the splits its spec asked for.

    Raises:
        DataError: naming the empty split, the groups each split got (as `group_by`,
            default patient/recording) and a fix.
    """
    sizes = Counter(c.split for c in cycles)
    empty = [s for s in required if not sizes.get(s)]
    if not empty:
        return
    groups: dict[str, set[Hashable]] = defaultdict(set)
    for c in cycles:
        groups[c.split].add(group_key(c, group_by))
    n = len(set().union(*groups.values()))

    def listed(keys: set[Hashable]) -> str:
        names = sorted(_group_name(k) for k in keys)
        return ", ".join(names[:6]) + (f" ... ({len(names)})" if len(names) > 6 else "")

    unit = f"{group_by} group" if group_by else "group"
    got = "; ".join(f"{s} {listed(groups[s])}" for s in ("train", "val", "test") if groups[s])
    fix = "use more data"
    # a random split is stratified: each class's groups are split on their own, so a
    # class with fewer groups than the splits asked for cannot fill them all
    per_class: dict[str, set[Hashable]] = defaultdict(set)
    for c in cycles:
        per_class[c.label].add(group_key(c, group_by))
    smallest = min(per_class, key=lambda lab: (len(per_class[lab]), lab))
    if spec.startswith("random") and len(per_class[smallest]) < len(required):
        fix = (f"class {smallest!r} has {len(per_class[smallest])} {unit}"
               f"{'s' if len(per_class[smallest]) != 1 else ''}, and a random split is "
               f"stratified by class: give every class at least {len(required)} {unit}s")
    elif spec.startswith("random") and n >= 3:
        # group i of n lies at (i + 0.5) / n: these give the first n-2 groups to train
        fix = (f"give each split at least one of the {n} {unit}s, e.g. --split "
               f"random:{(n - 2) / n + 0.01:.2f}:{1 / n:.2f}")
        if group_by:
            fix += f", or group by a field with more values than {group_by!r}"
    elif group_by:
        fix = f"drop --group-by {group_by} or group by a field with more values"
    what = f"the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty"
    raise DataError(f"split {spec}: {what} ({n} {unit}{'s' if n != 1 else ''}: {got}); {fix}",
                    where)


def split_hash(cycles: Iterable[Cycle]) -> str:
    """sha256 (hex) over the sorted ``(id, split)`` pairs: fingerprint of a split."""
    pairs = sorted((c.id, c.split) for c in cycles)
    text = json.dumps(pairs, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def train_test_hash(cycles: Iterable[Cycle]) -> str:
    """`split_hash` with validation counted as train: the fingerprint of the train/test
    assignment alone, the same for every ``--val-fraction``. For ICBHI's ``official``
    split it identifies the challenge file's assignment (tests pin its value)."""
    pairs = sorted((c.id, "train" if c.split == "val" else c.split) for c in cycles)
    text = json.dumps(pairs, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_counts(cycles: Iterable[Cycle]) -> dict[str, dict[str, int]]:
    """``{split: {label: count}}`` (handy for reports and tests)."""
    out: dict[str, dict[str, int]] = defaultdict(Counter)
    for c in cycles:
        out[c.split][c.label] += 1
    return {s: dict(v) for s, v in sorted(out.items())}
