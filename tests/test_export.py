"""`rsctool export`: ONNX files with metadata, parity with torch for every model, int8,
the waveform variant, no-op re-export, failures that leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx_helpers import add_model_run, copy_project, trained_project
from typer.testing import CliRunner

from rsctool.cli import app
from rsctool.models import list_models
from rsctool.onnx_runtime import ModelSpec, OnnxModel
from rsctool.project import Project

runner = CliRunner()


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    return trained_project(tmp_path_factory)


@pytest.fixture
def proj(trained, tmp_path) -> Path:
    return copy_project(trained, tmp_path)


def invoke(project: Path, *args: str):
    return runner.invoke(app, ["--project", str(project), "-q", *args],
                         catch_exceptions=False)


def export_json(project: Path, *args: str) -> dict:
    r = invoke(project, "export", "--json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


# --------------------------------------------------------------------------- basics

def test_export_writes_a_self_describing_onnx_file_and_records_it(proj):
    doc = export_json(proj, "--run", "cnn")
    path = proj.parent / doc["onnx"]
    assert path == proj.parent / ".rsctool/runs/cnn/model.onnx" and path.is_file()
    assert doc["status"] == "done" and doc["skipped"] is False
    assert doc["parity_inputs"] == "val" and doc["parity_n"] > 0
    assert doc["parity_max_abs"] < 1e-4
    rec = Project.load(proj).get("exports", "cnn")
    assert rec["parity_max_abs"] == doc["parity_max_abs"] and rec["onnx"] == doc["onnx"]
    assert rec["opset"] == 17 and rec["quantize"] == "none" and rec["sha256"]

    m = onnx.load(str(path))
    props = {p.key: p.value for p in m.metadata_props}
    assert json.loads(props["class_names"]) == ["normal", "crackle", "wheeze", "both"]
    assert props["task"] == "multiclass" and props["model_name"] == "cnn"
    assert props["sample_rate"] == "16000" and float(props["clip_seconds"]) == 2.0
    fb = json.loads(props["feature_config"])
    assert fb["num_mel_bins"] == 64 and "mean" in fb and "std" in fb
    assert json.loads(props["normalization"])["mean"] == fb["mean"]
    assert props["rsctool_version"]
    spec = ModelSpec.from_props(props)
    assert spec.run == "cnn" and spec.needs_metadata is False and spec.with_features is False
    assert m.opset_import[0].version == 17

    # a dynamic batch axis: other batch sizes than traced
    model = OnnxModel(path)
    t = 1 + (32000 - 400) // 160
    for b in (1, 5):
        x = np.random.default_rng(b).standard_normal((b, t, 64)).astype(np.float32)
        assert model.logits(x).shape == (b, 4)


def test_metadata_model_export_keeps_its_encoder_and_metadata_inputs(proj):
    doc = export_json(proj, "--run", "softfilm")
    assert doc["parity_max_abs"] < 1e-4
    model = OnnxModel(proj.parent / doc["onnx"])
    spec = model.spec
    assert spec.task == "multilabel" and spec.needs_metadata
    assert spec.thresholds is not None and len(spec.thresholds) == 2
    assert set(spec.metadata_encoder) >= {"devices", "sites", "mean", "std"}
    assert model.inputs == ["features", "device", "site", "sex", "num", "num_mask"]
    # the metadata really reaches the graph (not constant-folded away)
    from rsctool.onnx_runtime import encode_metadata

    x = np.random.default_rng(0).standard_normal((2, 198, 64)).astype(np.float32)
    dev = spec.metadata_encoder["devices"][0]
    a = model.logits(x, encode_metadata([{}, {}], spec.metadata_encoder))
    b = model.logits(x, encode_metadata([{"device": dev, "age": 70.0, "sex": "F"}] * 2,
                                        spec.metadata_encoder))
    assert np.abs(a - b).max() > 0


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_exports_with_parity(proj, name):
    run = add_model_run(proj, name)
    doc = export_json(proj, "--run", run, "--parity-cycles", "8")
    assert doc["parity_max_abs"] < 1e-4, doc
    assert doc["parity_n"] == 8
    sess = ort.InferenceSession(str(proj.parent / doc["onnx"]),
                                providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits", "probs"]


def test_with_features_takes_waveforms(proj):
    doc = export_json(proj, "--run", "cnn", "--with-features")
    assert doc["onnx"].endswith("model.wav.onnx") and doc["parity_max_abs"] < 1e-4
    assert Project.load(proj).get("exports", "cnn-wav")["with_features"] is True
    model = OnnxModel(proj.parent / doc["onnx"])
    assert model.spec.with_features and model.inputs == ["waveform"]
    ops = {n.op_type for n in onnx.load(str(proj.parent / doc["onnx"])).graph.node}
    assert "Conv" in ops  # the filter bank's framing + DFT kernel
    # the graph's filter bank agrees with the numpy one used for feature exports
    feats = export_json(proj, "--run", "cnn")
    plain = OnnxModel(proj.parent / feats["onnx"])
    wav = (0.1 * np.random.default_rng(3).standard_normal((3, 32000))).astype(np.float32)
    a = model.logits(model.features(wav))
    b = plain.logits(plain.features(wav))
    assert np.abs(a - b).max() < 1e-3


def test_int8_reports_the_accuracy_change_instead_of_failing(proj):
    doc = export_json(proj, "--run", "softfilm", "--quantize", "int8")
    assert doc["onnx"].endswith("model.int8.onnx")
    rec = Project.load(proj).get("exports", "softfilm-int8")
    for key in ("accuracy_fp32", "accuracy_int8", "accuracy_change", "agreement",
                "accuracy_n", "parity_max_abs"):
        assert key in rec, key
    assert rec["accuracy_change"] == pytest.approx(rec["accuracy_int8"] - rec["accuracy_fp32"])
    assert rec["accuracy_split"] == "val" and 0.0 <= rec["agreement"] <= 1.0
    ops = {n.op_type for n in onnx.load(str(proj.parent / doc["onnx"])).graph.node}
    assert "MatMulInteger" in ops
    assert OnnxModel(proj.parent / doc["onnx"]).spec.quantize == "int8"


# --------------------------------------------------------------------------- lifecycle

def test_unchanged_export_is_a_noop_unless_forced(proj):
    first = export_json(proj, "--run", "cnn")
    mtime = (proj.parent / first["onnx"]).stat().st_mtime_ns
    again = export_json(proj, "--run", "cnn")
    assert again["skipped"] is True and again["sha256"] == first["sha256"]
    assert (proj.parent / first["onnx"]).stat().st_mtime_ns == mtime
    forced = export_json(proj, "--run", "cnn", "--force")
    assert forced["skipped"] is False
    other = export_json(proj, "--run", "cnn", "--opset", "18")  # other options: exported
    assert other["skipped"] is False and other["opset"] == 18


def test_concurrent_export_of_one_file_is_refused(proj):
    """While one export writes a file, another export of that file exits 2 and writes
    nothing; stale temp files of a killed export of it are removed by the next one."""
    import filelock

    out = proj.parent / ".rsctool" / "runs" / "cnn" / "model.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    before = proj.read_bytes()
    from rsctool.utils import sha256_text

    key = sha256_text(str(out.resolve()))[:16]
    with filelock.FileLock(str(proj.parent / ".rsctool" / "locks" / f"export-{key}.lock")):
        r = invoke(proj, "export", "--run", "cnn")
        assert r.exit_code == 2, r.output
        assert "is being exported by another rsctool process" in r.output
    assert not out.exists() and proj.read_bytes() == before
    stale = out.with_name(".model.onnx.abc123.fp32.tmp.onnx")
    stale.write_bytes(b"half a model")
    other = out.with_name(".model.int8.onnx.abc123.int8.tmp.onnx")  # another output's
    other.write_bytes(b"live")
    export_json(proj, "--run", "cnn")
    assert not stale.exists() and other.exists()


def test_failed_parity_leaves_no_file_and_records_the_failure(proj, monkeypatch, tmp_path):
    import rsctool.export as export

    real = export.compare

    def off_by_a_lot(*a, **k):
        res = real(*a, **k)
        res["max_abs"] = 0.5
        return res

    monkeypatch.setattr(export, "compare", off_by_a_lot)
    out = tmp_path / "m.onnx"
    r = invoke(proj, "export", "--run", "cnn", "--out", str(out))
    assert r.exit_code == 2, r.output
    assert "parity check failed" in r.output and "0.5" in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists() and not list(tmp_path.glob("*.onnx*"))
    rec = Project.load(proj).get("exports", "cnn")
    assert rec["status"] == "failed" and rec["parity_max_abs"] == 0.5


def test_export_without_the_dataset_checks_on_noise(proj):
    Project.load(proj).remove_record("datasets", "demo")
    r = runner.invoke(app, ["--project", str(proj), "export", "--run", "cnn", "--json"],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["parity_inputs"] == "random" and doc["parity_max_abs"] < 1e-4
    assert "noise" in r.stderr


@pytest.mark.parametrize("args, needle", [
    (["--run", "nope"], "'nope' is not in the project"),
    (["--quantize", "int4"], "--quantize must be one of none, int8"),
    (["--opset", "9"], "--opset must be in"),
    (["--out", "model.txt"], "--out must name a .onnx file"),
    (["--checkpoint", "worst"], "--checkpoint must be best or last"),
    (["--tolerance", "0"], "--tolerance must be positive"),
])
def test_bad_options_are_exit_2_with_one_line(proj, args, needle):
    r = invoke(proj, "export", *args)
    assert r.exit_code == 2, r.output
    assert needle in r.output, r.output
    assert "Traceback" not in r.output


def test_export_needs_a_project(tmp_path):
    r = invoke(tmp_path / "rsctool.toml", "export")
    assert r.exit_code == 2 and "project file not found" in r.output, r.output
