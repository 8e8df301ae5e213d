"""The Kaldi log-mel filter bank in numpy alone, for prediction without torch.

`rsctool predict` on an ONNX model must start fast, and importing torch costs seconds,
so this module reimplements `rsctool.features.fbank` with numpy (float64 inside, float32
out). It also holds `FbankConfig`, the options of both implementations (the dict stored in
checkpoints and ONNX metadata), so that reading them needs no torch;
`rsctool.features` re-exports it. Tests check that the features agree with the torch
implementation to ~1e-4 on every filter within 60 dB of its frame's
strongest one (in deeper valleys float32 rounding of the torch FFT dominates).

Dither is never applied here: prediction is deterministic.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from rsctool.audio import DEFAULT_SAMPLE_RATE
from rsctool.errors import ConfigError, DataError
from rsctool.utils import sha256_text

#: ``numeric_limits<float>::epsilon()``, Kaldi's floor before the log (as features._EPS).
EPS = float(np.finfo(np.float32).eps)
_MS = 0.001  # the same float expression as features.py, so int() truncates identically
WINDOWS: tuple[str, ...] = ("povey", "hanning", "hamming", "rectangular", "blackman")
#: Bumped whenever a change to the filter bank (here or in `rsctool.features`) changes
#: feature values: part of `FbankConfig.key`, so feature caches written by an older
#: implementation are not reused.
FEATURES_VERSION = 1
#: Frames per FFT call: bounds the float64 work buffer (~4 MB for 512-point frames).
_CHUNK_FRAMES = 1024
_BAND = 16
#: AST's AudioSet statistics of its log-mel features (the `--norm audioset` choice, and
#: `FbankConfig`'s default normalisation).
AUDIOSET_MEAN, AUDIOSET_STD = -4.2677393, 4.5689974


@dataclass(frozen=True)
class FbankConfig:
    """Options of the Kaldi filterbank (Kaldi's defaults, except `num_mel_bins` = 128).

    AST's front end is ``torchaudio.compliance.kaldi.fbank(wav, htk_compat=True,
    sample_frequency=sr, use_energy=False, window_type='hanning', num_mel_bins=128,
    dither=0.0, frame_shift=10)``: the defaults here, with ``window="hanning"``
    (``htk_compat`` only moves the energy column, which AST does not use).

    Attributes:
        sample_rate: Hz of the input waveform.
        num_mel_bins: F, the number of triangular mel filters (> 3).
        frame_length_ms, frame_shift_ms: window length and hop in ms
            (W = int(sr * ms * 0.001) samples, as Kaldi truncates).
        window: ``povey|hanning|hamming|rectangular|blackman`` (symmetric windows).
        blackman_coeff: the Blackman window's a0.
        dither: std of Gaussian noise added to each frame (0 = off; training only).
        preemphasis: coefficient c of ``y[t] = x[t] - c x[t-1]`` within each frame.
        remove_dc_offset: subtract each frame's mean first.
        low_freq: Hz, lower edge of the first mel filter.
        high_freq: Hz, upper edge of the last filter; <= 0 means nyquist + high_freq.
        round_to_power_of_two: zero-pad frames to the next power of two for the FFT.
        snip_edges: only frames that fit entirely in the signal; otherwise
            ``(N + S//2) // S`` frames with the signal mirrored at its ends.
        use_log_fbank: log of the filter energies (else linear).
        use_power: power spectrum (else magnitude).
        mean, std: normalisation statistics, applied as ``(x - mean) / (2 * std)``
            (AST's AudioSet values by default).
    """

    sample_rate: int = DEFAULT_SAMPLE_RATE
    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window: str = "povey"
    blackman_coeff: float = 0.42
    dither: float = 0.0
    preemphasis: float = 0.97
    remove_dc_offset: bool = True
    low_freq: float = 20.0
    high_freq: float = 0.0
    round_to_power_of_two: bool = True
    snip_edges: bool = True
    use_log_fbank: bool = True
    use_power: bool = True
    mean: float = AUDIOSET_MEAN
    std: float = AUDIOSET_STD

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            kind = f.type if isinstance(f.type, str) else f.type.__name__
            ok = {
                "int": isinstance(v, int) and not isinstance(v, bool),
                "float": isinstance(v, (int, float)) and not isinstance(v, bool),
                "bool": isinstance(v, bool),
                "str": isinstance(v, str),
            }[kind]
            if not ok or (kind == "float" and not math.isfinite(v)):
                raise ConfigError(f"fbank option {f.name} must be a finite {kind}, got {v!r}")
            if kind == "float":  # store 16000 and 16000.0 alike: key() must not depend on it
                object.__setattr__(self, f.name, float(v))
        if self.sample_rate <= 0:
            raise ConfigError(f"fbank sample_rate must be positive, got {self.sample_rate}")
        if self.window not in WINDOWS:
            raise ConfigError(f"unknown fbank window {self.window!r} ({'|'.join(WINDOWS)})")
        if self.num_mel_bins <= 3:
            raise ConfigError(f"fbank num_mel_bins must be > 3, got {self.num_mel_bins}")
        if self.window_size < 2 or self.window_shift < 1:
            raise ConfigError(
                f"fbank frame_length_ms={self.frame_length_ms} / frame_shift_ms="
                f"{self.frame_shift_ms} give {self.window_size} / {self.window_shift} samples "
                f"at {self.sample_rate} Hz (need >= 2 / >= 1)")
        if self.n_fft % 2:
            raise ConfigError(f"fbank FFT size {self.n_fft} is odd; use round_to_power_of_two")
        if self.dither < 0:
            raise ConfigError(f"fbank dither must be >= 0, got {self.dither}")
        if self.std <= 0:
            raise ConfigError(f"fbank std must be positive, got {self.std}")
        nyquist = 0.5 * self.sample_rate
        high = self.high_freq_hz
        if not (0.0 <= self.low_freq < nyquist and 0.0 < high <= nyquist
                and self.low_freq < high):
            raise ConfigError(
                f"fbank low_freq={self.low_freq} / high_freq={self.high_freq} do not fit "
                f"0 <= low < high <= nyquist ({nyquist} Hz)")

    # ----- derived sizes --------------------------------------------------------------
    @property
    def window_size(self) -> int:
        """W: samples per frame."""
        return int(self.sample_rate * self.frame_length_ms * _MS)

    @property
    def window_shift(self) -> int:
        """S: hop in samples."""
        return int(self.sample_rate * self.frame_shift_ms * _MS)

    @property
    def n_fft(self) -> int:
        """FFT size: W, or the next power of two."""
        w = self.window_size
        return 1 << (w - 1).bit_length() if self.round_to_power_of_two else w

    @property
    def high_freq_hz(self) -> float:
        """The upper edge of the last mel filter in Hz."""
        return self.high_freq + 0.5 * self.sample_rate if self.high_freq <= 0 else self.high_freq

    # ----- serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FbankConfig:
        """Build from a dict (project file, ONNX metadata); unknown keys raise ConfigError."""
        if not isinstance(d, dict):
            raise ConfigError(f"fbank config must be a table/dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown fbank option(s) {unknown} (known: {sorted(known)})")
        return cls(**d)

    def replace(self, **changes: Any) -> FbankConfig:
        return dataclasses.replace(self, **changes)

    def key(self) -> str:
        """Stable 16-hex-digit hash of every field and `FEATURES_VERSION` (for caches)."""
        payload = {"version": FEATURES_VERSION, **self.to_dict()}
        return sha256_text(json.dumps(payload, sort_keys=True, separators=(",", ":")))[:16]


def num_frames(num_samples: int, spec: FbankConfig) -> int:
    """Frames T for `num_samples` samples (as `rsctool.features.num_frames`)."""
    w, s = spec.window_size, spec.window_shift
    if spec.snip_edges:
        return 0 if num_samples < w else 1 + (num_samples - w) // s
    return (num_samples + s // 2) // s


def window_function(spec: FbankConfig) -> np.ndarray:
    """`(W,)` float64 analysis window (Kaldi's symmetric definitions)."""
    w = spec.window_size
    n = np.arange(w, dtype=np.float64)
    a = 2.0 * math.pi / (w - 1)
    if spec.window in ("hanning", "povey"):
        win = 0.5 - 0.5 * np.cos(a * n)
        if spec.window == "povey":
            win = np.power(np.maximum(win, 0.0), 0.85)
    elif spec.window == "hamming":
        win = 0.54 - 0.46 * np.cos(a * n)
    elif spec.window == "blackman":
        b = spec.blackman_coeff
        win = b - 0.5 * np.cos(a * n) + (0.5 - b) * np.cos(2 * a * n)
    else:
        win = np.ones(w)
    return win


def _mel(f: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def mel_filterbank(spec: FbankConfig) -> np.ndarray:
    """`(n_fft // 2 + 1, F)` float32 triangular HTK-mel filters (Nyquist row zero)."""
    nf = spec.num_mel_bins
    n_bins = spec.n_fft // 2
    lo, hi = _mel(spec.low_freq), _mel(spec.high_freq_hz)
    delta = (hi - lo) / (nf + 1)
    b = np.arange(nf, dtype=np.float64)[:, None]
    left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
    mel = _mel(spec.sample_rate / spec.n_fft * np.arange(n_bins, dtype=np.float64))[None, :]
    banks = np.maximum(0.0, np.minimum((mel - left) / (center - left),
                                       (right - mel) / (right - center)))
    out = np.zeros((n_bins + 1, nf), dtype=np.float32)
    out[:n_bins] = banks.T
    return out


def _mirror_pad(x: np.ndarray, spec: FbankConfig, frames: int) -> np.ndarray:
    """Kaldi's mirrored edges (snip_edges=False), as `features._mirror_pad`."""
    n = x.shape[-1]
    pad = spec.window_size // 2 - spec.window_shift // 2
    length = (frames - 1) * spec.window_shift + spec.window_size
    pos = np.remainder(np.arange(length) - pad, 2 * n)
    idx = np.where(pos < n, pos, 2 * n - 1 - pos)
    return x[:, idx]


class FbankNumpy:
    """Callable `(B, N)` / `(N,)` waveform -> `(B, T, F)` float32 filter bank.

    Holds the window and mel matrix so repeated calls (one per batch of windows) do
    not rebuild them.
    """

    def __init__(self, spec: FbankConfig, normalize: bool = True):
        self.spec = spec
        self.normalize = normalize
        self.window = window_function(spec)
        # The mel projection in bands of 16 adjacent filters over only the FFT bins under
        # them (as features._MelBands: ~8x fewer multiply-adds than one dense matmul).
        # With use_power, rows are repeated for the interleaved (re, im) squares of the
        # spectrum viewed as reals, so the matmul also sums them.
        mel = mel_filterbank(spec)
        rep = 2 if spec.use_power else 1
        self.bands: list[tuple[int, int, np.ndarray]] = []
        for f0 in range(0, spec.num_mel_bins, _BAND):
            cols = mel[:, f0:f0 + _BAND]
            rows = np.nonzero(cols.any(axis=1))[0]
            k0, k1 = (int(rows.min()), int(rows.max()) + 1) if len(rows) else (0, 1)
            self.bands.append((rep * k0, rep * k1,
                               np.repeat(cols[k0:k1], rep, axis=0).astype(np.float64)))

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        spec = self.spec
        x = np.asarray(wav)
        if x.dtype.kind != "f":
            raise DataError(f"fbank needs a float waveform in [-1, 1], got dtype {x.dtype}")
        if x.ndim not in (1, 2):
            raise DataError(f"fbank needs a (N,) or (B, N) waveform, got shape {x.shape}")
        x = np.atleast_2d(x).astype(np.float64, copy=False)
        b, n = x.shape
        t = num_frames(n, spec)
        out = np.empty((b, t, spec.num_mel_bins), dtype=np.float32)
        if t == 0 or b == 0:
            return out
        if not spec.snip_edges:
            x = _mirror_pad(x, spec, t)
        w, s = spec.window_size, spec.window_shift
        frames = np.lib.stride_tricks.sliding_window_view(x, w, axis=-1)[:, ::s][:, :t]
        c = spec.preemphasis
        for i in range(b):
            for j in range(0, t, _CHUNK_FRAMES):
                fr = np.array(frames[i, j:j + _CHUNK_FRAMES], dtype=np.float64)  # copy
                if spec.remove_dc_offset:
                    fr -= fr.mean(axis=1, keepdims=True)
                if c != 0.0:
                    fr[:, 1:] -= c * fr[:, :-1]  # the right side is evaluated first
                    fr[:, 0] *= 1.0 - c
                fr *= self.window
                z = np.fft.rfft(fr, n=spec.n_fft, axis=1)  # (T', K) complex128
                sq = np.square(z.view(np.float64))  # (T', 2K): re^2, im^2, re^2, ...
                if not spec.use_power:
                    sq = np.sqrt(sq[:, 0::2] + sq[:, 1::2])
                # float64 matmuls: OpenBLAS's float32 ones are as fast alone but stall for
                # tens of ms in its thread hand-off on a busy machine; these stay ~1 ms.
                m = np.concatenate([sq[:, a:b] @ w for a, b, w in self.bands], axis=1)
                m = m.astype(np.float32)
                if spec.use_log_fbank:
                    m = np.log(np.maximum(m, np.float32(EPS)))
                out[i, j:j + len(fr)] = m
        if self.normalize:
            out -= np.float32(spec.mean)
            out /= np.float32(2.0 * spec.std)
        return out


def fbank(wav: np.ndarray, spec: FbankConfig, normalize: bool = False) -> np.ndarray:
    """`(B, T, F)` float32 filter bank of a `(N,)` or `(B, N)` float waveform at
    ``spec.sample_rate`` Hz; with `normalize`, ``(x - mean) / (2 * std)``."""
    return FbankNumpy(spec, normalize)(wav)
