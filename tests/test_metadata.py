"""MetadataEncoder: train-only vocabularies and statistics, explicit missing masks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rsctool.data.manifest import Cycle
from rsctool.errors import ConfigError, DataError
from rsctool.models.metadata import (
    DEFAULT_META_SPEC,
    META_KEYS,
    NUM_FIELDS,
    MetadataEncoder,
    check_meta_spec,
)


def _cycle(i: int, split: str = "train", **kw) -> Cycle:
    base = {"id": f"c{i}", "audio": f"r{i}.wav", "start": 1.0, "end": 3.5, "label": "normal",
            "split": split}
    return Cycle(**{**base, **kw})


@pytest.fixture
def cycles() -> list[Cycle]:
    return [
        _cycle(0, device="Meditron", site="Al", sex="M", age=70.0, bmi=30.0),
        _cycle(1, device="LittC2SE", site="Tc", sex="F", age=50.0, bmi=None, end=2.0),
        _cycle(2, device="Meditron", site=None, sex=None, age=None, bmi=20.0, end=5.0),
        # Val/test records must not shape the vocabulary or the statistics.
        _cycle(3, "val", device="AKGC417L", site="Pr", sex="F", age=1000.0, bmi=99.0),
        _cycle(4, "test", device="Litt3200", site="Ll", sex="M", age=-5.0, bmi=1.0),
    ]


def test_fit_uses_train_records_only(cycles):
    enc = MetadataEncoder.fit(cycles)
    assert enc.devices == ["LittC2SE", "Meditron"]
    assert enc.sites == ["Al", "Tc"]
    assert enc.spec() == {"n_devices": 3, "n_sites": 3, "n_num": 3}
    assert enc.mean == pytest.approx([60.0, 25.0, (2.5 + 1.0 + 4.0) / 3])
    # Sample std (n - 1) of the present values only.
    assert enc.std[0] == pytest.approx(math.sqrt(200.0))
    assert enc.std[1] == pytest.approx(math.sqrt(50.0))


def test_encode_maps_unseen_to_unknown_and_masks_missing(cycles):
    enc = MetadataEncoder.fit(cycles)
    meta = enc.encode(cycles)
    assert set(meta) == set(META_KEYS)
    assert meta["device"].tolist() == [2, 1, 2, 0, 0]     # val/test devices unseen -> 0
    assert meta["site"].tolist() == [1, 2, 0, 0, 0]
    assert meta["sex"].tolist() == [1, 2, 0, 2, 1]
    assert meta["device"].dtype == torch.long and meta["num"].dtype == torch.float32
    mask = meta["num_mask"]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]]
    # Missing values are 0, never a made-up number.
    assert meta["num"][1, 1] == 0 and meta["num"][2, 0] == 0
    age_z = (70.0 - 60.0) / math.sqrt(200.0)
    assert meta["num"][0, 0].item() == pytest.approx(age_z)
    # Duration is end - start (3.5 - 1.0 = 2.5 s).
    assert meta["num"][0, 2].item() == pytest.approx((2.5 - enc.mean[2]) / enc.std[2])


def test_json_round_trip_encodes_identically(cycles):
    enc = MetadataEncoder.fit(cycles)
    state = json.loads(json.dumps(enc.to_dict()))
    back = MetadataEncoder.from_dict(state)
    assert back == enc
    a, b = enc.encode(cycles), back.encode(cycles)
    assert all(torch.equal(a[k], b[k]) for k in META_KEYS)


def test_encode_values_for_prediction(cycles):
    enc = MetadataEncoder.fit(cycles)
    meta = enc.encode_values([
        {"device": "LittC2SE", "site": "Tc", "sex": "f", "age": 60, "bmi": 25.0,
         "duration": 2.0},
        {"device": "Unheard-of", "age": float("nan")},
        {},
    ])
    assert meta["device"].tolist() == [1, 0, 0]
    assert meta["sex"].tolist() == [2, 0, 0]
    assert meta["num"][0, :2].tolist() == [0.0, 0.0]     # exactly the train means
    assert meta["num_mask"].tolist() == [[1, 1, 1], [0, 0, 0], [0, 0, 0]]
    unk = enc.unknown(2)
    assert unk["device"].tolist() == [0, 0] and unk["num_mask"].sum() == 0


def test_encode_cycle_is_unbatched(cycles):
    item = MetadataEncoder.fit(cycles).encode_cycle(cycles[0])
    assert item["device"].shape == () and item["num"].shape == (len(NUM_FIELDS),)
    batch = torch.utils.data.default_collate([item, item])
    assert batch["num"].shape == (2, 3)


@pytest.mark.parametrize("record, match", [
    ({"age": "old"}, r"metadata record 1: age must be a number"),
    ({"sex": "X"}, r"sex must be 'M', 'F' or null"),
    ({"device": 3}, r"device must be a string"),
    ({"agee": 50}, r"unknown metadata field\(s\) \['agee'\]"),
    ({"bmi": True}, r"bmi must be a number"),
])
def test_encode_values_rejects_bad_input(cycles, record, match):
    enc = MetadataEncoder.fit(cycles)
    with pytest.raises(DataError, match=match):
        enc.encode_values([record])


def test_fit_edge_cases():
    with pytest.raises(DataError, match="no records in split"):
        MetadataEncoder.fit([_cycle(0, "val")])
    # One present value (or none): std falls back to 1 so encoding stays finite.
    enc = MetadataEncoder.fit([_cycle(0, age=40.0), _cycle(1)])
    assert enc.mean[0] == 40.0 and enc.std[0] == 1.0
    assert enc.mean[1] == 0.0 and enc.std[1] == 1.0
    assert enc.spec()["n_devices"] == 1
    assert torch.isfinite(enc.encode([_cycle(2, age=41.0)])["num"]).all()


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.pop("mean"), "lacks key"),
    (lambda d: d.update(version=99), "version 99"),
    (lambda d: d.update(num_fields=["age"]), "expects"),
    (lambda d: d.update(std=[1.0, 0.0, 1.0]), "std must be positive"),
])
def test_from_dict_rejects_bad_state(cycles, mutate, match):
    state = MetadataEncoder.fit(cycles).to_dict()
    mutate(state)
    with pytest.raises(ConfigError, match=match):
        MetadataEncoder.from_dict(state)


def test_check_meta_spec():
    assert check_meta_spec(None) == DEFAULT_META_SPEC
    with pytest.raises(ConfigError, match="n_sites"):
        check_meta_spec({"n_devices": 2, "n_sites": 0, "n_num": 3})
    with pytest.raises(ConfigError, match="needs the keys"):
        check_meta_spec({"n_devices": 2})


def _read_real_icbhi(meta_dir) -> list[Cycle]:
    """Cycles from the real annotation files + demographics (minimal parsing, no audio)."""
    demo = {}
    for line in (meta_dir / "ICBHI_Challenge_demographic_information.txt").read_text().splitlines():
        f = line.split()
        if len(f) >= 4 and f[0].isdigit():
            num = [None if v == "NA" else float(v) for v in (f[1], f[3])]
            demo[f[0]] = (num[0], None if f[2] == "NA" else f[2], num[1])
    cycles = []
    for path in sorted((meta_dir / "ICBHI_final_database").glob("*.txt")):
        pid, _, site, _, device = path.stem.split("_")
        age, sex, bmi = demo[pid]
        for j, line in enumerate(path.read_text().split("\n")):
            if line.strip():
                start, end = map(float, line.split()[:2])
                cycles.append(Cycle(id=f"{path.stem}_{j}", audio=path.stem + ".wav", start=start,
                                    end=end, label="normal", split="train", device=device,
                                    site=site, sex=sex, age=age, bmi=bmi))
    return cycles


def test_real_icbhi_vocabulary_matches_default_spec(icbhi_meta):
    cycles = _read_real_icbhi(icbhi_meta)
    assert len(cycles) == 6898
    enc = MetadataEncoder.fit(cycles)
    assert enc.spec() == DEFAULT_META_SPEC      # 4 devices and 7 sites, plus "unknown"
    assert enc.devices == ["AKGC417L", "Litt3200", "LittC2SE", "Meditron"]
    meta = enc.encode(cycles)
    # Children have no adult BMI in the demographics file: masked, not imputed.
    no_bmi = sum(c.bmi is None for c in cycles)
    assert 0 < no_bmi < len(cycles)
    assert int((meta["num_mask"][:, 1] == 0).sum()) == no_bmi
    assert abs(float(meta["num"][:, 0][meta["num_mask"][:, 0] > 0].mean())) < 1e-4
