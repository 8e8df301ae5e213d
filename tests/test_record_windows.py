"""Record-level datasets (SPRSound Tasks 2-x): recordings split into windows for training
and evaluation, window probabilities averaged into one decision per recording."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_sprsound import FAST, invoke, manifest

from rsctool.data.manifest import Cycle
from rsctool.data.windows import (
    aggregate_windows,
    is_record_level,
    record_windows,
    window_parents,
    window_starts,
)
from rsctool.errors import ConfigError
from rsctool.project import Project


def _item(id: str, end: float, start: float = 0.0, **kw) -> Cycle:
    return Cycle(id=id, audio=f"{id}.wav", start=start, end=end, label="normal",
                 split="test", patient="p1", device="yunting", meta={"set": "inter"}, **kw)


# ------------------------------------------------------------------------- windows


@pytest.mark.parametrize(("start", "end", "window", "hop", "starts"), [
    (0.0, 10.0, 4.0, 2.0, [0.0, 2.0, 4.0, 6.0]),      # the last one ends at 10 exactly
    (0.0, 9.0, 4.0, 2.0, [0.0, 2.0, 4.0, 5.0]),       # the last one moved back to end at 9
    (0.0, 12.5, 8.0, 4.0, [0.0, 4.0, 4.5]),
    (1.0, 6.0, 2.0, 2.0, [1.0, 3.0, 4.0]),            # no overlap but the last
    (0.0, 4.0, 4.0, 2.0, [0.0]),                      # exactly one window
    (0.0, 3.0, 4.0, 2.0, [0.0]),                      # shorter than a window
])
def test_window_starts_by_hand(start, end, window, hop, starts):
    assert window_starts(start, end, window, hop) == pytest.approx(starts)


@pytest.mark.parametrize(("window", "hop"), [(0.0, 1.0), (2.0, 0.0), (2.0, 3.0),
                                             (float("nan"), 1.0)])
def test_window_starts_rejects_bad_lengths(window, hop):
    with pytest.raises(ConfigError):
        window_starts(0.0, 10.0, window, hop)


def test_record_windows_copy_the_item_and_cover_it():
    long, short = _item("rec_a", 10.0, age=5.0), _item("rec_b", 3.0)
    out = record_windows([long, short], 4.0)  # hop defaults to 2 s
    assert [w.id for w in out] == ["rec_a@0", "rec_a@1", "rec_a@2", "rec_a@3", "rec_b@0"]
    assert [(w.start, w.end) for w in out] == [(0.0, 4.0), (2.0, 6.0), (4.0, 8.0),
                                               (6.0, 10.0), (0.0, 3.0)]
    for w in out:
        src = long if w.id.startswith("rec_a") else short
        assert (w.label, w.split, w.patient, w.device, w.audio, w.age) == (
            src.label, src.split, src.patient, src.device, src.audio, src.age)
        assert w.meta == {"set": "inter", "parent": src.id}
    assert long.meta == {"set": "inter"}  # the items themselves are unchanged
    assert window_parents(out) == ["rec_a"] * 4 + ["rec_b"]
    assert record_windows([long], 4.0, hop=4.0)[-1].start == 6.0


def test_aggregate_windows_by_hand():
    # two records, three windows: a has two windows, b one
    parents = ["a", "a", "b"]
    probs = np.array([[0.6, 0.3, 0.1],
                      [0.2, 0.5, 0.3],
                      [0.1, 0.1, 0.8]])
    ids, mean = aggregate_windows(parents, probs)
    assert ids == ["a", "b"]
    np.testing.assert_allclose(mean, [[0.4, 0.4, 0.2], [0.1, 0.1, 0.8]])
    # a: ties between class 0 and 1 at 0.4 -> argmax picks the first
    assert mean.argmax(axis=1).tolist() == [0, 2]
    # windows in any order: grouped by parent, in order of first appearance
    ids, mean = aggregate_windows(["b", "a", "b"], [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    assert ids == ["b", "a"]
    np.testing.assert_allclose(mean, [[0.25, 0.75], [1.0, 0.0]])
    with pytest.raises(ValueError):
        aggregate_windows(["a"], probs)


def test_is_record_level_reads_the_dataset_record():
    assert is_record_level({"format": "sprsound", "task": "2-1", "items": "records"})
    assert is_record_level({"format": "folder", "items": "records"})  # generic
    assert not is_record_level({"format": "sprsound", "task": "2-1"})  # older projects
    assert not is_record_level({"format": "icbhi"}) and not is_record_level(None)


def test_record_decision_of_predict():
    from rsctool.predict import record_decision

    recs = [{"probabilities": {"normal": 0.6, "adventitious": 0.3, "poor_quality": 0.1}},
            {"probabilities": {"normal": 0.0, "adventitious": 0.9, "poor_quality": 0.1}}]
    classes = ["normal", "adventitious", "poor_quality"]
    assert record_decision(recs, classes, "multiclass") == {
        "label": "adventitious",
        "probabilities": {"normal": 0.3, "adventitious": 0.6, "poor_quality": 0.1}}
    assert record_decision(recs, classes, "ranking") is None
    assert record_decision([], classes, "multiclass") is None


# ------------------------------------------------------------------------- end to end

TRAIN = ("--model", "cnn", "--size", "tiny", "--epochs", "1", "--max-steps", "2",
         "--batch-size", "8", "--clip-seconds", "2", "--dataset", "spr")


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x]


def test_record_task_trains_on_windows_and_evaluates_per_recording(tmp_path):
    data = tmp_path / "spr-demo"
    r = invoke("demo-data", data, "--kind", "sprsound", "--patients", "5")
    assert r.exit_code == 0, r.output
    proj = tmp_path / "p.toml"
    r = invoke("--project", proj, "analyze", data, "--name", "spr", "--task", "2-1", *FAST)
    assert r.exit_code == 0, r.output
    rec, cycles = manifest(proj)
    assert rec["items"] == "records" and rec["task"] == "2-1"
    n_fit = sum(c.split != "test" for c in cycles)
    test = [c for c in cycles if c.split == "test"]
    assert test and all(c.duration == 8.0 for c in cycles)

    r = invoke("--project", proj, "train", *TRAIN, "--run", "r1")
    assert r.exit_code == 0, r.output
    # 8 s recordings, 2 s windows every 1 s: 7 windows each
    assert (f"{n_fit} train/val recordings -> {7 * n_fit} windows of 2 s every 1 s"
            in " ".join(r.output.split()))

    r = invoke("--project", proj, "eval", "--run", "r1", "--plots", "none", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["n"] == len(test) == sum(doc["support"].values())
    assert doc["aggregation"] == {"unit": "record", "windows": 7 * len(test), "window": 2.0,
                                  "hop": 1.0, "method": "mean probability"}
    assert doc["aggregation"]["windows"] > doc["n"]
    assert sum(sum(row) for row in doc["confusion"]) == len(test)
    assert doc["sprsound"]["task"] == "2-1"
    assert sum(v["n"] for v in doc["per_device"].values()) == len(test)
    preds = _lines(Path(doc["files"]["predictions"]))
    assert [p["id"] for p in preds] == [c.id for c in test]
    assert all(p["windows"] == 7 for p in preds)
    for p in preds:
        assert sum(p["probs"].values()) == pytest.approx(1.0, abs=1e-4)
        assert p["pred"] == max(p["probs"], key=p["probs"].get)
    assert "per recording: " in " ".join(r.stderr.split())

    # predict (torch backend), windows of one recording: its mean decision as well
    wav = next((data / "test2022_wav").rglob("*.wav"))
    r = invoke("--project", proj, "-q", "predict", wav, "--run", "r1", "--backend", "torch",
               "--mode", "windows", "--format", "json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    summary = out["recordings"][0]
    wins = [p for p in out["predictions"] if p["file"] == summary["file"]]
    mean = {c: np.mean([p["probabilities"][c] for p in wins]) for c in rec["classes"]}
    assert summary["record"]["label"] == max(mean, key=mean.get)
    for c in rec["classes"]:
        assert summary["record"]["probabilities"][c] == pytest.approx(mean[c], abs=1e-5)

    # the ONNX export carries the flag in its provenance: same decision
    r = invoke("--project", proj, "-q", "export", "--run", "r1")
    assert r.exit_code == 0, r.output
    r = invoke("--project", proj, "-q", "predict", wav, "--run", "r1", "--backend", "onnx",
               "--mode", "windows", "--format", "json")
    assert r.exit_code == 0, r.output
    onnx_rec = json.loads(r.stdout)["recordings"][0]["record"]
    assert onnx_rec["label"] == summary["record"]["label"]
    for c in rec["classes"]:
        assert onnx_rec["probabilities"][c] == pytest.approx(mean[c], abs=1e-3)

    # a project record written before the field: one clip per recording, as before
    project = Project.load(proj)
    old = dict(project.get("datasets", "spr"))
    old.pop("items")
    project.set_record("datasets", "spr", old)
    r = invoke("--project", proj, "eval", "--run", "r1", "--plots", "none", "--json",
               "--force")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["n"] == len(test) and doc["aggregation"] is None
    preds = _lines(Path(doc["files"]["predictions"]))
    assert len(preds) == len(test) and all("windows" not in p for p in preds)
    r = invoke("--project", proj, "train", *TRAIN, "--run", "r2")
    assert r.exit_code == 0, r.output
    assert "record-level" not in r.output
    r = invoke("--project", proj, "-q", "predict", wav, "--run", "r2", "--backend", "torch",
               "--mode", "windows", "--format", "json")
    assert r.exit_code == 0, r.output
    assert "record" not in json.loads(r.stdout)["recordings"][0]
