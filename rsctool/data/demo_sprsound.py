"""A small synthetic dataset in the SPRSound layout (``rsctool demo-data --kind sprsound``).

Layout, as the SPRSound repository's 2022 release::

    OUT/train2022_wav/<patient>_<age>_<gender>_<location>_<rec>.wav
    OUT/train2022_json/<same name>.json
    OUT/test2022_wav/...
    OUT/test2022_json/inter_test_json/<same name>.json

Each recording (8 kHz, 8 s) is breath noise with 4-6 annotated respiratory events; an
abnormal recording's events are its adventitious kind or normal. The kinds are made
learnable and distinct: rhonchi a low (150-200 Hz) tone, wheeze a 400-700 Hz tone,
stridor a loud 900-1200 Hz tone early in the event, coarse crackles few low
(200-350 Hz) transients, fine crackles many short high (600-900 Hz) ones,
wheeze+crackle a wheeze with fine crackles; a ``Poor Quality`` recording is loud
broadband noise with an empty event list. Annotations are written as the real files
are: compact JSON, times as strings of whole milliseconds, some events out of order.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsctool.audio import write_audio
from rsctool.data.demo import _add_pulse, _add_tone, _band, _envelope, _shaped_noise
from rsctool.errors import ConfigError
from rsctool.utils import atomic_write_text

__all__ = ["SprsoundDemoSummary", "make_demo_sprsound_dataset"]

SAMPLE_RATE = 8000
LENGTH_S = 8.0
#: Adventitious event kinds as the annotation files write them, dealt to recordings.
_KINDS = ("Wheeze", "Fine Crackle", "Rhonchi", "Coarse Crackle", "Stridor", "Wheeze+Crackle")
_CONTINUOUS = {"Rhonchi", "Wheeze", "Stridor"}
_DISCONTINUOUS = {"Coarse Crackle", "Fine Crackle"}
_TEST_FRACTION = 0.4


@dataclass
class SprsoundDemoSummary:
    """What `make_demo_sprsound_dataset` wrote.

    Attributes:
        root: the dataset folder.
        recordings, patients, events: how many of each.
        events_by_split: ``{train|test: {event type: count}}`` (types as in the files).
        records_by_split: ``{train|test: {record label: count}}``.
        bytes: total size of the files written.
    """

    root: Path
    recordings: int
    patients: int
    events: int
    events_by_split: dict[str, dict[str, int]] = field(default_factory=dict)
    records_by_split: dict[str, dict[str, int]] = field(default_factory=dict)
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["root"] = str(self.root)
        return d


def _record_label(types: list[str]) -> str:
    cas = any(t in _CONTINUOUS or t == "Wheeze+Crackle" for t in types)
    das = any(t in _DISCONTINUOUS or t == "Wheeze+Crackle" for t in types)
    return {(False, False): "Normal", (True, False): "CAS", (False, True): "DAS",
            (True, True): "CAS & DAS"}[(cas, das)]


def _events(rng: np.random.Generator) -> list[tuple[int, int]]:
    """4-6 events (start, end) in ms inside the recording, some touching."""
    out = []
    t = int(rng.integers(100, 600))
    while len(out) < 6:
        dur = int(rng.integers(900, 1500))
        if t + dur > LENGTH_S * 1000 - 100:
            break
        out.append((t, t + dur))
        t += dur + (0 if rng.random() < 0.3 else int(rng.integers(50, 300)))
    return out


def _synthesize(events: list[tuple[int, int, str]], poor: bool,
                rng: np.random.Generator) -> np.ndarray:
    sr = SAMPLE_RATE
    n = int(LENGTH_S * sr)
    breath = _shaped_noise(rng, n, sr, _band(100, float(rng.uniform(500, 800)), 2))
    env = np.full(n, 0.05)
    out = np.zeros(n)
    for start, end, kind in events:
        a, b = start * sr // 1000, end * sr // 1000
        env[a:b] += float(rng.uniform(0.7, 1.1)) * _envelope(b - a, float(rng.uniform(0.3, 0.5)))
        m = b - a
        if kind in ("Wheeze", "Wheeze+Crackle"):
            _add_tone(out, sr, a + m // 5, int(m * 0.6), float(rng.uniform(400, 700)), 0.9,
                      rng, (1.0, 0.3))
        elif kind == "Rhonchi":
            _add_tone(out, sr, a + m // 5, int(m * 0.6), float(rng.uniform(150, 200)), 1.0,
                      rng, (1.0, 0.6, 0.4))
        elif kind == "Stridor":
            _add_tone(out, sr, a + m // 10, int(m * 0.45), float(rng.uniform(900, 1200)), 1.3,
                      rng, (1.0, 0.2))
        if kind in ("Fine Crackle", "Wheeze+Crackle"):
            for _ in range(int(rng.integers(12, 21))):
                _add_pulse(out, sr, float(rng.uniform(a, b - 0.02 * sr)) / sr,
                           float(rng.uniform(600, 900)), float(rng.uniform(0.001, 0.002)),
                           float(rng.uniform(4.0, 7.0)), float(rng.uniform(0, 2 * np.pi)))
        elif kind == "Coarse Crackle":
            for _ in range(int(rng.integers(5, 9))):
                _add_pulse(out, sr, float(rng.uniform(a, b - 0.03 * sr)) / sr,
                           float(rng.uniform(200, 350)), float(rng.uniform(0.004, 0.006)),
                           float(rng.uniform(5.0, 8.0)), float(rng.uniform(0, 2 * np.pi)))
    out += breath * env + 0.02 * rng.standard_normal(n)
    if poor:  # broadband rubbing noise and clipping: no usable breath sounds
        out += 3.0 * rng.standard_normal(n) * (0.5 + 0.5 * np.abs(np.sin(np.arange(n) / sr * 3)))
    out *= 0.1
    return np.clip(out, -0.99, 0.99).astype(np.float32)


def make_demo_sprsound_dataset(out_dir: str | os.PathLike, *, patients: int = 16,
                               seed: int = 0, recordings_per_patient: int = 3
                               ) -> SprsoundDemoSummary:
    """Write the SPRSound-layout demo into `out_dir` (created if missing).

    Args:
        out_dir: target folder; it must not hold other SPRSound ``.wav``/``.json`` files.
        patients: 4-200 patients; about 40 % of them (at least one) form the test set.
        seed: the same seed and sizes give byte-identical files.
        recordings_per_patient: 1-20 recordings of 8 s each.

    Returns:
        A `SprsoundDemoSummary`. Defaults: 48 recordings, about 240 events, about 6 MB,
        every event type and record label in both splits.

    Raises:
        ConfigError: bad sizes, `out_dir` is a file, or it holds foreign recordings.
    """
    for name, value, lo, hi in (("patients", patients, 4, 200),
                                ("recordings_per_patient", recordings_per_patient, 1, 20)):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(f"{name} must be an integer from {lo} to {hi}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError("demo dataset folder is a file, not a folder", root)
    rng = np.random.default_rng([seed, 19])
    n_test = max(1, int(round(patients * _TEST_FRACTION)))
    plan: list[tuple[str, str, list[tuple[int, int, str]], str, int]] = []
    for split, first, count in (("train", 0, patients - n_test), ("test", patients - n_test,
                                                                   n_test)):
        r = dealt = 0  # kinds are dealt per split, so each split gets every kind
        for p in range(first, first + count):
            pid = f"{41000000 + 37 * p:08d}"
            age = round(float(rng.uniform(0.1, 14.0)), 1)
            gender = int(rng.integers(0, 2))
            for _k in range(recordings_per_patient):
                # the location is drawn, so that it says nothing about the class
                stem = (f"{pid}_{age:.1f}_{gender}_p{1 + int(rng.integers(0, 4))}_"
                        f"{1000 + len(plan)}")
                poor = r % 12 == 7
                kind = None if r % 4 == 0 or poor else _KINDS[dealt % len(_KINDS)]
                dealt += kind is not None
                r += 1
                events = [] if poor else [
                    (s, e, kind if kind is not None and (i % 2 == 0 or rng.random() < 0.5)
                     else "Normal") for i, (s, e) in enumerate(_events(rng))]
                record = "Poor Quality" if poor else _record_label([t for *_, t in events])
                plan.append((split, stem, events, record, int(rng.integers(0, 2**31))))
    folders = {"train": ("train2022_wav", "train2022_json"),
               "test": ("test2022_wav", "test2022_json/inter_test_json")}
    wanted = {str(root / folders[s][i] / f"{stem}{ext}") for s, stem, *_ in plan
              for i, ext in ((0, ".wav"), (1, ".json"))}
    if root.is_dir():
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                p = os.path.join(dirpath, f)
                if f.lower().endswith((".wav", ".json")) and p not in wanted:
                    raise ConfigError(f"demo dataset folder holds other recordings ({p}); use "
                                      "an empty or new folder", root)
    total = 0
    events_by: dict[str, Counter] = {"train": Counter(), "test": Counter()}
    records_by: dict[str, Counter] = {"train": Counter(), "test": Counter()}
    for split, stem, events, record, rec_seed in plan:
        wav_dir, json_dir = (root / f for f in folders[split])
        wav_dir.mkdir(parents=True, exist_ok=True)
        json_dir.mkdir(parents=True, exist_ok=True)
        audio = _synthesize(events, record == "Poor Quality", np.random.default_rng(rec_seed))
        wav = wav_dir / f"{stem}.wav"
        write_audio(wav, audio, SAMPLE_RATE, "PCM_16")
        listed = list(events)
        if len(listed) > 2 and rec_seed % 3 == 0:  # as in the real files: not time order
            listed = listed[2:] + listed[:2]
        text = json.dumps({"record_annotation": record, "event_annotation": [
            {"start": str(s), "end": str(e), "type": t} for s, e, t in listed]})
        atomic_write_text(json_dir / f"{stem}.json", text)
        total += wav.stat().st_size + len(text)
        events_by[split].update(t for *_, t in events)
        records_by[split][record] += 1
    return SprsoundDemoSummary(
        root=root, recordings=len(plan), patients=patients,
        events=sum(len(p[2]) for p in plan),
        events_by_split={s: dict(sorted(c.items())) for s, c in events_by.items()},
        records_by_split={s: dict(sorted(c.items())) for s, c in records_by.items()},
        bytes=total)
