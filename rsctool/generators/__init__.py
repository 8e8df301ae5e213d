"""Synthetic-cycle generators used by `rsctool synth`.

A backend turns a list of `Request` (one synthetic cycle each: class, sample index,
seed, prompt or source cycle) into raw waveforms at its own rate; `postprocess` then
gives every backend's output the same shape: the project rate, the cycle length and
fades, at the generator's level (no peak normalisation by default, as for real cycles).
Backends:

* ``audioldm`` / ``audioldm2``: text-to-audio latent diffusion (`generators.audioldm`);
* ``diffwave``: a mel-conditioned diffusion vocoder trained on the dataset's real train
  cycles, re-synthesising the mels of real cycles (optionally perturbed)
  (`generators.diffwave`).

Every random draw of a request comes from its own seed (`sample_seed`), so a sample
does not depend on the batch it was made in or on what was generated before it: that
is what makes an interrupted run resumable from the first missing sample.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

BACKENDS: tuple[str, ...] = ("audioldm", "audioldm2", "diffwave")


@dataclass
class Request:
    """One synthetic cycle to make.

    Attributes:
        label: class name (``crackle`` ...).
        index: 0-based sample index within its class (the file name and id use it).
        seed: the seed of every random draw made for this sample.
        prompt: text prompt (text-to-audio backends).
        source: the real cycle whose mel is re-synthesised (``diffwave``).
    """

    label: str
    index: int
    seed: int
    prompt: str | None = None
    source: Any = None


@dataclass
class Generated:
    """A backend's raw output for one request.

    Attributes:
        wav: `(N,)` float32 waveform at `sample_rate` Hz.
        sample_rate: Hz.
        seconds: wall time spent on this sample (the batch time / batch size).
        info: extra generator-record fields (prompt, source cycle, perturbation ...).
        target_seconds: the cycle length the sample should be cut or padded to
            (None: the synth run's `--seconds`).
    """

    wav: np.ndarray
    sample_rate: int
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)
    target_seconds: float | None = None


class Backend(Protocol):
    """What `rsctool.synth` needs from a generator backend."""

    name: str

    def describe(self) -> dict[str, Any]:
        """Settings that determine the output (model, steps ...): summary and hash."""

    def generate(self, requests: list[Request]) -> list[Generated]:
        """One `Generated` per request, in order."""


def sample_seed(seed: int, label: str, index: int) -> int:
    """The seed of sample `index` of class `label` under run seed `seed` (63-bit).

    A hash rather than ``seed + index`` so that two classes, or two run seeds, never
    share sample seeds.
    """
    digest = hashlib.sha256(f"rsctool-synth:{seed}:{label}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def postprocess(wav: np.ndarray, sample_rate: int, target_rate: int, seconds: float, *,
                peak: float = 0.0, fade_s: float = 0.01) -> np.ndarray:
    """Bring a generated waveform to the shape of a dataset cycle.

    Resample `(N,)` from `sample_rate` to `target_rate` Hz (soxr), crop or pad (by
    repetition with fades, the convention the classifier's input pipeline uses) to
    ``round(seconds * target_rate)`` samples, peak-normalise to `peak` (0, the default,
    keeps the level: real cycles are not normalised, so neither are synthetic ones; only
    a waveform over full scale is scaled down to it instead of being clipped) and apply
    raised-cosine fades of `fade_s` seconds at both ends.

    Returns:
        `(round(seconds * target_rate),)` float32 in [-1, 1]. Non-finite input samples
        become 0 (a diverged diffusion step must not poison a wav file).
    """
    from rsctool.audio import apply_fades, normalize, pad_or_crop, resample

    x = np.nan_to_num(np.asarray(wav, dtype=np.float32).reshape(-1), nan=0.0,
                      posinf=0.0, neginf=0.0)
    x = resample(x, sample_rate, target_rate)
    x = pad_or_crop(x, max(1, int(round(seconds * target_rate))), target_rate, "repeat",
                    fade_s)
    if peak > 0:
        x = normalize(x, "peak", peak)
    elif x.size and float(np.max(np.abs(x))) > 1.0:
        # over full scale: scaled down to it rather than clipped (the only level change)
        x = normalize(x, "peak", 1.0)
    if fade_s > 0:
        x = apply_fades(x, target_rate, fade_s)
    return np.clip(x, -1.0, 1.0).astype(np.float32)
