"""Recording and patient metadata as model inputs.

`MetadataEncoder` turns manifest records into the metadata batch every
metadata-conditioned model takes::

    meta = {
        "device":   LongTensor (B,)     index into the device vocabulary, 0 = unknown
        "site":     LongTensor (B,)     index into the site vocabulary, 0 = unknown
        "sex":      LongTensor (B,)     0 unknown, 1 M, 2 F
        "num":      FloatTensor (B, K)  z-scored [age (years), bmi (kg/m^2), duration (s)]
        "num_mask": FloatTensor (B, K)  1 where the value is present, 0 where missing
    }

Vocabularies and the numeric mean/std come from the training records only, so
validation/test statistics never leak into the model; a device or site not seen in
training maps to 0 ("unknown"). A missing numeric value is encoded as 0 with mask 0
(``impute="mask"``, the default: the model can tell "average" from "not recorded"), or
as the train median with mask 1 (``impute="median"``, seed 001's choice; the medians
come from the training records only and are stored with the encoder). `fields` chooses
the metadata the model conditions on (default all of `META_FIELDS`; seed 001: device,
site, age, bmi, duration); the others are encoded as unknown and the model built for
the encoder's `spec()` has no input for them.
The encoder round-trips through a JSON-safe dict (`to_dict`/`from_dict`) and is stored
in checkpoints and ONNX metadata, so prediction encodes exactly as training did.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from rsctool.data.manifest import Cycle
from rsctool.errors import ConfigError, DataError
from rsctool.metadata_np import (  # noqa: F401  (re-exported)
    IMPUTE,
    META_FIELDS,
    META_KEYS,
    NUM_FIELDS,
    SEX_CODES,
    check_fields,
    encode_values,
    number,
    vocabulary_index,
)

#: meta_spec for ICBHI 2017 (4 devices, 7 chest locations, each plus "unknown"):
#: what conditioned models are built with when no encoder is at hand (tests, sizing).
DEFAULT_META_SPEC: dict[str, int] = {"n_devices": 5, "n_sites": 8, "n_num": len(NUM_FIELDS)}

_FORMAT_VERSION = 1
#: A state with a field list or median imputation: version 2, so a reader that knows
#: only version 1 refuses it instead of encoding every field with masks.
_FORMAT_VERSION_FIELDS = 2


def _cycle_values(c: Cycle) -> dict[str, Any]:
    return {"device": c.device, "site": c.site, "sex": c.sex, "age": c.age, "bmi": c.bmi,
            "duration": c.end - c.start}


class MetadataEncoder:
    """Vocabularies and train statistics that turn metadata into tensors.

    Args:
        devices, sites: known category names (index 0, "unknown", is implicit: the
            name at position i gets index i + 1).
        mean, std: per numeric field (`NUM_FIELDS` order) train mean and std; std > 0.
        fields: the metadata fields encoded (None: all of `META_FIELDS`).
        impute: ``mask`` or ``median`` (then `median` per `NUM_FIELDS` is required).
    """

    def __init__(self, devices: Sequence[str], sites: Sequence[str],
                 mean: Sequence[float], std: Sequence[float],
                 fields: Sequence[str] | None = None, impute: str = "mask",
                 median: Sequence[float] | None = None):
        if len(mean) != len(NUM_FIELDS) or len(std) != len(NUM_FIELDS):
            raise ConfigError(f"metadata encoder: need {len(NUM_FIELDS)} means and stds "
                              f"({', '.join(NUM_FIELDS)}), got {len(mean)} and {len(std)}")
        if any(not (isinstance(s, (int, float)) and s > 0 and math.isfinite(s)) for s in std):
            raise ConfigError(f"metadata encoder: std must be positive and finite, got {std}")
        self.devices = list(devices)
        self.sites = list(sites)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.fields = check_fields(fields)
        if impute not in IMPUTE:
            raise ConfigError(f"metadata_impute must be one of {list(IMPUTE)}, got {impute!r}")
        if impute == "median" and (median is None or len(median) != len(NUM_FIELDS)):
            raise ConfigError(f"metadata encoder: median imputation needs {len(NUM_FIELDS)} "
                              f"medians, got {median!r}")
        self.impute = impute
        self.median = [float(m) for m in median] if median is not None else None
        self._device_index = vocabulary_index(self.devices)
        self._site_index = vocabulary_index(self.sites)

    @classmethod
    def fit(cls, cycles: Iterable[Cycle], splits: Sequence[str] | None = ("train",),
            fields: Sequence[str] | None = None, impute: str = "mask") -> MetadataEncoder:
        """Fit vocabularies, numeric mean/std and medians on the records of `splits`
        (None: all; training passes its train records, so nothing leaks from val/test).

        A numeric field with fewer than two present values, or no spread, gets std 1 so
        encoding stays finite (its mean is then the one value, or 0 when none).

        Raises:
            DataError: no record belongs to `splits`.
        """
        used = [c for c in cycles if splits is None or c.split in splits]
        if not used:
            raise DataError(f"metadata encoder: no records in split(s) {list(splits or [])}")
        devices = sorted({c.device for c in used if c.device})
        sites = sorted({c.site for c in used if c.site})
        mean, std, median = [], [], []
        for field in NUM_FIELDS:
            vals = [v for c in used
                    if (v := number(_cycle_values(c)[field], field, c.id)) is not None]
            m = sum(vals) / len(vals) if vals else 0.0
            var = sum((v - m) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
            mean.append(m)
            std.append(math.sqrt(var) if var > 1e-12 else 1.0)
            median.append(float(statistics.median(vals)) if vals else m)
        return cls(devices, sites, mean, std, fields, impute,
                   median if impute == "median" else None)

    # -- encoding -----------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        """The ``meta_spec`` models are built with (vocabulary sizes include "unknown")."""
        spec: dict[str, Any] = {"n_devices": len(self.devices) + 1,
                                "n_sites": len(self.sites) + 1, "n_num": len(NUM_FIELDS)}
        if self.fields != META_FIELDS or self.impute != "mask":
            # only then, so the default spec (and old checkpoints) stay as they were
            spec.update(fields=list(self.fields), num_mask=self.impute == "mask")
        return spec

    def encode_values(self, records: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Encode raw values, e.g. from the command line at prediction time.

        Each record may hold ``device, site`` (str), ``sex`` ("M"/"F"), ``age`` (years),
        ``bmi`` (kg/m^2), ``duration`` (s); absent keys and None are missing values.
        An optional ``id`` names the record in error messages.

        Raises:
            DataError: an unknown key or a value of the wrong type (names record number).
        """  # the rules live in rsctool.metadata_np, shared with the torch-free predict
        arrays = encode_values(records, self._device_index, self._site_index, self.mean,
                               self.std, self.fields, self.median)
        return {k: torch.from_numpy(v) for k, v in arrays.items()}

    def encode(self, cycles: Sequence[Cycle]) -> dict[str, torch.Tensor]:
        """Encode manifest records into a metadata batch (see the module docstring)."""
        return self.encode_values([{"id": c.id, **_cycle_values(c)} for c in cycles])

    def encode_cycle(self, cycle: Cycle) -> dict[str, torch.Tensor]:
        """One record, unbatched (shapes () and (K,)), for a Dataset's ``__getitem__``."""
        return {k: v[0] for k, v in self.encode([cycle]).items()}

    def unknown(self, n: int) -> dict[str, torch.Tensor]:
        """A batch of `n` records with every value unknown."""
        return self.encode_values([{}] * n)

    # -- persistence --------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state (for checkpoints and ONNX metadata)."""
        d: dict[str, Any] = {"version": _FORMAT_VERSION, "devices": list(self.devices),
                             "sites": list(self.sites), "num_fields": list(NUM_FIELDS),
                             "mean": list(self.mean), "std": list(self.std)}
        if self.fields != META_FIELDS or self.impute != "mask":
            # optional keys: a reader without them (older runs) gets the defaults
            d.update(version=_FORMAT_VERSION_FIELDS, fields=list(self.fields),
                     impute=self.impute)
            if self.median is not None:
                d["median"] = list(self.median)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetadataEncoder:
        """Inverse of `to_dict`.

        Raises:
            ConfigError: a missing key, another format version or other numeric fields.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"metadata encoder state must be a mapping, got {type(d).__name__}")
        missing = sorted({"version", "devices", "sites", "num_fields", "mean", "std"} - set(d))
        if missing:
            raise ConfigError(f"metadata encoder state lacks key(s) {missing}")
        if d["version"] not in (_FORMAT_VERSION, _FORMAT_VERSION_FIELDS):
            raise ConfigError(f"metadata encoder state has version {d['version']!r}; "
                              f"this rsctool reads versions {_FORMAT_VERSION} and "
                              f"{_FORMAT_VERSION_FIELDS}")
        if list(d["num_fields"]) != list(NUM_FIELDS):
            raise ConfigError(f"metadata encoder state encodes {list(d['num_fields'])}; "
                              f"this rsctool expects {list(NUM_FIELDS)}")
        return cls(d["devices"], d["sites"], d["mean"], d["std"], d.get("fields"),
                   d.get("impute", "mask"), d.get("median"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MetadataEncoder) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (f"MetadataEncoder(devices={self.devices}, sites={self.sites}, "
                f"mean={[round(m, 3) for m in self.mean]}, std={[round(s, 3) for s in self.std]}, "
                f"fields={list(self.fields)}, impute={self.impute!r})")


def check_meta_spec(meta_spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a model's ``meta_spec`` (None: `DEFAULT_META_SPEC`); ConfigError if malformed."""
    if meta_spec is None:
        return dict(DEFAULT_META_SPEC)
    if not isinstance(meta_spec, Mapping):
        raise ConfigError(f"meta_spec must be a mapping, got {meta_spec!r}")
    keys = set(DEFAULT_META_SPEC)
    optional = {"fields", "num_mask"}
    if not keys <= set(meta_spec) <= keys | optional:
        raise ConfigError(f"meta_spec needs the keys {sorted(keys)} (optional: "
                          f"{sorted(optional)}), got {sorted(meta_spec)}")
    for k in DEFAULT_META_SPEC:
        v = meta_spec[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"meta_spec[{k!r}] must be a positive integer, got {v!r}")
    spec: dict[str, Any] = {k: int(meta_spec[k]) for k in DEFAULT_META_SPEC}
    if "fields" in meta_spec:
        spec["fields"] = list(check_fields(meta_spec["fields"], "meta_spec['fields']"))
    if "num_mask" in meta_spec:
        if not isinstance(meta_spec["num_mask"], bool):
            raise ConfigError(f"meta_spec['num_mask'] must be true or false, "
                              f"got {meta_spec['num_mask']!r}")
        spec["num_mask"] = meta_spec["num_mask"]
    return spec
