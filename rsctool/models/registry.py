"""Model registry: build any classifier by name, and look up what kind of model it is.

A model is one decorated builder in one file, with its traits beside it (timm style)::

    @register_model("ast", sizes=("tiny", "small", "base"),
                    traits=ModelTraits(family="ast", transformer=True, window="hanning",
                                       pretrained=True))
    def ast(*, num_classes=4, size="base", input_tdim=798, input_fdim=128,
            meta_spec=None, **cfg) -> nn.Module: ...

``create_model("ast", size="tiny")`` builds it and ``model_traits("ast")`` answers the
questions the stages ask about a model by name (default learning rate and window, whether
it can rank, whether it reads metadata) without building it. Builders validate their own
config and raise `ConfigError` for an unknown size or key; `create_model` also
catches keys a builder without ``**cfg`` cannot take, and records the registered
name in ``model.config["name"]`` so ``create_model(**model.config)``-style rebuilds work.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from rsctool.errors import ConfigError

#: The tasks every classifier trains for (``--task``); ``ranking`` needs a score output.
CLASSIFICATION_TASKS = frozenset({"multiclass", "multilabel", "binary"})


@dataclass(frozen=True)
class ModelTraits:
    """What a registered model is, for the stages that choose defaults by model name.

    Attributes:
        family: the architecture family: ``"ast"`` (the transformers AST backbone: `ast`
            and the metadata-conditioned ASTs), ``"add"``, ``"cnn"`` (`cnn`, `resnet`), ...
        transformer: trained like the AST papers (``--lr`` 3e-5, up to 10 warm-up epochs
            instead of 1e-3 and 1) and slow on a CPU at size ``base`` (the hint).
        input: what ``forward`` takes: ``"fbank"``, log-mel filterbanks `(B, T, F)`.
        window: the default ``--window`` of its fbanks: ``"hanning"`` for the AST backbone
            (its AudioSet checkpoints were trained on them), Kaldi's ``"povey"`` elsewhere.
        score_output: the builder takes ``output="score"`` and then returns one score per
            example (``logits`` `(B, 1)`), so the model can train ``--task ranking``.
        metadata: ``forward`` reads the cycle metadata (``model.needs_metadata``).
        pretrained: the builder takes ``pretrained=HUB_ID|DIR|"none"`` (``--pretrained``).
        sizes: the size names the builder accepts, smallest first (filled in by
            `register_model` from its ``sizes`` argument).
        tasks: the ``--task`` values it supports; default: the classification tasks, plus
            ``ranking`` when it has a score output.
    """

    family: str
    transformer: bool = False
    input: str = "fbank"
    window: str = "povey"
    score_output: bool = False
    metadata: bool = False
    pretrained: bool = False
    sizes: tuple[str, ...] = ()
    tasks: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.tasks is None:
            tasks = CLASSIFICATION_TASKS | ({"ranking"} if self.score_output else set())
            object.__setattr__(self, "tasks", frozenset(tasks))
        else:
            object.__setattr__(self, "tasks", frozenset(self.tasks))
        object.__setattr__(self, "sizes", tuple(self.sizes))

    def to_dict(self) -> dict:
        """JSON-safe form (``tasks`` sorted, ``sizes`` a list)."""
        d = dataclasses.asdict(self)
        d["tasks"], d["sizes"] = sorted(self.tasks or ()), list(self.sizes)
        return d


_MODELS: dict[str, Callable[..., nn.Module]] = {}
_TRAITS: dict[str, ModelTraits] = {}


def register_model(name: str, *, sizes: Sequence[str] | None = None,
                   traits: ModelTraits | None = None) -> Callable:
    """Decorator registering a model builder under `name`, with its traits.

    Args:
        name: the public model name (``--model NAME``).
        sizes: the size names the builder accepts; when omitted, ``traits.sizes``, else the
            default of the builder's ``size`` parameter is the only declared size.
        traits: what the model is (`ModelTraits`); omitted: a plain classifier
            (``family=name``, Kaldi window, no score output, no metadata).

    Raises:
        ValueError: `name` is already registered (two builders would shadow each other).
    """

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        t = traits if traits is not None else ModelTraits(family=name)
        if sizes is not None:
            declared = tuple(sizes)
        elif t.sizes:
            declared = t.sizes
        else:
            default = inspect.signature(fn).parameters.get("size")
            has_default = default is not None and isinstance(default.default, str)
            declared = (default.default,) if has_default else ()
        _MODELS[name] = fn
        _TRAITS[name] = dataclasses.replace(t, sizes=declared)
        return fn

    return deco


def unregister_model(name: str) -> None:
    """Remove model `name` (tests registering a throwaway builder clean up with this)."""
    _check_name(name)
    del _MODELS[name], _TRAITS[name]


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def model_traits(name: str) -> ModelTraits:
    """The traits model `name` was registered with.

    Raises:
        ConfigError: unknown model name.
    """
    _check_name(name)
    return _TRAITS[name]


def models_with(predicate: Callable[[ModelTraits], bool]) -> list[str]:
    """Registered model names (sorted) whose traits satisfy `predicate`."""
    return [n for n in list_models() if predicate(_TRAITS[n])]


def model_sizes(name: str) -> list[str]:
    """The size names model `name` accepts (smallest first, as registered)."""
    _check_name(name)
    return list(_TRAITS[name].sizes)


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
