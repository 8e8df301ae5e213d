"""A run's config, typed: what `rsctool train` records about a run (`Trainer.run_config()`,
written into the run's ``config.json`` and into every checkpoint's ``state["config"]``)
and what `eval`, `export` and `predict` read back to rebuild and feed its model.

No torch here, so the ONNX side of `predict` can use it. The JSON keeps the shape train
has always written: `RunConfig.to_dict` gives back the dict `RunConfig.from_dict` read,
key for key and in the same order, plus ``version``. Configs written before ``version``
existed are version 1; keys that older runs lack read as their documented defaults
(`RunConfig` attributes). A config of a newer version than this rsctool knows is refused
with a clear error instead of being half understood.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from rsctool.errors import DataError

#: The run-config format this rsctool writes and the newest it reads.
RUN_CONFIG_VERSION = 1
#: Keys every run config has (the model cannot be rebuilt or fed without them).
REQUIRED = ("model", "clip", "classes")


@dataclass
class RunConfig:
    """A run's config (the ``config`` of its checkpoints, its ``config.json``).

    Attributes:
        model: the model's own ``model.config``: ``name`` plus every builder keyword.
        clip: the clip config (`rsctool.data.dataset.ClipConfig.to_dict`): sample rate,
            clip length, pad mode and the filter bank with its normalisation statistics.
        classes: class names, in the order of the model's outputs.
        task: ``multiclass`` (the default of runs that predate tasks), ``binary``,
            ``multilabel`` or ``ranking``.
        run: the run's name (None in old configs).
        options: the resolved train options (`TrainOptions` as a dict; {} when absent).
        metadata_encoder: `MetadataEncoder.to_dict()`, None when absent.
        needs_metadata: whether the model is fed metadata (False when absent).
        dataset: the dataset the run was trained on (None: take the project record's).
        steps_per_epoch, total_steps: the schedule (None when absent).
        synthetic: the synthetic cycles mixed in (`SyntheticMix.summary`), None if none.
        distributed: how the global batch was computed (None when absent).
        data, split, normalization, environment: provenance (`Trainer.provenance`;
            {} when absent).
        resumed_in, group, like, extended: later provenance, None when absent.
        extra: keys this version does not know, kept verbatim.
        version: the config format (`RUN_CONFIG_VERSION`; 1 when absent).
    """

    model: dict[str, Any]
    clip: dict[str, Any]
    classes: list[str]
    task: str = "multiclass"
    run: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    metadata_encoder: dict[str, Any] | None = None
    needs_metadata: bool = False
    dataset: str | None = None
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    synthetic: dict[str, Any] | None = None
    distributed: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    normalization: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    resumed_in: list[Any] | None = None
    group: str | None = None
    like: str | None = None
    extended: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = RUN_CONFIG_VERSION
    # the keys of the dict it was read from, in order, so to_dict gives that dict back
    _keys: tuple[str, ...] = field(default=(), compare=False, repr=False)
    # keys the source held as null (a default like {} stands in for them meanwhile)
    _nulls: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    # ------------------------------------------------------------------ derived values

    @property
    def model_name(self) -> str | None:
        """The model's registry name (``model["name"]``)."""
        name = self.model.get("name")
        return None if name is None else str(name)

    @property
    def norm(self) -> str | None:
        """The normalisation the run used (``normalization.norm``; older runs recorded
        it only in their options)."""
        return (self.normalization or {}).get("norm") or (self.options or {}).get("norm")

    @property
    def seed(self) -> int | None:
        """The training seed (``options.seed``), None when not recorded."""
        return (self.options or {}).get("seed")

    # ------------------------------------------------------------------ (de)serialising

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | os.PathLike | None = None
                  ) -> RunConfig:
        """Read a config dict (any version up to `RUN_CONFIG_VERSION`).

        Raises:
            DataError: not a run config (missing model, clip or classes), malformed
                values, or a newer format; the message names `source`.
        """
        if not isinstance(d, Mapping):
            raise DataError("the run config is not a JSON object", source)
        version = d.get("version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise DataError(f"run config version {version!r} is not a format version", source)
        if version > RUN_CONFIG_VERSION:
            raise DataError(f"run config version {version} is newer than this rsctool reads "
                            f"({RUN_CONFIG_VERSION}); upgrade rsctool", source)
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise DataError(f"the run config lacks {', '.join(missing)} (not written by "
                            "`rsctool train`)", source)
        if not isinstance(d["model"], Mapping) or "name" not in d["model"]:
            raise DataError("run config: 'model' must be an object with a 'name'", source)
        if not isinstance(d["clip"], Mapping):
            raise DataError("run config: 'clip' must be an object", source)
        classes = d["classes"]
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise DataError(f"run config: bad class names {classes!r}", source)
        known = {f.name for f in fields(cls)} - {"extra", "_keys", "_nulls"}
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in known and f.name in d and d[f.name] is not None:
                kw[f.name] = d[f.name]
        kw["model"], kw["clip"], kw["classes"] = dict(d["model"]), dict(d["clip"]), list(classes)
        kw["needs_metadata"] = bool(d.get("needs_metadata", False))
        return cls(**kw, extra={k: v for k, v in d.items() if k not in known},
                   _keys=tuple(d), _nulls=frozenset(k for k in known if k in d and d[k] is None))

    def to_dict(self) -> dict[str, Any]:
        """The config as train writes it, plus ``version``: for a config read by
        `from_dict`, the same keys in the same order (keys the source lacked stay
        absent); for a new one, every set key."""
        values = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name not in ("extra", "_keys", "_nulls")}
        values.update(dict.fromkeys(self._nulls), **self.extra)
        if self._keys:
            out = {k: values[k] for k in self._keys}
        else:
            out = {k: v for k, v in values.items() if v is not None}
        out["version"] = self.version
        return out
