"""Metadata values -> model inputs with numpy alone (no torch).

The one implementation of the encoding rules: `rsctool.models.metadata.MetadataEncoder`
(training, torch tensors) and `rsctool.onnx_runtime` (``rsctool predict`` on an ONNX
model, which must start without importing torch) both call `encode_values`. The batch::

    device, site, sex   int64   (B,)     vocabulary index (0 = unknown); sex 0/1 M/2 F
    num, num_mask       float32 (B, K)   z-scored `NUM_FIELDS`; mask 1 where present

A missing value (absent key, None, NaN, "") is index 0 or mask 0 (imputation
``mask``), or, for a numeric field with imputation ``median``, the train median with
mask 1 (seed 001's median imputation). A field left out of the encoder's field list
(`fields`) is always index 0 / value 0 with mask 0, whatever the record holds, and
the model built for that list does not read it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rsctool.errors import ConfigError, DataError

#: Keys of a metadata batch, in the order ONNX exports list them as graph inputs.
META_KEYS: tuple[str, ...] = ("device", "site", "sex", "num", "num_mask")
#: Numeric features, in column order of ``num``: age (years), bmi (kg/m^2), duration (s).
NUM_FIELDS: tuple[str, ...] = ("age", "bmi", "duration")
SEX_CODES: dict[str, int] = {"M": 1, "F": 2}
#: Values a record may hold.
META_FIELDS: tuple[str, ...] = ("device", "site", "sex", *NUM_FIELDS)
#: How a missing numeric value is encoded: mask (0 with mask 0) or median (train median).
IMPUTE: tuple[str, ...] = ("mask", "median")


def check_fields(fields: Sequence[str] | str | None, where: str = "metadata"
                 ) -> tuple[str, ...]:
    """A metadata field list (None: all; "a,b": a comma string) -> `META_FIELDS` order.

    Raises:
        ConfigError: an unknown or repeated field.
    """
    if fields is None:
        return META_FIELDS
    if isinstance(fields, str):
        fields = [p.strip() for p in fields.split(",") if p.strip()]
    if not isinstance(fields, (list, tuple)) or any(not isinstance(f, str) for f in fields):
        raise ConfigError(f"{where} must be a list of field names, got {fields!r}")
    unknown = [f for f in fields if f not in META_FIELDS]
    if unknown or len(set(fields)) != len(fields):
        raise ConfigError(f"{where}: {'unknown' if unknown else 'repeated'} field(s) "
                          f"{unknown or list(fields)}; known: {list(META_FIELDS)}")
    return tuple(f for f in META_FIELDS if f in fields)


def number(value: Any, field: str, where: str) -> float | None:
    """A finite float, or None when missing (None / NaN); DataError for non-numbers."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{where}: {field} must be a number or null, got {value!r}")
    value = float(value)
    return value if math.isfinite(value) else None


def sex_code(value: Any, where: str) -> int:
    if value is None or value == "":
        return 0
    if not isinstance(value, str) or value.upper() not in SEX_CODES:
        raise DataError(f"{where}: sex must be 'M', 'F' or null, got {value!r}")
    return SEX_CODES[value.upper()]


def category(value: Any, field: str, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: {field} must be a string or null, got {value!r}")
    return value


def encode_values(records: Sequence[Mapping[str, Any]], device_index: Mapping[str, int],
                  site_index: Mapping[str, int], mean: Sequence[float],
                  std: Sequence[float], fields: Sequence[str] = META_FIELDS,
                  fill: Sequence[float | None] | None = None) -> dict[str, np.ndarray]:
    """Encode raw metadata records (see the module docstring for the batch).

    Args:
        records: per item ``device, site`` (str), ``sex`` ("M"/"F"), ``age`` (years),
            ``bmi`` (kg/m^2), ``duration`` (s); an optional ``id`` names the record in
            error messages.
        device_index, site_index: name -> index (>= 1); other names map to 0.
        mean, std: per `NUM_FIELDS` train statistics.
        fields: the fields encoded (`META_FIELDS` order); the others are left unknown.
        fill: per `NUM_FIELDS` the value a missing one gets (median imputation), or
            None for the mask encoding.

    Raises:
        DataError: an unknown key or a value of the wrong type (names the record).
    """
    n, k = len(records), len(NUM_FIELDS)
    out = {"device": np.zeros(n, np.int64), "site": np.zeros(n, np.int64),
           "sex": np.zeros(n, np.int64), "num": np.zeros((n, k), np.float32),
           "num_mask": np.zeros((n, k), np.float32)}
    for i, rec in enumerate(records):
        where = rec.get("id") or f"metadata record {i + 1}"
        unknown = sorted(set(rec) - set(META_FIELDS) - {"id"})
        if unknown:
            raise DataError(f"{where}: unknown metadata field(s) {unknown}; "
                            f"known: {list(META_FIELDS)}")
        dev = category(rec.get("device"), "device", where)
        loc = category(rec.get("site"), "site", where)
        sex = sex_code(rec.get("sex"), where)
        if "device" in fields:
            out["device"][i] = device_index.get(dev, 0) if dev else 0
        if "site" in fields:
            out["site"][i] = site_index.get(loc, 0) if loc else 0
        if "sex" in fields:
            out["sex"][i] = sex
        for j, field in enumerate(NUM_FIELDS):
            v = number(rec.get(field), field, where)
            if field not in fields:
                continue
            if v is None and fill is not None:
                v = fill[j]
            if v is not None:  # float64 arithmetic, stored as float32
                out["num"][i, j] = (v - mean[j]) / std[j]
                out["num_mask"][i, j] = 1.0
    return out


def vocabulary_index(names: Sequence[str]) -> dict[str, int]:
    """Name -> index, starting at 1 (0 is "unknown")."""
    return {name: i + 1 for i, name in enumerate(names)}


def encode_metadata(records: Sequence[Mapping[str, Any]], encoder: Mapping[str, Any]
                    ) -> dict[str, np.ndarray]:
    """`encode_values` with the vocabularies and statistics of a
    `MetadataEncoder.to_dict()` state (as stored in ONNX metadata)."""
    if list(encoder.get("num_fields", [])) != list(NUM_FIELDS):
        raise ConfigError(f"metadata encoder encodes {encoder.get('num_fields')}; this "
                          f"rsctool expects {list(NUM_FIELDS)}")
    if encoder.get("version", 1) not in (1, 2):
        raise ConfigError(f"metadata encoder state has version {encoder.get('version')!r}; "
                          f"this rsctool reads versions 1 and 2")
    fields = check_fields(encoder.get("fields"), "metadata encoder fields")
    impute = encoder.get("impute", "mask")
    fill = encoder.get("median") if impute == "median" else None
    if impute not in IMPUTE or (impute == "median" and fill is None):
        raise ConfigError(f"metadata encoder: imputation {impute!r} (with its medians) "
                          f"is not one of {list(IMPUTE)}")
    return encode_values(records, vocabulary_index(encoder["devices"]),
                         vocabulary_index(encoder["sites"]), encoder["mean"], encoder["std"],
                         fields, fill)
