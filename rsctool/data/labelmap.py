"""Label maps: see one dataset through another's classes.

A label map renames a dataset's labels to a set of target classes, e.g. SPRSound's
event types to ICBHI's four classes (the built-in ``sprsound-to-icbhi``). It is a TOML
file::

    name = "sprsound-to-icbhi"
    description = "SPRSound event types as ICBHI 2017 classes"
    classes = ["normal", "crackle", "wheeze", "both"]   # target classes, in order

    [map]
    "Normal" = "normal"
    "Fine Crackle" = "crackle"

Source labels are matched exactly, else by their normalised form (case folded, every run
of other characters than letters and digits as one ``_``), so ``"Fine Crackle"`` also maps
the manifest label ``fine_crackle`` that `rsctool analyze` writes for it. `classes` is optional: by
default the ICBHI classes when every target is one, else the targets sorted. Built-in
maps ship in ``rsctool/resources`` as ``labelmap-<name>.toml``. `apply_map` applies a
map to manifest records; `rsctool analyze --map NAME|FILE` records the map (name and
`LabelMap.sha256`) with the dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsctool.data.manifest import ICBHI_CLASSES, Cycle
from rsctool.errors import ConfigError, DataError

__all__ = ["LabelMap", "MapResult", "apply_map", "builtin_maps", "load_map"]

_PREFIX = "labelmap-"


@dataclass(frozen=True)
class LabelMap:
    """A mapping from source labels to target classes.

    Attributes:
        name: short name (``sprsound-to-icbhi``).
        mapping: ``{source label: target class}``.
        classes: the target classes, in class-index order; every target is one.
        description: one line for humans.
        source: where it came from: ``builtin:<name>`` or the TOML file's path.
    """

    name: str
    mapping: dict[str, str]
    classes: tuple[str, ...]
    description: str = ""
    source: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "") -> LabelMap:
        """Build and check a map (the TOML document's shape); ConfigError naming `source`."""
        where = source or None
        if not isinstance(d, Mapping):
            raise ConfigError("a label map is a table with name, classes and [map]", where)
        unknown = sorted(set(d) - {"name", "description", "classes", "map"})
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(unknown)} in the label map (known: "
                              "name, description, classes, map)", where)
        name = d.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("the label map needs a name = \"...\"", where)
        mapping = d.get("map")
        if not isinstance(mapping, Mapping) or not mapping:
            raise ConfigError("the label map needs a non-empty [map] table "
                              "(\"source label\" = \"target class\")", where)
        for k, v in mapping.items():
            if not isinstance(v, str) or not v.strip() or not str(k).strip():
                raise ConfigError(f"[map] {k!r} = {v!r}: source and target must be "
                                  "non-empty strings", where)
        targets = list(dict.fromkeys(mapping.values()))
        classes = d.get("classes")
        if classes is None:
            classes = list(ICBHI_CLASSES) if set(targets) <= set(ICBHI_CLASSES) \
                else sorted(targets)
        if (not isinstance(classes, Sequence) or isinstance(classes, str) or not classes
                or not all(isinstance(c, str) and c.strip() for c in classes)):
            raise ConfigError("classes must be a list of non-empty class names", where)
        if len(set(classes)) != len(classes):
            raise ConfigError("classes lists a class twice", where)
        stray = [t for t in targets if t not in classes]
        if stray:
            raise ConfigError(f"[map] target(s) {', '.join(map(repr, stray))} not in classes "
                              f"({', '.join(classes)})", where)
        description = d.get("description", "")
        if not isinstance(description, str):
            raise ConfigError("description must be a string", where)
        return cls(name.strip(), {str(k): v for k, v in mapping.items()}, tuple(classes),
                   description, source)

    @classmethod
    def from_toml(cls, path: str | os.PathLike, source: str | None = None) -> LabelMap:
        """Read a TOML label map; ConfigError naming the file when it is bad."""
        import tomllib

        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("label map file not found", path) from None
        except OSError as e:
            raise ConfigError(f"cannot read label map ({e.strerror})", path) from None
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"not a valid TOML label map ({e})", path) from None
        return cls.from_dict(doc, source if source is not None else str(path))

    def target(self, label: str) -> str | None:
        """The target class of source `label` (exact match first, then normalised), or
        None when the map has no entry for it."""
        hit = self.mapping.get(label)
        if hit is not None:
            return hit
        key = _normalise(label)
        for src, dst in self.mapping.items():
            if _normalise(src) == key:
                return dst
        return None

    def to_dict(self) -> dict[str, Any]:
        """The TOML document's shape (`from_dict` reads it back)."""
        return {"name": self.name, "description": self.description,
                "classes": list(self.classes), "map": dict(self.mapping)}

    @property
    def sha256(self) -> str:
        """sha256 (hex) of what the map does: its sorted mapping and its classes (not
        its name, description or file formatting)."""
        text = json.dumps({"classes": list(self.classes), "map": sorted(self.mapping.items())},
                          ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def record(self) -> dict[str, Any]:
        """What a dataset record and a report keep of the map."""
        return {"name": self.name, "source": self.source, "sha256": self.sha256,
                "classes": list(self.classes)}


@dataclass
class MapResult:
    """What `apply_map` did.

    Attributes:
        cycles: the mapped cycles (copies; labels and ICBHI flags replaced).
        counts: ``{source label: cycles}`` mapped, per source label.
        unmapped: ``{source label: cycles}`` with no entry in the map (dropped).
    """

    cycles: list[Cycle]
    counts: dict[str, int] = field(default_factory=dict)
    unmapped: dict[str, int] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return sum(self.unmapped.values())


def _normalise(label: str) -> str:
    """``"Wheeze & Crackle"`` -> ``"wheeze_crackle"`` (how manifests spell labels)."""
    return re.sub(r"[^0-9a-z]+", "_", label.casefold()).strip("_")


def _resources() -> Path:
    from importlib import resources

    return Path(str(resources.files("rsctool") / "resources"))


def builtin_maps() -> list[str]:
    """Names of the label maps shipped with rsctool."""
    return sorted(p.stem[len(_PREFIX):] for p in _resources().glob(f"{_PREFIX}*.toml"))


def load_map(spec: str | os.PathLike) -> LabelMap:
    """A built-in map by name (`builtin_maps`) or a TOML file by path.

    Raises:
        ConfigError: neither a built-in name nor an existing file, or a bad file.
    """
    text = os.fspath(spec)
    if text in builtin_maps():
        return LabelMap.from_toml(_resources() / f"{_PREFIX}{text}.toml", f"builtin:{text}")
    if Path(text).is_file():
        return LabelMap.from_toml(text)
    raise ConfigError(f"{text}: no built-in label map of that name and no such file "
                      f"(built-in maps: {', '.join(builtin_maps()) or 'none'}; or give a "
                      ".toml file)", field="map")


def apply_map(cycles: Iterable[Cycle], labelmap: LabelMap, *, strict: bool = True,
              where: str | os.PathLike | None = None) -> MapResult:
    """See `cycles` through `labelmap`'s classes.

    Each cycle's label becomes its target class; the crackle/wheeze flags follow when
    the target is an ICBHI class, else they are cleared. The original label is kept in
    ``meta["source_label"]``.

    Args:
        strict: raise DataError naming every unmapped label (with its count) instead of
            dropping those cycles.
        where: the dataset, named in the error.

    Returns:
        A `MapResult` (the input cycles are not modified).
    """
    out: list[Cycle] = []
    counts: Counter[str] = Counter()
    unmapped: Counter[str] = Counter()
    for c in cycles:
        target = labelmap.target(c.label)
        if target is None:
            unmapped[c.label] += 1
            continue
        counts[c.label] += 1
        crackle = wheeze = None
        if target in ICBHI_CLASSES:
            crackle, wheeze = int(target in ("crackle", "both")), int(target in ("wheeze", "both"))
        out.append(dataclasses.replace(c, label=target, crackle=crackle, wheeze=wheeze,
                                       meta={**c.meta, "source_label": c.label}))
    if unmapped and strict:
        listed = ", ".join(f"{lab!r} ({n})" for lab, n in sorted(unmapped.items()))
        raise DataError(f"label map {labelmap.name} ({labelmap.source or 'given'}) has no entry "
                        f"for label(s) {listed}; add them to the map, or pass {{field}} to "
                        "drop those segments", where, field="lenient")
    return MapResult(out, dict(sorted(counts.items())), dict(sorted(unmapped.items())))
