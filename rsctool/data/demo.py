"""A small synthetic dataset in exactly the ICBHI 2017 format, for demos, tests and examples.

`make_demo_dataset(out_dir)` writes, deterministically for a given seed (byte-identical
files on the same platform)::

    out_dir/
      101_1b1_Al_sc_Meditron.wav   101_1b1_Al_sc_Meditron.txt   ...
      ICBHI_challenge_train_test.txt              (name<TAB>train|test, CRLF, sorted)
      ICBHI_Challenge_diagnosis.txt               (pid<TAB>diagnosis, LF)
      ICBHI_Challenge_demographic_information.txt (pid age sex adultBMI childWeight
                                                   childHeight, tab-separated, NA, CRLF)

Recording names follow ``<patient>_<index>_<site>_<mode>_<device>``; annotation files hold
``start<TAB>end<TAB>crackles<TAB>wheezes`` per cycle (seconds, 3 decimals, LF), and the
cycles tile the recording back to back as in the real annotations. Audio is mono int16 PCM
at the real devices' rates: 4 kHz for Meditron, LittC2SE and Litt3200, 44.1 kHz for
AKGC417L (recorded multichannel, ``mc``, like most real AKGC417L files).

Signal model, per recording (all amplitudes relative to the breath envelope peak):

* breathing: band-limited noise (about 100-1000 Hz; inspiration brighter than
  expiration) shaped by an inhale and an exhale envelope per cycle;
* heart sounds (S1/S2, 35-75 Hz damped pulses), a device-dependent noise floor and
  spectral colouring (and mains hum for the AKG microphone);
* crackles: 5-15 short damped 200-800 Hz transients per cycle, mostly inspiratory;
* wheezes: 1-3 tonal components per cycle, 100-1000 Hz with a slight pitch glide,
  vibrato and harmonics, lasting 80-600 ms (mostly 200-600 ms), mostly expiratory;
* ``both``: crackles and wheezes in one cycle;
* class-independent artefacts (stethoscope clicks, friction rubs, faint tonal
  interference) so that no single threshold separates the classes perfectly.

Labels are drawn with per-split quotas close to ICBHI's class balance (normal 50 %,
crackle 28 %, wheeze 13 %, both 9 %), so every class is present in both splits; which
patients (and recordings) carry which abnormal sounds follows patient profiles
(healthy, URTI, crackle-prone, wheeze-prone, COPD), as in the real data. The split is
patient-wise, about 60 % train / 40 % test.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsctool.audio import resample, write_audio
from rsctool.data.manifest import ICBHI_CLASSES
from rsctool.errors import ConfigError
from rsctool.utils import atomic_write_text

SPLIT_FILE = "ICBHI_challenge_train_test.txt"
DIAGNOSIS_FILE = "ICBHI_Challenge_diagnosis.txt"
DEMOGRAPHIC_FILE = "ICBHI_Challenge_demographic_information.txt"

#: Native sample rate (Hz) of each ICBHI recording device.
DEVICE_RATES: dict[str, int] = {
    "Meditron": 4000,
    "LittC2SE": 4000,
    "Litt3200": 4000,
    "AKGC417L": 44100,
}
SITES: tuple[str, ...] = ("Tc", "Al", "Ar", "Pl", "Pr", "Ll", "Lr")

# Devices are dealt to patients from this cycle. AKGC417L (44.1 kHz) is the most common
# device in the real data but is kept to 1 patient in 12 here: its files are 11x larger.
_DEVICE_CYCLE = ("Meditron", "LittC2SE", "AKGC417L", "Meditron", "Litt3200", "LittC2SE",
                 "Meditron", "Litt3200", "LittC2SE", "Meditron", "Litt3200", "Meditron")

# Patient profiles, dealt from this cycle (the first four cover every abnormal kind, so
# even tiny datasets have crackle-, wheeze- and both-prone patients).
_PROFILE_CYCLE = ("healthy", "crackle", "copd", "wheeze", "urti", "crackle",
                  "copd", "healthy", "wheeze", "crackle", "copd", "healthy")

# Relative tendency of a profile's cycles to carry each abnormal class (quota sampling
# weights); small non-zero values keep every quota fillable whatever the split holds.
_AFFINITY: dict[str, dict[str, float]] = {
    "healthy": {"crackle": 0.02, "wheeze": 0.02, "both": 0.005},
    "urti": {"crackle": 0.15, "wheeze": 0.10, "both": 0.02},
    "crackle": {"crackle": 1.0, "wheeze": 0.05, "both": 0.25},
    "wheeze": {"crackle": 0.05, "wheeze": 1.0, "both": 0.25},
    "copd": {"crackle": 0.7, "wheeze": 0.5, "both": 1.0},
}

# Target class fractions per split (ICBHI 2017: 3642 / 1864 / 886 / 506 of 6898 cycles).
_CLASS_FRACTIONS = {"crackle": 0.28, "wheeze": 0.13, "both": 0.09}

_TEST_FRACTION = 0.4
_MAX_PATIENTS = 899  # ids are 3-digit strings 101..999


@dataclass
class DemoSummary:
    """What `make_demo_dataset` wrote.

    Attributes:
        root: the dataset folder.
        recordings: number of recordings (wav + txt pairs).
        patients: number of patients.
        cycles: number of annotated breathing cycles.
        counts: ``{split: {class: cycles}}`` for ``train`` and ``test`` and the four
            ICBHI classes.
        devices: ``{device: recordings}``.
        sample_rates: distinct sample rates (Hz) present, ascending.
        duration_s: total audio length in seconds.
        bytes: total size of the files written.
    """

    root: Path
    recordings: int
    patients: int
    cycles: int
    counts: dict[str, dict[str, int]]
    devices: dict[str, int] = field(default_factory=dict)
    sample_rates: list[int] = field(default_factory=list)
    duration_s: float = 0.0
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["root"] = str(self.root)
        return d


@dataclass
class _Patient:
    pid: str
    profile: str
    device: str
    split: str
    diagnosis: str
    age: float | None
    sex: str | None
    bmi: float | None
    weight: float | None
    height: float | None
    period: float  # mean breathing-cycle length, s
    crackle_gain: float  # crackle loudness relative to breath
    wheeze_gain: float
    wheeze_f0: float  # typical wheeze pitch, Hz


@dataclass
class _Recording:
    name: str
    patient: _Patient
    site: str
    seed: tuple[int, ...]
    bounds: list[tuple[float, float]]  # cycle (start, end), s, 3 decimals
    length: float  # audio length, s
    labels: list[str] = field(default_factory=list)
    affinity: dict[str, float] = field(default_factory=dict)


def make_demo_dataset(out_dir: str | os.PathLike, *, patients: int = 24, seed: int = 0,
                      recordings_per_patient: int = 2,
                      progress: Callable[[int, int], None] | None = None) -> DemoSummary:
    """Write a synthetic ICBHI-format dataset into `out_dir` (created if missing).

    Args:
        out_dir: target folder. It may exist, but must not hold ``.wav``/``.txt`` files
            other than the ones this call writes (stale recordings would join the dataset).
        patients: number of patients (2-899), ids ``"101"``, ``"102"``, ...
        seed: the same seed (and sizes) gives byte-identical files.
        recordings_per_patient: recordings per patient (1-50), each 15-27 s long.
        progress: called as ``progress(done, total)`` after each recording is written.

    Returns:
        A `DemoSummary`. With the defaults: 48 recordings (4 at 44.1 kHz), about 370
        cycles, about 15 MB, made in about 2 s of CPU time.

    Raises:
        ConfigError: bad sizes, `out_dir` is a file, or it holds foreign recordings.
    """
    if isinstance(patients, bool) or not isinstance(patients, int) \
            or not 2 <= patients <= _MAX_PATIENTS:
        raise ConfigError(f"patients must be an integer from 2 to {_MAX_PATIENTS}, "
                          f"got {patients!r}")
    if isinstance(recordings_per_patient, bool) or not isinstance(recordings_per_patient, int) \
            or not 1 <= recordings_per_patient <= 50:
        raise ConfigError("recordings_per_patient must be an integer from 1 to 50, "
                          f"got {recordings_per_patient!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError("demo dataset folder is a file, not a folder", root)

    plan = _plan(patients, recordings_per_patient, seed)
    _check_target(root, plan)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the demo dataset folder ({e.strerror})", root) \
            from None

    total_bytes = 0
    duration = 0.0
    for i, rec in enumerate(plan, 1):
        sr = DEVICE_RATES[rec.patient.device]
        wav = _synthesize(rec, sr)
        wav_path = root / f"{rec.name}.wav"
        _write(wav_path, lambda path, wav=wav, sr=sr: write_audio(path, wav, sr, "PCM_16"))
        text = "".join(
            f"{s:.3f}\t{e:.3f}\t{int(lab in ('crackle', 'both'))}"
            f"\t{int(lab in ('wheeze', 'both'))}\n"
            for (s, e), lab in zip(rec.bounds, rec.labels, strict=True))
        _write(root / f"{rec.name}.txt", lambda path, text=text: atomic_write_text(path, text))
        total_bytes += wav_path.stat().st_size + len(text)
        duration += len(wav) / sr
        if progress is not None:
            progress(i, len(plan))

    people = sorted({rec.patient.pid: rec.patient for rec in plan}.values(), key=lambda p: p.pid)
    diagnosis = "".join(f"{p.pid}\t{p.diagnosis}\n" for p in people)
    demographic = "".join(
        "\t".join([p.pid, _fmt(p.age), p.sex or "NA", _fmt(p.bmi), _fmt(p.weight),
                   _fmt(p.height)]) + "\r\n" for p in people)
    # The split file goes last: a folder that has one holds a complete dataset.
    split = "".join(f"{rec.name}\t{rec.patient.split}\r\n"
                    for rec in sorted(plan, key=lambda r: r.name))
    for name, text in ((DIAGNOSIS_FILE, diagnosis), (DEMOGRAPHIC_FILE, demographic),
                       (SPLIT_FILE, split)):
        _write(root / name, lambda path, text=text: atomic_write_text(path, text))
        total_bytes += len(text.encode("utf-8"))

    counts = {s: dict.fromkeys(ICBHI_CLASSES, 0) for s in ("train", "test")}
    devices: dict[str, int] = {}
    for rec in plan:
        for lab in rec.labels:
            counts[rec.patient.split][lab] += 1
        devices[rec.patient.device] = devices.get(rec.patient.device, 0) + 1
    return DemoSummary(
        root=root, recordings=len(plan), patients=len(people),
        cycles=sum(len(r.bounds) for r in plan), counts=counts,
        devices=dict(sorted(devices.items())),
        sample_rates=sorted({DEVICE_RATES[d] for d in devices}),
        duration_s=round(duration, 3), bytes=total_bytes)


def _write(path: Path, write: Callable[[Path], None]) -> None:
    """Run `write(path)`; an OS failure (disk full, no permission) becomes a ConfigError."""
    try:
        write(path)
    except OSError as e:
        raise ConfigError(f"cannot write the demo dataset ({e.strerror or e})", path) from None


def _fmt(x: float | None) -> str:
    """Format a metadata number like the real files (``70``, ``0.75``, ``28.47``, ``NA``)."""
    return "NA" if x is None else f"{x:g}"


def _check_target(root: Path, plan: list[_Recording]) -> None:
    if not root.is_dir():
        return
    ours = {f"{r.name}{ext}" for r in plan for ext in (".wav", ".txt")}
    ours |= {SPLIT_FILE, DIAGNOSIS_FILE, DEMOGRAPHIC_FILE}
    try:
        names = sorted(os.listdir(root))
    except OSError as e:
        raise ConfigError(f"cannot list the demo dataset folder ({e.strerror})", root) from None
    foreign = [n for n in names if not n.startswith(".")
               and n.lower().endswith((".wav", ".txt")) and n not in ours]
    if foreign:
        raise ConfigError(
            f"folder already holds {len(foreign)} recording/annotation file(s) that are not "
            f"part of this demo dataset (e.g. {foreign[0]!r}); use an empty folder", root)


# --------------------------------------------------------------------------- planning


def _plan(n_patients: int, per_patient: int, seed: int) -> list[_Recording]:
    """Patients, recordings, cycle bounds and labels; no audio yet."""
    rng = np.random.default_rng([seed, 0])
    profiles = [_PROFILE_CYCLE[i % len(_PROFILE_CYCLE)] for i in range(n_patients)]
    profiles = [profiles[i] for i in rng.permutation(n_patients)]
    # Shuffled so that ids say nothing about profiles; for n < 12 the multiset is still
    # the cycle's first n entries, so every abnormal kind is present from n = 4.
    devices = [_DEVICE_CYCLE[i % len(_DEVICE_CYCLE)] for i in range(n_patients)]
    devices = [devices[i] for i in rng.permutation(n_patients)]
    if n_patients >= 3 and "AKGC417L" not in devices:
        devices[-1] = "AKGC417L"  # always exercise the 44.1 kHz path

    splits = _patient_split(profiles, rng)
    people = []
    for i in range(n_patients):
        prng = np.random.default_rng([seed, 1, i])
        people.append(_make_patient(str(101 + i), profiles[i], devices[i], splits[i], prng))
    _ensure_metadata_variety(people)

    recordings: list[_Recording] = []
    for p_index, p in enumerate(people):
        prng = np.random.default_rng([seed, 2, p_index])
        mc = p.device == "AKGC417L"
        for k in range(per_patient):
            if mc:  # simultaneous channels: one index, distinct sites (7 per session)
                index = f"{k // len(SITES) + 1}b{k // len(SITES) + 1}"
                if k % len(SITES) == 0:
                    session_sites = list(prng.permutation(SITES))
                site = str(session_sites[k % len(SITES)])
            else:
                index = f"{k + 1}b1"
                site = str(SITES[prng.integers(len(SITES))])
            mode = "mc" if mc else "sc"
            bounds, length = _cycle_bounds(p.period, prng)
            rec = _Recording(name=f"{p.pid}_{index}_{site}_{mode}_{p.device}", patient=p,
                             site=site, seed=(seed, 3, p_index, k), bounds=bounds,
                             length=length)
            # Recordings of one patient differ in how pronounced each abnormality is.
            rec.affinity = {c: _AFFINITY[p.profile][c] * float(prng.lognormal(0.0, 0.5))
                            for c in _CLASS_FRACTIONS}
            recordings.append(rec)
    _assign_labels(recordings, np.random.default_rng([seed, 4]))
    return recordings


def _patient_split(profiles: list[str], rng: np.random.Generator) -> list[str]:
    """Patient-wise split, ~40 % test, spread evenly over the profiles (systematic sampling)."""
    order = sorted(range(len(profiles)),
                   key=lambda i: (_PROFILE_CYCLE.index(profiles[i]), rng.random()))
    splits = ["train"] * len(profiles)
    for j, i in enumerate(order):
        if math.floor((j + 1) * _TEST_FRACTION + 1e-9) > math.floor(j * _TEST_FRACTION + 1e-9):
            splits[i] = "test"
    if "test" not in splits:  # only possible for 2 patients
        splits[order[-1]] = "test"
    return splits


def _make_patient(pid: str, profile: str, device: str, split: str,
                  rng: np.random.Generator) -> _Patient:
    if profile == "healthy":
        diagnosis, child = "Healthy", rng.random() < 0.5
    elif profile == "urti":
        diagnosis, child = "URTI", rng.random() < 0.75
    elif profile == "crackle":
        diagnosis = str(rng.choice(["Pneumonia", "Bronchiectasis", "COPD"]))
        child = diagnosis == "Pneumonia" and rng.random() < 0.3
    elif profile == "wheeze":
        diagnosis = str(rng.choice(["Asthma", "Bronchiolitis", "COPD"]))
        child = diagnosis == "Bronchiolitis"
    else:
        diagnosis, child = "COPD", False
    if child:
        age = float(round(rng.uniform(0.3, 1.0), 2)) if diagnosis == "Bronchiolitis" \
            else float(round(rng.uniform(0.5, 12.0))) or 0.5
        weight = round(3.5 + 2.3 * age * float(rng.uniform(0.85, 1.2)), 1)
        height = float(round(52 + 24 * age ** 0.6 * float(rng.uniform(0.9, 1.1))))
        bmi = None
    else:
        lo, hi = (55, 88) if diagnosis == "COPD" else (18, 80)
        age = float(rng.integers(lo, hi + 1))
        bmi = round(float(rng.uniform(18.5, 37.0)), 2)
        weight = height = None
    return _Patient(
        pid=pid, profile=profile, device=device, split=split, diagnosis=diagnosis,
        age=age, sex="M" if rng.random() < 0.6 else "F", bmi=bmi, weight=weight,
        height=height,
        # children breathe faster; shortest periods still give cycles >= 1.5 s
        period=float(rng.uniform(2.0, 2.8) if child else rng.uniform(2.3, 3.5)),
        crackle_gain=float(rng.uniform(0.7, 1.4)),
        wheeze_gain=float(rng.uniform(0.7, 1.4)),
        wheeze_f0=float(rng.uniform(150.0, 700.0)))


def _ensure_metadata_variety(people: list[_Patient]) -> None:
    """Make the metadata exercise what the real files have: children, NA cells.

    The real demographic file has children with weight/height instead of BMI, a child
    with neither (108), an adult without BMI (219) and a patient with nothing (223).
    From 3 patients there is a child, from 6 two children (one without weight and
    height) and an adult without BMI, from 12 also a patient with nothing known.
    """
    def adults() -> list[_Patient]:
        return [p for p in people if p.bmi is not None]

    want_children = 2 if len(people) >= 6 else 1 if len(people) >= 3 else 0
    while sum(p.bmi is None for p in people) < want_children:
        # prefer diagnoses that real children have over COPD
        p = min(adults(), key=lambda x: (x.diagnosis == "COPD", x.pid))
        p.age, p.bmi, p.weight, p.height = 7.0, None, 22.0, 120.0
    if len(people) >= 6:
        children = [p for p in people if p.bmi is None]
        children[-1].weight = children[-1].height = None
        adults()[-1].bmi = None
    if len(people) >= 12:
        p = adults()[len(adults()) // 2]
        p.age = p.sex = p.bmi = p.weight = p.height = None


def _cycle_bounds(period: float, rng: np.random.Generator) -> tuple[list[tuple[float, float]],
                                                                     float]:
    """Back-to-back cycles of 1.5-4.5 s filling a 15-27 s recording (at least 4 cycles).

    Returns ``([(start, end), ...], length)`` in seconds, rounded to the millisecond like
    the real annotations; a short unannotated tail follows the last cycle.
    """
    target = float(rng.uniform(15.0, 22.0))
    t = round(float(rng.uniform(0.0, 0.4)), 3)
    bounds: list[tuple[float, float]] = []
    while t < target or len(bounds) < 4:
        d = float(np.clip(rng.normal(period, 0.35), 1.5, 4.5))
        end = round(t + d, 3)
        bounds.append((t, end))
        t = end
    length = round(t + float(rng.uniform(0.1, 0.8)), 3)
    return bounds, length


def _assign_labels(recordings: list[_Recording], rng: np.random.Generator) -> None:
    """Per-split class quotas filled by weighted sampling without replacement.

    Quotas guarantee every class in both splits (each split has >= 4 cycles, so with
    the floor of 1 per class at least one normal cycle stays); the
    weights (profile affinity x recording variation) decide which patients get them.
    """
    for split in ("train", "test"):
        slots = [(r, j) for r in recordings if r.patient.split == split
                 for j in range(len(r.bounds))]
        n = len(slots)
        labels = ["normal"] * n
        free = np.ones(n, dtype=bool)
        # At least 1 cycle per class, and 10 where the split is big enough (>= 100
        # cycles) for per-class metrics on the test split to mean something.
        floor = max(1, min(10, n // 10))
        for cls in ("both", "wheeze", "crackle"):  # scarcest first
            k = max(floor, round(_CLASS_FRACTIONS[cls] * n))
            w = np.array([r.affinity[cls] for r, _ in slots])
            # Efraimidis-Spirakis: the k largest log(u)/w are a weighted sample of size k.
            keys = np.log(rng.random(n)) / w
            keys[~free] = -np.inf
            chosen = np.argsort(-keys, kind="stable")[:k]
            for c in chosen:
                labels[c] = cls
            free[chosen] = False
        for r in recordings:
            if r.patient.split == split:
                r.labels = []
        for (r, _), lab in zip(slots, labels, strict=True):
            r.labels.append(lab)


# --------------------------------------------------------------------------- synthesis


def _fast_len(n: int) -> int:
    """Smallest 5-smooth integer >= n: FFTs of prime-ish lengths are 10-100x slower."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _filter(x: np.ndarray, sr: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply the zero-phase magnitude response `gain(f_Hz)` to `x` (zero-padded FFT)."""
    nfft = _fast_len(len(x) + int(0.05 * sr))  # padding keeps the wrap-around negligible
    spec = np.fft.rfft(x, nfft) * gain(np.fft.rfftfreq(nfft, 1.0 / sr))
    return np.fft.irfft(spec, nfft)[: len(x)]


def _shaped_noise(rng: np.random.Generator, n: int, sr: int,
                  gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """White noise of `n` samples coloured by `gain(f_Hz)`; unit RMS."""
    x = _filter(rng.standard_normal(n), sr, gain)
    return x / (np.sqrt(np.mean(x * x)) + 1e-12)


def _band(lo: float, hi: float, order: int = 2) -> Callable[[np.ndarray], np.ndarray]:
    """Butterworth band-pass magnitude response of `order` (corner frequencies in Hz)."""
    def g(f: np.ndarray) -> np.ndarray:
        f = np.maximum(f, 1e-3)
        low, high = np.square(lo / f), np.square(f / hi)
        # repeated products: np.power is slow on the 10^5-10^6 bins of a recording
        low_n, high_n = low, high
        for _ in range(order - 1):
            low_n, high_n = low_n * low, high_n * high
        return 1.0 / np.sqrt((1 + low_n) * (1 + high_n))
    return g


def _device_response(device: str, f: np.ndarray) -> np.ndarray:
    """Magnitude response that colours everything a device records (f in Hz)."""
    f = np.maximum(f, 1e-3)
    if device == "Meditron":  # electronic: high-passed, presence peak near 400 Hz
        return _band(70, 1800, 2)(f) * (1 + 0.5 * np.exp(-((f - 400) / 250) ** 2))
    if device == "LittC2SE":  # acoustic chest piece: strong low-pass
        return _band(40, 800, 2)(f)
    if device == "Litt3200":  # electronic, flatter with a low resonance
        return _band(50, 1200, 3)(f) * (1 + 0.7 * np.exp(-((f - 180) / 90) ** 2))
    # AKGC417L lavalier microphone: broadband
    return _band(30, 9000, 1)(f)


def _envelope(n: int, frac: float, exp: float = 1.5) -> np.ndarray:
    """`n`-sample hump: rises for `frac` of its length then falls (sin^exp shape)."""
    t = np.linspace(0.0, 1.0, n, endpoint=False)
    x = np.where(t < frac, 0.5 * t / frac, 0.5 + 0.5 * (t - frac) / (1 - frac))
    y = np.sin(np.pi * x)
    return y * np.sqrt(y) if exp == 1.5 else y ** exp


def _synthesize(rec: _Recording, sr: int) -> np.ndarray:
    """The `(N,)` float32 waveform of one recording at `sr` Hz, peak <= 0.95.

    Rates above 16 kHz are synthesised at a quarter of the rate (every modelled sound
    lies below 2 kHz) and resampled up; the microphone's broadband self-noise and mains
    hum are then added at the full rate. This keeps the 44.1 kHz files cheap to make.
    """
    p = rec.patient
    rng = np.random.default_rng(list(rec.seed))
    work_sr = sr // 4 if sr > 16_000 else sr
    n = int(round(rec.length * work_sr))

    # Breath sounds: inspiration brighter and louder than expiration.
    cut = float(rng.uniform(500, 900))
    insp = _shaped_noise(rng, n, work_sr, _band(100, cut * 1.2, 2))
    exsp = _shaped_noise(rng, n, work_sr, _band(100, cut * 0.7, 2))
    env_in = np.full(n, 0.06)
    env_ex = np.full(n, 0.04)
    phases: list[tuple[int, int, int, int]] = []  # (start, inhale end, exhale start, end)
    for s, e in rec.bounds:
        a, b = int(round(s * work_sr)), int(round(e * work_sr))
        m = b - a
        ti = int(m * rng.uniform(0.35, 0.45))
        pause = int(m * rng.uniform(0.03, 0.08))
        amp_in = float(rng.uniform(0.85, 1.15))
        amp_ex = amp_in * float(rng.uniform(0.45, 0.75))
        env_in[a:a + ti] += amp_in * _envelope(ti, rng.uniform(0.4, 0.6))
        ex_len = m - ti - pause
        env_ex[a + ti + pause:b] += amp_ex * _envelope(ex_len, rng.uniform(0.25, 0.45))
        phases.append((a, a + ti, a + ti + pause, b))
    out = insp * env_in + exsp * env_ex

    # Heart sounds: S1 and S2 as low damped pulses; louder near the heart.
    heart_amp = float(rng.uniform(0.3, 0.8)) * (1.8 if rec.site in ("Tc", "Al", "Ar") else 1.0)
    beat = 60.0 / float(rng.uniform(60, 110))
    t0 = float(rng.uniform(0, beat))
    while t0 < rec.length:
        for dt, amp in ((0.0, 1.0), (0.3 * beat ** 0.5, 0.7)):
            _add_pulse(out, work_sr, t0 + dt, float(rng.uniform(35, 75)),
                       float(rng.uniform(0.015, 0.03)), heart_amp * amp)
        t0 += beat * float(rng.uniform(0.95, 1.05))

    # Abnormal sounds per cycle.
    for (a, ie, es, b), lab in zip(phases, rec.labels, strict=True):
        if lab in ("crackle", "both"):
            _add_crackles(out, work_sr, (a, ie, b), p.crackle_gain, rng)
        if lab in ("wheeze", "both"):
            _add_wheezes(out, work_sr, (a, es, b), p.wheeze_gain, p.wheeze_f0, rng)
        _add_artefacts(out, work_sr, (a, b), rng)

    # Device noise floor, then the device's colouring of everything it picks up.
    floor = {"Meditron": 0.05, "LittC2SE": 0.03, "Litt3200": 0.04, "AKGC417L": 0.03}[p.device]
    floor *= float(rng.uniform(0.7, 1.5))
    out += floor * rng.standard_normal(n)
    out = _filter(out, work_sr, lambda f: _device_response(p.device, f))

    if work_sr != sr:
        n = int(round(rec.length * sr))
        out = resample(out.astype(np.float32), work_sr, sr).astype(np.float64)
        out = np.pad(out[:n], (0, max(0, n - len(out))))
        out += 0.5 * floor * rng.standard_normal(n)  # self-noise above work_sr / 2
    if p.device == "AKGC417L":  # mains hum into the unshielded microphone
        tt = np.arange(n) / sr
        hum_amp = float(rng.uniform(0.02, 0.06))
        for h, rel in ((50, 1.0), (150, 0.25), (250, 0.08)):
            out += hum_amp * rel * np.sin(2 * np.pi * h * tt + rng.uniform(0, 2 * np.pi))

    # Level: breath envelope peak at a device/recording dependent RMS, never clipping.
    out *= float(rng.uniform(0.07, 0.14))
    peak = float(np.max(np.abs(out)))
    if peak > 0.95:
        out *= 0.95 / peak
    return out.astype(np.float32)


def _add_pulse(out: np.ndarray, sr: int, t: float, freq: float, tau: float,
               amp: float, phase: float = 0.0) -> None:
    """Add a damped sinusoid `amp * exp(-t/tau) * sin(2 pi f t + phase)` starting at `t` s."""
    a = int(round(t * sr))
    m = int(6 * tau * sr) + 2
    if a >= len(out) or a < 0:
        return
    m = min(m, len(out) - a)
    tt = np.arange(m) / sr
    rise = 1 - np.exp(-tt / (tau * 0.15))  # no step at the onset
    out[a:a + m] += amp * rise * np.exp(-tt / tau) * np.sin(2 * np.pi * freq * tt + phase)


def _add_crackles(out: np.ndarray, sr: int, cycle: tuple[int, int, int], gain: float,
                  rng: np.random.Generator) -> None:
    """5-15 damped 200-800 Hz transients (a few ms), mostly during inspiration."""
    a, ie, b = cycle
    count = int(rng.integers(5, 16))
    fine = rng.random() < 0.5  # fine crackles: higher and shorter than coarse ones
    for _ in range(count):
        if rng.random() < 0.8:
            pos = rng.uniform(a + 0.1 * (ie - a), ie)
        else:
            pos = rng.uniform(a, b - 0.02 * sr)
        freq = rng.uniform(450, 800) if fine else rng.uniform(200, 500)
        tau = rng.uniform(0.0015, 0.003) if fine else rng.uniform(0.0025, 0.005)
        amp = gain * float(rng.uniform(4.0, 9.0))
        _add_pulse(out, sr, pos / sr, float(freq), float(tau), amp,
                   float(rng.uniform(0, 2 * np.pi)))


def _add_tone(out: np.ndarray, sr: int, a: int, m: int, f0: float, amp: float,
              rng: np.random.Generator, harmonics: tuple[float, ...]) -> None:
    """Tonal component: `m` samples from `a`, pitch `f0` Hz gliding +-15 %, with vibrato."""
    m = min(m, len(out) - a)
    if m <= 8:
        return
    tt = np.arange(m) / sr
    dur = m / sr
    glide = float(rng.uniform(-0.15, 0.15))
    vib = 0.01 * np.sin(2 * np.pi * float(rng.uniform(3, 8)) * tt)
    f = f0 * (1 + glide * (tt / dur - 0.5) + vib)
    phase = 2 * np.pi * np.cumsum(f) / sr
    ramp = min(int(0.025 * sr), m // 3)
    env = np.ones(m)
    env[:ramp] = np.sin(np.linspace(0, np.pi / 2, ramp)) ** 2
    env[m - ramp:] = env[:ramp][::-1]
    y = np.zeros(m)
    for k, rel in enumerate(harmonics, 1):
        if k * f0 * 1.2 < 0.45 * sr:
            y += rel * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    out[a:a + m] += amp * env * y


def _add_wheezes(out: np.ndarray, sr: int, cycle: tuple[int, int, int], gain: float,
                 f0: float, rng: np.random.Generator) -> None:
    """1-3 wheezes of 80-600 ms, 100-1000 Hz, mostly expiratory."""
    a, es, b = cycle
    count = 1 + int(rng.random() < 0.4) + int(rng.random() < 0.15)
    for _ in range(count):
        dur = float(rng.uniform(0.2, 0.6)) if rng.random() < 0.8 else float(rng.uniform(0.08,
                                                                                       0.2))
        m = int(dur * sr)
        lo, hi = (es, b) if rng.random() < 0.75 else (a, b)
        if hi - lo <= m:
            lo, hi = a, b
        start = int(rng.integers(lo, max(lo + 1, hi - m)))
        freq = float(np.clip(f0 * rng.uniform(0.7, 1.4), 100, 1000))
        amp = gain * float(rng.uniform(0.5, 1.1))
        _add_tone(out, sr, start, m, freq, amp, rng, (1.0, 0.35, 0.12))


def _add_artefacts(out: np.ndarray, sr: int, cycle: tuple[int, int],
                   rng: np.random.Generator) -> None:
    """Class-independent confounders: clicks, friction rubs, faint tonal interference."""
    a, b = cycle
    if rng.random() < 0.25:  # one or two stethoscope clicks
        for _ in range(int(rng.integers(1, 3))):
            _add_pulse(out, sr, rng.uniform(a, b - 0.02 * sr) / sr,
                       float(rng.uniform(200, 800)), float(rng.uniform(0.0015, 0.004)),
                       float(rng.uniform(0.8, 2.5)), float(rng.uniform(0, 2 * np.pi)))
    if rng.random() < 0.1:  # friction rub: a short broadband burst
        m = int(rng.uniform(0.02, 0.08) * sr)
        s = int(rng.integers(a, max(a + 1, b - m)))
        burst = rng.standard_normal(m) * np.hanning(m)
        out[s:s + m] += float(rng.uniform(0.5, 1.2)) * burst[: len(out) - s]
    if rng.random() < 0.06:  # faint tonal interference (speech, an alarm)
        m = int(rng.uniform(0.1, 0.4) * sr)
        s = int(rng.integers(a, max(a + 1, b - m)))
        _add_tone(out, sr, s, m, float(rng.uniform(150, 900)), float(rng.uniform(0.1, 0.25)),
                  rng, (1.0, 0.3))


# ------------------------------------------------------------------ folder-format demo

#: Defaults of `make_demo_folder_dataset` (the seed-004 layout: angles, materials, tones).
FOLDER_ANGLES = (0, 45, 90, 135, 180)
FOLDER_MATERIALS = ("plastic", "metal", "wood")
FOLDER_FREQUENCIES = (500, 1000, 3000)
#: The file-name pattern of the folder demo (``rsctool analyze --name-pattern``).
FOLDER_NAME_PATTERN = "{material}_{class}_{frequency}_{seq}"


@dataclass
class FolderDemoSummary:
    """What `make_demo_folder_dataset` wrote."""

    root: Path
    files: int
    classes: list[str]
    materials: list[str]
    frequencies: list[str]
    name_pattern: str
    sample_rate: int
    seconds: float
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["root"] = str(self.root)
        return d


def make_demo_folder_dataset(out_dir: str | os.PathLike, *, seed: int = 0,
                             angles: Sequence[int] = FOLDER_ANGLES,
                             materials: Sequence[str] = FOLDER_MATERIALS,
                             frequencies: Sequence[int] = FOLDER_FREQUENCIES,
                             per_combination: int = 3, seconds: float = 1.0,
                             sample_rate: int = 16000) -> FolderDemoSummary:
    """Write a small folder-format dataset: tones recorded "at several angles".

    Layout (seed 004's)::

        out_dir/<angle>_degree/<material>/<material>_<angle>_degree_<freq>hz_<seq>.wav

    so ``rsctool analyze out_dir --name-pattern '{material}_{class}_{frequency}_{seq}'``
    parses material, frequency and sequence number, and ``--task ranking`` learns the
    angle order. Each file is a tone at its frequency (500/1000/3000 Hz, with harmonics)
    plus a noise band that gets louder (20 dB from the smallest to the largest angle)
    and higher (centre 1.5 kHz to 6 kHz, jittered per file) with the angle; each file
    has a random gain of +-2 dB, and the material colours the harmonics and sets the
    noise floor. A small CNN learns the order in seconds.

    Args:
        out_dir: target folder (created); must not already hold other class folders.
        seed: the same seed and sizes give byte-identical files.
        angles, materials, frequencies: the grid; ``per_combination`` files per cell.
        seconds, sample_rate: length and rate of each mono 16-bit file.

    Raises:
        ConfigError: bad sizes, `out_dir` is a file, or it holds foreign class folders.
    """
    angles = [int(a) for a in angles]
    if len(angles) < 2 or len(set(angles)) != len(angles) or min(angles) < 0 \
            or max(angles) > 360:
        raise ConfigError(f"angles must be 2 or more distinct values in [0, 360], got {angles}")
    if not materials or any(not str(m).isalnum() for m in materials):
        raise ConfigError(f"materials must be non-empty alphanumeric names, got {materials}")
    if not frequencies or any(not 50 <= int(f) < sample_rate / 2 for f in frequencies):
        raise ConfigError(f"frequencies must lie in [50, {sample_rate // 2}) Hz, "
                          f"got {list(frequencies)}")
    if isinstance(per_combination, bool) or not isinstance(per_combination, int) \
            or not 1 <= per_combination <= 100:
        raise ConfigError(f"per_combination must be an integer from 1 to 100, "
                          f"got {per_combination!r}")
    if not 0.1 <= seconds <= 30 or sample_rate < 8000:
        raise ConfigError("seconds must be in [0.1, 30] and sample_rate >= 8000")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError("demo dataset folder is a file, not a folder", root)
    classes = [f"{a}_degree" for a in sorted(angles)]
    if root.is_dir():
        foreign = sorted(e.name for e in os.scandir(root)
                         if e.is_dir() and not e.name.startswith(".") and e.name not in classes)
        if foreign:
            raise ConfigError(f"folder already holds class folder(s) that are not part of "
                              f"this demo dataset (e.g. {foreign[0]!r}); use an empty folder",
                              root)
    top = max(angles) or 1
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    tilt = {m: 0.6 + 0.8 * ((zlib.crc32(str(m).encode()) % 1000) / 1000.0)
            for m in materials}
    total = 0
    count = 0
    for ai, angle in enumerate(sorted(angles)):
        for mi, material in enumerate(materials):
            for fi, freq in enumerate(frequencies):
                for seq in range(1, per_combination + 1):
                    rng = np.random.default_rng([seed, ai, mi, fi, seq])
                    frac = angle / top
                    level = rng.uniform(0.8, 1.25)
                    # the tone (material-dependent harmonics), quieter at larger angles
                    tone = np.zeros(n)
                    for h in (1, 2, 3):
                        if freq * h < sample_rate / 2:
                            tone += (tilt[material] ** (h - 1)) * np.sin(
                                2 * np.pi * freq * h * t + rng.uniform(0, 2 * np.pi))
                    tone *= 0.2
                    # the angle cue: a noise band whose centre rises with the angle
                    centre = min(1500.0 + 4500.0 * frac + rng.normal(0, 150.0),
                                 0.45 * sample_rate)
                    spec = np.fft.rfft(rng.standard_normal(n))
                    spec *= np.exp(-0.5 * ((freqs - centre) / 250.0) ** 2)
                    band = np.fft.irfft(spec, n)
                    band *= 0.03 * 10.0 ** frac / (np.abs(band).max() + 1e-9)
                    floor = rng.standard_normal(n) * 0.01 * tilt[material]
                    wav = level * (tone + band) + floor
                    fade = min(n // 10, int(0.01 * sample_rate))
                    if fade > 1:
                        ramp = np.linspace(0.0, 1.0, fade)
                        wav[:fade] *= ramp
                        wav[-fade:] *= ramp[::-1]
                    name = f"{material}_{angle}_degree_{freq}hz_{seq}.wav"
                    path = root / f"{angle}_degree" / material / name
                    try:
                        path.parent.mkdir(parents=True, exist_ok=True)
                    except OSError as e:
                        raise ConfigError(f"cannot create the demo dataset folder "
                                          f"({e.strerror or e})", path.parent) from None
                    _write(path, lambda p, wav=wav: write_audio(
                        p, (0.8 * wav / max(1.0, np.abs(wav).max())).astype(np.float32),
                        sample_rate, "PCM_16"))
                    total += path.stat().st_size
                    count += 1
    return FolderDemoSummary(
        root=root, files=count, classes=classes, materials=list(materials),
        frequencies=[f"{f}hz" for f in frequencies], name_pattern=FOLDER_NAME_PATTERN,
        sample_rate=sample_rate, seconds=seconds, bytes=total)
