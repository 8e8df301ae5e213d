"""Audio io and shaping: read (soundfile), resample (soxr), mono, crop, pad, fades, gain.

Waveforms are float32 numpy arrays of shape `(N,)` with values nominally in [-1, 1];
sample rates are in Hz; times in seconds.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsctool.errors import DataError

#: Hz every stage resamples to by default (AST's AudioSet front end).
DEFAULT_SAMPLE_RATE = 16_000
#: Seconds of audio a model sees by default (`ClipConfig.clip_seconds`, ``train
#: --clip-seconds``): shorter cycles are padded, longer ones cropped.
DEFAULT_CLIP_SECONDS = 8.0
#: The audio files every stage reads (folder scans, globs): what libsndfile >= 1.1 decodes.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
#: Shortest usable audio: one 25 ms analysis frame (the fbank default frame length).
MIN_AUDIO_SECONDS = 0.025
#: |sample| at or above this counts as clipped (full scale, after int -> float scaling).
CLIP_LEVEL = 0.999
#: Share of clipped samples from which a file is reported as clipping.
CLIPPED_FRACTION_WARN = 0.001
SILENT_AUDIO = "silent audio (every sample is zero)"


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


def is_audio_file(path: str | os.PathLike) -> bool:
    """True for a non-hidden name ending in one of `AUDIO_EXTENSIONS` (any case)."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and name.lower().endswith(AUDIO_EXTENSIONS)


@dataclass
class LevelStats:
    """Sample levels accumulated block by block (so an hour needs one block of memory).

    Attributes:
        n: samples seen.
        peak: max |x|.
        clipped: samples with |x| >= `CLIP_LEVEL`.
        sum_sq: sum of x^2 (float64).
    """

    n: int = 0
    peak: float = 0.0
    clipped: int = 0
    sum_sq: float = 0.0

    def add(self, wav: np.ndarray) -> None:
        """Account for a `(N,)` block of float samples."""
        if len(wav) == 0:
            return
        a = np.abs(wav)
        self.n += len(wav)
        self.peak = max(self.peak, float(a.max()))
        self.clipped += int(np.count_nonzero(a >= CLIP_LEVEL))
        self.sum_sq += float(np.sum(np.square(wav, dtype=np.float64)))

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.n if self.n else 0.0

    @property
    def rms(self) -> float:
        return math.sqrt(self.sum_sq / self.n) if self.n else 0.0

    @property
    def silent(self) -> bool:
        return self.n > 0 and self.peak == 0.0


def level_problems(levels: LevelStats) -> list[str]:
    """Silence and clipping of a whole file, as short texts (empty when fine)."""
    if levels.silent:
        return [SILENT_AUDIO]
    if levels.clipped >= 3 and levels.clipped_fraction >= CLIPPED_FRACTION_WARN:
        return [f"clipping ({100 * levels.clipped_fraction:.2g} % of samples at full scale)"]
    return []


def wav_truncation(path: str | os.PathLike) -> str | None:
    """Why a RIFF/WAVE file's data chunk is cut short, or None (fine, or not a wav).

    libsndfile silently reports the frames present, so a copy that stopped half-way reads
    as a shorter recording; the header's data size still says how long it should be.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return None
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return None
    order = "little" if head[:4] == b"RIFF" else "big"
    pos, block_align, rate = 12, 0, 0
    while pos + 8 <= len(head):
        cid, n = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], order)
        if cid == b"fmt " and pos + 22 <= len(head):
            rate = int.from_bytes(head[pos + 12:pos + 16], order)
            block_align = int.from_bytes(head[pos + 20:pos + 22], order)
        if cid == b"data":
            have = size - (pos + 8)
            # 0 and 0xFFFFFFFF: a stream written without knowing its length (not a cut)
            if n in (0, 0xFFFFFFFF) or have >= n:
                return None
            if block_align and rate:
                return (f"truncated audio (the header declares {n // block_align / rate:.3f} s,"
                        f" the file holds {max(have, 0) // block_align / rate:.3f} s)")
            return f"truncated audio (the header declares {n} data bytes, the file holds {have})"
        pos += 8 + n + (n & 1)
    return None


def header_problems(info: AudioInfo, min_seconds: float = MIN_AUDIO_SECONDS) -> list[str]:
    """Problems visible without reading the samples: too short for one analysis frame
    (`min_seconds`), a truncated wav data chunk."""
    out = []
    if info.duration < min_seconds:
        out.append(f"too short ({1000 * info.duration:.3g} ms, less than one "
                   f"{1000 * min_seconds:g} ms analysis frame)")
    cut = wav_truncation(info.path)
    if cut:
        out.append(cut)
    return out


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
        path: an audio file (`AUDIO_EXTENSIONS`).
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


#: How a short cycle is brought to the clip length: ``repeat`` tiles it with a short
#: raised-cosine fade in and out on every copy (rsctool's default: no click at any join),
#: ``repeat-fadeout`` tiles it and applies one linear fade-out of 1/16 s at the clip end
#: (the public code of the ICBHI AST papers: torchaudio ``Fade(fade_out_len=sr // 16)``
#: after ``repeat``), ``zero`` appends silence.
PAD_MODES = ("repeat", "repeat-fadeout", "zero")
#: Length of the ``repeat-fadeout`` fade: the papers' code's ``sample_rate / 16``.
FADEOUT_DIVISOR = 16


def pad_or_crop(wav: np.ndarray, length: int, sample_rate: int = DEFAULT_SAMPLE_RATE,
                mode: str = "repeat", fade_s: float = 0.01) -> np.ndarray:
    """Bring a `(N,)` waveform to exactly `length` samples.

    Longer input is cropped from the start. Shorter input is padded by `mode` (see
    `PAD_MODES`): ``"repeat"`` tiles the cycle, each copy with `fade_s` raised-cosine fades
    so the joins do not click (rsctool's convention); ``"repeat-fadeout"`` tiles the
    unfaded cycle and fades the last ``sample_rate // 16`` samples out linearly (the ICBHI
    AST papers' public code); ``"zero"`` appends silence.
    """
    if length <= 0:
        raise ValueError("length must be positive")
    if mode not in PAD_MODES:
        raise ValueError(f"unknown pad mode {mode!r} ({'|'.join(PAD_MODES)})")
    if len(wav) >= length:
        return np.ascontiguousarray(wav[:length], dtype=np.float32)
    if len(wav) == 0:
        return np.zeros(length, dtype=np.float32)
    if mode == "zero":
        out = np.zeros(length, dtype=np.float32)
        out[: len(wav)] = wav
        return out
    piece = apply_fades(wav, sample_rate, fade_s) if mode == "repeat" else wav
    reps = -(-length // len(piece))
    out = np.array(np.tile(piece, reps)[:length], dtype=np.float32)
    if mode == "repeat-fadeout":
        n = min(int(sample_rate / FADEOUT_DIVISOR), length)
        if n > 0:
            # torchaudio's linear fade-out: 1 - linspace(0, 1, n), 0 at the last sample
            out[-n:] *= np.linspace(1.0, 0.0, n, dtype=np.float32)
    return out


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
               sample_rate: int = DEFAULT_SAMPLE_RATE,
               clip_seconds: float | None = DEFAULT_CLIP_SECONDS,
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
