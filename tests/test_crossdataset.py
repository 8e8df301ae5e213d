"""Cross-dataset evaluation (`rsctool eval --run RUN --dataset OTHER`): a run trained on
the ICBHI-format demo scored on the SPRSound-format demo through a label map, end to end
through the CLI (tiny CNN, 2 steps, 1 s clips)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rsctool.cli import app
from rsctool.data.labelmap import load_map
from rsctool.project import Project

runner = CliRunner()
SHA = load_map("sprsound-to-icbhi").sha256


def invoke(project: Path, *args: str):
    return runner.invoke(app, ["--project", str(project), "-q", *args], catch_exceptions=False)


def ok(res) -> str:
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """ICBHI demo (``icb``), SPRSound demo analysed raw (``spr``) and through the
    built-in map (``sprm``), and a tiny CNN ``c`` trained on ``icb``: all through the CLI."""
    root = tmp_path_factory.mktemp("crossds")
    pf = root / "rsctool.toml"
    ok(invoke(pf, "demo-data", str(root / "icb"), "--patients", "6"))
    ok(invoke(pf, "demo-data", "--kind", "sprsound", str(root / "spr"), "--patients", "4"))
    fast = ("--no-plots", "--no-fbank-stats")
    ok(invoke(pf, "analyze", str(root / "icb"), "--name", "icb", *fast))
    ok(invoke(pf, "analyze", str(root / "spr"), "--name", "spr", *fast))
    ok(invoke(pf, "analyze", str(root / "spr"), "--name", "sprm", "--map", "sprsound-to-icbhi",
              *fast))
    ok(invoke(pf, "train", "--dataset", "icb", "--model", "cnn", "--size", "tiny", "--run", "c",
              "--epochs", "1", "--max-steps", "2", "--clip-seconds", "1"))
    return root


@pytest.fixture
def proj(built, tmp_path) -> Path:
    dst = tmp_path / "p"
    shutil.copytree(built, dst, ignore=shutil.ignore_patterns("icb", "spr"))
    return dst / "rsctool.toml"


def test_analyze_map_maps_the_sprsound_manifest_labels(proj):
    # the built-in map's keys are SPRSound's event types ("Fine Crackle"); the manifest
    # spells them "fine_crackle": both match
    rec = Project.load(proj).get("datasets", "sprm")
    assert rec["label_map"]["sha256"] == SHA
    assert rec["classes"] == ["normal", "crackle", "wheeze", "both"]
    m = load_map("sprsound-to-icbhi")
    assert [m.target(x) for x in ("fine_crackle", "Wheeze & Crackle", "wheeze_crackle",
                                  "rhonchi", "poor_quality")] == [
        "crackle", "both", "both", "wheeze", None]


def test_cross_dataset_eval_end_to_end_records_the_map(proj):
    own = json.loads(ok(invoke(proj, "eval", "--run", "c", "--no-plots", "--json")))
    assert "cross_dataset" not in own
    doc = json.loads(ok(invoke(proj, "eval", "--run", "c", "--dataset", "sprm", "--no-plots",
                               "--json")))
    x = doc["cross_dataset"]
    assert (x["trained_on"], x["scored_on"], x["split"]) == ("icb", "sprm", "test")
    assert x["map"]["name"] == "sprsound-to-icbhi" and x["map"]["sha256"] == SHA
    assert x["map"]["classes"] == ["normal", "crackle", "wheeze", "both"]
    # the run's classes and ICBHI metrics, on the other dataset's test split
    assert doc["classes"] == ["normal", "crackle", "wheeze", "both"]
    assert doc["dataset"] == "sprm" and doc["dataset_format"] == "sprsound"
    assert doc["score"] is not None and "sprsound" not in doc
    assert set(doc["per_device"]) == {"Yunting-II"} and doc["per_site"]
    run_dir = Path(Project.load(proj).abs(".rsctool/runs/c"))
    stored = json.loads((run_dir / "metrics_test_on_sprm.json").read_text())
    assert stored["cross_dataset"] == x
    # the run's own evaluation is kept apart, not overwritten
    assert "cross_dataset" not in json.loads((run_dir / "metrics_test.json").read_text())
    rec = Project.load(proj).get("runs", "c")
    assert rec["eval_test_on_sprm_map"] == "sprsound-to-icbhi"
    assert rec["eval_test_on_sprm_map_sha256"] == SHA
    assert rec["eval_test_on_sprm_score"] == doc["score"] and rec["eval_test_score"] == own["score"]
    preds = [json.loads(line) for line in
             (run_dir / "predictions_test_on_sprm.jsonl").read_text().splitlines()]
    assert len(preds) == doc["n"] and {p["label"] for p in preds} <= set(doc["classes"])
    # same inputs: a no-op
    again = json.loads(ok(invoke(proj, "eval", "--run", "c", "--dataset", "sprm", "--no-plots",
                                 "--json")))
    assert again["skipped"] is True and again["score"] == doc["score"]


def test_map_option_split_all_and_the_skip_logic(proj, tmp_path):
    doc = json.loads(ok(invoke(proj, "eval", "--run", "c", "--dataset", "spr", "--map",
                               "sprsound-to-icbhi", "--split", "all", "--no-plots", "--json")))
    spr = Project.load(proj).get("datasets", "spr")
    assert doc["n"] == spr["cycles"] and doc["split"] == "all"
    assert doc["cross_dataset"]["map"]["sha256"] == SHA
    assert Path(doc["files"]["metrics"]).name == "metrics_all_on_spr.json"
    # another map is another input: evaluated again, and recorded
    other = tmp_path / "m.toml"  # stridor counted as normal here
    other.write_text('name = "strict"\nclasses = ["normal", "crackle", "wheeze", "both"]\n'
                     '[map]\nnormal = "normal"\nfine_crackle = "crackle"\n'
                     'coarse_crackle = "crackle"\nwheeze = "wheeze"\nrhonchi = "wheeze"\n'
                     'stridor = "normal"\nwheeze_crackle = "both"\n')
    doc2 = json.loads(ok(invoke(proj, "eval", "--run", "c", "--dataset", "spr", "--map",
                                str(other), "--split", "all", "--no-plots", "--json")))
    assert doc2["skipped"] is False and doc2["cross_dataset"]["map"]["name"] == "strict"
    assert doc2["cross_dataset"]["map"]["sha256"] != SHA


@pytest.mark.parametrize("args, needle", [
    (("--dataset", "nope"), "--dataset 'nope' is not in the project"),
    (("--dataset", "spr"), "--map"),
    (("--split", "all"), "--split all needs --dataset"),
    (("--map", "sprsound-to-icbhi"), "--map"),
    (("--dataset", "icb", "--split", "all"), "--split all"),
    (("--dataset", "sprm", "--map", "MAPFILE"), "mapped already"),
    (("--dataset", "spr", "--map", "MAPFILE"), "no entry for label(s)"),
])
def test_bad_cross_dataset_requests_exit_2(proj, tmp_path, args, needle):
    mfile = tmp_path / "part.toml"
    mfile.write_text('name = "part"\n[map]\nnormal = "normal"\nwheeze = "wheeze"\n')
    args = tuple(str(mfile) if a == "MAPFILE" else a for a in args)
    before = proj.read_text()
    res = invoke(proj, "eval", "--run", "c", "--no-plots", *args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.output
    assert "Traceback" not in res.output and proj.read_text() == before
    if args == ("--dataset", "spr"):  # names the labels it cannot map
        assert "'fine_crackle'" in lines[0] and "sprsound-to-icbhi" in lines[0]


def test_cross_dataset_table_stderr_json_and_csv(proj, tmp_path):
    out = tmp_path / "cross.csv"
    doc = json.loads(ok(invoke(proj, "eval", "--runs", "c", "--dataset", "icb,sprm",
                               "--dataset", "spr", "--map", "sprsound-to-icbhi", "--no-plots",
                               "--json", "--csv", str(out))))
    t = doc["cross_dataset_table"]
    assert t["columns"] == ["icb", "sprm", "spr"]
    assert t["maps"]["icb"] is None and t["maps"]["sprm"]["sha256"] == SHA
    assert t["maps"]["spr"]["sha256"] == SHA
    (row,) = t["rows"]
    assert row["run"] == "c" and row["trained_on"] == "icb"
    by = {d["dataset"]: d for d in doc["results"]}
    assert row["scores"] == {k: by[k]["score"] for k in ("icb", "sprm", "spr")}
    with out.open(newline="") as f:
        (crow,) = list(csv.DictReader(f))
    assert float(crow["sprm"]) == pytest.approx(by["sprm"]["score"])
    assert crow["spr map"] == f"sprsound-to-icbhi@{SHA}" and crow["icb map"] == ""
    # the table on stderr
    res = runner.invoke(app, ["--project", str(proj), "eval", "--runs", "c", "--dataset",
                              "icb,sprm", "--no-plots"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "cross-dataset Score" in res.output and "sprsound-to-icbhi" in res.output


def test_scoring_the_training_recordings_under_another_name_exits_2(proj, built):
    ok(invoke(proj, "analyze", str(built / "icb"), "--name", "icb-again", "--no-plots",
              "--no-fbank-stats"))
    before = proj.read_text()
    res = invoke(proj, "eval", "--run", "c", "--dataset", "icb-again", "--split", "all",
                 "--no-plots")
    assert res.exit_code == 2, res.output
    assert "train/val data of run 'c'" in res.output and "Traceback" not in res.output
    assert proj.read_text() == before
