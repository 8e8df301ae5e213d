"""Classifiers by name: `create_model("tafilm", size="tiny")`, `list_models()`.

Importing this package imports every model module, which registers its builders.
"""

from __future__ import annotations

from rsctool.models import add, add_rsc, ast, cnn, conditioning  # noqa: F401  (registration)
from rsctool.models.metadata import META_KEYS, MetadataEncoder
from rsctool.models.registry import create_model, list_models, model_sizes, register_model

__all__ = ["META_KEYS", "MetadataEncoder", "create_model", "list_models", "model_sizes",
           "register_model"]
