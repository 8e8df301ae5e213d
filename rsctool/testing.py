"""Helpers that build synthetic audio and datasets for tests, examples and benchmarks.

Everything here writes small files quickly and deterministically (a seed fixes every
sample), never touches the network and needs no real recordings.

* `write_noise_wav`: one noise file of a given length.
* `write_icbhi_dataset`: a tiny hand-made ICBHI-layout dataset (annotations, audio,
  split and metadata files) for reader tests.
* `synthesize_icbhi_audio`: noise audio for the real ICBHI 2017 annotation files
  (``../shared/icbhi-meta``), giving a full-size dataset without the real recordings.
* `write_folder_dataset`: a ``<class>/**/*.wav`` folder dataset.
"""

from __future__ import annotations

import math
import os
import shutil
import wave
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "icbhi_meta_dir",
    "synthesize_icbhi_audio",
    "write_folder_dataset",
    "write_icbhi_dataset",
    "write_noise_wav",
]

#: Environment variable that points at the ICBHI metadata folder (overrides the default).
ICBHI_META_ENV = "RSCTOOL_ICBHI_META"


def icbhi_meta_dir() -> Path | None:
    """The folder with the real ICBHI 2017 annotation and metadata files, if present.

    ``$RSCTOOL_ICBHI_META`` if set, else ``../shared/icbhi-meta`` next to the repository
    root. None when the folder (or its ``ICBHI_final_database``) is absent, so tests
    can skip with a reason.
    """
    env = os.environ.get(ICBHI_META_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "icbhi-meta"
    return path if (path / "ICBHI_final_database").is_dir() else None


def _noise(n: int, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """`(n,)` int16 Gaussian noise with RMS `amplitude` of full scale."""
    x = rng.standard_normal(n, dtype=np.float32) * (amplitude * 32767.0)
    return np.clip(x, -32767, 32767).astype(np.int16)


def write_noise_wav(path: str | os.PathLike, seconds: float, sample_rate: int = 4000, *,
                    seed: int = 0, amplitude: float = 0.1, channels: int = 1,
                    subtype: str = "PCM_16") -> Path:
    """Write `seconds` of Gaussian noise (RMS `amplitude` of full scale) to `path`.

    The format follows the suffix: wav and flac get `subtype` (flac: PCM only),
    ogg is Vorbis. `channels` > 1 writes identical channels. Returns `path`.
    """
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(1, int(round(seconds * sample_rate)))
    rng = np.random.default_rng(seed)
    data = np.clip(rng.standard_normal(n, dtype=np.float32) * amplitude, -1.0, 1.0)
    if channels > 1:
        data = np.repeat(data[:, None], channels, axis=1)
    suffix = path.suffix.lower()
    if suffix == ".ogg":
        subtype = "VORBIS"
    elif suffix == ".flac" and not subtype.startswith("PCM"):
        subtype = "PCM_16"
    sf.write(path, data, sample_rate, subtype=subtype)
    return path


Row = tuple[float, float, int, int]


def write_icbhi_dataset(root: str | os.PathLike,
                        recordings: Mapping[str, str | Sequence[Row]], *,
                        splits: Mapping[str, str] | str | None = None,
                        audio_seconds: Mapping[str, float] | float | None = None,
                        sample_rate: int = 4000,
                        demographics: str | None = None,
                        diagnosis: str | None = None,
                        metadata_in_parent: bool = False,
                        seed: int = 0) -> Path:
    """Write a small ICBHI-layout dataset and return its folder.

    Args:
        root: dataset folder (created).
        recordings: ``{stem: rows}``; rows are ``(start, end, crackle, wheeze)`` tuples
            (written tab-separated) or a raw annotation text written as is (to test
            malformed input). A stem mapped to None gets audio but no annotation.
        splits: ``{stem: "train"|"test"}`` written as ``ICBHI_challenge_train_test.txt``,
            or raw text for that file; None writes no split file.
        audio_seconds: audio length per stem (or one length for all); default: the last
            cycle end + 0.5 s (2 s when the rows cannot be read). A stem mapped to 0 or
            a negative length gets no audio file.
        demographics, diagnosis: raw text of the challenge metadata files (None: absent).
        metadata_in_parent: write the metadata files into `root`'s parent, like the
            official download, instead of into `root`.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    meta = root.parent if metadata_in_parent else root
    for i, (stem, rows) in enumerate(recordings.items()):
        if rows is not None:
            text = rows if isinstance(rows, str) else "".join(
                f"{s}\t{e}\t{c}\t{w}\n" for s, e, c, w in rows)
            (root / f"{stem}.txt").write_text(text, encoding="utf-8", newline="")
        if isinstance(audio_seconds, Mapping):
            seconds = audio_seconds.get(stem)
        else:
            seconds = audio_seconds
        if seconds is None:
            seconds = _last_end(rows) + 0.5 if rows is not None else 2.0
        if seconds > 0:
            write_noise_wav(root / f"{stem}.wav", seconds, sample_rate, seed=seed + i)
    if splits is not None:
        text = splits if isinstance(splits, str) else "".join(
            f"{k}\t{v}\r\n" for k, v in splits.items())
        (meta / "ICBHI_challenge_train_test.txt").write_text(text, encoding="utf-8",
                                                             newline="")
    if demographics is not None:
        (meta / "ICBHI_Challenge_demographic_information.txt").write_text(
            demographics, encoding="utf-8", newline="")
    if diagnosis is not None:
        (meta / "ICBHI_Challenge_diagnosis.txt").write_text(diagnosis, encoding="utf-8",
                                                            newline="")
    return root


def _last_end(rows: str | Sequence[Row] | None) -> float:
    """Largest readable end time of annotation rows or text (1.5 s when none reads)."""
    if rows is None:
        return 1.5
    if isinstance(rows, str):
        ends = []
        for line in rows.splitlines():
            tokens = line.split()
            if len(tokens) >= 2:
                try:
                    end = float(tokens[1])
                except ValueError:
                    continue
                if math.isfinite(end):
                    ends.append(end)
        return max(ends, default=1.5)
    return max((float(r[1]) for r in rows), default=1.5)


#: Native sample rates of the ICBHI 2017 stethoscopes (Hz).
ICBHI_DEVICE_RATES = {"AKGC417L": 44100, "Meditron": 4000, "LittC2SE": 4000, "Litt3200": 4000}


def synthesize_icbhi_audio(meta_dir: str | os.PathLike, out_dir: str | os.PathLike,
                           sample_rate: int | None = 4000, seed: int = 0) -> Path:
    """Build a full ICBHI-layout dataset from the real annotations and noise audio.

    Copies every annotation ``.txt`` of ``meta_dir/ICBHI_final_database`` (or of
    `meta_dir` itself when it holds them) into ``out_dir/ICBHI_final_database``,
    copies the challenge metadata files found next to it into `out_dir`, and writes
    for every recording an int16 mono wav of Gaussian noise at `sample_rate` Hz that
    lasts until 0.5 s after its last cycle. 920 recordings take a few seconds.
    ``sample_rate=None`` uses each device's real rate (`ICBHI_DEVICE_RATES`), as
    large as the real database (~1.5 GB less compression), for benchmarks.

    Returns:
        ``out_dir/ICBHI_final_database`` (the folder to give to `read_icbhi`).
    """
    from rsctool.data.icbhi import RECORDING_RE, find_metadata_files

    meta_dir = Path(meta_dir)
    src = meta_dir / "ICBHI_final_database"
    if not src.is_dir():
        src = meta_dir
    out_dir = Path(out_dir)
    dst = out_dir / "ICBHI_final_database"
    dst.mkdir(parents=True, exist_ok=True)
    for path in find_metadata_files(src).values():
        if path is not None:
            shutil.copyfile(path, out_dir / path.name)

    stems = sorted(p.stem for p in src.glob("*.txt") if RECORDING_RE.match(p.stem))
    lengths: dict[str, int] = {}
    rates: dict[str, int] = {}
    for stem in stems:
        text = (src / f"{stem}.txt").read_text(encoding="utf-8-sig")
        (dst / f"{stem}.txt").write_text(text, encoding="utf-8", newline="")
        rate = sample_rate or ICBHI_DEVICE_RATES.get(stem.rsplit("_", 1)[-1], 4000)
        rates[stem] = rate
        lengths[stem] = int(math.ceil((_last_end(text) + 0.5) * rate))
    # One noise buffer, sliced at a different offset per file: generating 920 separate
    # streams costs more than writing the files, and tests only need plausible noise.
    rng = np.random.default_rng(seed)
    longest = max(lengths.values(), default=1)
    buffer = _noise(2 * longest, rng, 0.1).astype("<i2")
    offsets = rng.integers(0, longest, size=len(stems))
    for stem, offset in zip(stems, offsets, strict=True):
        # stdlib wave, not soundfile: libsndfile fsyncs every file on close, which
        # makes 920 files take seconds instead of a fraction of one
        with wave.open(str(dst / f"{stem}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rates[stem])
            w.writeframes(buffer[offset:offset + lengths[stem]].tobytes())
    return dst


def write_folder_dataset(root: str | os.PathLike, files: Mapping[str, float] | Sequence[str],
                         *, seconds: float = 0.5, sample_rate: int = 8000,
                         seed: int = 0) -> Path:
    """Write a ``<class>/**/*.wav`` folder dataset of noise files and return `root`.

    Args:
        files: relative paths (``"crackle/site1/a.wav"``), optionally mapped to lengths
            in seconds; the suffix picks the format (wav/flac/ogg).
        seconds: length of files given without one.
    """
    root = Path(root)
    items = files.items() if isinstance(files, Mapping) else ((f, seconds) for f in files)
    for i, (rel, length) in enumerate(items):
        write_noise_wav(root / rel, length, sample_rate, seed=seed + i)
    return root
