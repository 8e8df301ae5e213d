"""Runs shared by the stages: find and select runs in the project, rebuild a run's model
from its checkpoint (`load_run`: config, clip, metadata encoder, classes, thresholds), and
the project record names of its exports."""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rsctool.errors import ConfigError, DataError
from rsctool.runconfig import RunConfig

if TYPE_CHECKING:
    from rsctool.project import Project


def select_runs(project: Project, run: str | None, patterns: Sequence[str]
                ) -> list[tuple[str, bool]]:
    """Run names to evaluate, in project order, each with whether it was named exactly.

    `patterns` may hold exact names, glob patterns (``*?[``) and comma-separated lists.
    No patterns and no `run`: the last finished run (status ``done``) in the project, else
    the last run: a run started later and interrupted does not silently replace the model
    the user trained, evaluated and exported.

    Raises:
        ConfigError: no runs in the project, an unknown name, or a pattern matching none.
    """
    runs = project.section("runs")
    known = list(runs)
    known_text = ", ".join(known) or "none"
    if not known:
        raise ConfigError(f"{project.path}: no runs in the project; train one first "
                          "(`rsctool train --model cnn`)")
    if not patterns:
        done = [n for n in known if runs[n].get("status") == "done"]
        name = run if run is not None else (done or known)[-1]
        if name not in runs:
            raise ConfigError(f"{name!r} is not in the project (known runs: {known_text})",
                              field="run")
        return [(name, True)]
    chosen: dict[str, bool] = {}
    for raw in patterns:
        for pat in (p.strip() for p in raw.split(",")):
            if not pat:
                continue
            if pat in runs:  # an exact name wins, even if it holds glob characters
                chosen[pat] = True
            elif any(ch in pat for ch in "*?["):
                hits = [n for n in known if fnmatch.fnmatchcase(n, pat)]
                if not hits:
                    raise ConfigError(f"{pat!r} matches no run (known runs: "
                                      f"{known_text})", field="runs")
                for n in hits:
                    chosen.setdefault(n, False)
            else:
                raise ConfigError(f"{pat!r} is not in the project (known runs: "
                                  f"{known_text})", field="runs")
    if not chosen:
        raise ConfigError("{field}: no run names given", field="runs")
    return [(n, chosen[n]) for n in known if n in chosen]


def checkpoint_path(project: Project, name: str, record: dict[str, Any], which: str) -> Path:
    """The `which` (best|last) checkpoint file of run `name` (it may not exist)."""
    if record.get(which):
        return project.abs(record[which])
    run_dir = project.record_dir("runs", name, record)
    return run_dir / f"{which}.safetensors"


#: `torch.nn.init` functions that fill parameters with random numbers.
_RANDOM_INITS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_",
                 "kaiming_normal_", "xavier_uniform_", "xavier_normal_", "orthogonal_")


@contextlib.contextmanager
def _random_init_off() -> Iterator[None]:
    """`torch.nn.init`'s random initialisers as no-ops (the parameters keep whatever
    memory they were allocated with), as transformers' ``no_init_weights`` does."""
    import torch.nn.init as init

    saved = {n: getattr(init, n) for n in _RANDOM_INITS}
    try:
        for n in _RANDOM_INITS:
            setattr(init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(init, n, f)


def rebuild_model(config: RunConfig | dict[str, Any], skip_init: bool = False) -> Any:
    """A fresh model from a run config (or its dict), weights not yet loaded.

    ``config.model`` is the model's own ``model.config`` (its ``name`` plus every
    builder keyword). Pretrained loading is switched off: the weights come from the
    checkpoint, so evaluation never reaches a hub. `skip_init`: leave the parameters
    uninitialised, for a caller that loads every one of them next with a strict
    `load_state_dict` (AST base: 0.7 s of random numbers saved).
    """
    from rsctool.models import create_model

    cfg = dict(config.model if isinstance(config, RunConfig) else config["model"])
    name = cfg.pop("name")
    if name == "add" and "embed_dim" in cfg:
        # a run of the stand-alone network, trained when it was called `add`
        name = "add-standalone"
    if "pretrained" in cfg:
        cfg["pretrained"] = None
    with _random_init_off() if skip_init else contextlib.nullcontext():
        return create_model(name, **cfg)


@dataclass
class LoadedRun:
    """A run's model rebuilt from a checkpoint, with everything needed to feed it."""

    name: str
    record: dict[str, Any]
    dir: Path
    checkpoint: Path
    which: str
    config: RunConfig
    state: dict[str, Any]
    model: Any
    clip: Any
    encoder: Any
    classes: list[str]
    task: str
    thresholds: list[float] | None


def load_run(project: Project, name: str, which: str = "best", device: str = "cpu") -> LoadedRun:
    """Rebuild run `name`'s model from its `which` checkpoint, in eval mode on `device`.

    Raises:
        ConfigError: unknown run, or a run without that checkpoint yet.
        DataError: an unreadable checkpoint or one that does not fit its own config.
    """
    from rsctool.checkpoint import load_checkpoint
    from rsctool.data.dataset import ClipConfig
    from rsctool.models.metadata import MetadataEncoder

    record = project.get("runs", name)
    if record is None:
        known = ", ".join(project.section("runs")) or "none"
        raise ConfigError(f"run {name!r} is not in the project (known runs: {known})")
    run_dir = project.record_dir("runs", name, record)  # where eval writes: checked
    path = checkpoint_path(project, name, record, which)
    if not path.exists():
        status = record.get("status", "unknown")
        hint = (" (try --checkpoint last)" if which == "best"
                and checkpoint_path(project, name, record, "last").exists() else "")
        raise ConfigError(f"run {name!r} has no {which} checkpoint (status {status}; "
                          f"expected {path}); train it first{hint}")
    ck = load_checkpoint(path)
    raw = ck.state.get("config")
    if not isinstance(raw, dict) or "model" not in raw or "clip" not in raw:
        raise DataError("checkpoint has no run config (not written by `rsctool train`)", path)
    config = RunConfig.from_dict(raw, path)
    model = rebuild_model(config, skip_init=True)
    own = model.state_dict()
    # The checkpoint's tensors become the parameters (no 344 MB copy for AST base: 90 ms)
    # when they already have the model's dtypes; otherwise they are copied (and cast).
    assign = all(k in own and own[k].dtype == v.dtype for k, v in ck.model_state.items())
    try:
        model.load_state_dict(ck.model_state, strict=True, assign=assign)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise DataError(f"checkpoint weights do not fit the model it describes ({first})",
                        path) from None
    model.to(device)
    model.eval()
    encoder = (MetadataEncoder.from_dict(config.metadata_encoder)
               if config.metadata_encoder else None)
    thresholds = ck.state.get("thresholds")
    return LoadedRun(
        name=name, record=record, dir=run_dir, checkpoint=path, which=which,
        config=config, state=ck.state, model=model, clip=ClipConfig.from_dict(config.clip),
        encoder=encoder, classes=list(config.classes), task=config.task,
        thresholds=[float(t) for t in thresholds] if thresholds else None)


def export_name(run: str, with_features: bool, quantize: str) -> str:
    """Project record name of an export: the run name plus ``-wav`` / ``-int8``."""
    return run + ("-wav" if with_features else "") + ("-int8" if quantize == "int8" else "")
