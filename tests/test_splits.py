"""Split specs, patient-wise validation carving, random/patient splits and split hashing."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rsctool.data.manifest import Cycle
from rsctool.data.splits import (
    Problem,
    ProblemSink,
    SplitSpec,
    carve_validation,
    parse_split_spec,
    patient_split,
    random_split,
    split_counts,
    split_hash,
)
from rsctool.errors import ConfigError, DataError


def make_cycles(n_patients: int = 20, per_patient=lambda p: 3 + p % 7, split: str = "train",
                labels=("normal", "crackle", "wheeze", "both")) -> list[Cycle]:
    out = []
    for p in range(n_patients):
        for i in range(per_patient(p)):
            out.append(Cycle(id=f"p{p:03d}_{i:03d}", audio="/x.wav", start=0.0, end=1.0,
                             label=labels[(p + i) % len(labels)], split=split,
                             patient=f"{100 + p}", recording=f"p{p}"))
    return out


# --------------------------------------------------------------------------- specs

@pytest.mark.parametrize("text, expected", [
    ("official", SplitSpec("official")),
    (" Official ", SplitSpec("official")),
    ("patients:0.6", SplitSpec("patients", 0.6)),
    ("patients: 0.75", SplitSpec("patients", 0.75)),
    ("random:0.7:0.15", SplitSpec("random", 0.7, 0.15)),
    ("random:1:0", SplitSpec("random", 1.0, 0.0)),
])
def test_parse_split_spec_accepts(text, expected):
    spec = parse_split_spec(text)
    assert spec == expected
    assert parse_split_spec(str(spec)) == spec  # canonical text round-trips
    assert parse_split_spec(spec) == spec


def test_split_spec_test_fraction():
    assert parse_split_spec("random:0.7:0.15").test == pytest.approx(0.15)
    assert parse_split_spec("patients:0.6").test == pytest.approx(0.4)
    assert parse_split_spec("official").test is None


@pytest.mark.parametrize("text", [
    "", "   ", "foo", "official:0.5", "patients", "patients:", "patients:x", "patients:0",
    "patients:1", "patients:1.5", "patients:-0.2", "patients:nan", "patients:inf",
    "patients:0.6:0.1", "random", "random:0.7", "random:0.7:0.2:0.1", "random:0.9:0.2",
    "random:0:0.5", "random:0.5:-0.1", "random:a:b", "random:nan:0.1", None, 3,
])
def test_parse_split_spec_rejects_garbage(text):
    with pytest.raises(ConfigError):
        parse_split_spec(text)


# --------------------------------------------------------------------------- validation

def patients_of(cycles, split):
    return {c.patient for c in cycles if c.split == split}


def test_carve_validation_moves_whole_patients_about_the_fraction():
    cycles = make_cycles(40)
    out = carve_validation(cycles, 0.2, seed=0)
    assert len(out) == len(cycles)
    assert [c.id for c in out] == [c.id for c in cycles]  # input order kept
    val, train = patients_of(out, "val"), patients_of(out, "train")
    assert val and train and not val & train
    n_val = sum(c.split == "val" for c in out)
    assert abs(n_val / len(cycles) - 0.2) < 0.05
    # the input is not modified
    assert all(c.split == "train" for c in cycles)


def test_carve_validation_is_deterministic_and_order_independent():
    cycles = make_cycles(40)
    a = carve_validation(cycles, 0.15, seed=3)
    shuffled = list(cycles)
    random.Random(1).shuffle(shuffled)
    b = carve_validation(shuffled, 0.15, seed=3)
    assert split_hash(a) == split_hash(b)
    c = carve_validation(cycles, 0.15, seed=4)
    assert patients_of(a, "val") != patients_of(c, "val")


def test_carve_validation_leaves_test_and_existing_val_alone():
    cycles = make_cycles(10) + make_cycles(5, split="test")
    cycles = [Cycle(**{**c.to_dict(), "id": f"t{c.id}"}) if c.split == "test" else c
              for c in cycles]
    out = carve_validation(cycles, 0.3, seed=0)
    before = {c.id: c.split for c in cycles}
    for c in out:
        if before[c.id] == "test":
            assert c.split == "test"
        else:
            assert c.split in ("train", "val")
    # the patients that also have test cycles keep those in test
    assert sum(c.split == "test" for c in out) == sum(c.split == "test" for c in cycles)


def test_carve_validation_edge_cases():
    cycles = make_cycles(6)
    assert carve_validation(cycles, 0, seed=0) == cycles
    one_patient = make_cycles(1)
    assert all(c.split == "train" for c in carve_validation(one_patient, 0.5, seed=0))
    # a tiny fraction still moves one group; a huge one leaves one group in train
    tiny = carve_validation(cycles, 0.001, seed=0)
    assert len(patients_of(tiny, "val")) == 1
    huge = carve_validation(cycles, 0.99, seed=0)
    assert len(patients_of(huge, "train")) == 1
    for bad in (-0.1, 1.0, 1.5, True, "0.1"):
        with pytest.raises(ConfigError):
            carve_validation(cycles, bad, seed=0)


def test_carve_validation_is_stratified_by_label():
    # Patients carry one class each, and the rare classes live on few patients (the
    # demo and ICBHI situation): every class must keep most of its cycles in train
    # and still appear in val.
    labels = ["normal"] * 12 + ["crackle"] * 6 + ["wheeze"] * 3 + ["both"] * 3
    cycles = [Cycle(id=f"p{p:03d}_{i:03d}", audio="/x.wav", start=0.0, end=1.0,
                    label=lab, split="train", patient=f"{100 + p}", recording=f"p{p}")
              for p, lab in enumerate(labels) for i in range(8 + p % 3)]
    for seed in range(5):
        out = carve_validation(cycles, 0.25, seed=seed)
        for lab in ("normal", "crackle", "wheeze", "both"):
            n = sum(c.label == lab for c in cycles)
            n_val = sum(c.label == lab and c.split == "val" for c in out)
            assert 0 < n_val <= 0.5 * n, (seed, lab, n_val, n)


def test_carve_validation_falls_back_to_recordings():
    cycles = [Cycle(id=f"r{r}_{i}", audio="/x.wav", start=0, end=1, label="normal",
                    split="train", recording=f"r{r}") for r in range(10) for i in range(4)]
    out = carve_validation(cycles, 0.2, seed=0)
    val = {c.recording for c in out if c.split == "val"}
    train = {c.recording for c in out if c.split == "train"}
    assert len(val) == 2 and not val & train


# --------------------------------------------------------------------------- splits

def test_patient_split_keeps_patients_whole():
    cycles = make_cycles(30)
    out = patient_split(cycles, 0.6, seed=1)
    train, test = patients_of(out, "train"), patients_of(out, "test")
    assert train and test and not train & test
    assert train | test == {c.patient for c in cycles}
    frac = sum(c.split == "train" for c in out) / len(out)
    assert abs(frac - 0.6) < 0.05
    assert split_hash(out) == split_hash(patient_split(cycles[::-1], 0.6, seed=1))
    with pytest.raises(ConfigError):
        patient_split(cycles, 1.0)


def test_patient_split_two_patients_gives_each_side_one():
    out = patient_split(make_cycles(2), 0.9, seed=0)
    assert len(patients_of(out, "train")) == 1 and len(patients_of(out, "test")) == 1


def test_random_split_is_stratified():
    cycles = [Cycle(id=f"{lab}{i:03d}", audio="/x.wav", start=0, end=1, label=lab,
                    split="train") for lab, n in (("a", 100), ("b", 20), ("c", 3))
              for i in range(n)]
    out = random_split(cycles, 0.7, 0.15, seed=0)
    counts = split_counts(out)
    assert counts["train"] == {"a": 70, "b": 14, "c": 2}
    assert counts["val"]["a"] == 15 and counts["val"]["b"] == 3
    assert counts["test"]["a"] == 15 and counts["test"]["b"] == 3
    again = random_split(list(reversed(cycles)), 0.7, 0.15, seed=0)
    assert split_hash(out) == split_hash(again)
    other = random_split(cycles, 0.7, 0.15, seed=1)
    assert split_hash(out) != split_hash(other)
    assert split_counts(other) == counts


def test_random_split_group_by_keeps_groups_whole():
    cycles = [Cycle(id=f"g{g}_{i}", audio="/x.wav", start=0, end=1, label="ab"[g % 2],
                    split="train", meta={"material": f"m{g}"})
              for g in range(20) for i in range(5)]
    out = random_split(cycles, 0.6, 0.2, seed=0, group_by="material")
    sides: dict[str, set[str]] = {}
    for c in out:
        sides.setdefault(c.meta["material"], set()).add(c.split)
    assert all(len(s) == 1 for s in sides.values())
    assert set().union(*sides.values()) == {"train", "val", "test"}
    with pytest.raises(ConfigError):
        random_split(cycles, 0.9, 0.2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from("abcd"), min_size=1, max_size=60),
       st.floats(0.05, 0.95), st.floats(0.0, 0.5), st.integers(0, 10))
def test_random_split_counts_property(labels, train, val, seed):
    val = min(val, 1.0 - train)
    cycles = [Cycle(id=f"i{i}", audio="/x.wav", start=0, end=1, label=lab, split="test")
              for i, lab in enumerate(labels)]
    out = random_split(cycles, train, val, seed=seed)
    assert [c.id for c in out] == [c.id for c in cycles]
    for lab, n in Counter(labels).items():
        got = Counter(c.split for c in out if c.label == lab)
        assert sum(got.values()) == n
        assert abs(got["train"] - n * train) <= 0.5 + 1e-6
        assert abs(got["train"] + got["val"] - n * (train + val)) <= 0.5 + 1e-6


# --------------------------------------------------------------------------- hashing, problems

def test_split_hash_tracks_assignment_only():
    cycles = make_cycles(5)
    h = split_hash(cycles)
    assert len(h) == 64 and h == split_hash(list(reversed(cycles)))
    moved = [Cycle(**{**c.to_dict(), "split": "val"}) if i == 0 else c
             for i, c in enumerate(cycles)]
    assert split_hash(moved) != h
    relabelled = [Cycle(**{**c.to_dict(), "label": "wheeze"}) for c in cycles]
    assert split_hash(relabelled) == h


def test_problem_sink_strict_and_lenient():
    with pytest.raises(DataError, match=r"^a\.txt:3: bad$"):
        ProblemSink(strict=True).report("bad", "a.txt", 3)
    found: list[Problem] = []
    sink = ProblemSink(strict=False, problems=found)
    sink.report("bad", "a.txt", 3)
    sink.report_error(DataError("worse", "b.wav"))
    assert found == [Problem("a.txt", 3, "bad"), Problem("b.wav", None, "worse")]
    assert str(found[0]) == "a.txt:3: bad" and str(found[1]) == "b.wav: worse"
    assert found[0].to_dict() == {"path": "a.txt", "line": 3, "message": "bad"}
    assert sink.count == 2
