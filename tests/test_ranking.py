"""Folder datasets as ordinal data: `analyze --name-pattern/--where/--group-by`, `train
--task ranking` (margin and GHM losses), ranking metrics, GHM statistics and plots."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import crash_and_resume
from typer.testing import CliRunner

from rsctool.cli import app
from rsctool.data.demo import FOLDER_NAME_PATTERN, make_demo_folder_dataset
from rsctool.errors import ConfigError
from rsctool.metrics import (
    choose_rank_thresholds,
    class_rank_order,
    pairwise_accuracy,
    ranking_metrics,
    scores_to_classes,
    spearman,
)
from rsctool.project import Project

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: A tiny ranking run on the folder demo (1 s clips, 64 mel bins).
RANK = ["--task", "ranking", "--model", "cnn", "--size", "tiny", "--clip-seconds", "1",
        "--num-mel-bins", "64", "--batch-size", "16", "--lr", "3e-3", "--no-specaugment"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def invoke(project: Path, *args: str):
    return runner.invoke(app, ["--project", str(project), "-q", *map(str, args)])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def folder_demo(tmp_path_factory) -> Path:
    """The folder demo at one frequency: 5 angles x 3 materials x 6 files (90 files)."""
    root = tmp_path_factory.mktemp("angles") / "data"
    make_demo_folder_dataset(root, frequencies=(1000,), per_combination=6)
    return root


@pytest.fixture(scope="module")
def analysed(folder_demo, tmp_path_factory) -> Path:
    proj = tmp_path_factory.mktemp("rankproj") / "rsctool.toml"
    r = invoke(proj, "analyze", folder_demo, "--format", "folder", "--name", "angles",
               "--name-pattern", FOLDER_NAME_PATTERN, "--no-plots", "--no-fbank-stats")
    assert r.exit_code == 0, r.output
    return proj


@pytest.fixture(scope="module")
def trained(analysed, tmp_path_factory) -> Path:
    """`analysed` plus a GHM ranking run ``rank-ghm`` (10 epochs), built once."""
    dst = tmp_path_factory.mktemp("rankrun")
    shutil.copytree(analysed.parent, dst, dirs_exist_ok=True)
    proj = dst / "rsctool.toml"
    r = invoke(proj, "train", *RANK, "--loss", "ghm", "--ghm-bins", "8", "--ghm-alpha",
               "0.75", "--epochs", "10", "--run", "rank-ghm")
    assert r.exit_code == 0, r.output
    return proj


@pytest.fixture
def proj(trained, tmp_path) -> Path:
    """A private copy of the trained project."""
    dst = tmp_path / "proj"
    shutil.copytree(trained.parent, dst)
    return dst / "rsctool.toml"


# --------------------------------------------------------------------------- metrics

def test_class_rank_order():
    assert class_rank_order(["45_degree", "0_degree", "135_degree", "90_degree"]) == [
        "0_degree", "45_degree", "90_degree", "135_degree"]
    assert class_rank_order(["2.5x", "-1y", "10"]) == ["-1y", "2.5x", "10"]
    assert class_rank_order(["low", "high", "mid"], ["low", "mid", "high"]) == [
        "low", "mid", "high"]
    with pytest.raises(ConfigError, match="'low' does not start with a number"):
        class_rank_order(["low", "high"])
    with pytest.raises(ConfigError, match="same number"):
        class_rank_order(["1_a", "1_b"])
    with pytest.raises(ConfigError, match="unknown class"):
        class_rank_order(["a", "b"], ["a", "c"])
    with pytest.raises(ConfigError, match="missing b"):
        class_rank_order(["a", "b"], ["a"])


def test_pairwise_accuracy_and_spearman_by_hand():
    scores = [0.1, 0.5, 0.4, 2.0, 3.0]
    keys = [0, 0, 1, 2, 2]
    # 8 pairs of different keys; only (0.5 key 0, 0.4 key 1) is in the wrong order.
    assert pairwise_accuracy(scores, keys) == pytest.approx(7 / 8)
    assert pairwise_accuracy([1.0, 1.0], [0, 1]) == 0.5  # a score tie counts one half
    assert pairwise_accuracy([1.0, 2.0], [1, 1]) is None
    # ranks of the scores 0,2,1,3,4; of the keys (ties averaged) 0.5,0.5,2,3.5,3.5
    rs = np.array([0, 2, 1, 3, 4.0]) - 2
    rk = np.array([0.5, 0.5, 2, 3.5, 3.5]) - 2
    want = (rs * rk).sum() / np.sqrt((rs * rs).sum() * (rk * rk).sum())
    assert spearman(scores, keys) == pytest.approx(want)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [0, 1, 2]) is None


def test_rank_thresholds_maximise_accuracy():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    scores = 3.0 * y + rng.uniform(-1, 1, 200)  # separable: gaps of 1 between classes
    t = choose_rank_thresholds(scores, y, 4)
    assert len(t) == 3 and t == sorted(t)
    assert (scores_to_classes(scores, t) == y).all()
    # one out-of-order pair (1.0 is class 0, 0.5 class 1): the best cut misses one of them
    t2 = choose_rank_thresholds([0.0, 1.0, 2.0, 3.0, 0.5], [0, 0, 1, 1, 1], 2)
    assert (scores_to_classes([0.0, 1.0, 2.0, 3.0, 0.5], t2) == [0, 0, 1, 1, 1]).sum() == 4
    assert scores_to_classes([-5.0, 0.0, 5.0], [-1.0, 1.0]).tolist() == [0, 1, 2]
    m = ranking_metrics(scores, y, ["a", "b", "c", "d"], t)
    assert m["accuracy"] == 1.0 and m["pairwise_accuracy"] == 1.0 and m["score"] is None


# ------------------------------------------------------------------- demo and analyze

def test_folder_demo_layout_and_determinism(tmp_path):
    a = make_demo_folder_dataset(tmp_path / "a", angles=(0, 90), materials=("wood",),
                                 frequencies=(500,), per_combination=2, seconds=0.2)
    b = make_demo_folder_dataset(tmp_path / "b", angles=(0, 90), materials=("wood",),
                                 frequencies=(500,), per_combination=2, seconds=0.2)
    files = sorted(p.relative_to(tmp_path / "a").as_posix()
                   for p in (tmp_path / "a").rglob("*.wav"))
    assert files == ["0_degree/wood/wood_0_degree_500hz_1.wav",
                     "0_degree/wood/wood_0_degree_500hz_2.wav",
                     "90_degree/wood/wood_90_degree_500hz_1.wav",
                     "90_degree/wood/wood_90_degree_500hz_2.wav"]
    assert a.files == b.files == 4 and a.classes == ["0_degree", "90_degree"]
    for f in files:
        assert _sha(tmp_path / "a" / f) == _sha(tmp_path / "b" / f)
    (tmp_path / "c" / "other").mkdir(parents=True)
    with pytest.raises(ConfigError, match="not part of this demo"):
        make_demo_folder_dataset(tmp_path / "c")


def test_demo_data_kind_folder_cli(tmp_path):
    r = runner.invoke(app, ["demo-data", str(tmp_path / "d"), "--kind", "folder", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["files"] == 135 and doc["name_pattern"] == FOLDER_NAME_PATTERN
    r = runner.invoke(app, ["demo-data", str(tmp_path / "e"), "--kind", "nope"])
    assert r.exit_code == 2 and "--kind must be icbhi, sprsound or folder" in r.output, r.output


def test_analyze_pattern_where_group_by(tmp_path):
    data = make_demo_folder_dataset(tmp_path / "data", per_combination=2, seconds=0.2,
                                    materials=("plastic", "metal", "wood", "glass")).root
    proj = tmp_path / "rsctool.toml"
    r = invoke(proj, "analyze", data, "--format", "folder", "--name", "f", "--no-plots",
               "--no-fbank-stats", "--name-pattern", FOLDER_NAME_PATTERN,
               "--where", "frequency=1000hz,3000hz", "--group-by", "material",
               "--split", "random:0.5:0.25")
    assert r.exit_code == 0, r.output
    p = Project.load(proj)
    rec = p.get("datasets", "f")
    assert rec["name_pattern"] == FOLDER_NAME_PATTERN and rec["group_by"] == "material"
    assert rec["where"] == {"frequency": ["1000hz", "3000hz"]}
    from rsctool.data.manifest import read_manifest

    cycles = read_manifest(p.abs(rec["manifest"]))
    assert len(cycles) == 5 * 4 * 2 * 2  # angles x materials x 2 frequencies x 2
    assert {c.meta["frequency"] for c in cycles} == {"1000hz", "3000hz"}
    split_of: dict[str, set[str]] = {}
    for c in cycles:
        assert c.meta["groups"] == [c.meta["material"]]
        split_of.setdefault(c.meta["material"], set()).add(c.split)
    assert all(len(s) == 1 for s in split_of.values()), split_of  # a material stays whole
    assert {next(iter(s)) for s in split_of.values()} == {"train", "val", "test"}


@pytest.mark.parametrize("args, message", [
    (["--where", "frequency"], "--where expects FIELD=VALUE"),
    (["--where", "=1000hz"], "--where expects FIELD=VALUE"),
    (["--where", "frequency=1000hz"], "needs a name pattern"),
    (["--name-pattern", FOLDER_NAME_PATTERN, "--where", "colour=red"],
     "'colour' is not in the name pattern"),
    (["--name-pattern", "{material}{class}"], "separated by literal text"),
    (["--name-pattern", "no fields"], "has no {field}"),
    (["--name-pattern", FOLDER_NAME_PATTERN, "--group-by", "colour"],
     "group-by field 'colour'"),
    (["--name-pattern", FOLDER_NAME_PATTERN, "--where", "frequency=7hz"],
     "no file matches the filter"),
])
def test_analyze_bad_folder_options_exit_2(folder_demo, tmp_path, args, message):
    proj = tmp_path / "rsctool.toml"
    proj.write_text("schema = 1\n")
    before = proj.read_bytes()
    r = invoke(proj, "analyze", folder_demo, "--format", "folder", "--no-plots",
               "--no-fbank-stats", *args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output, r.output
    assert proj.read_bytes() == before


def test_analyze_folder_options_refused_for_icbhi(tmp_path):
    from rsctool.data.demo import make_demo_dataset

    make_demo_dataset(tmp_path / "icbhi", patients=4, recordings_per_patient=1)
    r = invoke(tmp_path / "p.toml", "analyze", tmp_path / "icbhi", "--no-plots",
               "--no-fbank-stats", "--group-by", "groups")
    assert r.exit_code == 2 and "apply to folder datasets" in r.output, r.output


# --------------------------------------------------------------------------- training

@pytest.mark.parametrize("args, message", [
    (["--loss", "focal"], "--task ranking trains with --loss margin or ghm"),
    (["--model", "ast"], "needs a model with a score output"),
    (["--set", "mixup=0.2"], "does not apply to --task ranking"),
    (["--class-order", "0_degree,45_degree"], "--class-order must list each class once"),
    (["--ghm-bins", "5"], "need --loss ghm"),
    (["--loss", "ghm", "--ghm-bins", "0"], "bins must be a positive integer"),
    (["--loss", "ghm", "--ghm-momentum", "1.5"], "momentum must be in"),
])
def test_ranking_bad_options_exit_2(analysed, tmp_path, args, message):
    shutil.copytree(analysed.parent, tmp_path / "p")
    proj = tmp_path / "p" / "rsctool.toml"
    before = proj.read_bytes()
    r = invoke(proj, "train", *RANK, "--epochs", "1", *args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output, r.output
    assert proj.read_bytes() == before


def test_ranking_losses_need_ranking_task(analysed, tmp_path):
    shutil.copytree(analysed.parent, tmp_path / "p")
    proj = tmp_path / "p" / "rsctool.toml"
    r = invoke(proj, "train", "--model", "cnn", "--size", "tiny", "--loss", "margin")
    assert r.exit_code == 2 and "is a ranking loss" in r.output, r.output
    r = invoke(proj, "train", "--model", "cnn", "--size", "tiny", "--class-order", "a,b")
    assert r.exit_code == 2 and "applies to --task ranking only" in r.output, r.output


def test_ranking_needs_numeric_classes(tmp_path):
    from rsctool.testing import write_folder_dataset

    data = write_folder_dataset(tmp_path / "d", [f"{c}/{i}.wav" for c in ("low", "high")
                                                 for i in range(6)], seconds=0.3)
    proj = tmp_path / "rsctool.toml"
    r = invoke(proj, "analyze", data, "--no-plots", "--no-fbank-stats")
    assert r.exit_code == 0, r.output
    before = proj.read_bytes()
    r = invoke(proj, "train", *RANK, "--epochs", "1")
    assert r.exit_code == 2, r.output
    assert "class 'high' does not start with a number" in r.output, r.output
    assert proj.read_bytes() == before
    r = invoke(proj, "train", *RANK, "--epochs", "1", "--class-order", "low,high,mid")
    assert r.exit_code == 2 and "unknown class(es) mid" in r.output, r.output
    assert proj.read_bytes() == before
    # with an explicit order it trains
    r = invoke(proj, "train", *RANK, "--epochs", "1", "--class-order", "low,high",
               "--clip-seconds", "0.5", "--run", "lh")
    assert r.exit_code == 0, r.output
    assert Project.load(proj).get("runs", "lh")["classes"] == ["low", "high"]
    # without --model, ranking trains a cnn (the default ast has no score output)
    r = invoke(proj, "train", "--task", "ranking", "--size", "tiny", "--clip-seconds", "0.5",
               "--num-mel-bins", "64", "--class-order", "low,high", "--max-steps", "1",
               "--run", "dm")
    assert r.exit_code == 0, r.output
    assert Project.load(proj).get("runs", "dm")["model"] == "cnn"


@pytest.mark.slow
def test_ranking_run_end_to_end(trained):
    p = Project.load(trained)
    rec = p.get("runs", "rank-ghm")
    assert rec["status"] == "done" and rec["task"] == "ranking" and rec["epoch"] == 10
    assert rec["classes"] == ["0_degree", "45_degree", "90_degree", "135_degree",
                              "180_degree"]
    run_dir = p.abs(rec["dir"])
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["options"]["loss"] == "ghm-ranking" and cfg["model"]["output"] == "score"
    assert cfg["options"]["loss_cfg"] == {"bins": 8, "alpha": 0.75}
    hist = json.loads((run_dir / "history.json").read_text())
    assert all(h["val_pairwise_accuracy"] is not None for h in hist)
    assert max(h["val_pairwise_accuracy"] for h in hist) > 0.7
    stats = json.loads((run_dir / "ghm_stats.json").read_text())
    assert [s["epoch"] for s in stats] == list(range(1, 11))
    for s in stats:
        assert s["bins"] == 8 and len(s["counts"]) == 8 and sum(s["counts"]) == s["n"] > 0
        assert sum(s["fraction"]) == pytest.approx(1.0)
        # the epoch's mean weight per example is 1 (each step's weights have mean 1)
        mw = sum(c * (w or 0.0) for c, w in zip(s["counts"], s["mean_weight"], strict=True))
        assert mw / s["n"] == pytest.approx(1.0, rel=1e-4)

    r = invoke(trained, "eval", "--run", "rank-ghm", "--json", "--no-plots")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["task"] == "ranking" and doc["split"] == "test"
    assert doc["pairwise_accuracy"] > 0.7, doc  # chance is 0.5
    assert doc["spearman"] > 0.5, doc
    assert len(doc["thresholds"]) == 4 and doc["thresholds"] == sorted(doc["thresholds"])
    assert doc["thresholds_source"] == "validation (training)"
    assert 0.0 <= doc["accuracy"] <= 1.0 and doc["score"] is None
    rec = Project.load(trained).get("runs", "rank-ghm")
    assert rec["eval_test_pairwise_accuracy"] == doc["pairwise_accuracy"]
    preds = [json.loads(line) for line in Path(doc["files"]["predictions"]).read_text()
             .splitlines()]
    assert all("score" in row and "probs" not in row for row in preds)


@pytest.mark.slow
def test_eval_plots_ghm_writes_pngs(proj):
    r = invoke(proj, "eval", "--run", "rank-ghm", "--plots", "ghm", "--ghm-epochs", "1,5,10",
               "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    plots = [Path(p) for p in doc["files"]["plots"]]
    names = sorted(p.name for p in plots)
    assert names == sorted([f"epoch_{e:03d}.png" for e in range(1, 11)]
                           + ["compare.png", "summary.png"])
    for p in plots:
        assert p.read_bytes()[:8] == PNG_MAGIC
    assert doc["plot_kinds"] == ["ghm"]
    # the standard plots are asked for now: re-evaluated, not skipped
    r = invoke(proj, "eval", "--run", "rank-ghm", "--json")
    doc = json.loads(r.stdout)
    assert not doc["skipped"] and any(p.endswith("confusion_test.png")
                                      for p in doc["files"]["plots"])
    assert any(p.endswith("summary.png") for p in doc["files"]["plots"])
    r = invoke(proj, "eval", "--run", "rank-ghm", "--plots", "ghm", "--ghm-epochs", "11")
    assert r.exit_code == 2 and "no GHM statistics for epoch(s) 11" in r.output, r.output
    r = invoke(proj, "eval", "--run", "rank-ghm", "--plots", "bars")
    assert r.exit_code == 2 and "unknown kind 'bars'" in r.output, r.output


@pytest.mark.slow
def test_eval_plots_ghm_needs_ghm_run(proj):
    r = invoke(proj, "train", *RANK, "--loss", "margin", "--epochs", "1", "--run", "m")
    assert r.exit_code == 0, r.output
    assert not (Project.load(proj).abs(Project.load(proj).get("runs", "m")["dir"])
                / "ghm_stats.json").exists()
    r = invoke(proj, "eval", "--run", "m", "--plots", "ghm")
    assert r.exit_code == 2 and "has no GHM statistics" in r.output, r.output
    r = invoke(proj, "eval", "--runs", "m", "rank-ghm", "--no-plots", "--json")
    assert r.exit_code == 0, r.output
    assert all(d["pairwise_accuracy"] is not None for d in json.loads(r.stdout))


@pytest.mark.slow
def test_ranking_runs_export_and_predict_with_their_thresholds(proj, folder_demo, tmp_path):
    """A ranking run exports (score output, validation thresholds in the metadata) and
    predicts the same classes from both backends as `eval` does from the checkpoint."""
    from rsctool.onnx_runtime import ModelSpec

    out = tmp_path / "rank.onnx"
    r = invoke(proj, "export", "--run", "rank-ghm", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["parity_max_abs"] < 1e-4 and doc["parity_n"] > 0
    import onnx

    spec = ModelSpec.from_props({p.key: p.value for p in onnx.load(str(out)).metadata_props})
    ev = invoke(proj, "eval", "--run", "rank-ghm", "--no-plots", "--json")
    assert ev.exit_code == 0, ev.output
    thresholds = json.loads(ev.stdout)["thresholds"]
    assert spec.task == "ranking" and spec.thresholds == pytest.approx(thresholds)
    wavs = sorted(folder_demo.rglob("*.wav"))[:6]
    docs = {}
    for backend, args in (("onnx", ["--model", str(out)]),
                          ("torch", ["--run", "rank-ghm", "--backend", "torch",
                                     "--precision", "fp32"])):
        r = invoke(proj, "predict", *map(str, wavs), *args, "--format", "json")
        assert r.exit_code == 0, r.output
        docs[backend] = json.loads(r.stdout)
    for backend, d in docs.items():
        assert d["model"]["task"] == "ranking", backend
        recs = d["predictions"]
        assert len(recs) == 6 and all(rec["probabilities"] is None for rec in recs)
        for rec in recs:  # the class is where the score falls between the thresholds
            k = sum(rec["score"] >= t for t in sorted(thresholds))
            assert rec["label"] == d["model"]["classes"][k]
    a, b = docs["onnx"]["predictions"], docs["torch"]["predictions"]
    assert [x["label"] for x in a] == [x["label"] for x in b]
    assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], abs=1e-4)
    r = invoke(proj, "predict", str(wavs[0]), "--model", str(out), "--format", "csv")
    assert r.exit_code == 0 and r.stdout.splitlines()[0].split(",")[6:8] == ["annotated",
                                                                             "score"]


@pytest.mark.slow
def test_ranking_ghm_crash_and_resume_is_exact(analysed, tmp_path, monkeypatch):
    """A GHM ranking run killed mid-epoch resumes to the same weights and the same GHM
    statistics (the moving averages and the half-finished epoch's histogram are saved)."""
    from rsctool.checkpoint import load_checkpoint
    from rsctool.train import run

    shutil.copytree(analysed.parent, tmp_path / "p")
    project = Project.load(tmp_path / "p" / "rsctool.toml")
    opts = {"task": "ranking", "loss": "ghm", "model": "cnn", "size": "tiny",
            "clip_seconds": 1.0, "num_mel_bins": 64, "batch_size": 16, "lr": 3e-3,
            "epochs": 2, "specaugment": True, "deterministic": True, "checkpoint_every": 2,
            "loss_cfg": {"momentum": 0.5}}
    straight, resumed = crash_and_resume(monkeypatch, functools.partial(run, device="cpu"),
                                         project, opts, crash_at=7)
    a = load_checkpoint(straight.dir / "last.safetensors")
    b = load_checkpoint(resumed.dir / "last.safetensors")
    for k in a.model_state:
        assert torch.equal(a.model_state[k], b.model_state[k]), k
    assert torch.equal(a.extras["loss"]["ghm.density"], b.extras["loss"]["ghm.density"])
    sa = json.loads((straight.dir / "ghm_stats.json").read_text())
    sb = json.loads((resumed.dir / "ghm_stats.json").read_text())
    assert sa == sb
    assert a.state["thresholds"] == b.state["thresholds"]


def test_ranking_without_validation_split_takes_train_thresholds(folder_demo, tmp_path):
    proj = tmp_path / "rsctool.toml"
    r = invoke(proj, "analyze", folder_demo, "--no-plots", "--no-fbank-stats",
               "--split", "random:0.8:0")
    assert r.exit_code == 0, r.output
    r = invoke(proj, "train", *RANK, "--max-steps", "2", "--run", "nv", "--epochs", "1")
    assert r.exit_code == 0, r.output
    r = invoke(proj, "eval", "--run", "nv", "--no-plots", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["thresholds_source"] == "train split (the run had no validation split)"
    assert len(doc["thresholds"]) == 4


@pytest.mark.slow
def test_example_script_runs(tmp_path):
    """examples/folder-ranking-ghm.sh end to end (3 epochs), through $RSCTOOL."""
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "examples" / "folder-ranking-ghm.sh"
    env = {**os.environ, "RSCTOOL": f"{sys.executable} -m rsctool", "EPOCHS": "3",
           "OMP_NUM_THREADS": "1"}
    env.pop("RSCTOOL_PROJECT", None)
    proc = subprocess.run(["bash", str(script), str(tmp_path / "work")], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "work" / ".rsctool" / "runs" / "angles-ghm"
    doc = json.loads((run_dir / "metrics_test.json").read_text())
    assert doc["task"] == "ranking" and doc["pairwise_accuracy"] is not None
    assert (run_dir / "plots" / "ghm" / "summary.png").read_bytes()[:8] == PNG_MAGIC
    assert (run_dir / "plots" / "ghm" / "compare.png").exists()


def test_classification_ghm_saves_bin_statistics(analysed, tmp_path):
    """--loss ghm on a classification task records the same per-epoch statistics."""
    shutil.copytree(analysed.parent, tmp_path / "p")
    proj = tmp_path / "p" / "rsctool.toml"
    r = invoke(proj, "train", "--model", "cnn", "--size", "tiny", "--clip-seconds", "1",
               "--num-mel-bins", "64", "--batch-size", "32", "--loss", "ghm", "--ghm-bins",
               "5", "--ghm-momentum", "0", "--epochs", "1", "--run", "cls-ghm")
    assert r.exit_code == 0, r.output
    p = Project.load(proj)
    stats = json.loads((p.abs(p.get("runs", "cls-ghm")["dir"]) / "ghm_stats.json")
                       .read_text())
    assert len(stats) == 1 and stats[0]["loss"] == "ghm" and stats[0]["momentum"] == 0.0
    assert len(stats[0]["counts"]) == 5 and stats[0]["n"] == sum(stats[0]["counts"])
    n_train = sum(1 for line in p.abs(p.get("datasets", "angles")["manifest"]).read_text()
                  .splitlines() if '"split":"train"' in line)
    assert stats[0]["n"] == n_train  # one g per example, every example once per epoch


def test_resnet_scores_for_ranking(analysed, tmp_path):
    shutil.copytree(analysed.parent, tmp_path / "p")
    proj = tmp_path / "p" / "rsctool.toml"
    r = invoke(proj, "train", "--task", "ranking", "--model", "resnet", "--size", "tiny",
               "--clip-seconds", "1", "--num-mel-bins", "64", "--max-steps", "2",
               "--run", "rn", "--json")
    assert r.exit_code == 0, r.output
    p = Project.load(proj)
    rec = p.get("runs", "rn")
    assert rec["model"] == "resnet" and rec["task"] == "ranking"
    cfg = json.loads((p.abs(rec["dir"]) / "config.json").read_text())
    assert cfg["model"]["output"] == "score" and cfg["options"]["loss"] == "margin"
