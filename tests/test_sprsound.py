"""SPRSound layout (issue 19, section 1): detection, the reader's format variations and
validation, the challenge splits and tasks, and the real annotation sample."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rsctool.cli import app
from rsctool.data.manifest import read_manifest
from rsctool.project import Project
from rsctool.testing import write_noise_wav

runner = CliRunner()
FAST = ("--no-plots", "--no-fbank-stats")
SR = 8000

#: The real SPRSound annotation sample (no audio), in the developers' checkout only.
SPRSOUND_META = Path(__file__).resolve().parents[2] / "shared" / "sprsound-meta"


@pytest.fixture(scope="session")
def sprsound_meta() -> Path:
    if not (SPRSOUND_META / "annotations").is_dir():
        pytest.skip(f"real SPRSound annotations not available ({SPRSOUND_META} absent: a "
                    "user checkout)")
    return SPRSOUND_META / "annotations"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def flat(text: str) -> str:
    return " ".join(text.split())


def wav_for(json_path: Path) -> Path:
    """The repository's place for a recording: ``X/train2022_json/a.json`` ->
    ``X/train2022_wav/a.wav``; ``X/test2022_json/inter_test_json/a.json`` ->
    ``X/test2022_wav/a.wav``; without a ``*_json`` folder: next to the JSON file."""
    parts = json_path.parts
    i = next((k for k, p in enumerate(parts) if p.endswith("_json")), None)
    if i is None:
        return json_path.with_suffix(".wav")
    return Path(*parts[:i], parts[i][:-len("_json")] + "_wav", json_path.stem + ".wav")


def write_recording(json_path: Path, doc: dict | str, seconds: float | None = None) -> Path:
    """Write an annotation (a dict, or raw text) and a noise wav long enough for it."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    text = doc if isinstance(doc, str) else json.dumps(doc)
    json_path.write_text(text, encoding="utf-8")
    if seconds is None:
        events = doc.get("event_annotation", []) if isinstance(doc, dict) else []
        seconds = max([float(e["end"]) / 1000 for e in events] + [0.5]) + 0.3
    write_noise_wav(wav_for(json_path), seconds, SR, seed=len(json_path.stem))
    return json_path


def analyze(tmp_path: Path, root: Path, *args, name: str = "spr"):
    proj = tmp_path / "p.toml"
    r = invoke("--project", proj, "analyze", root, "--name", name, *FAST, *args)
    return r, proj


def manifest(proj: Path, name: str = "spr") -> tuple[dict, list]:
    project = Project.load(proj)
    rec = project.get("datasets", name)
    return rec, read_manifest(proj.parent / rec["manifest"])


# ------------------------------------------------------------ the real annotation sample

EVENT = {"Normal": "normal", "Rhonchi": "rhonchi", "Wheeze": "wheeze", "Stridor": "stridor",
         "Coarse Crackle": "coarse_crackle", "Fine Crackle": "fine_crackle",
         "Wheeze+Crackle": "wheeze_crackle"}
RECORD = {"Normal": "normal", "CAS": "cas", "DAS": "das", "CAS & DAS": "cas_das",
          "Poor Quality": "poor_quality"}


def _mirror(annotations: Path, dst: Path) -> list[tuple[Path, dict]]:
    """Copy every real annotation file into `dst` (same relative paths) with a noise wav
    of the right length in the sibling ``*_wav`` folder."""
    out = []
    for src in sorted(annotations.rglob("*.json")):
        doc = json.loads(src.read_text(encoding="utf-8"))
        target = dst / src.relative_to(annotations)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(src.read_bytes())
        events = doc["event_annotation"]
        write_noise_wav(wav_for(target), max([int(e["end"]) / 1000 for e in events] + [1.0])
                        + 0.2, SR, seed=len(out))
        out.append((src.relative_to(annotations), doc))
    return out


def _expected_split(rel: Path) -> str:
    return "train" if any(p.startswith("train") for p in rel.parts) else "test"


@pytest.fixture(scope="module")
def real_tree(sprsound_meta, tmp_path_factory) -> tuple[Path, list[tuple[Path, dict]]]:
    root = tmp_path_factory.mktemp("sprsound") / "SPRSound"
    return root, _mirror(sprsound_meta, root)


def test_real_sample_event_counts_class_by_class_and_each_files_split(real_tree, tmp_path):
    root, files = real_tree
    assert len(files) == 67  # every file of the sample (SOURCE.md)
    want: Counter = Counter()
    want_split: dict[str, str] = {}
    for rel, doc in files:
        want_split[rel.stem] = _expected_split(rel)
        for e in doc["event_annotation"]:
            want[(_expected_split(rel), EVENT[e["type"]])] += 1
    r, proj = analyze(tmp_path, root)  # --format auto, default task 1-2, official split
    assert r.exit_code == 0, r.output
    rec, cycles = manifest(proj)
    assert rec["format"] == "sprsound" and rec["task"] == "1-2"
    assert rec["split"] == "official"
    got = Counter(("test" if c.split == "test" else "train", c.label) for c in cycles)
    assert got == want
    assert sum(got.values()) == 284
    for c in cycles:  # every item keeps its file's split (val is carved from train)
        assert ("test" if c.split == "test" else "train") == want_split[c.recording], c.id
    assert {c.split for c in cycles} == {"train", "val", "test"}
    assert rec["classes"] == ["normal", "rhonchi", "wheeze", "stridor", "coarse_crackle",
                              "fine_crackle", "wheeze_crackle"]
    report = json.loads((tmp_path / rec["report"]).read_text())
    sets = Counter(next(p for p in rel.parts[::-1] if p.startswith(("train", "test", "inter",
                                                                     "intra")))
                   .removesuffix("_json") for rel, _ in files)
    assert report["split"]["sets"] == dict(sets)
    assert sets["inter_test"] == 12 and sets["train2022"] == 32
    assert report["split"]["official"] is True and report["task"] == "1-2"


def test_real_sample_record_counts_task_2_2_and_2_1(real_tree, tmp_path):
    root, files = real_tree
    want = Counter((_expected_split(rel), RECORD[doc["record_annotation"]])
                   for rel, doc in files if "record_annotation" in doc)
    r, proj = analyze(tmp_path, root, "--task", "2-2", "--val-fraction", "0")
    assert r.exit_code == 0, r.output
    rec, cycles = manifest(proj)
    assert Counter((c.split, c.label) for c in cycles) == want
    assert len(cycles) == 64  # the 3 files of 2024/2025 have no record label
    assert all(c.start == 0 and c.end > 1.0 for c in cycles)
    report = json.loads((tmp_path / rec["report"]).read_text())
    assert report["no_record_label"] == 3
    assert "3 recording(s) have no record_annotation" in flat(r.stderr), r.stderr
    assert report["totals"]["poor_quality"] == 1

    r, proj = analyze(tmp_path, root, "--task", "2-1", "--val-fraction", "0", name="spr21")
    assert r.exit_code == 0, r.output
    _, cycles = manifest(proj, "spr21")
    adv = sum(n for (_, k), n in want.items() if k in ("cas", "das", "cas_das"))
    assert Counter(c.label for c in cycles) == {"normal": 22, "adventitious": adv,
                                                "poor_quality": 1}


# ------------------------------------------------------------ format variations

def _train_test(root: Path) -> None:
    """Two train patients and one test patient, in the repository's folder layout."""
    write_recording(root / "train2022_json" / "40000001_3.4_1_p2_101.json",
                    {"record_annotation": "CAS & DAS", "event_annotation": [
                        {"start": "2500", "end": "3100", "type": "Wheeze"},
                        {"start": "100", "end": "900", "type": "Normal"},
                        {"start": "900", "end": "1700", "type": "Fine Crackle"},
                        {"start": "1500", "end": "2400", "type": "Wheeze & Crackle"}]})
    write_recording(root / "train2022_json" / "40000002_0.5_0_p3_102.json",
                    {"record_annotation": "Normal", "event_annotation": [
                        {"start": 200, "end": 1400, "type": "Normal"}]})
    write_recording(root / "test2022_json" / "inter_test_json" / "40000003_7.0_0_p1_103.json",
                    {"recording_annotation": "DAS", "event_annotation": [
                        {"start": "300", "end": "1200.5", "type": "Coarse Crackle"},
                        {"start": "1300", "end": "2000", "type": "Normal"}]})


def test_format_variations_are_read(tmp_path):
    root = tmp_path / "BioCAS2022"
    _train_test(root)
    r, proj = analyze(tmp_path, root, "--val-fraction", "0")
    assert r.exit_code == 0, r.output
    rec, cycles = manifest(proj)
    a = [c for c in cycles if c.patient == "40000001"]
    # unsorted in the file, sorted by time in the manifest; ids keep the file position
    assert [c.start for c in a] == [0.1, 0.9, 1.5, 2.5]
    assert [c.id[-3:] for c in a] == ["001", "002", "003", "000"]
    assert [c.label for c in a] == ["normal", "fine_crackle", "wheeze_crackle", "wheeze"]
    assert a[1].end == 1.7 and a[2].start == 1.5  # overlapping events both kept
    assert a[0].meta["type"] == "Normal" and a[2].meta["type"] == "Wheeze & Crackle"
    assert a[0].meta["record"] == "CAS & DAS" and a[0].meta["set"] == "train2022"
    # metadata for the conditioned models: age, sex, location as site, device
    assert (a[0].age, a[0].sex, a[0].site, a[0].device) == (3.4, "F", "p2", "Yunting-II")
    b = [c for c in cycles if c.patient == "40000003"]
    assert [c.split for c in b] == ["test", "test"] and b[0].end == pytest.approx(1.2005)
    assert b[0].meta["set"] == "inter_test" and b[0].meta["record"] == "DAS"
    assert {c.split for c in cycles if c.patient != "40000003"} == {"train"}
    # the older README's `recording_annotation` key is read as the record label
    r, proj = analyze(tmp_path, root, "--task", "2-2", "--val-fraction", "0", name="r")
    assert r.exit_code == 0, r.output
    _, recs = manifest(proj, "r")
    assert {c.id: c.label for c in recs} == {"40000001_3.4_1_p2_101": "cas_das",
                                             "40000002_0.5_0_p3_102": "normal",
                                             "40000003_7.0_0_p1_103": "das"}


@pytest.mark.parametrize("stem, patient, age, sex, location", [
    ("65058931_3.4_1_p2_1086", "65058931", 3.4, "F", "p2"),  # the README's worked example
    ("6624420_0.2_0_p2_4394", "6624420", 0.2, "M", "p2"),  # 7 digits
    ("00016281_3.7_1_p3_11865", "00016281", 3.7, "F", "p3"),  # leading zeros kept
    ("_5.3_0_p8_34877", None, 5.3, "M", "p8"),  # anonymised (2025), location p5-p8
])
def test_recording_names(stem, patient, age, sex, location):
    from rsctool.data.sprsound import parse_name

    name = parse_name(stem)
    assert (name["patient"], name["age"], name["sex"], name["location"]) == \
        (patient, age, sex, location)
    assert parse_name("101_1b1_Al_sc_Meditron") is None and parse_name("65_0_1") is None


def test_task_1_1_is_normal_vs_adventitious(tmp_path):
    root = tmp_path / "BioCAS2022"
    _train_test(root)
    r, proj = analyze(tmp_path, root, "--task", "1-1", "--val-fraction", "0", "--format",
                      "sprsound")
    assert r.exit_code == 0, r.output
    rec, cycles = manifest(proj)
    assert rec["classes"] == ["normal", "adventitious"]
    assert Counter(c.label for c in cycles) == {"normal": 3, "adventitious": 4}


def test_without_split_folders_the_split_is_patient_wise(tmp_path):
    root = tmp_path / "mine"
    for i in range(6):
        write_recording(root / "json" / f"4100000{i}_2.0_{i % 2}_p{1 + i % 4}_{i}.json",
                        {"record_annotation": "Normal", "event_annotation": [
                            {"start": "0", "end": "800", "type": "Normal"},
                            {"start": "800", "end": "1600", "type": "Wheeze"}]})
    r, proj = analyze(tmp_path, root)
    assert r.exit_code == 0, r.output
    rec, cycles = manifest(proj)
    assert rec["split"] == "patients:0.7"
    by_patient: dict[str, set] = {}
    for c in cycles:
        by_patient.setdefault(c.patient, set()).add(c.split)
    assert all(len(s) == 1 for s in by_patient.values())  # whole patients
    assert {c.split for c in cycles} == {"train", "val", "test"}


def test_patient_metadata_reaches_the_metadata_encoder(tmp_path):
    from rsctool.data.sprsound import read_sprsound
    from rsctool.models.metadata import MetadataEncoder

    root = tmp_path / "BioCAS2022"
    _train_test(root)
    cycles = read_sprsound(root, val_fraction=0)
    enc = MetadataEncoder.fit(cycles)
    assert list(enc.sites) == ["p2", "p3"] and list(enc.devices) == ["Yunting-II"]
    meta = enc.encode(cycles)
    by_id = {c.id: i for i, c in enumerate(cycles)}
    a = by_id["40000001_3.4_1_p2_101_000"]
    test = by_id["40000003_7.0_0_p1_103_000"]
    assert int(meta["site"][a]) == 1 and int(meta["site"][test]) == 0  # p1: unseen
    assert int(meta["sex"][a]) == 2 and int(meta["sex"][test]) == 1  # F, M
    assert bool(meta["num_mask"][a, 0])  # age present


@pytest.mark.parametrize("text, message", [
    ('{"record_annotation": "Normal", "event_annotation": [{"start": "9", "end": "x", '
     '"type": "Normal"}]}', "event 1: start and end must be milliseconds"),
    ('{"record_annotation": "Normal", "event_annotation": [{"start": "900", "end": "100", '
     '"type": "Normal"}]}', "event 1: need 0 <= start < end"),
    ('{"record_annotation": "Normal", "event_annotation": [{"start": "0", "end": "100", '
     '"type": "Squawk"}]}', "event 1: unknown event type 'Squawk'"),
    ('{"record_annotation": "Fine", "event_annotation": []}',
     "unknown record_annotation 'Fine'"),
    ('{"record_annotation": "Normal"}', "no event_annotation list"),
    ('{"record_annotation": "Normal", "event_annotation": [', "not valid JSON"),
    ('{"record_annotation": "Normal", "event_annotation": [{"start": "0", "end": "99000", '
     '"type": "Normal"}]}', "ends after the end of the audio"),
])
def test_bad_file_exits_2_naming_it_and_lenient_skips_it(tmp_path, text, message):
    root = tmp_path / "BioCAS2022"
    _train_test(root)
    bad = write_recording(root / "train2022_json" / "40000009_1.0_1_p4_109.json", text,
                          seconds=2.0)
    r, proj = analyze(tmp_path, root)
    assert r.exit_code == 2, r.output
    out = flat(r.output)
    assert out.startswith(f"error: {bad}: ") and message in out, out
    assert not proj.exists()
    r, proj = analyze(tmp_path, root, "--lenient", "--val-fraction", "0")
    assert r.exit_code == 0, r.output
    assert message in flat(r.output)  # the warning names the file and the problem
    rec, cycles = manifest(proj)
    assert rec["problems"] == 1 and not [c for c in cycles if c.patient == "40000009"]


def test_missing_audio_and_unknown_task_and_task_on_other_formats(tmp_path):
    root = tmp_path / "BioCAS2022"
    _train_test(root)
    wav_for(root / "train2022_json" / "40000002_0.5_0_p3_102.json").unlink()
    r, _ = analyze(tmp_path, root)
    assert r.exit_code == 2 and "40000002_0.5_0_p3_102.json: annotation file has no audio" \
        in flat(r.output), r.output
    r, _ = analyze(tmp_path, root, "--task", "3-1", "--lenient")
    assert r.exit_code == 2 and "--task must be one of 1-1, 1-2, 2-1, 2-2" in r.output, r.output
    icbhi = tmp_path / "folder"
    for k in ("a", "b"):
        for i in range(4):
            write_noise_wav(icbhi / k / f"{k}{i}.wav", 0.5, SR)
    r, _ = analyze(tmp_path, icbhi, "--task", "1-1")
    assert r.exit_code == 2 and "--task applies to SPRSound data" in flat(r.output), r.output


def test_2024_files_without_record_label_have_no_record_items(tmp_path):
    root = tmp_path / "BioCAS2024"
    write_recording(root / "test2024_json" / "00016281_3.7_1_p3_11865.json",
                    json.dumps({"event_annotation": [
                        {"start": "100", "end": "900", "type": "Normal"}]}, indent=4),
                    seconds=2.0)
    r, _ = analyze(tmp_path, root, "--task", "2-2")
    assert r.exit_code == 2, r.output
    assert "no usable SPRSound items for task 2-2" in flat(r.output)
    assert "1 recordings have no record_annotation" in flat(r.output), r.output


# ------------------------------------------------------------ demo: analyze -> train -> eval

def test_demo_sprsound_runs_analyze_train_eval_end_to_end(tmp_path):
    data = tmp_path / "spr-demo"
    r = invoke("demo-data", data, "--kind", "sprsound", "--patients", "6", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["recordings"] == 18 and summary["events"] > 50
    # every event type is in the train split, and the record labels of 2022 train
    assert set(summary["events_by_split"]["train"]) == set(EVENT)
    assert (data / "test2022_json" / "inter_test_json").is_dir()
    proj = tmp_path / "p.toml"
    r = invoke("--project", proj, "analyze", data, "--name", "spr", *FAST)
    assert r.exit_code == 0, r.output
    rec, cycles = manifest(proj)
    assert rec["format"] == "sprsound" and rec["split"] == "official"
    assert Counter(c.label for c in cycles if c.split != "test") == Counter(
        {EVENT[k]: v for k, v in summary["events_by_split"]["train"].items()})
    r = invoke("--project", proj, "train", "--model", "cnn", "--size", "tiny", "--epochs", "1",
               "--max-steps", "2", "--batch-size", "8", "--clip-seconds", "2", "--run", "r1",
               "--dataset", "spr")
    assert r.exit_code == 0, r.output
    r = invoke("--project", proj, "eval", "--run", "r1", "--plots", "none", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    spr = doc["sprsound"]
    assert spr["task"] == "1-2" and doc["classes"][0] == "normal"
    for k in ("se", "sp", "as", "hs", "score"):
        assert spr[k] is None or 0.0 <= spr[k] <= 1.0
    assert spr["se"] == doc["sensitivity"] and spr["sp"] == doc["specificity"]
    assert spr["as"] == pytest.approx((spr["se"] + spr["sp"]) / 2)
    assert "SPRSound Task 1-2" in r.stderr
    assert spr["per_set"] is None  # the demo's test split is one set (inter_test)


def test_demo_sprsound_record_task_items_are_whole_recordings(tmp_path):
    data = tmp_path / "spr-demo"
    r = invoke("demo-data", data, "--kind", "sprsound", "--patients", "5")
    assert r.exit_code == 0, r.output
    r, proj = analyze(tmp_path, data, "--task", "2-1")
    assert r.exit_code == 0, r.output
    rec, cycles = manifest(proj)
    assert rec["classes"] == ["normal", "adventitious", "poor_quality"]
    assert len(cycles) == 15 and all((c.start, c.end) == (0.0, 8.0) for c in cycles)
    assert "poor_quality" in {c.label for c in cycles}


def _band_features(x: np.ndarray) -> np.ndarray:
    """Mean, spread and peak of 16 log band energies (250 Hz bands at 8 kHz)."""
    n = 256
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[::128] * np.hanning(n)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    bands = np.log(np.stack([power[:, i * 8:(i + 1) * 8].mean(1) for i in range(16)], 1)
                   + 1e-10)
    return np.concatenate([bands.mean(0), bands.std(0), bands.max(0)])


def test_demo_sprsound_event_classes_are_learnable(tmp_path):
    from rsctool.audio import load_audio
    from rsctool.data.demo_sprsound import make_demo_sprsound_dataset
    from rsctool.data.sprsound import TASK_CLASSES, read_sprsound
    from rsctool.metrics import sprsound_metrics

    make_demo_sprsound_dataset(tmp_path / "d")
    cycles = read_sprsound(tmp_path / "d", val_fraction=0)
    audio = {c.audio: load_audio(c.audio, SR) for c in cycles}
    x = np.array([_band_features(audio[c.audio][int(c.start * SR):int(c.end * SR)])
                  for c in cycles])
    classes = TASK_CLASSES["1-2"]
    y = np.array([classes.index(c.label) for c in cycles])
    train = np.array([c.split == "train" for c in cycles])
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-9
    xb = np.c_[(x - mu) / sd, np.ones(len(x))]
    w = np.zeros((xb.shape[1], len(classes)))
    onehot = np.eye(len(classes))[y[train]]
    for _ in range(600):  # softmax regression, full-batch gradient descent
        z = xb[train] @ w
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        w -= 0.5 * (xb[train].T @ (p - onehot) / train.sum() + 1e-3 * w)
    pred = (xb[~train] @ w).argmax(1)
    m = sprsound_metrics(y[~train], pred, classes)
    assert m["score"] >= 0.85, m
    assert set(y[~train]) == set(range(len(classes)))  # every class is in the test split
