"""Event tables (`analyze --format events`) and label maps (`analyze --map`)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import tomllib
from typer.testing import CliRunner

from rsctool.cli import app
from rsctool.data.events import read_events, write_event_table
from rsctool.data.labelmap import LabelMap, apply_map, builtin_maps, load_map
from rsctool.data.manifest import ICBHI_CLASSES, Cycle, read_manifest
from rsctool.errors import ConfigError, DataError
from rsctool.project import Project
from rsctool.testing import write_noise_wav

runner = CliRunner()
QUICK = ("--no-plots", "--no-fbank-stats")
HEADER = "file,start,end,label,patient,device,site,split"
#: The SPRSound event types and what the built-in sprsound-to-icbhi map makes of them.
SPRSOUND_TO_ICBHI = {
    "Normal": "normal", "Fine Crackle": "crackle", "Coarse Crackle": "crackle",
    "Wheeze": "wheeze", "Rhonchi": "wheeze", "Stridor": "wheeze",
    "Wheeze+Crackle": "both", "Wheeze & Crackle": "both",
}


def invoke(project: Path, *args: object):
    return runner.invoke(app, ["--project", str(project), *map(str, args)],
                         catch_exceptions=False)


def _table(root: Path, labels: list[str], *, patients: int = 6, per_file: int = 4,
           name: str = "events.csv", split: bool = True, extra: str = "") -> Path:
    """A table over `patients` 4 s noise recordings (audio/p<i>.wav), `per_file` 1 s
    segments each, labels cycled through `labels`; patients 0-3 train, 4 val, 5 test."""
    rows = [HEADER if split else HEADER.rsplit(",", 1)[0]]
    k = 0
    for p in range(patients):
        write_noise_wav(root / "audio" / f"p{p}.wav", 4.0, 4000, seed=p)
        sp = "train" if p < patients - 2 else ("val" if p == patients - 2 else "test")
        for i in range(per_file):
            row = f"audio/p{p}.wav,{i}.0,{i + 1}.0,{labels[k % len(labels)]},p{p},dev{p % 2}," \
                  f"site{p % 3}"
            rows.append(row + (f",{sp}" if split else ""))
            k += 1
    table = root / name
    table.write_text("\n".join(rows) + "\n" + extra, encoding="utf-8")
    return table


# --------------------------------------------------------------------------- validation

BAD_ROWS = {
    "missing file": ("audio/nope.wav,0,1,normal,p9,d,s,train", "audio file not found"),
    "segment past the audio": ("audio/p0.wav,3.5,4.5,normal,p0,d,s,train",
                               "after the end of the audio"),
    "start after end": ("audio/p0.wav,2,1,normal,p0,d,s,train", "not before end"),
    "start equals end": ("audio/p0.wav,1,1,normal,p0,d,s,train", "not before end"),
    "empty label": ("audio/p0.wav,0,1,,p0,d,s,train", "empty label"),
    "bad split": ("audio/p0.wav,0,1,normal,p0,d,s,holdout", "split must be one of"),
    "not a number": ("audio/p0.wav,zero,1,normal,p0,d,s,train", "start must be a number"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_exits_2_naming_table_and_row(tmp_path, case):
    row, message = BAD_ROWS[case]
    table = _table(tmp_path, ["normal", "crackle"], extra=row + "\n")
    line = len(table.read_text().splitlines())  # the bad row is the last line
    r = invoke(tmp_path / "rsctool.toml", "analyze", table, *QUICK)
    assert r.exit_code == 2, r.output
    assert f"error: {table}:{line}: " in r.output and message in r.output, r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "rsctool.toml").exists() or "events" not in \
        (tmp_path / "rsctool.toml").read_text()


def test_unknown_column_names_the_header_row(tmp_path):
    table = _table(tmp_path, ["normal", "crackle"])
    text = table.read_text().replace("label,", "lable,", 1)
    table.write_text(text)
    r = invoke(tmp_path / "rsctool.toml", "analyze", table, "--lenient", *QUICK)
    assert r.exit_code == 2, r.output
    assert f"error: {table}:1: unknown column 'lable'" in r.output, r.output


def test_jsonl_unknown_key_and_empty_label_name_their_line(tmp_path):
    write_noise_wav(tmp_path / "a.wav", 2.0)
    good = {"file": "a.wav", "start": 0, "end": 1, "label": "x"}
    lines = [json.dumps(good), "", json.dumps({**good, "start": 1, "end": 2, "lable": "y"})]
    table = tmp_path / "t.jsonl"
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="unknown column 'lable'") as e:
        read_events(table)
    assert str(e.value).startswith(f"{table}:3: ")
    lines[2] = json.dumps({**good, "start": 1, "end": 2, "label": " "})
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="empty label") as e:
        read_events(table)
    assert str(e.value).startswith(f"{table}:3: ")


def test_lenient_skips_bad_rows_with_a_warning(tmp_path):
    bad = "audio/p0.wav,4.5,5.0,normal,p0,d,s,train\naudio/gone.wav,0,1,crackle,p0,d,s,train\n"
    table = _table(tmp_path, ["normal", "crackle"], extra=bad)
    n = len(table.read_text().splitlines())
    r = invoke(tmp_path / "rsctool.toml", "analyze", table, "--lenient", *QUICK)
    assert r.exit_code == 0, r.output
    assert f"{table}:{n - 1}: segment starts at 4.5 s" in r.output, r.output
    assert f"{table}:{n}: audio file not found: audio/gone.wav (skipped)" in r.output, r.output
    rec = Project.load(tmp_path / "rsctool.toml").get("datasets", "events")
    assert rec["format"] == "events" and rec["cycles"] == 24 and rec["problems"] == 2


# --------------------------------------------------------------------------- reading

def test_split_column_patientwise_default_and_own_classes(tmp_path):
    table = _table(tmp_path, ["normal", "stridor", "squawk"])
    cycles = read_events(table)
    assert Counter(c.split for c in cycles) == {"train": 16, "val": 4, "test": 4}
    assert {c.label for c in cycles} == {"normal", "stridor", "squawk"}
    assert all(c.crackle is None and c.wheeze is None for c in cycles)
    c0 = cycles[0]
    assert (c0.id, c0.patient, c0.device, c0.site, c0.recording, c0.sample_rate) == \
        ("audio__p0_000", "p0", "dev0", "site0", "p0", 4000)
    assert c0.audio == str((tmp_path / "audio" / "p0.wav").resolve())
    # no split column: whole patients at random, validation carved from train
    plain = _table(tmp_path, ["normal", "crackle"], name="plain.tsv", split=False)
    plain.write_text(plain.read_text().replace(",", "\t"))
    info: dict = {}
    cycles = read_events(plain, val_fraction=0.2, info=info)
    assert info == {"split_spec": "patients:0.7", "split_column": False}
    sides = {}
    for c in cycles:
        sides.setdefault(c.patient, set()).add(c.split)
    assert all(len(s) == 1 for s in sides.values())
    assert {next(iter(s)) for s in sides.values()} == {"train", "val", "test"}
    assert all(c.label in ICBHI_CLASSES and c.crackle == (c.label == "crackle")
               for c in cycles)
    with pytest.raises(ConfigError, match="has none"):
        read_events(plain, split="official")


def test_auto_detects_a_table_file_and_records_the_format(tmp_path):
    table = _table(tmp_path, ["normal", "crackle"], name="clinic.jsonl", split=False)
    rows = table.read_text().splitlines()
    cols = rows[0].split(",")
    table.write_text("".join(json.dumps(dict(zip(cols, r.split(","), strict=True))) + "\n"
                             for r in rows[1:]))
    r = invoke(tmp_path / "rsctool.toml", "analyze", table, *QUICK, "--json")
    assert r.exit_code == 0, r.output
    rec = Project.load(tmp_path / "rsctool.toml").get("datasets", "clinic")
    assert rec["format"] == "events" and rec["split"] == "patients:0.7"
    assert rec["classes"] == list(ICBHI_CLASSES)
    again = invoke(tmp_path / "rsctool.toml", "analyze", table, *QUICK)
    assert again.exit_code == 0 and "unchanged" in again.output, again.output


# --------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_icbhi_demo_round_trips_through_an_event_table(tmp_path, suffix):
    from rsctool.data.demo import make_demo_dataset

    make_demo_dataset(tmp_path / "data", patients=4, recordings_per_patient=1, seed=0)
    proj = tmp_path / "rsctool.toml"
    table = tmp_path / "data" / f"demo-events{suffix}"
    # the CLI option writes the .csv, the Python helper the .jsonl
    export = ("--export-events", table) if suffix == ".csv" else ()
    r = invoke(proj, "analyze", tmp_path / "data", "--name", "demo", "--val-fraction", "0.3",
               *QUICK, *export)
    assert r.exit_code == 0, r.output
    p = Project.load(proj)
    demo = p.get("datasets", "demo")
    cycles = read_manifest(p.abs(demo["manifest"]))
    if not export:
        write_event_table(cycles, table)
    assert table.read_text().count("\n") == len(cycles) + (suffix == ".csv")
    r = invoke(proj, "analyze", table, "--name", "back", "--val-fraction", "0.3", *QUICK)
    assert r.exit_code == 0, r.output
    p = Project.load(proj)
    back = p.get("datasets", "back")
    again = read_manifest(p.abs(back["manifest"]))
    assert [c.to_dict() for c in again] == [c.to_dict() for c in cycles]
    assert back["classes"] == demo["classes"] == list(ICBHI_CLASSES)
    assert back["split_hash"] == demo["split_hash"] and back["split"] == "official"
    assert back["format"] == "events"


# --------------------------------------------------------------------------- own labels

@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_events_dataset_with_its_own_labels_trains_and_evaluates(tmp_path):
    table = _table(tmp_path, ["quiet", "squawk", "stridor"], patients=6, per_file=4)
    proj = tmp_path / "rsctool.toml"
    r = invoke(proj, "analyze", table, "--name", "own", *QUICK)
    assert r.exit_code == 0, r.output
    r = invoke(proj, "-q", "train", "--dataset", "own", "--model", "cnn", "--size", "tiny",
               "--clip-seconds", "1", "--batch-size", "8", "--max-steps", "2", "--run", "r")
    assert r.exit_code == 0, r.output
    r = invoke(proj, "-q", "eval", "--run", "r", "--json", "--no-plots")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["classes"] == ["quiet", "squawk", "stridor"] and doc["n"] == 4


# --------------------------------------------------------------------------- label maps

def _cycle(label: str, i: int = 0) -> Cycle:
    return Cycle(id=f"c{i}", audio="a.wav", start=0.0, end=1.0, label=label, split="train")


def test_builtin_sprsound_map_maps_each_label_as_documented():
    assert "sprsound-to-icbhi" in builtin_maps()
    m = load_map("sprsound-to-icbhi")
    assert m.source == "builtin:sprsound-to-icbhi" and m.classes == ICBHI_CLASSES
    assert m.mapping == SPRSOUND_TO_ICBHI
    res = apply_map([_cycle(lab, i) for i, lab in enumerate(SPRSOUND_TO_ICBHI)], m)
    for c, (src, dst) in zip(res.cycles, SPRSOUND_TO_ICBHI.items(), strict=True):
        assert (c.label, c.meta["source_label"]) == (dst, src)
        assert (c.crackle, c.wheeze) == (int(dst in ("crackle", "both")),
                                         int(dst in ("wheeze", "both")))
        c.validate()
    assert res.unmapped == {} and sum(res.counts.values()) == len(SPRSOUND_TO_ICBHI)


def test_labelmap_toml_round_trip_and_checks(tmp_path):
    import tomli_w

    m = LabelMap.from_dict({"name": "ab", "map": {"x": "a", "y": "b", "z": "a"}})
    assert m.classes == ("a", "b")
    f = tmp_path / "m.toml"
    f.write_text(tomli_w.dumps(m.to_dict()))
    back = LabelMap.from_toml(f)
    assert back.to_dict() == m.to_dict() and back.sha256 == m.sha256
    assert LabelMap.from_dict({**m.to_dict(), "name": "renamed"}).sha256 == m.sha256
    with pytest.raises(ConfigError, match="not in classes"):
        LabelMap.from_dict({"name": "ab", "classes": ["a"], "map": {"x": "a", "y": "b"}})
    with pytest.raises(DataError, match=r"'w' \(2\)"):
        apply_map([_cycle("w", 0), _cycle("w", 1), _cycle("x", 2)], m)
    res = apply_map([_cycle("w", 0), _cycle("x", 1)], m, strict=False)
    assert [c.label for c in res.cycles] == ["a"] and res.unmapped == {"w": 1}


def test_analyze_with_builtin_map_records_it(tmp_path):
    labels = list(SPRSOUND_TO_ICBHI)
    table = _table(tmp_path, labels, patients=6, per_file=4)
    proj = tmp_path / "rsctool.toml"
    r = invoke(proj, "analyze", table, "--map", "sprsound-to-icbhi", "--name", "spr", *QUICK,
               "--json")
    assert r.exit_code == 0, r.output
    rec = Project.load(proj).get("datasets", "spr")
    m = load_map("sprsound-to-icbhi")
    assert rec["label_map"] == {"name": "sprsound-to-icbhi", "source": "builtin:sprsound-to-icbhi",
                                "sha256": m.sha256, "classes": list(ICBHI_CLASSES)}
    raw = tomllib.loads(proj.read_text())  # what the project file holds
    assert raw["datasets"]["spr"]["label_map"]["sha256"] == m.sha256
    assert rec["classes"] == list(ICBHI_CLASSES)
    report = json.loads(r.stdout)
    assert report["label_map"]["sha256"] == m.sha256
    assert report["label_map"]["mapped"] == dict.fromkeys(labels, 3)
    expected = Counter(SPRSOUND_TO_ICBHI[labels[k % len(labels)]] for k in range(24))
    assert report["totals"] == {k: expected.get(k, 0) for k in ICBHI_CLASSES}


def test_toml_map_with_unmapped_label_exits_2_or_drops_when_lenient(tmp_path):
    table = _table(tmp_path, ["Normal", "Wheeze", "Squeak"], patients=6, per_file=3)
    mfile = tmp_path / "mine.toml"
    mfile.write_text('name = "mine"\n[map]\nNormal = "normal"\nWheeze = "wheeze"\n')
    proj = tmp_path / "rsctool.toml"
    r = invoke(proj, "analyze", table, "--map", mfile, *QUICK)
    assert r.exit_code == 2, r.output
    assert f"error: {table}: label map mine ({mfile}) has no entry for label(s) 'Squeak' (6)" \
        in r.output, r.output
    assert not proj.exists() or "label_map" not in proj.read_text()
    r = invoke(proj, "analyze", table, "--map", mfile, "--lenient", *QUICK, "--json")
    assert r.exit_code == 0, r.output
    assert "dropped 6 segment(s) with unmapped label(s) 'Squeak' (6)" in r.output
    rec = Project.load(proj).get("datasets", "events")
    assert rec["cycles"] == 12 and rec["label_map"]["source"] == str(mfile)
    r = invoke(proj, "analyze", table, "--map", "no-such-map", *QUICK)
    assert r.exit_code == 2, r.output
    assert "error: --map no-such-map: no built-in label map" in r.output, r.output


def test_missing_table_and_folder_given_as_events_exit_2(tmp_path):
    proj = tmp_path / "rsctool.toml"
    r = invoke(proj, "analyze", tmp_path / "gone.csv", *QUICK)
    assert r.exit_code == 2 and f"error: {tmp_path / 'gone.csv'}: event table not found" \
        in r.output, r.output
    r = invoke(proj, "analyze", tmp_path, "--format", "events", *QUICK)
    assert r.exit_code == 2 and "reads an event table file" in r.output, r.output
    r = invoke(proj, "analyze", tmp_path, "--export-events", tmp_path / "x.txt", *QUICK)
    assert r.exit_code == 2 and "--export-events writes a .csv" in r.output, r.output
    assert not proj.exists()
