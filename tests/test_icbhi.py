"""ICBHI 2017 reader: the real annotation/metadata files, and malformed hand-made datasets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from rsctool.data.icbhi import (
    END_TOLERANCE_S,
    find_metadata_files,
    is_icbhi_dir,
    parse_recording_name,
    read_annotation,
    read_demographics,
    read_diagnosis,
    read_icbhi,
    read_split_file,
)
from rsctool.data.manifest import ICBHI_CLASSES, validate_manifest
from rsctool.data.splits import Problem, split_counts, split_hash
from rsctool.errors import ConfigError, DataError
from rsctool.testing import synthesize_icbhi_audio, write_icbhi_dataset, write_noise_wav

A = "101_1b1_Al_sc_Meditron"
B = "102_1b1_Ar_sc_Meditron"
C = "103_2b2_Ar_mc_LittC2SE"
ROWS = [(0.1, 1.0, 0, 0), (1.0, 2.5, 1, 0), (2.5, 3.0, 0, 1), (3.0, 4.2, 1, 1)]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path


def small_dataset(tmp_path: Path, **kw) -> Path:
    recordings = kw.pop("recordings", {A: ROWS, B: ROWS[:2], C: ROWS[1:]})
    default = {name: "test" if i == 0 else "train" for i, name in enumerate(recordings)}
    splits = kw.pop("splits", default)
    return write_icbhi_dataset(tmp_path / "db", recordings, splits=splits, **kw)


# --------------------------------------------------------------------------- real files

@pytest.fixture(scope="module")
def real_db(icbhi_meta, tmp_path_factory) -> Path:
    """The real 920 annotation files with synthetic noise audio (written once)."""
    return synthesize_icbhi_audio(icbhi_meta, tmp_path_factory.mktemp("icbhi"))


@pytest.fixture(scope="module")
def real_cycles(real_db):
    return read_icbhi(real_db)  # official split, val_fraction=0.1, seed=0


TRAIN = {"normal": 2063, "crackle": 1215, "wheeze": 501, "both": 363}
TEST = {"normal": 1579, "crackle": 649, "wheeze": 385, "both": 143}


def test_real_counts_match_the_published_ones(real_db, real_cycles):
    cycles = real_cycles
    assert len(cycles) == 6898
    assert len({c.recording for c in cycles}) == 920
    assert len({c.patient for c in cycles}) == 126
    counts = split_counts(cycles)
    train_val = Counter(counts["train"]) + Counter(counts["val"])
    assert dict(train_val) == TRAIN
    assert counts["test"] == TEST
    validate_manifest(cycles)  # every record valid, ids unique
    assert {c.device for c in cycles} == {"AKGC417L", "LittC2SE", "Litt3200", "Meditron"}
    assert all(c.sample_rate == 4000 and Path(c.audio).is_absolute() for c in cycles)


def test_real_without_validation_is_the_official_split(real_db):
    cycles = read_icbhi(real_db, val_fraction=0)
    counts = split_counts(cycles)
    assert counts == {"test": TEST, "train": TRAIN}


def test_real_validation_is_patient_wise_from_train(real_cycles):
    val = {c.patient for c in real_cycles if c.split == "val"}
    train = {c.patient for c in real_cycles if c.split == "train"}
    assert val and not val & train
    n_val = sum(c.split == "val" for c in real_cycles)
    assert abs(n_val / 4142 - 0.1) < 0.02


def test_real_quirk_226_is_mapped(real_cycles):
    quirk = [c for c in real_cycles if c.recording == "226_1b1_Pl_sc_LittC2SE"]
    assert quirk and all(c.split in ("train", "val") for c in quirk)
    assert quirk[0].id == "226_1b1_Pl_sc_LittC2SE_000" and quirk[0].device == "LittC2SE"


def test_real_metadata_spot_checks(real_cycles):
    by_patient = {c.patient: c for c in real_cycles}
    p101 = by_patient["101"]  # child: 3 y, F, 19 kg, 99 cm -> BMI from weight/height
    assert (p101.age, p101.sex, p101.diagnosis) == (3.0, "F", "URTI")
    assert p101.bmi == pytest.approx(19 / 0.99 ** 2)
    p104 = by_patient["104"]  # adult BMI given
    assert (p104.age, p104.sex, p104.bmi, p104.diagnosis) == (70.0, "F", 28.47, "COPD")
    p108 = by_patient["108"]  # child without weight and height
    assert (p108.age, p108.sex, p108.bmi) == (3.0, "M", None)
    p223 = by_patient["223"]  # all NA
    assert (p223.age, p223.sex, p223.bmi) == (None, None, None)
    assert p223.diagnosis == "COPD"
    assert by_patient["226"].diagnosis == "Pneumonia"
    first = next(c for c in real_cycles if c.recording == "101_1b1_Al_sc_Meditron")
    assert (first.id, first.start, first.end, first.label, first.split) == (
        "101_1b1_Al_sc_Meditron_000", 0.036, 0.579, "normal", "test")
    assert (first.site, first.mode) == ("Al", "sc")


def test_real_read_is_deterministic(real_db, real_cycles):
    # (its speed is benchmarks/bench_analyze.py's business, not a timed unit test's)
    again = read_icbhi(real_db)
    assert split_hash(again) == split_hash(real_cycles)
    assert is_icbhi_dir(real_db)


def test_real_patient_split(real_db):
    cycles = read_icbhi(real_db, split="patients:0.6", val_fraction=0.1, seed=5)
    sides = {s: {c.patient for c in cycles if c.split == s} for s in ("train", "val", "test")}
    assert all(sides.values())
    assert not sides["train"] & sides["test"] and not sides["val"] & sides["test"]
    assert not sides["train"] & sides["val"]
    frac_test = sum(c.split == "test" for c in cycles) / len(cycles)
    assert abs(frac_test - 0.4) < 0.03


def test_real_metadata_readers(icbhi_meta):
    demo = read_demographics(icbhi_meta / "ICBHI_Challenge_demographic_information.txt")
    kaggle = read_demographics(icbhi_meta / "kaggle_extras" / "demographic_info.txt")
    assert len(demo) == 126 and demo == kaggle
    diag = read_diagnosis(icbhi_meta / "ICBHI_Challenge_diagnosis.txt")
    assert diag == read_diagnosis(icbhi_meta / "kaggle_extras" / "patient_diagnosis.csv")
    assert Counter(diag.values())["COPD"] == 64
    official = read_split_file(icbhi_meta / "ICBHI_challenge_train_test.txt")
    assert len(official) == 920 and official["226_1b1_Pl_sc_Meditron"] == "train"
    patchmix = read_split_file(icbhi_meta / "alt_splits" / "patchmix_official_split.txt")
    assert patchmix["226_1b1_Pl_sc_LittC2SE"] == "train" and len(patchmix) == 920


# --------------------------------------------------------------------------- names

def test_parse_recording_name():
    assert parse_recording_name("101_1b1_Al_sc_Meditron") == {
        "patient": "101", "index": "1b1", "site": "Al", "mode": "sc", "device": "Meditron"}
    assert parse_recording_name("226_1b1_Pl_sc_LittC2SE")["device"] == "LittC2SE"
    for bad in ("", "101_1b1_Al_sc", "abc_1b1_Al_sc_Meditron", "101_1b1_Al_sc_Meditron_x",
                "101-1b1-Al-sc-Meditron", "101_1b1_Al_sc_Meditron.txt"):
        with pytest.raises(DataError, match="recording name"):
            parse_recording_name(bad)


# --------------------------------------------------------------------------- annotations

def test_read_annotation_accepts_tabs_spaces_crlf_bom_blank_lines(tmp_path):
    text = "\ufeff0.036\t0.579\t0\t0\r\n0.579   2.45 1 0\r\n2.45\t3.893 0\t1\r\n\r\n  \n\n"
    rows = read_annotation(write(tmp_path / "a.txt", text))
    assert rows == [(0.036, 0.579, 0, 0), (0.579, 2.45, 1, 0), (2.45, 3.893, 0, 1)]


BAD_LINES = [
    ("0.1\t1.0\t0\n", "expected 4 columns"),
    ("0.1\t1.0\t0\t0\t1\n", "expected 4 columns"),
    ("abc\t1.0\t0\t0\n", "start time 'abc' is not a number"),
    ("0.1\txyz\t0\t0\n", "end time 'xyz' is not a number"),
    ("nan\t1.0\t0\t0\n", "must be finite"),
    ("0.1\tinf\t0\t0\n", "must be finite"),
    ("-0.5\t1.0\t0\t0\n", "negative"),
    ("1.0\t1.0\t0\t0\n", "not after start"),
    ("2.0\t1.0\t0\t0\n", "not after start"),
    ("0.1\t1.0\t2\t0\n", "crackles flag must be 0 or 1"),
    ("0.1\t1.0\t0\t-1\n", "wheezes flag must be 0 or 1"),
    ("0.1\t1.0\t0.5\t0\n", "crackles flag must be 0 or 1"),
    ("0.1\t1.0\tyes\t0\n", "crackles flag must be 0 or 1"),
]


@pytest.mark.parametrize("bad, message", BAD_LINES)
def test_read_annotation_strict_names_file_and_line(tmp_path, bad, message):
    path = write(tmp_path / "rec.txt", "0.0\t0.5\t0\t0\n\n" + bad + "1.5\t2.0\t1\t1\n")
    with pytest.raises(DataError) as info:
        read_annotation(path)
    text = str(info.value)
    assert text.startswith(f"{path}:3: ") and message in text
    assert info.value.line == 3 and "rec.txt" in text


@pytest.mark.parametrize("bad, message", BAD_LINES)
def test_read_annotation_lenient_keeps_good_lines(tmp_path, bad, message):
    path = write(tmp_path / "rec.txt", "0.0\t0.5\t0\t0\n" + bad + "1.5\t2.0\t1\t1\n")
    problems: list[Problem] = []
    rows = read_annotation(path, strict=False, problems=problems)
    assert rows == [(0.0, 0.5, 0, 0), (1.5, 2.0, 1, 1)]
    assert len(problems) == 1
    assert problems[0].path == str(path) and problems[0].line == 2
    assert message in problems[0].message


@pytest.mark.parametrize("text", ["", "\n\n", "\ufeff\r\n  \r\n"])
def test_read_annotation_empty_file(tmp_path, text):
    path = write(tmp_path / "empty.txt", text)
    with pytest.raises(DataError, match="empty annotation file"):
        read_annotation(path)


def test_read_annotation_missing_and_binary(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_annotation(tmp_path / "nope.txt")
    path = tmp_path / "bin.txt"
    path.write_bytes(b"0.1\t1.0\t0\t0\n\xff\xfe\x00junk\n")
    with pytest.raises(DataError, match=r"bin\.txt:2: not a UTF-8 text file"):
        read_annotation(path)


# --------------------------------------------------------------------------- split file

def test_read_split_file_formats(tmp_path):
    path = write(tmp_path / "split.txt", f"\ufeff{A}\ttest\r\n{B}   TRAIN\r\n\r\n{C} train")
    assert read_split_file(path) == {A: "test", B: "train", C: "train"}


@pytest.mark.parametrize("bad, message", [
    (f"{B}\n", "expected 2 columns"),
    (f"{B} train extra\n", "expected 2 columns"),
    (f"{B}\tvalidation\n", "split must be 'train' or 'test'"),
    (f"{A}\ttrain\n", "listed again with a different split"),
])
def test_read_split_file_bad_lines(tmp_path, bad, message):
    path = write(tmp_path / "split.txt", f"{A}\ttest\r\n{bad}{C}\ttrain\n")
    with pytest.raises(DataError, match=rf"split\.txt:2: .*{message}"):
        read_split_file(path)
    problems: list[Problem] = []
    rows = read_split_file(path, strict=False, problems=problems)
    assert rows[A] == "test" and rows[C] == "train"
    assert [(p.line, message in p.message) for p in problems] == [(2, True)]


def test_read_split_file_empty(tmp_path):
    with pytest.raises(DataError, match="empty split file"):
        read_split_file(write(tmp_path / "split.txt", "\r\n"))


# --------------------------------------------------------------------------- demographics

DEMO = ("101\t3\tF\tNA\t19\t99\r\n"
        "103\t70\tF\t33\tNA\tNA\r\n"
        "108\t3\tm\tNA\tNA\tNA\r\n"
        "115\t0.58\tM\tNA\t7.14\t64\r\n"
        "223\tNA\tNA\tNA\tNA\tNA\r\n")


def test_read_demographics(tmp_path):
    demo = read_demographics(write(tmp_path / "demo.txt", DEMO))
    assert set(demo) == {"101", "103", "108", "115", "223"}
    assert demo["101"]["bmi"] == pytest.approx(19 / 0.99 ** 2)
    assert demo["101"]["adult_bmi"] is None and demo["101"]["child_height"] == 99.0
    assert demo["103"] == {"age": 70.0, "sex": "F", "bmi": 33.0, "adult_bmi": 33.0,
                           "child_weight": None, "child_height": None}
    assert demo["108"]["sex"] == "M" and demo["108"]["bmi"] is None
    assert demo["115"]["age"] == 0.58
    assert demo["115"]["bmi"] == pytest.approx(7.14 / 0.64 ** 2)
    assert demo["223"] == dict.fromkeys(demo["223"])  # all None
    # the Kaggle mirror: leading blank line, space separated, a header is tolerated
    kaggle = write(tmp_path / "demographic_info.txt",
                   "\npid age sex bmi weight height\n" + DEMO.replace("\t", " "))
    assert read_demographics(kaggle) == demo


@pytest.mark.parametrize("bad, message", [
    ("104\t70\tF\t28.47\tNA\n", "expected 6 columns"),
    ("104\tseventy\tF\t28.47\tNA\tNA\n", "age 'seventy' is not a number"),
    ("104\t-1\tF\t28.47\tNA\tNA\n", "negative"),
    ("104\t70\tX\t28.47\tNA\tNA\n", "sex must be M, F or NA"),
    ("104\t70\tF\tbig\tNA\tNA\n", "adult BMI 'big' is not a number"),
    ("104\t70\tF\t0\tNA\tNA\n", "must be positive"),
    ("104\t7\tF\tNA\t20\tnan\n", "must be finite"),
    ("101\t70\tF\t28.47\tNA\tNA\n", "listed twice"),
])
def test_read_demographics_bad_rows(tmp_path, bad, message):
    path = write(tmp_path / "demo.txt", "101\t3\tF\tNA\t19\t99\n" + bad)
    with pytest.raises(DataError, match=rf"demo\.txt:2: .*{message}"):
        read_demographics(path)
    problems: list[Problem] = []
    demo = read_demographics(path, strict=False, problems=problems)
    assert set(demo) == {"101"} and problems[0].line == 2


def test_read_diagnosis_formats(tmp_path):
    tab = read_diagnosis(write(tmp_path / "d.txt", "101\tURTI\n102\tHealthy\r\n\n"))
    spaces = read_diagnosis(write(tmp_path / "d2.txt", "101  URTI\n102 Healthy\n"))
    csv = read_diagnosis(write(tmp_path / "d.csv", 'ID,CLASS\n101,URTI\n"102","Healthy"\n'))
    assert tab == spaces == csv == {"101": "URTI", "102": "Healthy"}
    multi = read_diagnosis(write(tmp_path / "d3.txt", "101 Lung Fibrosis\n"))
    assert multi == {"101": "Lung Fibrosis"}
    with pytest.raises(DataError, match=r"d4\.txt:2: expected 2 columns"):
        read_diagnosis(write(tmp_path / "d4.txt", "101\tURTI\n102\n"))
    with pytest.raises(DataError, match=r"d5\.txt:2: .*another diagnosis"):
        read_diagnosis(write(tmp_path / "d5.txt", "101\tURTI\n101\tCOPD\n"))


def test_find_metadata_files(tmp_path):
    db = tmp_path / "db"
    db.mkdir()
    assert find_metadata_files(db) == {"split": None, "diagnosis": None, "demographics": None}
    write(tmp_path / "ICBHI_challenge_train_test.txt", "")
    write(tmp_path / "patient_diagnosis.csv", "")
    write(db / "demographic_info.txt", "")
    found = find_metadata_files(db)
    assert found["split"] == tmp_path / "ICBHI_challenge_train_test.txt"
    assert found["diagnosis"] == tmp_path / "patient_diagnosis.csv"
    assert found["demographics"] == db / "demographic_info.txt"
    # official names win over Kaggle ones, and the dataset folder over its parent
    write(tmp_path / "icbhi_challenge_DIAGNOSIS.txt", "")
    write(db / "ICBHI_Challenge_demographic_information.txt", "")
    write(db / "ICBHI_challenge_train_test.txt", "")
    found = find_metadata_files(db)
    assert found["diagnosis"] == tmp_path / "icbhi_challenge_DIAGNOSIS.txt"
    assert found["demographics"] == db / "ICBHI_Challenge_demographic_information.txt"
    assert found["split"] == db / "ICBHI_challenge_train_test.txt"


# --------------------------------------------------------------------------- read_icbhi

def test_read_icbhi_small(tmp_path):
    db = small_dataset(tmp_path, demographics=DEMO, diagnosis="101\tURTI\n103\tAsthma\n",
                       metadata_in_parent=True)
    cycles = read_icbhi(db, val_fraction=0)
    assert [c.id for c in cycles] == [f"{A}_{i:03d}" for i in range(4)] + \
        [f"{B}_{i:03d}" for i in range(2)] + [f"{C}_{i:03d}" for i in range(3)]
    assert [c.label for c in cycles[:4]] == list(ICBHI_CLASSES)
    a = cycles[0]
    assert (a.split, a.patient, a.recording, a.device, a.site, a.mode) == (
        "test", "101", A, "Meditron", "Al", "sc")
    assert (a.age, a.sex, a.diagnosis, a.sample_rate) == (3.0, "F", "URTI", 4000)
    assert a.audio == str((db / f"{A}.wav").resolve())
    b = cycles[4]  # patient 102: neither demographics nor diagnosis
    assert (b.age, b.sex, b.bmi, b.diagnosis) == (None, None, None, None)
    assert cycles[-1].diagnosis == "Asthma" and cycles[-1].bmi == 33.0
    validate_manifest(cycles)


def test_read_icbhi_without_metadata_files(tmp_path):
    db = small_dataset(tmp_path, splits=None)
    with pytest.raises(DataError, match="ICBHI_challenge_train_test.txt"):
        read_icbhi(db)
    cycles = read_icbhi(db, split="patients:0.5", val_fraction=0)
    assert {c.split for c in cycles} == {"train", "test"}
    assert all(c.age is None and c.diagnosis is None for c in cycles)
    split = write(tmp_path / "elsewhere.txt", f"{A} train\n{B} train\n{C} test\n")
    cycles = read_icbhi(db, split_file=split, val_fraction=0)
    assert {c.recording: c.split for c in cycles} == {A: "train", B: "train", C: "test"}
    with pytest.raises(DataError, match="demographics file not found"):
        read_icbhi(db, split_file=split, demographics=tmp_path / "nope.txt")


def test_read_icbhi_maps_the_renamed_recording(tmp_path):
    real = "226_1b1_Pl_sc_LittC2SE"
    db = small_dataset(tmp_path, recordings={A: ROWS, real: ROWS},
                       splits={A: "test", "226_1b1_Pl_sc_Meditron": "train"})
    cycles = read_icbhi(db, val_fraction=0)
    assert {c.recording: c.split for c in cycles} == {A: "test", real: "train"}


def test_read_icbhi_ambiguous_or_unknown_split_names(tmp_path):
    # two unnamed recordings share the prefix: the stale name cannot be resolved
    twins = {A: ROWS, "226_1b1_Pl_sc_LittC2SE": ROWS, "226_1b1_Pl_sc_AKGC417L": ROWS}
    splits = {A: "test", "226_1b1_Pl_sc_Meditron": "train"}
    db = small_dataset(tmp_path, recordings=twins, splits=splits)
    split_path = db / "ICBHI_challenge_train_test.txt"
    with pytest.raises(DataError) as info:
        read_icbhi(db)
    assert str(info.value).startswith(f"{split_path}:2: split file names 226_1b1_Pl_sc_Meditron")
    problems: list[Problem] = []
    cycles = read_icbhi(db, strict=False, problems=problems, val_fraction=0)
    assert {c.recording for c in cycles} == {A}
    assert [(Path(p.path).name, p.line) for p in problems] == [
        ("ICBHI_challenge_train_test.txt", 2),
        ("226_1b1_Pl_sc_AKGC417L.txt", None), ("226_1b1_Pl_sc_LittC2SE.txt", None)]
    assert "not named in the split file" in problems[1].message


def test_read_icbhi_stale_alias_next_to_the_real_name_is_a_known_alias(tmp_path):
    # OPERA's copy of the split file (921 lines) names both the stale and the corrected
    # name, on the same side: the stale one is a known alias, not a problem
    real = "226_1b1_Pl_sc_LittC2SE"
    db = small_dataset(tmp_path, recordings={A: ROWS, real: ROWS},
                       splits={A: "test", "226_1b1_Pl_sc_Meditron": "train", real: "train"})
    info: dict = {}
    problems: list[Problem] = []
    cycles = read_icbhi(db, problems=problems, val_fraction=0, info=info)
    assert problems == [] and {c.recording for c in cycles} == {A, real}
    assert {c.split for c in cycles if c.recording == real} == {"train"}
    assert info["split_aliases"] == [{"name": "226_1b1_Pl_sc_Meditron", "recording": real,
                                      "split": "train", "line": 2}]
    assert info["split_source"] == "folder"


def test_read_icbhi_stale_alias_on_the_other_side_is_still_a_problem(tmp_path):
    real = "226_1b1_Pl_sc_LittC2SE"
    db = small_dataset(tmp_path, recordings={A: ROWS, real: ROWS},
                       splits={A: "test", "226_1b1_Pl_sc_Meditron": "test", real: "train"})
    with pytest.raises(DataError, match=r":2: split file names 226_1b1_Pl_sc_Meditron"):
        read_icbhi(db)
    problems: list[Problem] = []
    cycles = read_icbhi(db, strict=False, problems=problems, val_fraction=0)
    assert len(problems) == 1 and {c.recording for c in cycles} == {A, real}


def test_read_icbhi_missing_audio_or_annotation(tmp_path):
    db = small_dataset(tmp_path, recordings={A: ROWS, B: ROWS, C: None},
                       audio_seconds={B: 0})
    problems: list[Problem] = []
    cycles = read_icbhi(db, strict=False, problems=problems, val_fraction=0)
    assert {c.recording for c in cycles} == {A}
    messages = {Path(p.path).name: p.message for p in problems}
    assert "no annotation file" in messages[f"{C}.wav"]
    assert "no audio file" in messages[f"{B}.txt"]
    assert len(problems) == 2  # B's split-file line is not reported again
    with pytest.raises(DataError, match=rf"{C}\.wav: audio file has no annotation"):
        read_icbhi(db)


def test_read_icbhi_recording_not_in_split_file(tmp_path):
    db = small_dataset(tmp_path, splits={A: "test", B: "train"})
    with pytest.raises(DataError, match=rf"{C}\.txt: recording is not named in the split"):
        read_icbhi(db)
    problems: list[Problem] = []
    cycles = read_icbhi(db, strict=False, problems=problems, val_fraction=0)
    assert {c.recording for c in cycles} == {A, B} and len(problems) == 1


def test_read_icbhi_bad_lines_strict_and_lenient(tmp_path):
    text = "0.0\t0.5\t0\t0\n0.5\tabc\t0\t0\n1.0\t1.5\t1\t0\n"
    db = small_dataset(tmp_path, recordings={A: text, B: ROWS})
    with pytest.raises(DataError) as info:
        read_icbhi(db)
    assert str(info.value) == f"{db.resolve() / (A + '.txt')}:2: end time 'abc' is not a number"
    problems: list[Problem] = []
    cycles = read_icbhi(db, strict=False, problems=problems, val_fraction=0)
    # the good cycles keep the ids of their lines
    assert [c.id for c in cycles if c.recording == A] == [f"{A}_000", f"{A}_002"]
    assert len([c for c in cycles if c.recording == B]) == 4
    assert [(p.line, p.message) for p in problems] == [(2, "end time 'abc' is not a number")]


def test_read_icbhi_empty_annotation_skips_recording(tmp_path):
    db = small_dataset(tmp_path, recordings={A: "\r\n", B: ROWS})
    with pytest.raises(DataError, match=rf"{A}\.txt: empty annotation file"):
        read_icbhi(db)
    problems: list[Problem] = []
    cycles = read_icbhi(db, strict=False, problems=problems, val_fraction=0)
    assert {c.recording for c in cycles} == {B} and len(problems) == 1


def test_read_icbhi_cycles_against_audio_length(tmp_path):
    rows = [(0.0, 1.0, 0, 0), (1.0, 2.0 + END_TOLERANCE_S / 2, 0, 0), (1.9, 2.6, 1, 0),
            (2.7, 3.0, 0, 1)]
    db = small_dataset(tmp_path, recordings={A: rows, B: ROWS}, audio_seconds={A: 2.0})
    # a cycle that ends past the audio is clamped and kept (the papers' public code keeps
    # all 6,898 cycles); one that starts past it has no audio: strict mode stops there
    with pytest.raises(DataError, match=rf"{A}\.txt:4: cycle starts at 2\.7 s"):
        read_icbhi(db)
    problems: list[Problem] = []
    info: dict = {}
    cycles = read_icbhi(db, strict=False, problems=problems, val_fraction=0, info=info)
    a = [c for c in cycles if c.recording == A]
    assert [c.id for c in a] == [f"{A}_000", f"{A}_001", f"{A}_002"]
    assert a[1].end == 2.0 and a[2].end == 2.0 and a[2].start == 1.9  # clamped, kept
    assert info["cycles_clamped"] == [
        {"id": f"{A}_001", "end": 2.0 + END_TOLERANCE_S / 2, "audio_end": 2.0},
        {"id": f"{A}_002", "end": 2.6, "audio_end": 2.0}]
    assert [p.line for p in problems] == [4]
    assert "starts at 2.7 s, after the end" in problems[0].message
    # without the audio check nothing is clipped or dropped
    unchecked = read_icbhi(db, check_audio=False, val_fraction=0)
    assert len(unchecked) == 8 and all(c.sample_rate is None for c in unchecked)


def test_read_icbhi_unreadable_audio_and_flac(tmp_path):
    db = small_dataset(tmp_path, recordings={A: ROWS, B: ROWS}, audio_seconds={B: 0})
    (db / f"{B}.wav").write_bytes(b"RIFF0000WAVEjunk")
    problems: list[Problem] = []
    cycles = read_icbhi(db, strict=False, problems=problems, val_fraction=0)
    assert {c.recording for c in cycles} == {A}
    assert problems[0].path.endswith(f"{B}.wav") and "unreadable audio" in problems[0].message
    (db / f"{B}.wav").unlink()
    write_noise_wav(db / f"{B}.flac", 5.0, 8000)
    cycles = read_icbhi(db, val_fraction=0)
    b = [c for c in cycles if c.recording == B]
    assert b[0].audio.endswith(".flac") and b[0].sample_rate == 8000


def test_read_icbhi_validation_carve(tmp_path):
    recs = {f"{p}_1b1_Al_sc_Meditron": ROWS for p in range(101, 121)}
    splits = {name: ("test" if i % 4 == 0 else "train") for i, name in enumerate(recs)}
    db = small_dataset(tmp_path, recordings=recs, splits=splits)
    cycles = read_icbhi(db, val_fraction=0.2, seed=0)
    by = {s: {c.patient for c in cycles if c.split == s} for s in ("train", "val", "test")}
    assert len(by["val"]) == 3 and len(by["train"]) == 12 and len(by["test"]) == 5
    assert not by["val"] & by["train"]
    assert split_hash(read_icbhi(db, val_fraction=0.2, seed=0)) == split_hash(cycles)
    test_before = {c.id for c in read_icbhi(db, val_fraction=0) if c.split == "test"}
    assert {c.id for c in cycles if c.split == "test"} == test_before


def test_read_icbhi_bad_options(tmp_path):
    db = small_dataset(tmp_path)
    with pytest.raises(ConfigError, match="random"):
        read_icbhi(db, split="random:0.7:0.15")
    with pytest.raises(ConfigError):
        read_icbhi(db, split="nonsense")
    with pytest.raises(ConfigError, match="val_fraction"):
        read_icbhi(db, val_fraction=1.0)
    with pytest.raises(DataError, match="dataset folder not found"):
        read_icbhi(tmp_path / "missing")
    with pytest.raises(DataError, match="no ICBHI annotation files"):
        read_icbhi(tmp_path, split="patients:0.5")


def test_is_icbhi_dir(tmp_path):
    db = small_dataset(tmp_path)
    assert is_icbhi_dir(db)
    assert not is_icbhi_dir(tmp_path)
    assert not is_icbhi_dir(tmp_path / "missing")
    only_txt = tmp_path / "txt"
    only_txt.mkdir()
    write(only_txt / f"{A}.txt", "0\t1\t0\t0\n")
    write_noise_wav(only_txt / "other.wav", 1.0)
    assert not is_icbhi_dir(only_txt)
