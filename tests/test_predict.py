"""`rsctool predict`: numpy twins of the torch code, streaming, per-cycle and window modes,
metadata, backends, output formats, bad input, and a torch-free ONNX path."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from onnx_helpers import copy_project, trained_project
from typer.testing import CliRunner

from rsctool.cli import app
from rsctool.features_np import fbank as np_fbank
from rsctool.onnx_runtime import decide, encode_metadata
from rsctool.predict import merge_segments, parse_meta_value
from rsctool.project import Project
from rsctool.streaming import stream_windows, window_starts
from rsctool.testing import write_noise_wav

runner = CliRunner()
REC = "101_1b1_Lr_sc_Litt3200"  # a demo recording (annotation beside it)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    return trained_project(tmp_path_factory)


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory) -> Path:
    """A copy of the trained project with fp32 exports of both runs (shared: read only)."""
    proj = copy_project(trained, tmp_path_factory.mktemp("exported"))
    for run in ("cnn", "softfilm"):
        r = runner.invoke(app, ["--project", str(proj), "-q", "export", "--run", run],
                          catch_exceptions=False)
        assert r.exit_code == 0, r.output
    return proj


@pytest.fixture
def data(trained) -> Path:
    return trained.parent / "data"


def invoke(project: Path | None, *args: str):
    pre = ["--project", str(project)] if project is not None else []
    return runner.invoke(app, [*pre, "-q", *args], catch_exceptions=False)


def predict_json(project: Path | None, *args: str) -> dict:
    r = invoke(project, "predict", "--format", "json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


# --------------------------------------------------------------------------- numpy twins

FBANK_CONFIGS = [
    {},
    {"window": "hanning"},
    {"sample_rate": 4000, "num_mel_bins": 32, "snip_edges": False},
    {"sample_rate": 22050, "num_mel_bins": 80, "window": "hamming", "use_power": False},
    {"preemphasis": 0.0, "remove_dc_offset": False, "window": "blackman",
     "round_to_power_of_two": False},
]


@pytest.mark.parametrize("kw", FBANK_CONFIGS, ids=lambda kw: ",".join(kw) or "default")
def test_numpy_fbank_matches_the_torch_fbank(kw):
    import torch

    from rsctool.features import FbankConfig, fbank, normalize_fbank

    cfg = FbankConfig(**kw)
    spec = cfg
    rng = np.random.default_rng(len(kw))
    n = int(1.3 * cfg.sample_rate)
    t = np.arange(n) / cfg.sample_rate
    wav = (0.1 * rng.standard_normal((2, n)) + 0.3 * np.sin(2 * np.pi * 300 * t))
    wav = wav.astype(np.float32)
    ref = fbank(torch.from_numpy(wav), cfg).numpy()
    got = np_fbank(wav, spec)
    assert got.shape == ref.shape and got.dtype == np.float32
    # What the model sees (normalised): within 1e-4. The raw log energies differ by the
    # torch float32 FFT's rounding (~1e-4 within 60 dB of a frame's peak, more below).
    ref_n = normalize_fbank(torch.from_numpy(ref), cfg.mean, cfg.std).numpy()
    assert np.abs(np_fbank(wav, spec, normalize=True) - ref_n).max() < 1e-4
    strong = ref >= ref.max(axis=2, keepdims=True) - np.log(1e6)
    assert np.abs(got - ref)[strong].max() < 5e-4


def test_numpy_fbank_is_the_exact_kaldi_recipe():
    # Against the plain float64 recipe of test_features: the numpy version is the more
    # accurate of the two implementations.
    from test_features import _kaldi_fbank_float64

    from rsctool.features import FbankConfig

    cfg = FbankConfig()
    wav = (0.1 * np.random.default_rng(1).standard_normal(16000)).astype(np.float32)
    ref = _kaldi_fbank_float64(wav.astype(np.float64), cfg)
    assert np.abs(np_fbank(wav, cfg)[0] - ref).max() < 1e-5


def test_fbank_config_is_shared_and_torch_free():
    # One config class for both implementations, importable without torch (predict's
    # onnx path reads it from the model's metadata).
    import subprocess
    import sys

    from rsctool import features, features_np

    assert features.FbankConfig is features_np.FbankConfig
    code = ("import sys; from rsctool.features_np import FbankConfig; "
            "FbankConfig(window='hanning').key(); assert 'torch' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for kw in FBANK_CONFIGS:
        cfg = features.FbankConfig(**kw)
        for n in (0, 399, 400, 401, 12345):
            assert features_np.num_frames(n, cfg) == features.num_frames(n, cfg)
    with pytest.raises(Exception, match="unknown fbank option"):
        features_np.FbankConfig.from_dict({"nope": 1})


def test_numpy_metadata_encoding_matches_the_torch_encoder():
    from rsctool.errors import DataError
    from rsctool.models.metadata import MetadataEncoder

    enc = MetadataEncoder(["Meditron", "LittC2SE"], ["Al", "Tc"], [60.0, 25.0, 2.5],
                          [15.0, 5.0, 1.0])
    records = [{}, {"device": "Meditron", "site": "Tc", "sex": "f", "age": 63.0, "bmi": 24.0,
                    "duration": 2.1},
               {"device": "AKGC417L", "site": None, "sex": "M", "age": None, "bmi": 31.5},
               {"duration": 8.0, "id": "x"}]
    want = enc.encode_values(records)
    got = encode_metadata(records, enc.to_dict())
    for k, v in want.items():
        assert got[k].dtype == v.numpy().dtype, k
        np.testing.assert_array_equal(got[k], v.numpy())
    for bad in ({"sex": "X"}, {"age": "63"}, {"colour": "red"}, {"device": 3}):
        with pytest.raises(DataError) as e1:
            enc.encode_values([bad])
        with pytest.raises(DataError) as e2:
            encode_metadata([bad], enc.to_dict())
        assert str(e1.value) == str(e2.value)


def test_decisions_match_training_and_eval():
    import torch

    from rsctool.eval import _class_probs
    from rsctool.metrics import multilabel_to_class

    logits = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    pred, probs, _ = decide(logits, "multiclass")
    assert pred.tolist() == torch.softmax(torch.from_numpy(logits), -1).argmax(-1).tolist()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    two = logits[:, :2]
    th = [0.4, 0.7]
    pred, probs, sig = decide(two, "multilabel", th)
    p = torch.sigmoid(torch.from_numpy(two)).double().numpy()
    np.testing.assert_allclose(sig, p, atol=1e-7)
    assert pred.tolist() == [int(v) for v in multilabel_to_class(p[:, 0] >= th[0],
                                                                  p[:, 1] >= th[1])]
    np.testing.assert_allclose(probs, _class_probs(p, "multilabel", []), atol=1e-7)


# --------------------------------------------------------------------------- streaming

def test_windows_cover_the_recording_and_equal_one_shot_resampling(tmp_path):
    from rsctool.audio import load_audio

    path = write_noise_wav(tmp_path / "a.wav", 9.3, 44100, channels=2, seed=2)
    ref = load_audio(path, 16000)
    got = list(stream_windows(path, 16000, 2.0, 0.75, block_seconds=0.37))
    starts = window_starts(len(ref), 32000, 12000)
    assert [w.start for w in got] == starts and [w.index for w in got] == list(range(len(got)))
    assert starts[-1] + 32000 == len(ref)  # the last window ends with the recording
    for w in got:
        assert len(w.wav) == 32000
        np.testing.assert_array_equal(w.wav, ref[w.start:w.start + 32000])
    short = write_noise_wav(tmp_path / "s.wav", 0.7, 4000)
    (only,) = list(stream_windows(short, 16000, 2.0, 1.0))
    assert only.start == 0 and len(only.wav) == 11200


def test_long_recordings_are_read_in_blocks(tmp_path, monkeypatch):
    path = write_noise_wav(tmp_path / "long.wav", 120.0, 4000)
    sizes = []
    real = sf.SoundFile.read

    def spy(self, frames=-1, *a, **k):
        sizes.append(frames)
        return real(self, frames, *a, **k)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    n = sum(1 for _ in stream_windows(path, 16000, 8.0, 4.0, block_seconds=10.0))
    assert n == 29
    assert sizes and max(sizes) == 40000 and -1 not in sizes  # never the whole file


_RSS_SCRIPT = """
import resource, sys
import numpy as np, soundfile as sf
path = sys.argv[1]
rng = np.random.default_rng(0)
with sf.SoundFile(path, "w", 4000, 1, subtype="PCM_16") as f:  # one hour at 4 kHz
    for _ in range(60):
        f.write((0.1 * rng.standard_normal(240000)).astype(np.float32))
from rsctool.streaming import stream_windows
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
n = 0
for w in stream_windows(path, 16000, 8.0, 8.0):
    n += 1
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(n, (after - before) / 1024)
"""


def test_an_hour_of_audio_streams_in_flat_memory(tmp_path):
    # Resampled to 16 kHz the hour is 230 MB of float32; streamed, peak RSS grows by a
    # few MB (one 30 s block and one window).
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tmp_path / "hour.wav")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    n, grew_mb = out.stdout.split()
    assert int(n) == 450
    assert float(grew_mb) < 40, grew_mb


def test_merge_segments():
    classes = ["normal", "crackle", "wheeze", "both"]

    def rec(s, label, pn=0.2):
        return {"start": s, "end": s + 2.0, "label": label,
                "probabilities": {"normal": pn, "crackle": 0.1, "wheeze": 0.1, "both": 0.1}}

    segs = merge_segments([rec(0, "normal", 0.9), rec(1, "crackle"), rec(2, "wheeze", 0.1),
                           rec(3, "crackle"), rec(4, "normal", 0.8), rec(5, "both"),
                           rec(9, "both")], classes)
    assert [(s["start"], s["end"], s["label"], s["windows"]) for s in segs] == \
        [(1, 5.0, "crackle", 3), (5, 7.0, "both", 1), (9, 11.0, "both", 1)]
    assert segs[0]["labels"] == {"crackle": 2, "wheeze": 1}
    assert segs[0]["max_probability"] == pytest.approx(0.9)


def test_meta_values_are_checked():
    from rsctool.errors import DataError

    assert parse_meta_value("sex", "f", "x") == "F"
    assert parse_meta_value("age", "NA", "x") is None
    assert parse_meta_value("bmi", "24.5", "x") == 24.5
    for key, value, needle in (("age", "old", "age must be a number"),
                               ("bmi", "0", "bmi must be a finite positive"),
                               ("sex", "Q", "sex must be M, F or NA"),
                               ("weight", "3", "unknown metadata field 'weight'")):
        with pytest.raises(DataError, match=needle):
            parse_meta_value(key, value, "x")


# --------------------------------------------------------------------------- the command

def test_per_cycle_mode_follows_the_annotation(exported, data):
    doc = predict_json(exported, str(data / f"{REC}.wav"), "--run", "cnn")
    assert doc["model"]["backend"] == "onnx" and doc["model"]["model"] == "cnn"
    rows = [line.split() for line in (data / f"{REC}.txt").read_text().splitlines()]
    preds = doc["predictions"]
    assert len(preds) == len(rows)
    labels = {(0, 0): "normal", (1, 0): "crackle", (0, 1): "wheeze", (1, 1): "both"}
    for p, (s, e, c, w) in zip(preds, rows, strict=True):
        assert p["type"] == "cycle" and p["start"] == float(s) and p["end"] == float(e)
        assert p["annotated"] == labels[(int(c), int(w))]
        assert set(p["probabilities"]) == set(doc["model"]["classes"])
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert p["label"] == max(p["probabilities"], key=p["probabilities"].get)
    (summary,) = doc["recordings"]
    assert summary["mode"] == "cycles" and summary["n"] == len(rows)
    assert sum(summary["counts"].values()) == len(rows)
    assert doc["errors"] == []


def test_window_mode_and_merged_segments(exported, data, tmp_path):
    wav = tmp_path / "long.wav"  # not an ICBHI name, no annotation: windows
    sig, sr = sf.read(data / f"{REC}.wav")
    sf.write(wav, np.concatenate([sig, sig]), sr)
    doc = predict_json(exported, str(wav), "--run", "cnn", "--hop", "0.5")
    (summary,) = doc["recordings"]
    assert summary["mode"] == "windows" and summary["window"] == 2.0 and summary["hop"] == 0.5
    wins = doc["predictions"]
    n = int(round(summary["duration"] * 16000))
    assert [round(w["start"] * 16000) for w in wins] == window_starts(n, 32000, 8000)
    assert wins[-1]["end"] == pytest.approx(n / 16000, abs=1e-4)
    assert all(w["type"] == "window" and "annotated" not in w for w in wins)
    assert summary["segments"] == merge_segments(wins, doc["model"]["classes"])
    # --mode windows on an annotated recording; --window changes the windows
    doc = predict_json(exported, str(data / f"{REC}.wav"), "--run", "cnn", "--mode",
                       "windows", "--window", "4", "--hop", "4")
    assert doc["recordings"][0]["mode"] == "windows"
    assert all(w["end"] - w["start"] == pytest.approx(4.0) for w in doc["predictions"])


def test_onnx_and_torch_backends_agree(exported, data):
    files = [str(data / f"{REC}.wav"), str(data / "104_1b1_Lr_mc_AKGC417L.wav")]
    for run in ("cnn", "softfilm"):
        # auto takes the export, except a transformer's on a CPU with bf16 units
        # (test_precision::test_auto_backend_takes_torch_for_a_transformer_...)
        a = predict_json(exported, *files, "--run", run,
                         *(["--backend", "onnx"] if run == "softfilm" else []))
        b = predict_json(exported, *files, "--run", run, "--backend", "torch",
                         "--precision", "fp32")  # auto may be bf16 (see test_precision)
        assert a["model"]["backend"] == "onnx" and b["model"]["backend"] == "torch"
        assert len(a["predictions"]) == len(b["predictions"]) > 0
        pa = np.array([list(p["probabilities"].values()) for p in a["predictions"]])
        pb = np.array([list(p["probabilities"].values()) for p in b["predictions"]])
        assert np.abs(pa - pb).max() < 1e-4
        assert a["recordings"][0].get("metadata") == b["recordings"][0].get("metadata")


@pytest.mark.parametrize("bf16_units", [True, False])
def test_auto_backend_of_an_exported_transformer_follows_the_cpu(exported, data, monkeypatch,
                                                                  bf16_units):
    from rsctool import devices

    monkeypatch.setattr(devices, "cpu_bf16_fast", lambda: bf16_units)
    wav = str(data / f"{REC}.wav")
    r = runner.invoke(app, ["--project", str(exported), "predict", "--format", "json", wav,
                            "--run", "softfilm"], catch_exceptions=False)  # not quiet
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["model"]["backend"] == ("torch" if bf16_units else "onnx")
    assert ("faster on this CPU" in r.stderr) is bf16_units, r.stderr
    if bf16_units:
        assert doc["model"]["precision"] == "bf16" and doc["model"]["batch_size"] == 2
    # asked for fp32, or a cnn: the export, whatever the CPU
    assert predict_json(exported, wav, "--run", "softfilm", "--precision", "fp32"
                        )["model"]["backend"] == "onnx"
    assert predict_json(exported, wav, "--run", "cnn")["model"]["backend"] == "onnx"


def test_metadata_from_names_demographics_csv_and_options(exported, data, tmp_path):
    wav = str(data / f"{REC}.wav")
    s = predict_json(exported, wav, "--run", "softfilm")["recordings"][0]
    assert s["metadata"]["device"] == "Litt3200" and s["metadata"]["site"] == "Lr"
    assert s["metadata_source"]["device"] == "file name"
    assert s["metadata_source"]["age"] == "demographics file"
    # --meta KEY=VALUE (several after one option) wins over the file name
    s = predict_json(exported, wav, "--run", "softfilm", "--meta", "site=Tc", "age=70",
                     "sex=F")["recordings"][0]
    assert s["metadata"]["site"] == "Tc" and s["metadata"]["age"] == 70.0
    assert s["metadata_source"]["sex"] == "--meta"
    # a recording with no metadata anywhere: missing, reported, not made up
    bare = tmp_path / "rec.wav"
    sf.write(bare, *sf.read(wav)[::-1][::-1])
    r = invoke(exported, "predict", str(bare), "--run", "softfilm", "--format", "json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)["recordings"][0]
    assert s["metadata"] == dict.fromkeys(("device", "site", "sex", "age", "bmi"))
    assert s["metadata_missing"] == ["device", "site", "sex", "age", "bmi"]
    assert "lack metadata" in r.stderr
    # a CSV, matched by file name
    table = tmp_path / "meta.csv"
    table.write_text("file,device,age,sex,bmi\nrec.wav,Meditron,55,M,NA\n")
    s = predict_json(exported, str(bare), "--run", "softfilm", "--meta",
                     str(table))["recordings"][0]
    assert s["metadata"]["device"] == "Meditron" and s["metadata"]["bmi"] is None
    assert s["metadata_source"]["age"] == "csv"


@pytest.mark.parametrize("args, needle", [
    (["--meta", "age=old"], "--meta age=old: age must be a number or NA"),
    (["--meta", "colour=red"], "unknown metadata field 'colour'"),
    (["--meta", "notes.txt"], "expected KEY=VALUE"),
    (["--backend", "gpu"], "--backend must be one of"),
    (["--window", "0"], "--window must be a positive number"),
    (["--format", "xml"], "--format must be one of"),
    (["--out", "x.txt"], "give --format tsv|json|jsonl|csv"),
    (["--run", "cnn", "--model", "m.onnx"], "not both"),
    (["--model", "m.onnx", "--backend", "torch"], "--backend torch needs a run"),
])
def test_bad_options_are_exit_2_with_one_line(exported, data, args, needle):
    r = invoke(exported, "predict", str(data / f"{REC}.wav"), *args)
    assert r.exit_code == 2, r.output
    assert needle in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_bad_csv_names_file_and_line(exported, data, tmp_path):
    table = tmp_path / "m.csv"
    table.write_text("file,sex\na.wav,M\nb.wav,X\n")
    r = invoke(exported, "predict", str(data / f"{REC}.wav"), "--meta", str(table))
    assert r.exit_code == 2 and f"{table}:3: sex must be M, F or NA" in r.output, r.output


def test_bad_audio_stops_the_batch_or_is_skipped_with_keep_going(exported, data, tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00not really a wav file" * 10)
    good = str(data / f"{REC}.wav")
    out = tmp_path / "res.json"
    out.write_text("old")
    r = invoke(exported, "predict", good, str(bad), str(tmp_path / "gone.wav"),
               "--out", str(out))
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "unreadable audio" in lines[0]
    assert out.read_text() == "old"  # never a half-written output file
    r = invoke(exported, "predict", good, str(bad), str(tmp_path / "gone.wav"), "--out",
               str(out), "--keep-going")
    assert r.exit_code == 2, r.output
    assert "2 of 3 input(s) could not be classified" in r.output
    assert f"{bad}: unreadable audio" in r.output and "gone.wav: audio file not found" in r.output
    doc = json.loads(out.read_text())
    assert [s["file"] for s in doc["recordings"]] == [good]
    assert {Path(e["file"]).name for e in doc["errors"]} == {"broken.wav", "gone.wav"}


def test_bad_annotation_names_file_and_line(exported, tmp_path, data):
    wav = tmp_path / f"{REC}.wav"
    sf.write(wav, *sf.read(data / f"{REC}.wav"))
    (tmp_path / f"{REC}.txt").write_text("0.1\t1.0\t0\t0\n1.0\tx\t0\t0\n")
    r = invoke(exported, "predict", str(wav))
    assert r.exit_code == 2, r.output
    assert f"{REC}.txt:2: end time 'x' is not a number" in r.output
    # ...and --annotations points elsewhere; --mode windows ignores annotations
    good = tmp_path / "ann.txt"
    good.write_text("0.5\t2.0\t1\t0\n2.0\t3.5\t0\t0\n")
    doc = predict_json(exported, str(wav), "--annotations", str(good))
    assert [p["annotated"] for p in doc["predictions"]] == ["crackle", "normal"]
    assert predict_json(exported, str(wav), "--mode", "windows")["recordings"][0]["mode"] \
        == "windows"


def test_inputs_folders_globs_and_formats(exported, data, tmp_path):
    doc = predict_json(exported, str(data), "--run", "cnn")
    assert len(doc["recordings"]) == 12
    doc = predict_json(exported, str(data / "10[12]_*.wav"), str(data / f"{REC}.wav"))
    assert len(doc["recordings"]) == 4  # duplicates dropped
    r = invoke(exported, "predict", str(data / f"{REC}.wav"), "--format", "jsonl")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["type"] for x in lines] == ["cycle"] * (len(lines) - 1) + ["recording"]
    out = tmp_path / "p.csv"
    r = invoke(exported, "predict", str(data / f"{REC}.wav"), "--out", str(out), "--mode",
               "windows")
    assert r.exit_code == 0 and r.stdout == "", r.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    kinds = {row["type"] for row in rows}
    assert {"window", "recording"} <= kinds
    win = next(row for row in rows if row["type"] == "window")
    assert float(win["p_normal"]) + float(win["p_crackle"]) + float(win["p_wheeze"]) + \
        float(win["p_both"]) == pytest.approx(1.0, abs=1e-4)


def test_default_backend_is_onnx_only_for_a_current_export(exported, data, tmp_path):
    proj = copy_project(exported, tmp_path)
    wav = str(data / f"{REC}.wav")
    assert predict_json(proj, wav, "--run", "cnn")["model"]["backend"] == "onnx"
    Project.load(proj).update_record("exports", "cnn", checkpoint_signature=[0, 0],
                                     checkpoint_sha256="0" * 64)
    r = invoke(proj, "predict", wav, "--run", "cnn", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["model"]["backend"] == "torch"
    assert "older than its best checkpoint" in r.stderr
    r = invoke(proj, "predict", wav, "--run", "cnn", "--backend", "onnx")
    assert r.exit_code == 2 and "--backend onnx: the export of run 'cnn' is older" in r.output
    Project.load(proj).remove_record("exports", "cnn")
    assert predict_json(proj, wav, "--run", "cnn")["model"]["backend"] == "torch"


def test_model_file_needs_no_project_and_is_checked(exported, data, tmp_path):
    onnx_file = exported.parent / ".rsctool/runs/cnn/model.onnx"
    doc = predict_json(tmp_path / "none.toml", str(data / f"{REC}.wav"), "--model",
                       str(onnx_file))
    assert doc["model"]["run"] == "cnn" and not (tmp_path / "none.toml").exists()
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00" * 64)
    r = invoke(None, "predict", str(data / f"{REC}.wav"), "--model", str(junk))
    assert r.exit_code == 2 and f"{junk}: not a readable ONNX model" in r.output, r.output


_NO_TORCH = """
import sys
from rsctool.cli import app
try:
    app(sys.argv[1:], prog_name="rsctool")
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "transformers", "rsctool.train", "rsctool.features")
               if m in sys.modules)
print("EXIT", code, "HEAVY", ",".join(heavy) or "-")
"""


@pytest.mark.parametrize("extra", [["--help"], ["FILE", "--model", "ONNX", "--format", "json"],
                                   ["FILE", "--run", "cnn", "--out", "OUT"],
                                   ["FILE", "--run", "softfilm", "--backend", "onnx", "--out",
                                    "OUT"]])
def test_onnx_path_and_help_do_not_import_torch(exported, data, tmp_path, extra):
    onnx_file = exported.parent / ".rsctool/runs/cnn/model.onnx"
    subst = {"FILE": str(data / f"{REC}.wav"), "ONNX": str(onnx_file),
             "OUT": str(tmp_path / "o.json")}
    args = ["--project", str(exported), "predict", *(subst.get(a, a) for a in extra)]
    out = subprocess.run([sys.executable, "-c", _NO_TORCH, *args], capture_output=True,
                         text=True, timeout=120)
    assert "EXIT 0 HEAVY -" in out.stdout, out.stdout + out.stderr


_PREDICT_RSS = """
import resource, sys
from rsctool.cli import app
try:
    app(sys.argv[1:], prog_name="rsctool")
except SystemExit as e:
    assert not e.code, e.code
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


@pytest.mark.slow
def test_predicting_an_hour_keeps_memory_flat(exported, tmp_path):
    # The whole command on one hour vs one minute of 4 kHz audio: peak RSS about equal
    # (the hour resampled to 16 kHz alone would be 230 MB).
    onnx_file = exported.parent / ".rsctool/runs/cnn/model.onnx"
    rng = np.random.default_rng(0)
    peaks = {}
    for minutes in (1, 60):
        wav = tmp_path / f"{minutes}min.wav"
        with sf.SoundFile(wav, "w", 4000, 1, subtype="PCM_16") as f:
            for _ in range(minutes):
                f.write((0.1 * rng.standard_normal(240000)).astype(np.float32))
        out = tmp_path / f"{minutes}.jsonl"
        r = subprocess.run([sys.executable, "-c", _PREDICT_RSS, "-q", "predict", str(wav),
                            "--model", str(onnx_file), "--out", str(out), "--hop", "2"],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        peaks[minutes] = float(r.stdout.split()[-1])
        lines = out.read_text().splitlines()
        assert len(lines) == minutes * 30 + 1  # 2 s windows every 2 s, one summary
    assert peaks[60] - peaks[1] < 50, peaks


# --------------------------------------------------------------------------- issue 16, part 6

def test_piped_stdout_gets_tsv_records_and_format_still_wins(exported, data):
    # CliRunner's stdout is not a terminal: `rsctool predict ... | head` must see records.
    r = invoke(exported, "predict", str(data / f"{REC}.wav"), "--run", "cnn")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    header = lines[0].split("\t")
    assert header[:6] == ["file", "type", "index", "start", "end", "label"]
    assert header[-1] == "warning"
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
    n_cycles = len((data / f"{REC}.txt").read_text().splitlines())
    assert len(rows) == n_cycles and {row["type"] for row in rows} == {"cycle"}
    assert float(rows[0]["p_normal"]) + float(rows[0]["p_crackle"]) + \
        float(rows[0]["p_wheeze"]) + float(rows[0]["p_both"]) == pytest.approx(1.0, abs=1e-4)
    # an explicit --format wins: the table goes to stderr, stdout stays empty
    r = runner.invoke(app, ["--project", str(exported), "predict", str(data / f"{REC}.wav"),
                            "--run", "cnn", "--format", "table"], catch_exceptions=False)
    assert r.exit_code == 0 and r.stdout == "" and "recording(s)" in r.stderr, r.output


def _odd_audio(folder: Path) -> dict[str, Path]:
    """A 100-byte wav, a wav cut in half, a silent and a clipping recording."""
    folder.mkdir(parents=True, exist_ok=True)
    full = write_noise_wav(folder / "full.wav", 2.0, 16000)
    data = full.read_bytes()
    files = {"tiny": folder / "tiny.wav", "cut": folder / "cut.wav",
             "silent": folder / "silent.wav", "clipped": folder / "clipped.wav"}
    files["tiny"].write_bytes(data[:100])
    files["cut"].write_bytes(data[: len(data) // 2])
    sf.write(files["silent"], np.zeros(4000 * 120, np.float32), 4000, subtype="PCM_16")
    loud = np.clip(np.random.default_rng(0).normal(0, 0.8, 4000 * 3), -1, 1)
    sf.write(files["clipped"], loud.astype(np.float32), 4000, subtype="PCM_16")
    full.unlink()
    return files


def test_short_truncated_silent_and_clipping_audio_is_flagged(exported, tmp_path):
    files = _odd_audio(tmp_path / "odd")
    r = invoke(exported, "predict", *map(str, files.values()), "--run", "cnn",
               "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    want = {"tiny": "too short", "cut": "truncated audio", "silent": "silent audio",
            "clipped": "clipping"}
    got = {Path(s["file"]).stem: s["warning"] for s in doc["recordings"]}
    for name, needle in want.items():
        assert needle in got[name], got
        assert f"{files[name]}: {needle}" in r.stderr, r.stderr
    for p in doc["predictions"]:  # every record carries its file's warning
        assert p["warning"] == got[Path(p["file"]).stem]
    # a fine recording gets warning null
    fine = write_noise_wav(tmp_path / "fine.wav", 3.0, 16000)
    doc = predict_json(exported, str(fine), "--run", "cnn")
    assert doc["recordings"][0]["warning"] is None
    assert all(p["warning"] is None for p in doc["predictions"])
    # --strict: exit 2 and one line naming the file
    for name, needle in want.items():
        r = invoke(exported, "predict", str(fine), str(files[name]), "--run", "cnn",
                   "--strict", "--format", "json")
        assert r.exit_code == 2, r.output
        assert f"error: {files[name]}: " in r.stderr and needle in r.stderr, r.output
        assert len(r.stderr.strip().splitlines()) == 1, r.output


def test_levels_accumulate_per_streamed_block(tmp_path):
    from rsctool.audio import LevelStats, level_problems
    from rsctool.streaming import stream_windows

    silent = tmp_path / "s.wav"
    sf.write(silent, np.zeros(4000 * 10, np.float32), 4000)
    levels = LevelStats()
    for _ in stream_windows(silent, 16000, 2.0, 1.0, block_seconds=1.0, levels=levels):
        pass
    assert levels.n == 40000 and level_problems(levels) == ["silent audio (every sample is zero)"]
    # a 1 s burst in the middle of 10 s: the blocks add up to the whole
    wav = np.zeros(40000, np.float32)
    wav[20000:24000] = 1.0
    sf.write(silent, wav, 4000, subtype="FLOAT")
    levels = LevelStats()
    for _ in stream_windows(silent, 4000, 2.0, 1.0, block_seconds=0.7, levels=levels):
        pass
    assert levels.clipped == 4000 and levels.peak == 1.0
    assert "clipping (10 % of samples" in level_problems(levels)[0]


def test_one_audio_extension_list_for_every_stage(exported, tmp_path):
    from rsctool.audio import AUDIO_EXTENSIONS
    from rsctool.data import folder, icbhi

    assert ".mp3" in AUDIO_EXTENSIONS
    assert folder.FOLDER_AUDIO_SUFFIXES is AUDIO_EXTENSIONS
    assert icbhi.AUDIO_SUFFIXES is AUDIO_EXTENSIONS
    rec = tmp_path / "recs"
    write_noise_wav(rec / "a.wav", 3.0, 16000)
    wav, sr = sf.read(rec / "a.wav")
    sf.write(rec / "b.mp3", wav, sr, format="MP3")
    doc = predict_json(exported, str(rec), "--run", "cnn")
    assert sorted(Path(s["file"]).name for s in doc["recordings"]) == ["a.wav", "b.mp3"]


def test_a_reader_closing_stdout_early_gives_exit_141(exported, data, tmp_path):
    # Lots of output (3 folders' windows every 50 ms, > 1 MB) read one line at a time;
    # PYTHONUNBUFFERED=1 made a short write drop the rest silently (exit 0, cut record).
    import os

    onnx_file = exported.parent / ".rsctool/runs/cnn/model.onnx"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for fmt in ("jsonl", "tsv"):
        proc = subprocess.Popen(
            [sys.executable, "-m", "rsctool", "-q", "predict", str(data), "--model",
             str(onnx_file), "--mode", "windows", "--hop", "0.05", "--format", fmt],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        first = proc.stdout.readline()
        proc.stdout.close()  # the reader goes away, like `| head -1`
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=300) == 141, err
        assert first.endswith(b"\n")
        if fmt == "jsonl":
            assert json.loads(first)["type"] == "window"
        assert "Traceback" not in err and "Exception ignored" not in err, err


def test_na_in_a_meta_csv_outranks_the_demographics_file(exported, data, tmp_path):
    wav = str(data / f"{REC}.wav")
    s = predict_json(exported, wav, "--run", "softfilm")["recordings"][0]
    assert s["metadata"]["age"] is not None  # from the demographics file
    table = tmp_path / "meta.csv"
    table.write_text(f"file,age,sex\n{REC}.wav,NA,\n")
    s = predict_json(exported, wav, "--run", "softfilm", "--meta", str(table))["recordings"][0]
    assert s["metadata"]["age"] is None and s["metadata_source"]["age"] == "csv (NA)"
    assert "age" in s["metadata_missing"]
    # an empty cell says nothing: the demographics value stays
    assert s["metadata"]["sex"] is not None
    assert s["metadata_source"]["sex"] == "demographics file"
    s = predict_json(exported, wav, "--run", "softfilm", "--meta", "age=NA")["recordings"][0]
    assert s["metadata"]["age"] is None and s["metadata_source"]["age"] == "--meta (NA)"
