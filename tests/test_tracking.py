"""`rsctool train --log`: experiment trackers mirror the history; missing ones exit 2."""

from __future__ import annotations

import sys
import types

import pytest
from typer.testing import CliRunner

from rsctool.cli import app
from rsctool.errors import ConfigError
from rsctool.tracking import flatten_params, make_trackers
from rsctool.train import TrainOptions, run

FAST = {"model": "cnn", "size": "tiny", "clip_seconds": 2.0, "num_mel_bins": 32,
        "batch_size": 8, "max_steps": 4}


class FakeMlflow(types.ModuleType):
    def __init__(self):
        super().__init__("mlflow")
        self.calls: list[tuple] = []

    def set_experiment(self, name):
        self.calls.append(("experiment", name))

    def start_run(self, run_name=None):
        self.calls.append(("start", run_name))

    def log_params(self, params):
        self.calls.append(("params", params))

    def set_tag(self, key, value):
        self.calls.append(("tag", key))

    def log_metrics(self, metrics, step=None):
        self.calls.append(("metrics", step, metrics))

    def end_run(self, status=None):
        self.calls.append(("end", status))


def test_unknown_or_missing_tracker_is_a_config_error(monkeypatch):
    with pytest.raises(ConfigError, match="unknown tracker"):
        make_trackers(["wandb"])
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import fails
    with pytest.raises(ConfigError, match="pip install mlflow"):
        make_trackers(["mlflow"])
    assert make_trackers([]) == [] and make_trackers(["none"]) == []


def test_flatten_params_nests_and_truncates():
    flat = flatten_params({"a": 1, "b": {"c": [1, 2], "d": "x" * 900}})
    assert flat["a"] == "1" and flat["b.c"] == "[1, 2]" and len(flat["b.d"]) == 500


def test_mlflow_gets_params_every_epoch_and_the_end(project, monkeypatch):
    fake = FakeMlflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    res = run(project, TrainOptions(epochs=2, **{**FAST, "max_steps": None}),
              trackers=["mlflow"])
    kinds = [c[0] for c in fake.calls]
    assert kinds[:3] == ["experiment", "start", "params"] and kinds[-1] == "end"
    assert ("start", res.run) in fake.calls and ("end", "FINISHED") in fake.calls
    metrics = [c for c in fake.calls if c[0] == "metrics"]
    assert [m[1] for m in metrics] == [1, 2]
    assert {"train_loss", "val_loss", "val_score"} <= set(metrics[0][2])
    params = next(c[1] for c in fake.calls if c[0] == "params")
    assert params["model"] == "cnn" and params["clip_seconds"] == "2.0"


def test_missing_tracker_fails_before_the_project_changes(project, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    before = project.path.read_bytes()
    r = CliRunner().invoke(app, ["--project", str(project.path), "train", *(
        "--model cnn --size tiny --clip-seconds 2 --num-mel-bins 32 --max-steps 2 "
        "--log mlflow").split()])
    assert r.exit_code == 2, r.output
    assert "pip install mlflow" in r.output and "Traceback" not in r.output
    assert project.path.read_bytes() == before


def test_tensorboard_writes_event_files(project):
    pytest.importorskip("tensorboard")
    res = run(project, TrainOptions(epochs=1, **FAST), trackers=["tensorboard"])
    assert list((res.dir / "tensorboard").glob("events.out.tfevents.*"))
