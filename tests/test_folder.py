"""Folder-dataset reader: <class>/**/*.wav|flac|ogg, name patterns, filters, splits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from rsctool.data.folder import NamePattern, is_folder_dir, read_folder
from rsctool.data.manifest import validate_manifest
from rsctool.data.splits import Problem, split_counts, split_hash
from rsctool.errors import ConfigError, DataError
from rsctool.testing import write_folder_dataset, write_icbhi_dataset, write_noise_wav

PATTERN = "{material}_{class}_{frequency}_{seq}"


@pytest.fixture
def angles(tmp_path) -> Path:
    """The audio-angle layout: <class>/<material>/<material>_<class>_<freq>_<seq>.wav."""
    files = [f"{cls}/{mat}/{mat}_{cls}_{freq}_{i}.wav"
             for cls in ("0_degree", "45_degree")
             for mat in ("plastic", "metal")
             for freq in ("500hz", "1000hz")
             for i in range(5)]
    return write_folder_dataset(tmp_path / "angles", files, seconds=0.25, sample_rate=8000)


def test_read_folder_basic(tmp_path):
    files = {f"crackle/a{i}.wav": 0.5 for i in range(10)}
    files.update({f"normal/site1/n{i}.flac": 0.25 for i in range(20)})
    files["wheeze/deep/er/w.ogg"] = 0.75
    root = write_folder_dataset(tmp_path / "ds", files, sample_rate=8000)
    cycles = read_folder(root, split="random:0.7:0.15", seed=0)
    validate_manifest(cycles)
    assert len(cycles) == 31
    assert [c.id for c in cycles] == sorted(c.id for c in cycles)
    by_id = {c.id: c for c in cycles}
    a0 = by_id["crackle__a0"]
    assert (a0.label, a0.start, a0.end, a0.sample_rate) == ("crackle", 0.0, 0.5, 8000)
    assert (a0.patient, a0.recording, a0.crackle, a0.wheeze) == (None, "a0", None, None)
    assert a0.meta == {"groups": []} and a0.audio == str((root / "crackle/a0.wav").resolve())
    n0 = by_id["normal__site1__n0"]
    assert n0.meta == {"groups": ["site1"]} and n0.end == pytest.approx(0.25)
    w = by_id["wheeze__deep__er__w"]
    assert w.meta["groups"] == ["deep", "er"] and w.end == pytest.approx(0.75, abs=1e-3)
    counts = split_counts(cycles)
    assert counts["train"] == {"crackle": 7, "normal": 14, "wheeze": 1}
    assert counts["val"] == {"crackle": 2, "normal": 3}
    assert counts["test"] == {"crackle": 1, "normal": 3}
    assert sum(sum(v.values()) for v in counts.values()) == 31


def test_read_folder_split_is_deterministic(tmp_path):
    root = write_folder_dataset(tmp_path / "ds", [f"{c}/{i}.wav" for c in "ab"
                                                  for i in range(20)])
    a = read_folder(root, seed=3)
    assert split_hash(a) == split_hash(read_folder(root, seed=3))
    assert split_hash(a) != split_hash(read_folder(root, seed=4))
    b = read_folder(root, split="random:0.5:0.25", seed=3)
    assert split_counts(b) == {"train": {"a": 10, "b": 10}, "val": {"a": 5, "b": 5},
                               "test": {"a": 5, "b": 5}}


def test_name_pattern_with_underscored_class(angles):
    cycles = read_folder(angles, name_pattern=PATTERN)
    assert len(cycles) == 40
    c = next(c for c in cycles if c.id == "0_degree__metal__metal_0_degree_1000hz_3")
    assert c.label == "0_degree"
    assert c.meta == {"groups": ["metal"], "material": "metal", "class": "0_degree",
                      "frequency": "1000hz", "seq": "3"}


def test_where_filters_on_pattern_fields(angles):
    cycles = read_folder(angles, name_pattern=PATTERN,
                         where={"frequency": "1000hz", "material": "plastic"})
    assert len(cycles) == 10
    assert all(c.meta["frequency"] == "1000hz" and c.meta["material"] == "plastic"
               for c in cycles)
    assert Counter(c.label for c in cycles) == {"0_degree": 5, "45_degree": 5}
    both = read_folder(angles, name_pattern=PATTERN, where={"frequency": ["500hz", "1000hz"]})
    assert len(both) == 40
    with pytest.raises(DataError, match="no file matches the filter"):
        read_folder(angles, name_pattern=PATTERN, where={"frequency": "3000hz"})


@pytest.mark.parametrize("where, pattern, message", [
    ({"frequency": "1000hz"}, None, "needs a name pattern"),
    ({"colour": "red"}, PATTERN, "'colour' is not in the name pattern"),
])
def test_where_needs_known_fields(angles, where, pattern, message):
    with pytest.raises(ConfigError, match=message):
        read_folder(angles, name_pattern=pattern, where=where)


@pytest.mark.parametrize("pattern, message", [
    ("", "non-empty"),
    ("plain", "has no {field}"),
    ("{a}_{b", "name pattern"),
    ("{a}{b}", "separated by literal text"),
    ("{a}_{a}", "appears twice"),
    ("{a:>3}_{b}", "plain name"),
    ("{0}_{b}", "plain name"),
    ("{groups}_{b}", "reserved"),
])
def test_bad_name_patterns(pattern, message):
    with pytest.raises(ConfigError, match=message):
        NamePattern.parse(pattern)


def test_name_pattern_match():
    p = NamePattern.parse("rec-{patient}_{class}.{take}")
    assert p.fields == ("patient", "class", "take")
    assert p.match("rec-p_7_crackle.2", "crackle") == {"patient": "p_7", "class": "crackle",
                                                       "take": "2"}
    assert p.match("rec-p7_wheeze.2", "crackle") is None  # class must be the folder
    assert p.match("p7_crackle.2", "crackle") is None


def test_pattern_mismatch_strict_and_lenient(angles):
    odd = write_noise_wav(angles / "0_degree" / "plastic" / "oddname.wav", 0.25, 8000)
    with pytest.raises(DataError) as info:
        read_folder(angles, name_pattern=PATTERN)
    assert str(info.value).startswith(f"{odd.resolve()}: file name 'oddname' does not match")
    problems: list[Problem] = []
    cycles = read_folder(angles, name_pattern=PATTERN, strict=False, problems=problems)
    assert len(cycles) == 40 and len(problems) == 1 and problems[0].line is None


def test_problems_outside_class_broken_audio_duplicate_ids(tmp_path):
    root = write_folder_dataset(tmp_path / "ds", [f"a/{i}.wav" for i in range(4)] +
                                ["b/x.wav", "b/x.flac", "stray.wav"])
    (root / "b" / "broken.wav").write_bytes(b"not audio at all")
    (root / "a" / ".hidden.wav").write_bytes(b"ignored")
    (root / ".cache").mkdir()
    write_noise_wav(root / ".cache" / "ignored.wav", 0.1, 8000)
    (root / "a" / "notes.txt").write_text("ignored")
    with pytest.raises(DataError, match=r"stray\.wav: audio file outside a class folder"):
        read_folder(root)
    problems: list[Problem] = []
    cycles = read_folder(root, strict=False, problems=problems)
    assert sorted(c.id for c in cycles) == ["a__0", "a__1", "a__2", "a__3", "b__x"]
    messages = {Path(p.path).name: p.message for p in problems}
    assert set(messages) == {"stray.wav", "broken.wav", "x.wav"}
    assert "unreadable audio" in messages["broken.wav"]
    assert "same item id 'b__x'" in messages["x.wav"]  # x.flac (read first) wins


def test_empty_and_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        read_folder(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no audio files"):
        read_folder(tmp_path / "empty")
    root = write_folder_dataset(tmp_path / "ds", ["a/1.wav", "b/1.wav"])
    for spec in ("official", "patients:0.6", "random:0.7", "garbage"):
        with pytest.raises(ConfigError):
            read_folder(root, split=spec)


def test_is_folder_dir(tmp_path):
    root = write_folder_dataset(tmp_path / "ds", ["a/deep/1.wav", "b/2.ogg"])
    assert is_folder_dir(root)
    assert not is_folder_dir(tmp_path / "missing")
    (tmp_path / "nothing" / "cls").mkdir(parents=True)
    assert not is_folder_dir(tmp_path / "nothing")
    icbhi = write_icbhi_dataset(tmp_path / "icbhi", {"101_1b1_Al_sc_Meditron":
                                                     [(0.0, 1.0, 0, 0)]})
    write_noise_wav(icbhi / "sub" / "x.wav", 0.1)
    assert not is_folder_dir(icbhi)  # an ICBHI folder is never claimed as a folder dataset


@pytest.mark.parametrize("group_by, pattern, key", [
    ("frequency", PATTERN, lambda c: c.meta["frequency"]),
    ("material", PATTERN, lambda c: c.meta["material"]),
    ("groups", None, lambda c: tuple(c.meta["groups"])),
])
def test_group_by_keeps_groups_in_one_split(angles, group_by, pattern, key):
    cycles = read_folder(angles, split="random:0.5:0.0", name_pattern=pattern,
                         group_by=group_by, seed=3)
    sides: dict = {}
    for c in cycles:
        sides.setdefault(key(c), set()).add(c.split)
    assert len(sides) == 2 and all(len(s) == 1 for s in sides.values()), sides
    assert {next(iter(s)) for s in sides.values()} == {"train", "test"}
    again = read_folder(angles, split="random:0.5:0.0", name_pattern=pattern,
                        group_by=group_by, seed=3)
    assert split_hash(again) == split_hash(cycles)


def test_group_by_must_be_a_pattern_field_or_groups(angles):
    with pytest.raises(ConfigError, match="group-by field 'colour'"):
        read_folder(angles, name_pattern=PATTERN, group_by="colour")
    with pytest.raises(ConfigError, match="choose one of groups"):
        read_folder(angles, group_by="material")  # no pattern: only the sub-folders


def test_folder_reader_takes_every_audio_suffix(tmp_path):
    # one list for every stage (rsctool.audio.AUDIO_EXTENSIONS): .mp3 was skipped
    import soundfile as sf

    root = tmp_path / "d"
    for cls in ("a", "b"):
        for i, suffix in enumerate((".wav", ".flac", ".ogg", ".mp3")):
            path = write_noise_wav(root / cls / f"x{i}.wav", 0.5, 16000, seed=i)
            if suffix != ".wav":
                wav, sr = sf.read(path)
                sf.write(path.with_suffix(suffix), wav, sr)
                path.unlink()
    cycles = read_folder(root, split="random:0.5:0.25")
    assert sorted(Path(c.audio).suffix for c in cycles) == sorted([".wav", ".flac", ".ogg",
                                                                   ".mp3"] * 2)
