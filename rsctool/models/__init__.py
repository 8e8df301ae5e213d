"""Classifiers by name: `create_model("tafilm", size="tiny")`, `list_models()`,
`model_traits("tafilm")`.

Importing this package imports every module in it, which registers the builders
decorated there (`register_model`), so adding a model is adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil

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

# Import every module of this package (add, ast, cnn, conditioning, ...; sorted by name) so
# its decorated builders register: a new model is one file here, with nothing to list.
for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
