"""`rsctool eval`: metrics of trained tiny runs, outputs, comparison, plots, t-SNE, bad input."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rsctool.checkpoint import load_checkpoint
from rsctool.cli import app
from rsctool.data.manifest import read_manifest
from rsctool.metrics import breakdown, icbhi_metrics, multilabel_to_class
from rsctool.project import Project

runner = CliRunner()
FAST = {"size": "tiny", "clip_seconds": 2.0, "batch_size": 32, "epochs": 1}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A project with the demo dataset (12 patients) and three tiny runs, built once:
    ``cnn`` and ``cnn-1`` (two seeds of a tiny CNN, one epoch) and ``softfilm`` (a tiny
    multilabel SoftFiLM AST, one step: enough for a checkpoint with thresholds)."""
    from rsctool.analyze import AnalyzeOptions
    from rsctool.analyze import run as analyze
    from rsctool.data.demo import make_demo_dataset
    from rsctool.train import TrainOptions
    from rsctool.train import run as train

    root = tmp_path_factory.mktemp("evalproj")
    make_demo_dataset(root / "data", patients=12, seed=0)
    project = Project.load(root / "rsctool.toml")
    analyze(project, AnalyzeOptions(data_dir=root / "data", name="demo", val_fraction=0.2,
                                    plots=False))
    train(project, TrainOptions(model="cnn", seed=0, **FAST), device="cpu")
    train(project, TrainOptions(model="cnn", seed=1, **FAST), device="cpu")
    train(project, TrainOptions(model="softfilm", task="multilabel", max_steps=1, lr=1e-3,
                                **FAST), device="cpu")
    return root


@pytest.fixture
def proj(trained, tmp_path) -> Path:
    """A private copy of the trained project (tests may write or break it)."""
    dst = tmp_path / "proj"
    shutil.copytree(trained, dst, ignore=shutil.ignore_patterns("data"))
    return dst / "rsctool.toml"


def invoke(project: Path, *args: str):
    return runner.invoke(app, ["--project", str(project), "-q", *args], catch_exceptions=False)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _test_cycles(project_file: Path) -> list:
    p = Project.load(project_file)
    return [c for c in read_manifest(p.abs(p.get("datasets", "demo")["manifest"]))
            if c.split == "test"]


# --------------------------------------------------------------------------- end to end

def test_eval_json_is_consistent_and_recorded(proj):
    r = invoke(proj, "eval", "--run", "cnn", "--json", "--no-plots")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    for key in ("run", "split", "split_hash", "n", "specificity", "sensitivity", "score",
                "accuracy", "per_class_recall", "confusion", "two_class", "per_device",
                "per_site", "split_spec", "official_split"):
        assert key in doc, key
    test = _test_cycles(proj)
    assert doc["run"] == "cnn" and doc["split"] == "test" and doc["n"] == len(test)
    assert doc["split_spec"] == "official" and doc["official_split"] is True
    assert sum(map(sum, doc["confusion"])) == doc["n"]
    assert doc["score"] == pytest.approx((doc["specificity"] + doc["sensitivity"]) / 2)
    two = doc["two_class"]
    assert two["score"] == pytest.approx((two["specificity"] + two["sensitivity"]) / 2)
    assert sum(map(sum, two["confusion"])) == doc["n"]
    assert set(doc["per_device"]) == {c.device for c in test}
    assert sum(g["n"] for g in doc["per_site"].values()) == doc["n"]
    p = Project.load(proj)
    assert doc["split_hash"] == p.get("datasets", "demo")["split_hash"]
    rec = p.get("runs", "cnn")
    assert rec["eval_test_score"] == pytest.approx(doc["score"])
    assert rec["eval_test_n"] == doc["n"] and rec["eval_test_split"] == "official"
    run_dir = p.abs(rec["dir"])
    assert json.loads((run_dir / "metrics_test.json").read_text())["score"] == doc["score"]
    # unchanged checkpoint and manifest: a no-op unless --force
    again = json.loads(invoke(proj, "eval", "--run", "cnn", "--json", "--no-plots").stdout)
    assert again["skipped"] is True and again["score"] == doc["score"]
    forced = json.loads(invoke(proj, "eval", "--run", "cnn", "--json", "--no-plots",
                               "--force").stdout)
    assert forced["skipped"] is False and forced["confusion"] == doc["confusion"]


def test_saved_predictions_reproduce_the_metrics(proj):
    r = invoke(proj, "eval", "--run", "cnn", "--split", "val", "--json", "--no-plots")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    rows = [json.loads(line) for line in
            Path(doc["files"]["predictions"]).read_text().splitlines()]
    assert Path(doc["files"]["predictions"]).name == "predictions_val.jsonl"
    assert len(rows) == doc["n"] > 0
    for row in rows:
        assert set(row) >= {"id", "label", "pred", "probs", "device", "site"}
        assert sum(row["probs"].values()) == pytest.approx(1.0, abs=1e-4)
        # multiclass: the prediction is the most probable class
        assert row["pred"] == max(row["probs"], key=row["probs"].get)
    classes = doc["classes"]
    m = icbhi_metrics([r["label"] for r in rows], [r["pred"] for r in rows], classes)
    assert m["confusion_matrix"] == doc["confusion"]
    assert m["sp"] == doc["specificity"] and m["se"] == doc["sensitivity"]
    assert m["per_class_recall"] == doc["per_class_recall"]
    by_dev = breakdown([r["label"] for r in rows], [r["pred"] for r in rows],
                       [r["device"] for r in rows], classes)
    assert {k: v["score"] for k, v in by_dev.items()} == \
        {k: v["score"] for k, v in doc["per_device"].items()}
    val_ids = {c.id for c in read_manifest(Project.load(proj).abs(
        Project.load(proj).get("datasets", "demo")["manifest"])) if c.split == "val"}
    assert {r["id"] for r in rows} == val_ids


def test_eval_never_changes_the_checkpoints(proj):
    run_dir = proj.parent / ".rsctool" / "runs" / "cnn"
    before = {f: _sha(run_dir / f) for f in ("best.safetensors", "last.safetensors")}
    for extra in ([], ["--checkpoint", "last"]):
        r = invoke(proj, "eval", "--run", "cnn", "--no-plots", "--force", *extra)
        assert r.exit_code == 0, r.output
    assert {f: _sha(run_dir / f) for f in before} == before
    assert (run_dir / "metrics_test_last.json").exists()  # last does not overwrite best
    assert Project.load(proj).get("runs", "cnn")["eval_test_last_n"] > 0


def test_multilabel_uses_the_validation_thresholds_and_film_plots(proj):
    r = invoke(proj, "eval", "--run", "softfilm", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    run_dir = proj.parent / ".rsctool" / "runs" / "softfilm"
    stored = load_checkpoint(run_dir / "best.safetensors").state["thresholds"]
    assert stored is not None and doc["thresholds"] == pytest.approx(stored)
    rows = [json.loads(line) for line in (run_dir / "predictions_test.jsonl").open()]
    sig = np.array([[r["sigmoid"]["crackle"], r["sigmoid"]["wheeze"]] for r in rows])
    expect = multilabel_to_class(sig[:, 0] >= stored[0], sig[:, 1] >= stored[1])
    # (rounded sigmoids: skip cycles sitting on a threshold)
    near = (np.abs(sig - np.array(stored)) < 1e-5).any(axis=1)
    got = [doc["classes"].index(r["pred"]) for r in rows]
    assert [g for g, n in zip(got, near, strict=True) if not n] == \
        [int(e) for e, n in zip(expect, near, strict=True) if not n]
    film = doc["film"]
    assert film["layers"] == [0, 1] and film["n"] == doc["n"]
    assert len(film["groups"]["patch"]["gamma_mean"]) == 2
    soft = doc["softfilm"]
    assert set(soft["allocated"]) == {"device", "site", "demographics"}
    assert set(soft["overlap"]) == {"device-site", "device-demographics", "site-demographics"}
    names = {Path(p).name for p in doc["files"]["plots"]}
    assert {"confusion_test.png", "training_curves.png", "tsne_test.png", "film_test.png",
            "softfilm_masks_best.png"} <= names
    for p in doc["files"]["plots"]:
        assert Path(p).read_bytes()[:8] == PNG_MAGIC and Path(p).parent.name == "plots"


def test_default_run_is_the_last_and_runs_compare(proj, tmp_path):
    r = invoke(proj, "eval", "--json", "--no-plots")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["run"] == "softfilm"
    out_csv = tmp_path / "cmp.csv"
    # `--runs A B` (names after the option) and a glob give the same two runs
    r = invoke(proj, "eval", "--runs", "cnn", "cnn-1", "--json", "--no-plots",
               "--csv", str(out_csv))
    assert r.exit_code == 0, r.output
    docs = json.loads(r.stdout)
    assert [d["run"] for d in docs] == ["cnn", "cnn-1"]
    rows = list(csv.DictReader(out_csv.open()))
    assert [row["run"] for row in rows] == ["cnn", "cnn-1"]
    assert float(rows[1]["score"]) == pytest.approx(docs[1]["score"])
    assert {"model", "split", "specificity", "sensitivity", "score", "two_class_score",
            "accuracy"} <= set(rows[0])
    r = invoke(proj, "eval", "--runs", "cnn*", "--json", "--no-plots")
    assert [d["run"] for d in json.loads(r.stdout)] == ["cnn", "cnn-1"]
    # the human comparison table, with a mean/std row for the two seeds
    r = runner.invoke(app, ["--project", str(proj), "eval", "--runs", "cnn*", "--no-plots"],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "mean of 2" in r.output and "cnn-1" in r.output


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("args, needle", [
    (["--run", "nope"], "'nope' is not in the project"),
    (["--runs", "zz*"], "matches no run"),
    (["--split", "train"], "--split must be one of"),
    (["--checkpoint", "final"], "--checkpoint must be one of"),
    (["--run", "cnn", "--runs", "cnn-1"], "not both"),
])
def test_bad_options_exit_2(proj, args, needle):
    r = invoke(proj, "eval", *args)
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output


def test_broken_runs_and_data_exit_2(proj):
    p = Project.load(proj)
    p.set_record("runs", "ghost", {"model": "cnn", "status": "running", "dataset": "demo",
                                   "dir": ".rsctool/runs/ghost"})
    r = invoke(proj, "eval", "--run", "ghost")
    assert r.exit_code == 2 and "has no best checkpoint" in r.output, r.output
    # a pattern skips runs without a checkpoint instead of failing
    r = invoke(proj, "eval", "--runs", "*", "--json", "--no-plots")
    assert r.exit_code == 0, r.output
    assert "ghost" not in [d["run"] for d in json.loads(r.stdout)]
    p.update_record("runs", "cnn", split_hash="0" * 64)
    r = invoke(proj, "eval", "--run", "cnn")
    assert r.exit_code == 2 and "different split" in r.output, r.output
    p.abs(p.get("datasets", "demo")["manifest"]).unlink()
    r = invoke(proj, "eval", "--run", "cnn-1")
    assert r.exit_code == 2 and "manifest" in r.output and "missing" in r.output, r.output


def test_no_project_file_exit_2(tmp_path):
    r = invoke(tmp_path / "none.toml", "eval")
    assert r.exit_code == 2 and "not found" in r.output, r.output


# --------------------------------------------------------------------------- units

def test_tsne_separates_two_gaussian_blobs():
    from rsctool.eval import tsne

    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(size=(60, 20)), rng.normal(size=(60, 20)) + 6.0])
    label = np.repeat([0, 1], 60)
    y, kl = tsne(x, perplexity=15, seed=3)
    assert y.shape == (120, 2) and np.isfinite(y).all() and kl >= 0
    d = ((y[:, None] - y[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (label[d.argmin(1)] == label).all()  # every nearest neighbour in its own blob
    gap = np.linalg.norm(y[:60].mean(0) - y[60:].mean(0))
    spread = max(y[:60].std(0).max(), y[60:].std(0).max())
    assert gap > 4 * spread
    y2, _ = tsne(x, perplexity=15, seed=3)
    np.testing.assert_array_equal(y, y2)  # seeded
    # one blob only: no such gap (the test above could not pass by construction)
    y3, _ = tsne(rng.normal(size=(120, 20)), perplexity=15, seed=3)
    assert np.linalg.norm(y3[:60].mean(0) - y3[60:].mean(0)) < 2 * y3.std(0).max()


def test_tsne_affinities_match_the_perplexity():
    from rsctool.eval import _joint_probabilities

    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 5))
    p = _joint_probabilities(x, perplexity=10.0)
    assert p.shape == (80, 80) and p.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(p, p.T)
    # Recover the conditional rows: each has entropy log(10) nats by construction.
    # (checked indirectly: the effective number of neighbours of P's rows is ~10)
    rows = p / p.sum(1, keepdims=True)
    perp = np.exp(-(rows * np.log(rows)).sum(1))
    assert 5 < np.median(perp) < 20


def test_select_runs_globs_commas_and_order(proj):
    from rsctool.errors import ConfigError
    from rsctool.runs import select_runs

    p = Project.load(proj)
    assert select_runs(p, None, []) == [("softfilm", True)]
    assert select_runs(p, None, ["softfilm,cnn"]) == [("cnn", True), ("softfilm", True)]
    assert select_runs(p, None, ["cnn-?", "cnn"]) == [("cnn", True), ("cnn-1", False)]
    with pytest.raises(ConfigError):
        select_runs(p, "missing", [])


def test_default_run_is_the_last_finished_one(proj):
    """A run started later and interrupted does not replace, as the default of eval,
    export and predict, the model that was trained, evaluated and exported."""
    from rsctool.runs import select_runs

    p = Project.load(proj)
    last = list(p.section("runs"))[-1]
    p.set_record("runs", "later", {"model": "cnn", "status": "interrupted"})
    assert select_runs(p, None, []) == [(last, True)]
    assert select_runs(p, "later", []) == [("later", True)]  # named: used as named
    for name in list(p.section("runs")):
        if name != "later":
            p.update_record("runs", name, status="interrupted")
    assert select_runs(p, None, []) == [("later", True)]  # none finished: the last run


def test_film_statistics_match_a_direct_computation():
    import torch

    from rsctool.eval import film_statistics
    from rsctool.models import create_model

    torch.manual_seed(0)
    model = create_model("film", size="tiny", input_tdim=64, input_fdim=32, pretrained=None)
    # the generator's last layer starts at zero (gamma = 1, beta = 0): give it weights
    torch.nn.init.normal_(model.generator.net[-1].weight, std=0.5)
    n = 10
    meta = {"device": torch.randint(0, 5, (n,)), "site": torch.randint(0, 8, (n,)),
            "sex": torch.randint(0, 3, (n,)), "num": torch.randn(n, 3),
            "num_mask": (torch.rand(n, 3) > 0.3).float()}
    groups = ["a"] * 4 + ["b"] * 6
    stats = film_statistics(model, meta, groups, batch_size=3)  # 4 uneven chunks
    model.eval()
    with torch.no_grad():
        state = model.condition(meta)
    g, b = state["gamma"].double(), state["beta"].double()
    patch = stats["groups"]["patch"]
    assert stats["layers"] == [0, 1] and stats["n"] == n
    np.testing.assert_allclose(patch["gamma_abs_dev"], (g - 1).abs().mean((0, 2)), rtol=1e-6)
    np.testing.assert_allclose(patch["beta_abs"], b.abs().mean((0, 2)), rtol=1e-6)
    np.testing.assert_allclose(patch["gamma_sample_std"],
                               g.std(0, unbiased=False).mean(1), rtol=1e-4, atol=1e-9)
    assert min(patch["gamma_abs_dev"]) > 0
    shift_a = ((g[:4].mean(0) - g.mean(0)) ** 2).mean(1).sqrt()
    np.testing.assert_allclose(stats["by_device"]["a"]["gamma_shift"], shift_a, rtol=1e-5)
    assert stats["by_device"]["b"]["n"] == 6
    cnn = create_model("cnn", size="tiny", input_tdim=64, input_fdim=32)
    assert film_statistics(cnn, meta) is None


def test_moved_project_folder_is_still_up_to_date(proj, tmp_path):
    """Metrics documents name their files relative to the run folder: after the whole
    project folder moves, a re-run is still a no-op and reports the new locations."""
    first = invoke(proj, "eval", "--run", "cnn", "--no-plots", "--json")
    assert first.exit_code == 0, first.output
    dst = tmp_path / "moved"
    shutil.move(proj.parent, dst)
    again = invoke(dst / "rsctool.toml", "eval", "--run", "cnn", "--no-plots", "--json")
    assert again.exit_code == 0, again.output
    a, b = json.loads(first.stdout), json.loads(again.stdout)
    assert b["skipped"] and b["score"] == a["score"]
    assert Path(b["files"]["metrics"]).is_relative_to(dst)
    assert Path(b["files"]["predictions"]).is_file()
