"""`rsctool train`: a tiny model end to end, resume after a crash, options, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_helpers import crash_and_resume
from typer.testing import CliRunner

from rsctool.checkpoint import load_checkpoint
from rsctool.cli import app
from rsctool.errors import ConfigError
from rsctool.train import (
    TrainOptions,
    cosine_with_warmup,
    is_improvement,
    run,
    validation_loss,
)

runner = CliRunner()
FAST = {"model": "cnn", "size": "tiny", "clip_seconds": 2.0, "batch_size": 32, "lr": 3e-3}


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
    assert all(h["val_loss"] > 0 for h in hist)
    # best checkpoint = the epoch with the best validation score (ties: lower val loss)
    best_epoch = max(hist, key=lambda h: (h["val_select"], -h["val_loss"]))["epoch"]
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
    opts = dict(epochs=3, specaugment=True, mixup=0.2, deterministic=True,
                checkpoint_every=2, **FAST)
    straight, resumed = crash_and_resume(monkeypatch, run, project, opts, crash_at=6)
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


def test_validation_loss_is_the_mean_nll():
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]])
    expected = -(torch.log(torch.tensor(0.5)) + torch.log(torch.tensor(0.8))) / 2
    assert validation_loss(probs, torch.tensor([0, 1])) == pytest.approx(float(expected))
    ml = torch.tensor([[0.9, 0.2]])
    expected = -(torch.log(torch.tensor(0.9)) + torch.log(torch.tensor(0.8))) / 2
    assert validation_loss(ml, torch.tensor([[1.0, 0.0]])) == pytest.approx(float(expected))


def test_model_selection_breaks_score_ties_by_validation_loss():
    assert is_improvement(0.5, 1.0, None, None)
    assert is_improvement(0.6, 9.0, 0.5, 0.1)  # higher score wins whatever the loss
    assert not is_improvement(0.4, 0.01, 0.5, 1.0)
    assert is_improvement(0.5, 0.9, 0.5, 1.0)  # same score, lower loss
    assert not is_improvement(0.5, 1.1, 0.5, 1.0)
    assert not is_improvement(0.5, 1.0, 0.5, 1.0)


def test_family_defaults_follow_the_papers():
    ast = TrainOptions(model="ast", epochs=50).resolve()
    assert ast.lr == 3e-5 and ast.warmup_epochs == 10 and ast.weight_decay == 0.01
    cnn = TrainOptions(model="cnn", epochs=50).resolve()
    assert cnn.lr == 1e-3
    # AudioSet-pretrained AST saw Hanning-window fbanks; the CNNs keep Kaldi's default
    assert ast.window == "hanning" and cnn.window == "povey"
    assert TrainOptions(model="tafilm", window="povey").resolve().window == "povey"
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


def test_existing_run_with_other_options_is_refused(project):
    proj = str(project.path)
    base = ["--project", proj, "train", "--model", "cnn", "--size", "tiny", "--run", "r1",
            "--clip-seconds", "2", "--batch-size", "32", "--epochs", "1"]
    r = runner.invoke(app, [*base, "--json"])
    assert r.exit_code == 0, r.output
    # same options, or just the name: a finished run is a no-op
    for args in (base, ["--project", proj, "train", "--run", "r1"]):
        r = runner.invoke(app, [*args, "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["skipped"] is True
    before = project.path.read_bytes()
    r = runner.invoke(app, [*base, "--lr", "0.5", "--set", "model.dropout=0.1"])
    assert r.exit_code == 2, r.output
    assert "'r1' exists with other options" in r.stderr and "lr" in r.stderr
    assert "model_cfg" in r.stderr and "--force" in r.stderr
    assert project.path.read_bytes() == before
    r = runner.invoke(app, [*base, "--lr", "0.5", "--force", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["skipped"] is False


def test_train_without_project_is_exit_2(tmp_path):
    r = runner.invoke(app, ["--project", str(tmp_path / "none.toml"), "train"])
    assert r.exit_code == 2 and "not found" in r.stderr


@pytest.mark.gpu
def test_cuda_training_with_amp_and_cpu_reload(project):
    """The CUDA path: AMP (bf16 autocast where supported, else fp16 + GradScaler whose
    state is saved for resume), pinned memory; the checkpoint reloads on CPU."""
    res = run(project, TrainOptions(epochs=2, **{**FAST, "model": "tafilm", "size": "tiny",
                                                 "pretrained": "none", "lr": 1e-3}),
              device="cuda")
    rec = project.get("runs", res.run)
    assert rec["status"] == "done" and rec["device"] == "cuda"
    ck = load_checkpoint(res.dir / "last.safetensors", device="cpu")
    assert (ck.state["scaler"] is None) == torch.cuda.is_bf16_supported()
    assert all(t.device.type == "cpu" for t in ck.model_state.values())
    assert all(torch.isfinite(t).all() for t in _weights(res.dir / "best.safetensors").values())


def test_binary_task_is_normal_vs_abnormal_end_to_end(project, tmp_path):
    """ICBHI's 2-class task: crackle, wheeze and both are `abnormal`; eval reports the
    2-class Sp/Se; the ONNX export is a 2-class softmax that predict reads."""
    from rsctool.data.manifest import read_manifest
    from rsctool.eval import EvalOptions
    from rsctool.eval import run as evaluate

    res = run(project, TrainOptions(task="binary", epochs=1, max_steps=2, **FAST))
    ck = load_checkpoint(project.abs(project.get("runs", res.run)["best"]))
    assert ck.state["config"]["classes"] == ["normal", "abnormal"]
    assert ck.state["config"]["task"] == "binary"
    doc = evaluate(project, EvalOptions(run=res.run, plots=False)).results[0]
    test = [c for c in read_manifest(project.abs(project.get("datasets", "demo")["manifest"]))
            if c.split == "test"]
    n_abnormal = sum(c.label != "normal" for c in test)
    assert doc["classes"] == ["normal", "abnormal"]
    assert doc["support"] == {"normal": len(test) - n_abnormal, "abnormal": n_abnormal}
    cm = doc["confusion"]
    assert doc["specificity"] == pytest.approx(cm[0][0] / sum(cm[0]))
    assert doc["sensitivity"] == pytest.approx(cm[1][1] / sum(cm[1]))
    out = tmp_path / "binary.onnx"
    r = runner.invoke(app, ["--project", str(project.path), "-q", "export", "--run", res.run,
                            "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["parity_inputs"] != "noise"  # real (mapped) val cycles
    wav = test[0].audio
    r = runner.invoke(app, ["--project", str(project.path), "-q", "predict", wav, "--model",
                            str(out), "--format", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["model"]["classes"] == ["normal", "abnormal"]
    records = doc["predictions"]
    assert records and {rec["label"] for rec in records} <= {"normal", "abnormal"}
    assert set(records[0]["probabilities"]) == {"normal", "abnormal"}
    assert {rec["annotated"] for rec in records} <= {"normal", "abnormal"}  # mapped too


def test_binary_task_needs_a_normal_class(tmp_path):
    from rsctool.testing import write_folder_dataset

    files = [f"{c}/{c}_{i}.wav" for c in ("a_degree", "b_degree") for i in range(4)]
    data = write_folder_dataset(tmp_path / "data", files, seconds=1.0, sample_rate=8000)
    proj = tmp_path / "rsctool.toml"
    r = runner.invoke(app, ["--project", str(proj), "-q", "analyze", str(data), "--no-plots",
                            "--no-fbank-stats", "--split", "random:0.5:0.25"])
    assert r.exit_code == 0, r.output
    before = proj.read_bytes()
    r = runner.invoke(app, ["--project", str(proj), "-q", "train", "--task", "binary",
                            "--model", "cnn", "--size", "tiny", "--epochs", "1"])
    assert r.exit_code == 2, r.output
    assert "needs a dataset with a 'normal' class" in r.output
    assert proj.read_bytes() == before
