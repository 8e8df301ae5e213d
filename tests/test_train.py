"""`rsctool train`: a tiny model end to end, resume after a crash, options, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rsctool.checkpoint import load_checkpoint
from rsctool.cli import app
from rsctool.errors import ConfigError
from rsctool.project import Project
from rsctool.train import TrainOptions, cosine_with_warmup, run

runner = CliRunner()
FAST = {"model": "cnn", "size": "tiny", "clip_seconds": 2.0, "batch_size": 32, "lr": 3e-3}


@pytest.fixture(scope="session")
def analysed(tmp_path_factory) -> Path:
    """A project with the demo dataset analysed (12 patients), built once."""
    from rsctool.analyze import AnalyzeOptions
    from rsctool.analyze import run as analyze
    from rsctool.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("trainproj")
    make_demo_dataset(root / "data", patients=12, seed=0)
    analyze(Project.load(root / "rsctool.toml"),
            AnalyzeOptions(data_dir=root / "data", name="demo", val_fraction=0.2, plots=False))
    return root


@pytest.fixture
def project(analysed, tmp_path) -> Project:
    dst = tmp_path / "proj"
    shutil.copytree(analysed, dst, ignore=shutil.ignore_patterns("data"))
    return Project.load(dst / "rsctool.toml")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).model_state


def test_train_records_run_and_artifacts(project):
    res = run(project, TrainOptions(epochs=2, **FAST))
    rec = project.get("runs", res.run)
    assert rec["status"] == "done" and rec["epoch"] == 2 and rec["model"] == "cnn"
    assert rec["dataset"] == "demo" and rec["split_hash"]
    run_dir = project.abs(rec["dir"])
    for f in ("config.json", "history.json", "history.csv", "last.safetensors",
              "best.safetensors", "summary.json"):
        assert (run_dir / f).exists(), f
    hist = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
    assert all(h["val_score"] is not None for h in hist)
    ck = load_checkpoint(run_dir / "last.safetensors")
    cfg = ck.state["config"]
    assert cfg["classes"] == ["normal", "crackle", "wheeze", "both"]
    assert cfg["clip"]["clip_seconds"] == 2.0 and cfg["model"]["name"] == "cnn"
    assert ck.optimizer_state is not None and "torch" in ck.rng
    # best checkpoint = the epoch with the best validation score
    best_epoch = max(hist, key=lambda h: h["val_select"])["epoch"]
    assert load_checkpoint(run_dir / "best.safetensors").state["best_epoch"] == best_epoch
    # a finished run is a no-op unless forced
    again = run(project, TrainOptions(run=res.run, epochs=2, **FAST))
    assert again.skipped


def test_test_split_is_never_loaded(project, monkeypatch):
    import rsctool.data.dataset as ds

    seen: set[str] = set()
    orig = ds.cycle_features

    def spy(cycle, clip, cache):
        seen.add(cycle.split)
        return orig(cycle, clip, cache)

    monkeypatch.setattr(ds, "cycle_features", spy)
    run(project, TrainOptions(epochs=1, **FAST))
    assert seen == {"train", "val"}


def test_crash_and_resume_gives_identical_weights(project, monkeypatch):
    import rsctool.data.dataset as ds

    opts = dict(epochs=3, specaugment=True, mixup=0.2, deterministic=True,
                checkpoint_every=2, **FAST)
    straight = run(project, TrainOptions(run="straight", **opts))

    orig = ds.spec_augment
    calls = {"n": 0}

    def crash_at_step_6(x, **kw):
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("simulated crash")
        return orig(x, **kw)

    monkeypatch.setattr(ds, "spec_augment", crash_at_step_6)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(project, TrainOptions(run="crashy", **opts))
    assert project.get("runs", "crashy")["status"] == "running"
    monkeypatch.setattr(ds, "spec_augment", orig)
    resumed = run(project, TrainOptions(run="crashy", **opts))
    assert resumed.resumed and resumed.steps == straight.steps
    a = _weights(straight.dir / "last.safetensors")
    b = _weights(resumed.dir / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_lr_schedule():
    assert cosine_with_warmup(0, 100, 10) == pytest.approx(0.1)
    assert cosine_with_warmup(9, 100, 10) == pytest.approx(1.0)
    assert cosine_with_warmup(10, 100, 10) == pytest.approx(1.0)
    assert cosine_with_warmup(55, 100, 10) == pytest.approx(0.5)
    assert cosine_with_warmup(100, 100, 10) == pytest.approx(0.0, abs=1e-12)


def test_family_defaults_follow_the_papers():
    ast = TrainOptions(model="ast", epochs=50).resolve()
    assert ast.lr == 3e-5 and ast.warmup_epochs == 10 and ast.weight_decay == 0.01
    cnn = TrainOptions(model="cnn", epochs=50).resolve()
    assert cnn.lr == 1e-3
    assert TrainOptions(task="multilabel").resolve().loss == "bce"
    with pytest.raises(ConfigError):
        TrainOptions(task="ranking").resolve()


def test_multilabel_thresholds_chosen_on_validation(project):
    res = run(project, TrainOptions(epochs=1, task="multilabel", **FAST))
    ck = load_checkpoint(res.dir / "best.safetensors")
    t = ck.state["thresholds"]
    assert len(t) == 2 and all(0.0 <= v <= 1.0 + 1e-6 for v in t)


def test_cli_train_json_and_bad_options(project):
    proj = str(project.path)
    r = runner.invoke(app, ["--project", proj, "train", "--model", "cnn", "--size", "tiny",
                            "--epochs", "1", "--set", "clip_seconds=2", "--batch-size", "32",
                            "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["run"] == "cnn" and doc["epochs"] == 1
    for args, needle in ((["--model", "nosuch"], "nosuch"),
                         (["--set", "bogus=1"], "bogus"),
                         (["--dataset", "nope"], "nope"),
                         (["--model", "cnn", "--set", "model.nokey=3"], "nokey")):
        before = project.path.read_bytes()
        r = runner.invoke(app, ["--project", proj, "train", "--size", "tiny", "--epochs", "1",
                                *args])
        assert r.exit_code == 2, r.output
        assert needle in r.stderr and "Traceback" not in r.output
        assert project.path.read_bytes() == before  # validated before anything is written


def test_train_without_project_is_exit_2(tmp_path):
    r = runner.invoke(app, ["--project", str(tmp_path / "none.toml"), "train"])
    assert r.exit_code == 2 and "not found" in r.stderr
