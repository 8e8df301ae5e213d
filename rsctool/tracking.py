"""Optional experiment tracking for `rsctool train --log tensorboard|mlflow`.

The run directory's ``history.csv``/``history.json`` are always written; a tracker
mirrors the same per-epoch rows into a tool people already browse sweeps with. Neither
backend is a dependency: asking for one that is not installed is a clear exit-2 error
naming the package to install, checked before training starts.

A tracker gets the run's options once (`start`), one row per epoch (`log`, numeric
fields only, step = epoch) and the final status (`finish`).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from rsctool.errors import ConfigError

BACKENDS = ("tensorboard", "mlflow")


class Tracker(Protocol):
    def start(self, run: str, params: Mapping[str, Any], run_dir: Path) -> None: ...

    def log(self, metrics: Mapping[str, Any], step: int) -> None: ...

    def finish(self, status: str) -> None: ...


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested options -> ``{"a.b": "value"}`` strings (trackers take flat scalar params)."""
    out: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_params(v, key + "."))
        else:
            out[key] = str(v)[:500]  # MLflow rejects parameter values over 500 chars
    return out


class TensorBoardTracker:
    """Scalars under ``<run dir>/tensorboard`` (``tensorboard --logdir .rsctool/runs``)."""

    def __init__(self) -> None:
        try:
            importlib.import_module("tensorboard")
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ConfigError("tensorboard needs the tensorboard package: "
                              "pip install tensorboard", field="log") from e
        self._writer_cls = SummaryWriter
        self.writer: Any = None

    def start(self, run: str, params: Mapping[str, Any], run_dir: Path) -> None:
        self.writer = self._writer_cls(log_dir=str(run_dir / "tensorboard"))
        flat = flatten_params(params)
        self.writer.add_text("options", "\n".join(f"    {k} = {v}" for k, v in flat.items()))

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        for k, v in _numeric(metrics).items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def finish(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()


class MLflowTracker:
    """An MLflow run named after the rsctool run; tracking URI and experiment from
    MLflow's own settings (``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``), the
    experiment defaulting to ``rsctool``."""

    def __init__(self) -> None:
        try:
            self.mlflow = importlib.import_module("mlflow")
        except ImportError as e:
            raise ConfigError("mlflow needs the mlflow package: pip install mlflow",
                              field="log") from e
        self.active = False

    def start(self, run: str, params: Mapping[str, Any], run_dir: Path) -> None:
        import os

        if not os.environ.get("MLFLOW_EXPERIMENT_NAME") and \
                not os.environ.get("MLFLOW_EXPERIMENT_ID"):
            self.mlflow.set_experiment("rsctool")
        self.mlflow.start_run(run_name=run)
        self.active = True
        self.mlflow.log_params(flatten_params(params))
        self.mlflow.set_tag("rsctool.run_dir", str(run_dir))

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        self.mlflow.log_metrics(_numeric(metrics), step=step)

    def finish(self, status: str) -> None:
        if self.active:
            self.mlflow.end_run(status="FINISHED" if status == "done" else "KILLED")
            self.active = False


def make_trackers(names: Iterable[str]) -> list[Tracker]:
    """Trackers for ``--log`` values (repeatable, or comma-separated); ConfigError on an
    unknown name or a backend that is not installed."""
    out: list[Tracker] = []
    seen: set[str] = set()
    for raw in names:
        for name in (n.strip().lower() for n in str(raw).split(",")):
            if not name or name == "none" or name in seen:
                continue
            if name not in BACKENDS:
                raise ConfigError(f"{{field}}: unknown tracker {name!r}; choose from "
                                  f"{', '.join(BACKENDS)}", field="log")
            seen.add(name)
            out.append(TensorBoardTracker() if name == "tensorboard" else MLflowTracker())
    return out
