"""The on-disk feature cache: keys, hits and misses, atomic and corrupt entries."""

from __future__ import annotations

import os

import numpy as np
import pytest

from rsctool.audio import write_audio
from rsctool.data.cache import FeatureCache
from rsctool.errors import ConfigError, DataError
from rsctool.features import FbankConfig


@pytest.fixture
def audio(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "rec.wav"
    write_audio(path, 0.1 * rng.standard_normal(8000).astype(np.float32), 8000)
    return path


@pytest.fixture
def feats():
    rng = np.random.default_rng(1)
    return rng.uniform(-15.9, 12.0, size=(798, 128)).astype(np.float32)


def test_hit_after_put_and_stats(tmp_path, audio, feats):
    cache = FeatureCache(tmp_path / "cache")
    key = cache.key(audio, 0.25, 0.75, FbankConfig().key(), clip_s=8.0, pad="repeat")
    assert cache.get(key) is None
    assert key not in cache and len(cache) == 0
    cache.put(key, feats)
    got = cache.get(key)
    assert got is not None and got.dtype == np.float16 and got.shape == feats.shape
    assert key in cache and len(cache) == 1
    assert (cache.stats.hits, cache.stats.misses, cache.stats.writes) == (1, 1, 1)
    # Sharded by key prefix, no temporary files left behind.
    assert cache.path(key) == tmp_path / "cache" / key[:2] / f"{key}.npy"
    assert [p.name for p in cache.path(key).parent.iterdir()] == [f"{key}.npy"]


def test_float16_round_trip_tolerance(tmp_path, audio, feats):
    half = FeatureCache(tmp_path / "h")
    full = FeatureCache(tmp_path / "f", dtype="float32")
    k16 = half.key(audio, 0.0, 1.0, "cfg")
    k32 = full.key(audio, 0.0, 1.0, "cfg")
    assert k16 != k32  # the storage dtype is part of the key
    half.put(k16, feats)
    full.put(k32, feats)
    np.testing.assert_array_equal(full.get(k32), feats)
    # float16 keeps 11 significant bits: relative error <= 2^-11 (plus subnormals near 0).
    err = np.abs(half.get(k16).astype(np.float32) - feats)
    assert err.max() <= np.abs(feats).max() * 2.0**-11
    assert err.max() > 0  # it really is stored at half precision
    assert os.path.getsize(half.path(k16)) < 0.6 * os.path.getsize(full.path(k32))


def test_key_changes_with_audio_cycle_config_and_extra(tmp_path, audio):
    cache = FeatureCache(tmp_path / "cache")
    cfg = FbankConfig()
    base = cache.key(audio, 0.5, 1.5, cfg.key(), clip_s=8.0)
    assert cache.key(audio, 0.5, 1.5, cfg.key(), clip_s=8.0) == base  # deterministic
    assert cache.key(str(audio), 0.5000000001, 1.5, cfg.key(), clip_s=8.0) == base
    others = {
        cache.key(audio, 0.6, 1.5, cfg.key(), clip_s=8.0),
        cache.key(audio, 0.5, 1.6, cfg.key(), clip_s=8.0),
        cache.key(audio, 0.5, 1.5, cfg.replace(window="hanning").key(), clip_s=8.0),
        cache.key(audio, 0.5, 1.5, cfg.key(), clip_s=4.0),
        cache.key(audio, 0.5, 1.5, cfg.key(), clip_s=8.0, pad="zero"),
        cache.key(audio, None, None, cfg.key(), clip_s=8.0),
    }
    assert base not in others and len(others) == 6


def test_changed_audio_file_misses(tmp_path, audio, feats):
    cache = FeatureCache(tmp_path / "cache")
    key = cache.key(audio, 0.0, 0.5, "cfg")
    cache.put(key, feats)
    # Same size, new content and modification time (an edited or replaced recording).
    st = audio.stat()
    write_audio(audio, np.zeros(8000, np.float32), 8000)
    os.utime(audio, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert audio.stat().st_size == st.st_size
    key2 = cache.key(audio, 0.0, 0.5, "cfg")
    assert key2 != key and cache.get(key2) is None
    # A different size with the old mtime restored also misses.
    write_audio(audio, np.zeros(9000, np.float32), 8000)
    os.utime(audio, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.key(audio, 0.0, 0.5, "cfg") not in (key, key2)


def test_changed_config_misses(tmp_path, audio, feats):
    cache = FeatureCache(tmp_path / "cache")
    cache.put(cache.key(audio, 0.0, 0.5, FbankConfig().key()), feats)
    other = cache.key(audio, 0.0, 0.5, FbankConfig(num_mel_bins=64).key())
    assert cache.get(other) is None


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage", "pickle", "directory"])
def test_corrupt_entry_is_a_miss_and_gets_recomputed(tmp_path, audio, feats, damage):
    cache = FeatureCache(tmp_path / "cache", dtype="float32")
    key = cache.key(audio, 0.0, 0.5, "cfg")
    cache.put(key, feats)
    p = cache.path(key)
    if damage == "truncate":  # a torn write from a crashed non-atomic writer
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif damage == "empty":
        p.write_bytes(b"")
    elif damage == "garbage":
        p.write_bytes(b"\x93NUMPY\x01\x00garbage header that is not a dict")
    elif damage == "pickle":
        np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        p.unlink()
        p.mkdir()
    assert cache.get(key) is None
    assert cache.stats.corrupt == 1 and cache.stats.misses == 1
    calls = []

    def compute():
        calls.append(1)
        return feats

    if damage == "directory":  # cannot be replaced by a file: a clear error, no crash
        with pytest.raises(DataError, match="cannot write feature cache"):
            cache.get_or_compute(key, compute)
        return
    np.testing.assert_array_equal(cache.get_or_compute(key, compute), feats)
    np.testing.assert_array_equal(cache.get(key), feats)
    assert calls == [1]


def test_get_or_compute_computes_once_and_returns_cache_dtype(tmp_path, audio, feats):
    torch = pytest.importorskip("torch")
    cache = FeatureCache(tmp_path / "cache")
    key = cache.key(audio, 0.0, 0.5, "cfg")
    calls = []

    def compute():
        calls.append(1)
        return torch.from_numpy(feats)  # tensors are accepted too

    first = cache.get_or_compute(key, compute)
    second = cache.get_or_compute(key, compute)
    assert calls == [1]
    assert first.dtype == second.dtype == np.float16
    np.testing.assert_array_equal(first, second)  # first and cached runs see equal values
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)


def test_put_refuses_values_that_overflow_float16(tmp_path, audio):
    cache = FeatureCache(tmp_path / "cache")
    key = cache.key(audio, 0.0, 0.5, "cfg")
    with pytest.raises(DataError, match="non-finite"):
        cache.put(key, np.array([1e6], np.float32))
    assert key not in cache


def test_clear_removes_only_cache_shards(tmp_path, audio, feats):
    root = tmp_path / "cache"
    cache = FeatureCache(root)
    for i in range(5):
        cache.put(cache.key(audio, 0.0, 0.1 * (i + 1), "cfg"), feats[:10])
    (root / "notes.txt").write_text("keep me")
    (root / "keepdir").mkdir()
    assert len(cache) == 5 and cache.size_bytes() > 0
    assert cache.clear() == 5
    assert len(cache) == 0
    assert (root / "notes.txt").exists() and (root / "keepdir").is_dir()
    assert FeatureCache(tmp_path / "absent").clear() == 0


def test_bad_arguments(tmp_path, audio):
    with pytest.raises(ConfigError, match="dtype"):
        FeatureCache(tmp_path, dtype="int8")
    cache = FeatureCache(tmp_path / "cache")
    with pytest.raises(DataError, match="missing.wav"):
        cache.key(tmp_path / "missing.wav", 0.0, 1.0, "cfg")
    with pytest.raises(ConfigError, match="JSON"):
        cache.key(audio, 0.0, 1.0, "cfg", obj=object())
    with pytest.raises(ConfigError, match="key"):
        cache.get("../../etc/passwd")
