"""Long recordings in constant memory: block-wise reading, streaming resampling, windows.

`stream_windows` walks a recording of any length with sliding windows while holding only
one read block plus one window in memory: soundfile reads `block_seconds` at a time,
channels are averaged, soxr's streaming resampler (bit-identical to its one-shot
`resample` on the whole signal) brings each block to the target rate, and windows are cut
from a small rolling buffer. An hour of 44.1 kHz audio therefore needs about as much
memory as a minute. Only numpy, soundfile and soxr are used (no torch).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from rsctool.audio import LevelStats, audio_info
from rsctool.errors import ConfigError, DataError

#: Seconds of audio read per block (at the file's native rate).
BLOCK_SECONDS = 30.0


@dataclass
class Window:
    """One window of a recording.

    Attributes:
        index: 0-based position in the recording's window sequence.
        start: sample offset at the target rate (seconds: ``start / sample_rate``).
        wav: `(n,)` float32 samples at the target rate (n = the window length, or the
            whole recording when it is shorter).
    """

    index: int
    start: int
    wav: np.ndarray


def read_blocks(path: str | os.PathLike, block_frames: int,
                levels: LevelStats | None = None) -> Iterator[np.ndarray]:
    """Mono float32 blocks of `path` at its native rate (channels averaged); `levels`
    (if given) accumulates their peak, clipping and energy (silence/clipping checks).

    Raises:
        DataError: unreadable audio, or NaN/infinite samples (naming the time).
    """
    import soundfile as sf

    try:
        fh = sf.SoundFile(os.fspath(path))
    except Exception as e:
        raise DataError(f"unreadable audio ({_short(e)})", path) from None
    with fh:
        done = 0
        while True:
            try:
                data = fh.read(block_frames, dtype="float32", always_2d=True)
            except Exception as e:
                raise DataError(f"unreadable audio at {done / fh.samplerate:.1f} s "
                                f"({_short(e)})", path) from None
            if len(data) == 0:
                return
            mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
            if not np.isfinite(mono).all():
                bad = done + int(np.argmin(np.isfinite(mono)))
                raise DataError(f"audio contains NaN or infinite samples (at "
                                f"{bad / fh.samplerate:.3f} s)", path)
            done += len(data)
            if levels is not None:
                levels.add(mono)
            yield np.ascontiguousarray(mono)


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def resampled_blocks(path: str | os.PathLike, sample_rate: int,
                     block_seconds: float = BLOCK_SECONDS,
                     levels: LevelStats | None = None) -> Iterator[np.ndarray]:
    """`read_blocks` at `sample_rate` Hz (soxr HQ, streaming: the concatenation equals
    resampling the whole recording at once)."""
    info = audio_info(path)
    block = max(1, int(block_seconds * info.sample_rate))
    if info.sample_rate == sample_rate:
        yield from read_blocks(path, block, levels)
        return
    import soxr

    rs = soxr.ResampleStream(info.sample_rate, sample_rate, 1, dtype="float32", quality="HQ")
    pending = None
    for x in read_blocks(path, block, levels):
        # One block of look-ahead, so the last one can be passed with last=True.
        if pending is not None:
            yield rs.resample_chunk(pending, last=False)
        pending = x
    if pending is not None:
        yield rs.resample_chunk(pending, last=True)


def window_starts(n: int, window: int, hop: int) -> list[int]:
    """Start offsets of the windows `stream_windows` yields for `n` samples: every
    `hop` while a whole window fits, plus one window ending at the last sample when the
    previous one stops short of it; ``[0]`` when the recording is shorter than a window."""
    if n <= window:
        return [0]
    starts = list(range(0, n - window + 1, hop))
    if starts[-1] + window < n:
        starts.append(n - window)
    return starts


def stream_windows(path: str | os.PathLike, sample_rate: int, window: float, hop: float,
                   block_seconds: float = BLOCK_SECONDS,
                   levels: LevelStats | None = None) -> Iterator[Window]:
    """Sliding windows over a recording at `sample_rate` Hz, read block by block.

    Args:
        window, hop: seconds (converted to whole samples at `sample_rate`).
        levels: accumulates the native-rate samples' levels (complete once exhausted).

    Yields:
        `Window` s at the offsets `window_starts` gives; every window is a full
        `window` long except the single window of a shorter recording.
    """
    w = int(round(window * sample_rate))
    h = int(round(hop * sample_rate))
    if w < 1 or h < 1:
        raise ConfigError(f"window ({window} s) and hop ({hop} s) must be at least one "
                          f"sample at {sample_rate} Hz")
    buf = np.zeros(0, dtype=np.float32)
    buf_start = 0  # absolute offset of buf[0]
    next_start = 0
    index = 0
    last_end = 0
    for block in resampled_blocks(path, sample_rate, block_seconds, levels):
        buf = np.concatenate([buf, block]) if len(buf) else block
        buf_end = buf_start + len(buf)
        while next_start + w <= buf_end:
            a = next_start - buf_start
            yield Window(index, next_start, buf[a:a + w].copy())
            index += 1
            last_end = next_start + w
            next_start += h
        # Keep what the next window needs, and the last `w` samples for a final window
        # aligned with the end of the recording.
        keep = min(next_start, max(buf_end - w, 0))
        if keep > buf_start:
            buf = buf[keep - buf_start:]
            buf_start = keep
    n = buf_start + len(buf)
    if n == 0:
        raise DataError("empty audio (0 samples)", path)
    if index == 0:
        yield Window(0, 0, buf[:n].copy())
    elif last_end < n:
        yield Window(index, n - w, buf[len(buf) - w:].copy())
