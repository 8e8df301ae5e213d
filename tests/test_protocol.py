"""`rsctool eval --protocol paper`: the seeds' test-selected epoch, labelled optimistic,
next to the honest numbers; kept epochs (`train --set keep_epochs=true`) never make
training read the test split."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from typer.testing import CliRunner

from rsctool.checkpoint import load_checkpoint
from rsctool.cli import app
from rsctool.data.manifest import read_manifest
from rsctool.metrics import choose_thresholds, icbhi_metrics, multilabel_to_class
from rsctool.project import Project

runner = CliRunner()
FAST = {"model": "cnn", "size": "tiny", "clip_seconds": 2.0, "batch_size": 32, "lr": 1e-2}


def _train(project, **kw):
    from rsctool.train import TrainOptions
    from rsctool.train import run as train

    return train(project, TrainOptions(**{**FAST, **kw}), device="cpu")


def invoke(project, *args: str):
    return runner.invoke(app, ["--project", str(project.path), *args], catch_exceptions=False)


def _test_scores(project, run: str, task: str) -> dict[int, dict]:
    """Every kept epoch scored on the test split here, independently of rsctool.eval."""
    import torch

    from rsctool.data.dataset import ClipConfig, CycleDataset, feature_cache
    from rsctool.runconfig import RunConfig
    from rsctool.runs import rebuild_model

    rec = project.get("runs", run)
    run_dir = project.abs(rec["dir"])
    cycles = [c for c in read_manifest(project.abs(project.get("datasets", "demo")["manifest"]))
              if c.split == "test"]
    out = {}
    for path in sorted((run_dir / "epochs").glob("epoch-*.safetensors")):
        ck = load_checkpoint(path)
        cfg = RunConfig.from_dict(ck.state["config"], path)
        model = rebuild_model(cfg)
        model.load_state_dict(ck.model_state)
        model.eval()
        ds = CycleDataset(cycles, cfg.classes, ClipConfig.from_dict(cfg.clip),
                          feature_cache(project.state_dir()), None, task)
        with torch.no_grad():
            x = torch.stack([ds[i]["x"] for i in range(len(ds))])
            logits = model(x, None)["logits"].float()
        y = ds.targets.tolist()
        if task == "multilabel":
            p = torch.sigmoid(logits).numpy()
            t = ck.state["thresholds"]
            pred = multilabel_to_class(p[:, 0] >= t[0], p[:, 1] >= t[1]).tolist()
            tt = choose_thresholds(p, ds.multilabel.numpy())
            tuned = icbhi_metrics(y, multilabel_to_class(p[:, 0] >= tt[0],
                                                         p[:, 1] >= tt[1]).tolist(),
                                  cfg.classes)["score"]
        else:
            pred = logits.argmax(-1).tolist()
            tuned = None
        epoch = int(path.stem.split("-")[1])
        out[epoch] = {"score": icbhi_metrics(y, pred, cfg.classes)["score"], "tuned": tuned}
    return out


def test_paper_protocol_reports_the_test_selected_epoch_as_optimistic(project, tmp_path,
                                                                      monkeypatch):
    import rsctool.plots as plots

    titles: list[str] = []
    real_plot = plots.paper_protocol_plot
    monkeypatch.setattr(plots, "paper_protocol_plot", lambda pp, path, title="": (
        titles.append(title) or real_plot(pp, path, title)))
    res = _train(project, run="kept", epochs=3, keep_epochs=True)
    kept = sorted(p.name for p in (res.dir / "epochs").glob("*.safetensors"))
    assert kept == ["epoch-001.safetensors", "epoch-002.safetensors", "epoch-003.safetensors"]

    honest = invoke(project, "eval", "--run", "kept", "--json", "--no-plots")
    assert honest.exit_code == 0, honest.output
    assert "paper_protocol" not in json.loads(honest.stdout)
    assert "optimistic" not in honest.stdout

    out_csv = tmp_path / "t.csv"
    r = invoke(project, "eval", "--run", "kept", "--json", "--protocol", "paper",
               "--plots", "standard", "--csv", str(out_csv))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    pp = doc["paper_protocol"]
    assert pp["selected_on"] == "test" and pp["optimistic"] is True
    scores = _test_scores(project, "kept", "multiclass")
    best = max(scores.values(), key=lambda s: s["score"])["score"]
    assert pp["score"] == pytest.approx(best, abs=1e-9)
    assert scores[pp["epoch"]]["score"] == pytest.approx(best, abs=1e-9)
    assert [e["epoch"] for e in pp["epochs"]] == [1, 2, 3]
    # the honest numbers next to it: validation-selected = the best checkpoint's score
    assert pp["validation_selected"]["optimistic"] is False
    assert pp["validation_selected"]["epoch"] == doc["checkpoint_epoch"]
    assert pp["validation_selected"]["score"] == pytest.approx(doc["score"], abs=1e-9)
    assert pp["last_epoch"]["epoch"] == 3
    assert pp["last_epoch"]["score"] == pytest.approx(scores[3]["score"], abs=1e-9)
    # CSV column and plot title say so
    rows = list(csv.DictReader(out_csv.open()))
    assert float(rows[0]["paper_test_selected_optimistic_score"]) == pytest.approx(best)
    assert int(rows[0]["paper_test_selected_optimistic_epoch"]) == pp["epoch"]
    assert any("paper_protocol" in p for p in doc["files"]["plots"])
    assert titles and "TEST-SELECTED" in titles[0] and "optimistic" in titles[0]

    # the table (stderr) labels the test-selected row optimistic, the others honest
    t = invoke(project, "eval", "--run", "kept", "--protocol", "paper", "--no-plots")
    assert t.exit_code == 0, t.output
    assert "test-selected epoch (optimistic)" in t.output
    assert "validation-selected (honest)" in t.output
    cmp = invoke(project, "eval", "--runs", "kept", "--protocol", "paper", "--no-plots")
    assert cmp.exit_code == 0, cmp.output
    assert "test-selected" in cmp.output and "optimistic" in cmp.output, cmp.output


def test_paper_protocol_multilabel_test_tuned_thresholds(project):
    res = _train(project, run="ml", epochs=2, keep_epochs=True, task="multilabel")
    scores = _test_scores(project, "ml", "multilabel")
    # a file left over from an earlier, longer training of the same run name
    shutil.copy(res.dir / "epochs" / "epoch-001.safetensors",
                res.dir / "epochs" / "epoch-007.safetensors")
    r = invoke(project, "eval", "--run", "ml", "--json", "--protocol", "paper", "--no-plots")
    assert r.exit_code == 0, r.output
    pp = json.loads(r.stdout)["paper_protocol"]
    assert [e["epoch"] for e in pp["epochs"]] == [1, 2]
    assert "epoch-007" in r.output and "skipped" in r.output, r.output
    assert pp["score"] == pytest.approx(max(s["score"] for s in scores.values()), abs=1e-9)
    tt = pp["test_tuned_thresholds"]
    assert tt["selected_on"] == "test" and tt["optimistic"] is True
    assert tt["score"] == pytest.approx(max(s["tuned"] for s in scores.values()), abs=1e-9)


def test_paper_protocol_without_kept_epochs_exits_2_naming_the_option(project):
    _train(project, run="plain", epochs=1, max_steps=1)
    before = project.path.read_bytes()
    r = invoke(project, "eval", "--run", "plain", "--protocol", "paper")
    assert r.exit_code == 2, r.output
    assert "keep_epochs=true" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert project.path.read_bytes() == before
    bad = invoke(project, "eval", "--run", "plain", "--protocol", "paper", "--split", "val")
    assert bad.exit_code == 2 and "--split test" in bad.output, bad.output


def test_training_with_kept_epochs_never_reads_the_test_split(project, monkeypatch):
    import rsctool.data.dataset as dataset_mod

    seen: list[str] = []
    real_init = dataset_mod.CycleDataset.__init__

    def spy(self, cycles, *a, **kw):
        cycles = list(cycles)
        seen.extend(c.split for c in cycles)
        real_init(self, cycles, *a, **kw)

    monkeypatch.setattr(dataset_mod.CycleDataset, "__init__", spy)
    res = _train(project, run="kept", epochs=2, keep_epochs=True)
    assert len(list((res.dir / "epochs").glob("*.safetensors"))) == 2
    assert seen and "test" not in seen and {"train", "val"} <= set(seen)
    assert Project.load(project.path).get("runs", "kept")["status"] == "done"
