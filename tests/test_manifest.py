from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rsctool.data.manifest import (
    Cycle,
    ManifestWriter,
    icbhi_label,
    read_manifest,
    write_manifest,
)
from rsctool.errors import DataError


def _cycle(i: int, **kw) -> Cycle:
    base = {"id": f"r_{i:03d}", "audio": "/x/r.wav", "start": float(i), "end": float(i) + 1.5,
                "label": "crackle", "crackle": 1, "wheeze": 0, "split": "train", "patient": "101"}
    base.update(kw)
    return Cycle(**base)


def test_icbhi_label():
    assert [icbhi_label(c, w) for c, w in [(0, 0), (1, 0), (0, 1), (1, 1)]] == [
        "normal", "crackle", "wheeze", "both"]


def test_roundtrip_and_sha(tmp_path):
    p = tmp_path / "m.jsonl"
    cycles = [_cycle(i) for i in range(5)]
    sha = write_manifest(p, cycles)
    assert len(sha) == 64
    assert read_manifest(p) == cycles
    assert write_manifest(tmp_path / "m2.jsonl", cycles) == sha  # deterministic bytes


@pytest.mark.parametrize("bad", [
    {"start": 2.0, "end": 1.0},            # end <= start
    {"split": "holdout"},
    {"label": "wheeze"},                # disagrees with flags
    {"crackle": 2},
    {"sex": "x"},
    {"source": "synthetic"},            # no generator record
    {"start": float("nan")},
])
def test_validation_rejects(bad):
    with pytest.raises(ValueError):
        _cycle(0, **bad).validate()


def test_duplicate_ids_and_bad_lines_name_file_and_line(tmp_path):
    p = tmp_path / "m.jsonl"
    with pytest.raises(DataError, match="duplicate id"):
        write_manifest(p, [_cycle(0), _cycle(0)])
    assert not p.exists()  # nothing half-written
    p.write_text(json.dumps(_cycle(0).to_dict()) + "\n{not json\n")
    with pytest.raises(DataError) as ei:
        read_manifest(p)
    assert f"{p}:2" in str(ei.value)


def test_writer_resumes_and_drops_torn_tail(tmp_path):
    p = tmp_path / "m.jsonl"
    with ManifestWriter(p) as w:
        for i in range(3):
            assert w.write(_cycle(i))
    # simulate a kill in the middle of the 4th line
    with p.open("a") as fh:
        fh.write(json.dumps(_cycle(3).to_dict())[:25])
    with ManifestWriter(p) as w:
        assert "r_001" in w and "r_003" not in w
        assert not w.write(_cycle(1))  # skipped: already written
        assert w.write(_cycle(3))
    assert [c.id for c in read_manifest(p)] == ["r_000", "r_001", "r_002", "r_003"]


_opt_text = st.one_of(st.none(), st.text(min_size=1, max_size=12))


@settings(max_examples=60, deadline=None)
@given(
    start=st.floats(0, 1e4, allow_nan=False, allow_infinity=False),
    dur=st.floats(1e-3, 100, allow_nan=False, allow_infinity=False),
    flags=st.tuples(st.integers(0, 1), st.integers(0, 1)),
    split=st.sampled_from(["train", "val", "test"]),
    patient=_opt_text, device=_opt_text,
    age=st.one_of(st.none(), st.floats(0, 120, allow_nan=False)),
    sex=st.sampled_from([None, "M", "F"]),
    meta=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)
def test_manifest_roundtrip_property(tmp_path_factory, start, dur, flags, split, patient,
                                     device, age, sex, meta):
    c = Cycle(id="a", audio="/a b/ü.wav", start=start, end=start + dur,
              label=icbhi_label(*flags), crackle=flags[0], wheeze=flags[1], split=split,
              patient=patient, device=device, age=age, sex=sex, meta=meta)
    if c.end <= c.start:  # float rounding at the far end of the range
        return
    p = tmp_path_factory.mktemp("m") / "m.jsonl"
    write_manifest(p, [c])
    assert read_manifest(p) == [c]
