"""Audio io and shaping: read (soundfile), resample (soxr), mono, crop, pad, fades, gain.

Waveforms are float32 numpy arrays of shape `(N,)` with values nominally in [-1, 1];
sample rates are in Hz; times in seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsctool.errors import DataError

DEFAULT_SAMPLE_RATE = 16_000
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file.

    Attributes:
        path: the file.
        sample_rate: Hz.
        frames: samples per channel.
        channels: channel count.
        subtype: soundfile subtype (``PCM_16``, ``FLOAT`` ...).
    """

    path: str
    sample_rate: int
    frames: int
    channels: int
    subtype: str

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate


def _sf():
    import soundfile as sf  # imported lazily: keeps CLI start-up fast

    return sf


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read the header of `path`; raise DataError if missing, unreadable or empty."""
    sf = _sf()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError("audio file not found", path)
    try:
        info = sf.info(path)
    except Exception as e:  # soundfile raises several types (LibsndfileError, RuntimeError)
        raise DataError(f"unreadable audio ({_short(e)})", path) from None
    if info.frames <= 0:
        raise DataError("empty audio (0 samples)", path)
    if info.samplerate <= 0:
        raise DataError(f"invalid sample rate {info.samplerate}", path)
    return AudioInfo(path, int(info.samplerate), int(info.frames), int(info.channels),
                     str(info.subtype))


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:200]


def load_audio(path: str | os.PathLike, sample_rate: int | None = DEFAULT_SAMPLE_RATE,
               start: float = 0.0, end: float | None = None) -> np.ndarray:
    """Read `path` (any rate, int or float, any channel count) as mono float32.

    Args:
        path: wav/flac/ogg file.
        sample_rate: resample to this rate (Hz); ``None`` keeps the native rate.
        start, end: optional segment in seconds (``end=None``: to the end of the file).

    Returns:
        `(N,)` float32 waveform at `sample_rate`.

    Raises:
        DataError: missing, unreadable, empty or non-finite audio, or a segment outside it.
    """
    sf = _sf()
    info = audio_info(path)
    sr = info.sample_rate
    first = int(round(start * sr))
    last = info.frames if end is None else int(round(end * sr))
    if first < 0 or first >= info.frames or last <= first:
        raise DataError(f"segment {start:.3f}-{end if end is not None else info.duration:.3f} s "
                        f"is outside the audio (0-{info.duration:.3f} s)", path)
    last = min(last, info.frames)
    try:
        data, _ = sf.read(os.fspath(path), start=first, stop=last, dtype="float32",
                          always_2d=True)
    except Exception as e:
        raise DataError(f"unreadable audio ({_short(e)})", path) from None
    if data.size == 0:
        raise DataError("empty audio segment", path)
    wav = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wav).all():
        raise DataError("audio contains NaN or infinite samples", path)
    if sample_rate is not None and sample_rate != sr:
        wav = resample(wav, sr, sample_rate)
    return np.ascontiguousarray(wav, dtype=np.float32)


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a `(N,)` waveform from `orig_sr` to `target_sr` Hz with soxr (HQ)."""
    if orig_sr == target_sr:
        return wav.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(wav.astype(np.float32, copy=False), orig_sr, target_sr,
                         quality="HQ").astype(np.float32, copy=False)


def apply_fades(wav: np.ndarray, sample_rate: int, fade_s: float = 0.01) -> np.ndarray:
    """Raised-cosine fade in and out of `fade_s` seconds (both ends); returns a copy."""
    out = np.array(wav, dtype=np.float32, copy=True)
    n = min(int(round(fade_s * sample_rate)), len(out) // 2)
    if n > 0:
        ramp = (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n, dtype=np.float32)))
        out[:n] *= ramp
        out[-n:] *= ramp[::-1]
    return out


def pad_or_crop(wav: np.ndarray, length: int, sample_rate: int = DEFAULT_SAMPLE_RATE,
                mode: str = "repeat", fade_s: float = 0.01) -> np.ndarray:
    """Bring a `(N,)` waveform to exactly `length` samples.

    Longer input is cropped from the start. Shorter input is padded by `mode`:
    ``"repeat"`` tiles the cycle (each copy with `fade_s` fades so the joins do not
    click: the convention of the ICBHI AST papers), ``"zero"`` appends silence.
    """
    if length <= 0:
        raise ValueError("length must be positive")
    if len(wav) >= length:
        return np.ascontiguousarray(wav[:length], dtype=np.float32)
    if len(wav) == 0:
        return np.zeros(length, dtype=np.float32)
    if mode == "zero":
        out = np.zeros(length, dtype=np.float32)
        out[: len(wav)] = wav
        return out
    if mode != "repeat":
        raise ValueError(f"unknown pad mode {mode!r} (repeat|zero)")
    piece = apply_fades(wav, sample_rate, fade_s)
    reps = -(-length // len(piece))
    return np.ascontiguousarray(np.tile(piece, reps)[:length], dtype=np.float32)


def normalize(wav: np.ndarray, mode: str = "peak", target: float = 0.95,
              eps: float = 1e-8) -> np.ndarray:
    """Scale a waveform: ``peak`` to max |x| = target, ``rms`` to RMS = target, ``none``."""
    if mode == "none":
        return wav.astype(np.float32, copy=False)
    if mode == "peak":
        ref = float(np.max(np.abs(wav))) if len(wav) else 0.0
    elif mode == "rms":
        ref = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if len(wav) else 0.0
    else:
        raise ValueError(f"unknown normalisation {mode!r} (peak|rms|none)")
    if ref < eps:  # silence stays silence instead of amplifying rounding noise
        return wav.astype(np.float32, copy=True)
    return (wav * (target / ref)).astype(np.float32)


def load_cycle(path: str | os.PathLike, start: float, end: float,
               sample_rate: int = DEFAULT_SAMPLE_RATE, clip_seconds: float | None = 8.0,
               pad_mode: str = "repeat", norm: str = "none") -> np.ndarray:
    """Read one cycle, resample, optionally normalise, and pad/crop to `clip_seconds`.

    Returns:
        `(round(clip_seconds * sample_rate),)` float32 (or the cycle's own length when
        `clip_seconds` is None).
    """
    wav = load_audio(path, sample_rate, start, end)
    wav = normalize(wav, norm)
    if clip_seconds is None:
        return wav
    return pad_or_crop(wav, int(round(clip_seconds * sample_rate)), sample_rate, pad_mode)


def write_audio(path: str | os.PathLike, wav: np.ndarray, sample_rate: int,
                subtype: str = "PCM_16") -> None:
    """Write a mono waveform atomically (temp file + rename) as wav/flac/ogg by suffix."""
    from rsctool.utils import mkstemp_for

    sf = _sf()
    path = Path(path)
    fd, tmp = mkstemp_for(path, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        sf.write(tmp, np.clip(wav, -1.0, 1.0), sample_rate, subtype=subtype)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
