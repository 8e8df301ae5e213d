"""Measured speed and time-left estimates for long loops (training steps, synthetic
samples), and the size checks that refuse an absurd job before it runs for days.

The clock is the module-level `monotonic` (looked up on every call), so tests swap it
for a fake one instead of sleeping.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rsctool.errors import ConfigError

monotonic: Callable[[], float] = time.monotonic

#: transformer families that are slow on a CPU at size ``base`` (~0.2 samples/s on 2 cores)
SLOW_ON_CPU = ("ast", "grf", "film", "tafilm", "softfilm", "add", "add-standalone")

#: without --yes, synth refuses a job estimated above these
MAX_SYNTH_HOURS = 24.0
MAX_SYNTH_SAMPLES = 1_000_000
#: manifest line, annotation file and directory entries per synthetic sample (bytes)
SAMPLE_OVERHEAD_BYTES = 1024
WAV_HEADER_BYTES = 44


def _clock() -> float:
    return monotonic()


def format_duration(seconds: float) -> str:
    """``45s``, ``12m05s``, ``3h20m``, ``4d07h``."""
    if not math.isfinite(seconds):
        return "forever"
    s = max(0, int(round(seconds)))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def format_bytes(n: float) -> str:
    """``512 B``, ``1.2 MB``, ``3.4 TB`` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover - the loop returns at TB


class RateMeter:
    """Items per second, measured from the end of the first (warm-up) tick: that one
    pays for lazy initialisation (allocator, kernels, data loader start) and would
    make every estimate too pessimistic.

    `tick(n, units)` after each piece of work: `n` items (steps, kept samples) and
    `units` of a second measure (samples of a step, bytes written). `restart()` after a
    pause that is no such work (validation between epochs): the time since the last
    tick is not counted."""

    def __init__(self, clock: Callable[[], float] | None = None):
        self.clock = clock or _clock
        self.last: float | None = None
        self.count = 0.0
        self.units = 0.0
        self.elapsed = 0.0

    def tick(self, n: float = 1, units: float = 0) -> float:
        """Records `n` items done now; returns the clock reading (s)."""
        now = self.clock()
        if self.last is not None:
            self.count += n
            self.units += units
            self.elapsed += now - self.last
        self.last = now
        return now

    def restart(self, now: float) -> None:
        """Measure on from `now` (after the warm-up tick only)."""
        if self.last is not None:
            self.last = now

    @property
    def rate(self) -> float | None:
        """Items per second (None before a measured item)."""
        return self.count / self.elapsed if self.count and self.elapsed > 0 else None

    @property
    def unit_rate(self) -> float | None:
        return self.units / self.elapsed if self.units and self.elapsed > 0 else None

    def eta(self, remaining: float) -> float | None:
        """Seconds for `remaining` more items at the measured rate."""
        rate = self.rate
        return remaining / rate if rate else None


def slow_on_cpu_hint(model: str, size: str | None, device_type: str) -> str | None:
    """The advice for a base-size transformer training on the CPU (None otherwise)."""
    if device_type != "cpu" or model not in SLOW_ON_CPU or size != "base":
        return None
    return (f"hint: a base-size {model} trains slowly on the CPU; --size small (a quarter "
            "of the compute) or --size tiny, or a GPU (rsctool --device cuda train ...), is "
            "much faster")


class TrainProgress:
    """Progress lines of a training run through `emit` (the run's log).

    Once, after `first_steps` measured steps or `first_seconds` (the warm-up step not
    counted): the measured speed, the time per epoch and for the rest of the run, and
    `hint` if any. With `lines` (stderr is no terminal, so no progress bar), then a
    line at least every `every` seconds: epoch, step/total, loss, samples/s, ETA.

    The speed counts training steps only: `pause()` at the end of an epoch and
    `resume()` at the start of the next leave validation and checkpoints out, and the
    ETA adds their mean time once per epoch left.
    """

    def __init__(self, emit: Callable[[str], None], *, total_steps: int, steps_per_epoch: int,
                 epochs: int, lines: bool, hint: str | None = None,
                 clock: Callable[[], float] | None = None, first_steps: int = 5,
                 first_seconds: float = 20.0, every: float = 30.0):
        self.emit, self.total, self.per_epoch, self.epochs = (emit, total_steps,
                                                              max(1, steps_per_epoch), epochs)
        self.lines, self.hint = lines, hint
        self.first_steps, self.first_seconds, self.every = first_steps, first_seconds, every
        self.meter = RateMeter(clock)
        self.told = False
        self.last = 0.0
        self.paused_at: float | None = None
        self.gaps: list[float] = []  # seconds between epochs (validation, checkpoints)

    def pause(self) -> None:
        """An epoch's training steps ended (validation follows)."""
        self.paused_at = self.meter.clock()

    def resume(self) -> None:
        """The next epoch's training steps start."""
        if self.paused_at is None:
            return
        now = self.meter.clock()
        self.gaps.append(now - self.paused_at)
        self.paused_at = None
        self.meter.restart(now)

    def eta(self, step: int) -> float | None:
        """Seconds to the end of the run after step `step`: training steps at the
        measured rate plus the mean time between epochs for each epoch left."""
        left = max(0, self.total - step)
        train = self.meter.eta(left)
        if train is None:
            return None
        gap = sum(self.gaps) / len(self.gaps) if self.gaps else 0.0
        return train + gap * self.epochs_left(step)

    def epochs_left(self, step: int) -> int:
        """Epochs whose validation is still ahead after step `step` (1-based): the one in
        progress included, even when `step` is its last."""
        return max(0, math.ceil(self.total / self.per_epoch) - max(0, step - 1) // self.per_epoch)

    def step(self, step: int, epoch: int, loss: float, samples: int) -> None:
        """After optimizer step `step` (global count, 1-based) of epoch `epoch` (1-based)
        that saw `samples` samples and had training loss `loss`."""
        now = self.meter.tick(1, samples)
        m = self.meter
        if not m.count:
            return
        if not self.told:
            if m.count >= self.first_steps or m.elapsed >= self.first_seconds:
                self.told, self.last = True, now
                self.emit(self.first_line(step))
                if self.hint:
                    self.emit(self.hint)
        elif self.lines and now - self.last >= self.every:
            self.last = now
            self.emit(self.line(step, epoch, loss))

    def first_line(self, step: int) -> str:
        m = self.meter
        rate = m.rate or 0.0
        eta = self.eta(step)
        n = int(m.count)
        return (f"speed: {rate:.3g} steps/s, {m.unit_rate or 0.0:.3g} samples/s "
                f"(measured over {n} step{'s' if n != 1 else ''}); about "
                f"{format_duration(self.per_epoch / rate) if rate else '?'} per epoch, "
                f"{format_duration(eta) if eta is not None else '?'} for the "
                f"{self.epochs_left(step)} epoch(s) left "
                f"({'validation included' if self.gaps else 'validation not included'})")

    def line(self, step: int, epoch: int, loss: float) -> str:
        eta = self.eta(step)
        m = self.meter
        return (f"epoch {epoch}/{self.epochs}, step {step}/{self.total}, loss {loss:.4f}, "
                f"{m.unit_rate or 0.0:.3g} samples/s, ETA "
                f"{format_duration(eta) if eta is not None else '?'}")


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds `path` (or would: its nearest existing
    parent)."""
    p = Path(path).resolve()
    while not p.exists() and p.parent != p:
        p = p.parent
    return shutil.disk_usage(p).free


@dataclass
class SynthEstimate:
    """How big a synth job is: `samples` left to make, `bytes` they take on disk,
    `seconds` they take (None before measuring), `free` bytes on the output
    filesystem, and `where` (the option that asked for it, e.g. ``--n 100000000``)."""

    samples: int
    bytes: float
    free: int
    where: str
    seconds: float | None = None

    def text(self) -> str:
        parts = [f"{self.samples} samples to make"]
        if self.seconds is not None:
            parts.append(f"about {format_duration(self.seconds)}")
        parts.append(f"about {format_bytes(self.bytes)} on disk "
                     f"({format_bytes(self.free)} free)")
        return ", ".join(parts)

    def problem(self) -> str | None:
        """Why this job needs --yes (None: it does not)."""
        if self.bytes > self.free:
            return "more than the free disk space"
        if self.seconds is not None and self.seconds > MAX_SYNTH_HOURS * 3600:
            return f"more than {MAX_SYNTH_HOURS:g} h"
        if self.samples > MAX_SYNTH_SAMPLES:
            return f"more than {MAX_SYNTH_SAMPLES} samples"
        return None


def check_synth_size(est: SynthEstimate, yes: bool, done: int = 0) -> None:
    """Refuse (ConfigError, exit 2) a job above the bounds unless `yes`; `done`: the
    samples already made (kept: the same command with --yes goes on from them)."""
    why = est.problem()
    if why is None or yes:
        return
    kept = f"; the {done} samples made are kept" if done else ""
    raise SynthTooLarge(f"{est.where}: {est.text()}, {why}; pass --yes to go ahead anyway "
                        f"(or ask for fewer samples){kept}")


def wav_bytes(seconds: float, sample_rate: int) -> float:
    """Bytes of one 16-bit mono wav of `seconds` at `sample_rate` plus its side files."""
    return seconds * sample_rate * 2 + WAV_HEADER_BYTES + SAMPLE_OVERHEAD_BYTES


class SynthTooLarge(ConfigError):
    """A synth job above the size bounds, refused without --yes."""
