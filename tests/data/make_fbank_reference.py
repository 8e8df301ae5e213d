"""Regenerate `fbank_reference.npz`: torchaudio's Kaldi fbank on a few fixed signals.

rsctool does not depend on torchaudio, so this runs in a throwaway environment:

    python3 -m venv /tmp/ta-venv
    /tmp/ta-venv/bin/pip install torch==2.9.1 'torchaudio==2.9.*' numpy
    /tmp/ta-venv/bin/python tests/data/make_fbank_reference.py

The fixture holds, per case ``i``: ``wav_i`` (int16 PCM; both sides divide by 32768,
which is exact in float32), ``fbank_i`` (float32 `(T, F)` from torchaudio) and
``args_i`` (JSON of the torchaudio keyword arguments). `tests/test_features.py` maps
those arguments onto `FbankConfig` and compares.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torchaudio
from torchaudio.compliance import kaldi

OUT = Path(__file__).resolve().parent / "fbank_reference.npz"


def _pcm(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def signals() -> list[tuple[np.ndarray, dict]]:
    rng = np.random.default_rng(2017)
    cases = []

    # 1. AST's front end (hanning), 16 kHz: noise + 440 Hz tone + a silent gap.
    sr = 16000
    t = np.arange(sr) / sr
    x = 0.05 * rng.standard_normal(sr) + 0.4 * np.sin(2 * np.pi * 440 * t)
    x[6000:7600] = 0.0
    cases.append((x, {"sample_frequency": sr, "num_mel_bins": 128, "window_type": "hanning"}))

    # 2. Kaldi's default window (povey), 16 kHz: a 100 Hz -> 7 kHz chirp with a DC offset
    #    and a crackle-like train of clicks. The noise keeps every mel bin well above the
    #    float32 rounding floor of a loud frame (pre-emphasis leaves the 20-100 Hz bins
    #    ~30 dB down): there, any two float32 implementations differ by up to ~1e-2 in log.
    f0, f1 = 100.0, 7000.0
    phase = 2 * np.pi * (f0 * t + 0.5 * (f1 - f0) * t**2)
    x = 0.3 * np.sin(phase) + 0.1 + 0.05 * rng.standard_normal(sr)
    x[::1231] += 0.3
    cases.append((x, {"sample_frequency": sr, "num_mel_bins": 128, "window_type": "povey"}))

    # 3. 8 kHz with fewer mel bins (stethoscopes record at 4-44.1 kHz): noise bursts + 250 Hz.
    sr = 8000
    t = np.arange(int(1.5 * sr)) / sr
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t)
    x = 0.2 * env * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * 250 * t)
    cases.append((x, {"sample_frequency": sr, "num_mel_bins": 64, "window_type": "povey"}))

    # 4. Mirrored edges (snip_edges=False), hamming window, band-limited filters.
    sr = 16000
    t = np.arange(8000) / sr
    x = 0.3 * np.sin(2 * np.pi * 1000 * t) * np.exp(-3 * t) + 0.02 * rng.standard_normal(8000)
    cases.append((x, {"sample_frequency": sr, "num_mel_bins": 40, "window_type": "hamming",
                      "snip_edges": False, "low_freq": 50.0, "high_freq": -400.0}))

    # 5. Blackman window, magnitude spectrum, FFT size not rounded up (400 points), 23 bins.
    t = np.arange(5000) / sr
    x = 0.25 * rng.standard_normal(5000) * np.sin(2 * np.pi * 3 * t) ** 2
    cases.append((x, {"sample_frequency": sr, "num_mel_bins": 23, "window_type": "blackman",
                      "use_power": False, "round_to_power_of_two": False}))

    # 6. Rectangular window, no pre-emphasis or DC removal, linear (not log) energies.
    x = 0.1 * rng.standard_normal(3000) + 0.2 * np.sin(2 * np.pi * 2500 * t[:3000])
    cases.append((x, {"sample_frequency": sr, "num_mel_bins": 32, "window_type": "rectangular",
                      "preemphasis_coefficient": 0.0, "remove_dc_offset": False,
                      "use_log_fbank": False, "frame_length": 20.0, "frame_shift": 8.0}))
    return cases


def main() -> None:
    common = {"htk_compat": True, "use_energy": False, "dither": 0.0}
    arrays: dict[str, np.ndarray] = {}
    for i, (x, args) in enumerate(signals()):
        pcm = _pcm(x)
        wav = torch.from_numpy(pcm.astype(np.float32) / 32768.0).unsqueeze(0)
        kwargs = {**common, **args}
        feats = kaldi.fbank(wav, **kwargs)
        arrays[f"wav_{i}"] = pcm
        arrays[f"fbank_{i}"] = feats.numpy().astype(np.float32)
        arrays[f"args_{i}"] = np.array(json.dumps(kwargs, sort_keys=True))
        print(i, kwargs, tuple(feats.shape))
    arrays["versions"] = np.array(json.dumps(
        {"torch": torch.__version__, "torchaudio": torchaudio.__version__}))
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
