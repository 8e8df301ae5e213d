"""Classifiers by name: `create_model("tafilm", size="tiny")`, `list_models()`,
`model_traits("tafilm")`.

Importing this package imports every model module, which registers its builders.
"""

from __future__ import annotations

from rsctool.models import add, ast, cnn, conditioning  # noqa: F401  (registration)
from rsctool.models.metadata import META_KEYS, MetadataEncoder
from rsctool.models.registry import (
    ModelTraits,
    create_model,
    list_models,
    model_sizes,
    model_traits,
    register_model,
)

__all__ = ["META_KEYS", "MetadataEncoder", "ModelTraits", "create_model", "list_models",
           "model_sizes", "model_traits", "register_model"]
