"""Model registry: build any classifier by name.

A model family is one decorated builder::

    @register_model("ast", sizes=("tiny", "small", "base"))
    def ast(*, num_classes=4, size="base", input_tdim=798, input_fdim=128,
            meta_spec=None, **cfg) -> nn.Module: ...

and ``create_model("ast", size="tiny")`` builds it. Builders validate their own
config and raise `ConfigError` for an unknown size or key; `create_model` also
catches keys a builder without ``**cfg`` cannot take, and records the registered
name in ``model.config["name"]`` so ``create_model(**model.config)``-style rebuilds work.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

from torch import nn

from rsctool.errors import ConfigError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_SIZES: dict[str, tuple[str, ...]] = {}


def register_model(name: str, *, sizes: Sequence[str] | None = None) -> Callable:
    """Decorator registering a model builder under `name`.

    Args:
        name: the public model name (``--model NAME``).
        sizes: the size names the builder accepts; when omitted, the default of the
            builder's ``size`` parameter is the only declared size.

    Raises:
        ValueError: `name` is already registered (two builders would shadow each other).
    """

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        if sizes is not None:
            _SIZES[name] = tuple(sizes)
        else:
            default = inspect.signature(fn).parameters.get("size")
            has_default = default is not None and isinstance(default.default, str)
            _SIZES[name] = (default.default,) if has_default else ()
        return fn

    return deco


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def model_sizes(name: str) -> list[str]:
    """The size names model `name` accepts (smallest first, as registered)."""
    _check_name(name)
    return list(_SIZES[name])


def _check_name(name: str) -> None:
    if name not in _MODELS:
        known = ", ".join(list_models()) or "(none registered)"
        raise ConfigError(f"unknown model {name!r}; known models: {known}")


def create_model(name: str, **cfg) -> nn.Module:
    """Build model `name` with builder keyword arguments `cfg`.

    Raises:
        ConfigError: unknown model name, size or config key.
    """
    _check_name(name)
    fn = _MODELS[name]
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(cfg) - set(params))
        if unknown:
            raise ConfigError(f"model {name!r}: unknown config key(s) {unknown}; "
                              f"known: {sorted(params)}")
    model = fn(**cfg)
    config = getattr(model, "config", None)
    if isinstance(config, dict):
        config["name"] = name
    return model
