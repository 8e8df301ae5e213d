from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from rsctool import audio
from rsctool.errors import DataError


def _tone(sr: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_load_any_subtype_and_resample(tmp_path, subtype):
    p = tmp_path / "x.wav"
    sf.write(p, _tone(4000, 1.0), 4000, subtype=subtype)
    wav = audio.load_audio(p, 16000)
    assert wav.dtype == np.float32
    assert len(wav) == 16000
    # the tone survives resampling: dominant frequency still 440 Hz
    spec = np.abs(np.fft.rfft(wav))
    assert abs(np.argmax(spec) * 16000 / len(wav) - 440) < 2


def test_stereo_to_mono_and_segment(tmp_path):
    left = _tone(8000, 2.0)
    stereo = np.stack([left, -left * 0.0 + 0.25], axis=1)
    p = tmp_path / "s.flac"
    sf.write(p, stereo, 8000)
    wav = audio.load_audio(p, None, start=0.5, end=1.5)
    assert len(wav) == 8000
    np.testing.assert_allclose(wav, (left[4000:12000] + 0.25) / 2, atol=1e-4)


def test_bad_files_raise_data_error_naming_file(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 10)
    nan = tmp_path / "nan.wav"
    x = _tone(4000, 0.5)
    x[10] = np.nan
    sf.write(nan, x, 4000, subtype="FLOAT")
    for p in (empty, junk, nan, tmp_path / "missing.wav"):
        with pytest.raises(DataError) as ei:
            audio.load_audio(p)
        assert p.name in str(ei.value)
    with pytest.raises(DataError, match="outside the audio"):
        ok = tmp_path / "ok.wav"
        sf.write(ok, x[:100], 4000)
        audio.load_audio(ok, start=5.0, end=6.0)


def test_pad_repeat_with_fades_and_crop():
    sr = 1000
    wav = np.ones(300, dtype=np.float32)
    out = audio.pad_or_crop(wav, 1000, sr, mode="repeat", fade_s=0.01)
    assert out.shape == (1000,)
    # fades at every join: value near zero at each copy's boundary, full level mid-copy
    assert out[0] < 0.05 and out[299] < 0.05 and out[300] < 0.05
    assert out[150] == pytest.approx(1.0)
    z = audio.pad_or_crop(wav, 1000, sr, mode="zero")
    assert z[:300].sum() == 300 and z[300:].sum() == 0
    assert audio.pad_or_crop(np.arange(2000, dtype=np.float32), 1000).shape == (1000,)
    with pytest.raises(ValueError):
        audio.pad_or_crop(wav, 1000, mode="mirror")


def test_normalize():
    x = np.array([0.1, -0.5, 0.2], dtype=np.float32)
    assert np.max(np.abs(audio.normalize(x, "peak", 0.9))) == pytest.approx(0.9)
    r = audio.normalize(x, "rms", 0.1)
    assert np.sqrt(np.mean(r**2)) == pytest.approx(0.1, rel=1e-5)
    silent = np.zeros(10, dtype=np.float32)
    assert not audio.normalize(silent, "peak").any()


def test_load_cycle_fixed_length(tmp_path):
    p = tmp_path / "c.wav"
    sf.write(p, _tone(4000, 3.0), 4000)
    clip = audio.load_cycle(p, 0.5, 2.0, sample_rate=16000, clip_seconds=8.0)
    assert clip.shape == (128000,)


def test_write_audio_atomic_roundtrip(tmp_path):
    p = tmp_path / "sub" / "w.wav"
    audio.write_audio(p, _tone(16000, 0.25), 16000)
    back, sr = sf.read(p, dtype="float32")
    assert sr == 16000 and len(back) == 4000
    assert [f.name for f in p.parent.iterdir()] == ["w.wav"]  # no temp file left
