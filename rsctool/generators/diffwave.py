"""DiffWave: a mel-conditioned diffusion vocoder (Kong et al. 2021), trained on the real
cycles of a dataset and used to synthesise new minority-class cycles (seed 002).

The network predicts the noise added to a waveform at diffusion step `t`, given the
log-mel spectrogram of that waveform:

* input: 1x1 conv to `C` residual channels, ReLU;
* diffusion-step embedding: 128-d sinusoidal table (64 sin + 64 cos, frequencies
  ``10^(4 d / 63)``), two Linear(., 512)+SiLU layers; fractional steps (the fast
  sampler's aligned steps) interpolate linearly between table rows;
* conditioner: the mel `(B, M, F)` upsampled to the waveform rate by two transposed 2-D
  convolutions (strides multiplying to `hop`, leaky ReLU 0.4);
* `L` residual layers: dilated conv (kernel 3, dilation ``2^(i mod 10)``) of
  ``x + proj(step embedding)``, plus a 1x1 projection of the conditioner, gated
  ``sigmoid * tanh``, 1x1 conv split into a residual (``(x + r) / sqrt 2``) and a skip;
* output: sum of skips / sqrt(L), 1x1 conv, ReLU, zero-initialised 1x1 conv to 1 channel.

Defaults are DiffWave-base: 30 layers, 64 channels, 80 mels, hop 256, T = 50 training
diffusion steps with betas linear from 1e-4 to 0.05, and the paper's fast 6-step
sampler (betas 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, aligned to fractional training steps).

Training draws random segments of `segment_frames` mel frames from an `AudioStore`
(every real train cycle, peak-normalised, int16, memory-mapped) and minimises the L1
distance between the true and predicted noise. Everything random in one optimizer step
is drawn from a generator seeded by ``(seed, step)``, so a resumed training run sees the
same batches as an uninterrupted one; checkpoints are safetensors (`rsctool.checkpoint`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsctool.errors import ConfigError, DataError

#: Peak level of the vocoder's audio (training store and the source of a re-synthesis);
#: synthetic outputs are scaled back to their source cycle's level.
VOCODER_PEAK = 0.95
#: The fast sampler of the DiffWave paper (6 steps).
FAST_BETAS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5)
#: Tiny sizes for tests and smoke runs (same code path as the default model).
SIZES: dict[str, dict[str, Any]] = {
    "base": {},
    "tiny": {"residual_layers": 2, "residual_channels": 8, "n_mels": 20, "hop": 64,
             "n_fft": 256, "dilation_cycle": 2},
}


# --------------------------------------------------------------------------- config

@dataclass(frozen=True)
class DiffWaveConfig:
    """Architecture, features and noise schedule of one DiffWave vocoder.

    Attributes:
        sample_rate: Hz of the waveforms it models.
        n_mels: M, mel bands of the conditioner.
        n_fft: FFT size of the mel front end (samples).
        hop: samples per mel frame; a power of two >= 4 (the upsampler's strides
            multiply to it).
        win_length: analysis window (samples); None means ``min(4 * hop, n_fft)``.
        f_min, f_max: mel range in Hz (f_max None: Nyquist).
        residual_layers, residual_channels: L and C.
        dilation_cycle: dilations are ``2^(i mod dilation_cycle)``.
        diffusion_steps: T of training.
        beta_start, beta_end: linear training beta schedule.
        inference_betas: the fast sampler's betas.
    """

    sample_rate: int = 16000
    n_mels: int = 80
    n_fft: int = 1024
    hop: int = 256
    win_length: int | None = None
    f_min: float = 20.0
    f_max: float | None = None
    residual_layers: int = 30
    residual_channels: int = 64
    dilation_cycle: int = 10
    diffusion_steps: int = 50
    beta_start: float = 1e-4
    beta_end: float = 0.05
    inference_betas: tuple[float, ...] = FAST_BETAS

    def __post_init__(self) -> None:
        object.__setattr__(self, "inference_betas", tuple(float(b) for b in self.inference_betas))
        ints = {"sample_rate": 1000, "n_mels": 4, "n_fft": 16, "hop": 4, "residual_layers": 1,
                "residual_channels": 2, "dilation_cycle": 1, "diffusion_steps": 2}
        for name, lo in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"diffwave: {name} must be an integer >= {lo}, got {v!r}")
        if self.hop & (self.hop - 1):
            raise ConfigError(f"diffwave: hop must be a power of two, got {self.hop}")
        if self.window > self.n_fft:
            raise ConfigError(f"diffwave: win_length {self.window} exceeds n_fft {self.n_fft}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ConfigError("diffwave: need 0 < beta_start < beta_end < 1")
        if not self.inference_betas or not all(0 < b < 1 for b in self.inference_betas):
            raise ConfigError("diffwave: inference betas must lie in (0, 1)")
        top = self.f_max if self.f_max is not None else self.sample_rate / 2
        if not 0 <= self.f_min < top <= self.sample_rate / 2:
            raise ConfigError(f"diffwave: need 0 <= f_min < f_max <= {self.sample_rate / 2} Hz")

    @property
    def window(self) -> int:
        return self.win_length if self.win_length is not None else min(4 * self.hop, self.n_fft)

    def betas(self) -> np.ndarray:
        """Training betas `(T,)` float64."""
        return np.linspace(self.beta_start, self.beta_end, self.diffusion_steps)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inference_betas"] = list(self.inference_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffWaveConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"diffwave: unknown config key(s) {unknown}")
        return cls(**d)

    @classmethod
    def sized(cls, size: str = "base", **overrides: Any) -> DiffWaveConfig:
        """The config of a named size (``base`` or ``tiny``) with `overrides`."""
        if size not in SIZES:
            raise ConfigError(f"diffwave: unknown size {size!r}; known: {', '.join(SIZES)}")
        return cls(**{**SIZES[size], **{k: v for k, v in overrides.items() if v is not None}})


# --------------------------------------------------------------------------- features

class MelSpectrogram(nn.Module):
    """DiffWave's conditioner features: normalised log-mel `(B, M, N // hop + 1)` in [0, 1].

    Magnitude STFT (Hann window, centred frames, reflect padding, window-normalised),
    HTK mel filters without area normalisation, ``20 log10(max(x, 1e-5)) - 20`` dB
    mapped by ``(dB + 100) / 100`` and clipped to [0, 1] (the DiffWave preprocessing).
    """

    def __init__(self, cfg: DiffWaveConfig):
        super().__init__()
        import librosa

        self.cfg = cfg
        fb = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels,
                                 fmin=cfg.f_min, fmax=cfg.f_max, htk=True, norm=None)
        self.register_buffer("fb", torch.from_numpy(fb.astype(np.float32)), persistent=False)
        self.register_buffer("win", torch.hann_window(cfg.window), persistent=False)

    def forward(self, wav: Tensor) -> Tensor:
        """`(B, N)` or `(N,)` waveform in [-1, 1] -> `(B, M, N // hop + 1)` (or `(M, F)`)."""
        squeeze = wav.dim() == 1
        x = wav[None] if squeeze else wav
        spec = torch.stft(x.float(), self.cfg.n_fft, hop_length=self.cfg.hop,
                          win_length=self.cfg.window, window=self.win, center=True,
                          pad_mode="reflect", normalized=False, return_complex=True).abs()
        spec = spec / self.win.pow(2).sum().sqrt()
        mel = torch.matmul(self.fb, spec)
        db = 20.0 * torch.log10(mel.clamp(min=1e-5)) - 20.0
        out = ((db + 100.0) / 100.0).clamp(0.0, 1.0)
        return out[0] if squeeze else out


# --------------------------------------------------------------------------- model

def _upsample_strides(hop: int) -> tuple[int, int]:
    """Two even strides whose product is `hop` (256 -> 16, 16; 128 -> 16, 8)."""
    first = 2 ** math.ceil(math.log2(hop) / 2)
    return first, hop // first


class DiffusionEmbedding(nn.Module):
    """Diffusion step `(B,)` (int, or float for fractional steps) -> `(B, 512)`."""

    def __init__(self, max_steps: int):
        super().__init__()
        steps = torch.arange(max_steps, dtype=torch.float32).unsqueeze(1)
        dims = torch.arange(64, dtype=torch.float32).unsqueeze(0)
        table = steps * 10.0 ** (dims * 4.0 / 63.0)
        self.register_buffer("table", torch.cat([torch.sin(table), torch.cos(table)], 1),
                             persistent=False)
        self.projection1 = nn.Linear(128, 512)
        self.projection2 = nn.Linear(512, 512)

    def forward(self, step: Tensor) -> Tensor:
        if step.dtype in (torch.int32, torch.int64):
            x = self.table[step]
        else:  # fast sampling uses fractional steps between table rows
            low = step.floor().long().clamp(0, len(self.table) - 1)
            high = (low + 1).clamp(max=len(self.table) - 1)
            frac = (step - low.to(step.dtype)).unsqueeze(-1)
            x = self.table[low] + frac * (self.table[high] - self.table[low])
        x = F.silu(self.projection1(x))
        return F.silu(self.projection2(x))


class SpectrogramUpsampler(nn.Module):
    """`(B, M, F)` mel -> `(B, M, F * hop)` with two transposed convs over time."""

    def __init__(self, hop: int):
        super().__init__()
        s1, s2 = _upsample_strides(hop)
        self.conv1 = nn.ConvTranspose2d(1, 1, (3, 2 * s1), stride=(1, s1), padding=(1, s1 // 2))
        self.conv2 = nn.ConvTranspose2d(1, 1, (3, 2 * s2), stride=(1, s2), padding=(1, s2 // 2))

    def forward(self, x: Tensor) -> Tensor:
        x = F.leaky_relu(self.conv1(x.unsqueeze(1)), 0.4)
        return F.leaky_relu(self.conv2(x), 0.4).squeeze(1)


class ResidualBlock(nn.Module):
    def __init__(self, n_mels: int, channels: int, dilation: int):
        super().__init__()
        self.dilated_conv = nn.Conv1d(channels, 2 * channels, 3, padding=dilation,
                                      dilation=dilation)
        self.diffusion_projection = nn.Linear(512, channels)
        self.conditioner_projection = nn.Conv1d(n_mels, 2 * channels, 1)
        self.output_projection = nn.Conv1d(channels, 2 * channels, 1)
        nn.init.kaiming_normal_(self.dilated_conv.weight)
        nn.init.kaiming_normal_(self.conditioner_projection.weight)
        nn.init.kaiming_normal_(self.output_projection.weight)

    def forward(self, x: Tensor, step: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        y = x + self.diffusion_projection(step).unsqueeze(-1)
        y = self.dilated_conv(y) + self.conditioner_projection(cond)
        gate, filt = torch.chunk(y, 2, dim=1)
        y = self.output_projection(torch.sigmoid(gate) * torch.tanh(filt))
        residual, skip = torch.chunk(y, 2, dim=1)
        return (x + residual) / math.sqrt(2.0), skip


class DiffWave(nn.Module):
    """`forward(audio (B, N), step (B,), mel (B, M, N // hop))` -> predicted noise `(B, N)`."""

    def __init__(self, cfg: DiffWaveConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.residual_channels
        self.input_projection = nn.Conv1d(1, c, 1)
        self.diffusion_embedding = DiffusionEmbedding(cfg.diffusion_steps)
        self.spectrogram_upsampler = SpectrogramUpsampler(cfg.hop)
        self.residual_layers = nn.ModuleList(
            ResidualBlock(cfg.n_mels, c, 2 ** (i % cfg.dilation_cycle))
            for i in range(cfg.residual_layers))
        self.skip_projection = nn.Conv1d(c, c, 1)
        self.output_projection = nn.Conv1d(c, 1, 1)
        nn.init.kaiming_normal_(self.input_projection.weight)
        nn.init.kaiming_normal_(self.skip_projection.weight)
        # zero output at initialisation: the first predictions are "no noise", which
        # keeps early training stable (as in the reference implementation)
        nn.init.zeros_(self.output_projection.weight)

    def forward(self, audio: Tensor, step: Tensor, mel: Tensor) -> Tensor:
        x = F.relu(self.input_projection(audio.unsqueeze(1)))
        emb = self.diffusion_embedding(step)
        cond = self.spectrogram_upsampler(mel)
        if cond.shape[-1] != x.shape[-1]:
            raise ValueError(f"mel of {mel.shape[-1]} frames upsamples to {cond.shape[-1]} "
                             f"samples, audio has {x.shape[-1]} (need frames * hop)")
        skip = torch.zeros_like(x)
        for layer in self.residual_layers:
            x, s = layer(x, emb, cond)
            skip = skip + s
        x = F.relu(self.skip_projection(skip / math.sqrt(len(self.residual_layers))))
        return self.output_projection(x).squeeze(1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# --------------------------------------------------------------------------- diffusion

def fast_schedule(cfg: DiffWaveConfig, fast: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Betas, cumulative alphas and (fractional) network steps of the sampler.

    With ``fast`` the inference betas are aligned to the training schedule: sampler step
    `s` uses the fractional training step ``t + twiddle`` whose cumulative alpha equals
    the sampler's, interpolated between training steps `t` and `t + 1` (DiffWave, App. B).

    Raises:
        ConfigError: an inference schedule whose noise levels the training schedule
            does not cover.
    """
    train_betas = cfg.betas()
    talpha_cum = np.cumprod(1.0 - train_betas)
    if not fast:
        return train_betas, talpha_cum, np.arange(len(train_betas), dtype=np.float64)
    betas = np.asarray(cfg.inference_betas, dtype=np.float64)
    alpha_cum = np.cumprod(1.0 - betas)
    steps = []
    for s in range(len(betas)):
        for t in range(len(train_betas) - 1):
            if talpha_cum[t + 1] <= alpha_cum[s] <= talpha_cum[t]:
                twiddle = (talpha_cum[t] ** 0.5 - alpha_cum[s] ** 0.5) / (
                    talpha_cum[t] ** 0.5 - talpha_cum[t + 1] ** 0.5)
                steps.append(t + twiddle)
                break
        else:
            if alpha_cum[s] > talpha_cum[0]:  # less noise than the first training step
                steps.append(0.0)
            else:
                raise ConfigError(
                    f"diffwave: inference beta schedule reaches noise level "
                    f"{1 - alpha_cum[s]:.3f}, beyond the training schedule's "
                    f"{1 - talpha_cum[-1]:.3f}; use smaller inference betas")
    return betas, alpha_cum, np.asarray(steps, dtype=np.float64)


@torch.no_grad()
def vocode(model: DiffWave, mel: Tensor, generators: Sequence[torch.Generator],
           fast: bool = True) -> Tensor:
    """Sample waveforms `(B, F * hop)` in [-1, 1] for mels `(B, M, F)`.

    Every random number of item `b` comes from ``generators[b]`` (drawn on the CPU, so
    a seed gives the same noise on any device and in any batch).
    """
    if len(generators) != mel.shape[0]:
        raise ValueError("one generator per item is needed")
    device = mel.device
    betas, alpha_cum, steps = fast_schedule(model.cfg, fast)
    alphas = 1.0 - betas
    n = mel.shape[-1] * model.cfg.hop

    def noise() -> Tensor:
        return torch.stack([torch.randn(n, generator=g) for g in generators]).to(device)

    audio = noise()
    for i in range(len(betas) - 1, -1, -1):
        c1 = 1.0 / alphas[i] ** 0.5
        c2 = betas[i] / (1.0 - alpha_cum[i]) ** 0.5
        t = torch.full((mel.shape[0],), float(steps[i]), device=device)
        audio = c1 * (audio - c2 * model(audio, t, mel).float())
        if i > 0:
            sigma = ((1.0 - alpha_cum[i - 1]) / (1.0 - alpha_cum[i]) * betas[i]) ** 0.5
            audio = audio + sigma * noise()
        audio = audio.clamp(-1.0, 1.0)
    return audio


def perturb_mel(mel: Tensor, rng: np.random.Generator, *, stretch: float = 0.1,
                noise: float = 0.02, gain_db: float = 3.0) -> tuple[Tensor, dict[str, float]]:
    """A varied copy of one mel `(M, F)` and the drawn parameters.

    Time stretch by a factor uniform in ``[1 - stretch, 1 + stretch]`` (linear
    interpolation over frames), a level change uniform in ``+-gain_db`` dB (the
    normalised log-mel is in units of 100 dB), and Gaussian noise of std `noise`
    (normalised units), clipped back to [0, 1]. The waveform DiffWave then samples
    for it differs from the source in timing, level and fine structure.
    """
    factor = float(rng.uniform(1.0 - stretch, 1.0 + stretch)) if stretch > 0 else 1.0
    gain = float(rng.uniform(-gain_db, gain_db)) if gain_db > 0 else 0.0
    frames = max(1, int(round(mel.shape[-1] * factor)))
    out = mel
    if frames != mel.shape[-1]:
        out = F.interpolate(mel[None], size=frames, mode="linear", align_corners=True)[0]
    out = out + gain / 100.0
    if noise > 0:
        eps = rng.standard_normal(out.shape).astype(np.float32)
        out = out + noise * torch.from_numpy(eps).to(out.device)
    return out.clamp(0.0, 1.0), {"stretch": round(factor, 6), "gain_db": round(gain, 6),
                                 "mel_noise": noise}


# --------------------------------------------------------------------------- audio store

class AudioStore:
    """Training audio for the vocoder: every cycle peak-normalised, int16, one memmap.

    Files: ``audio.i16`` (all samples, little-endian int16, concatenated; read through
    `numpy.memmap`, so memory holds only what a batch touches) and ``index.json``
    (``offsets``, ``lengths``, ``ids``, ``sample_rate``). Built once (`build`, streaming:
    one cycle in memory at a time) and reused while the cycle ids and rate are unchanged.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        meta = json.loads((self.folder / "index.json").read_text(encoding="utf-8"))
        self.sample_rate = int(meta["sample_rate"])
        self.ids: list[str] = meta["ids"]
        self.offsets = np.asarray(meta["offsets"], dtype=np.int64)
        self.lengths = np.asarray(meta["lengths"], dtype=np.int64)
        self.audio = np.memmap(self.folder / "audio.i16", dtype="<i2", mode="r")

    def __len__(self) -> int:
        return len(self.ids)

    def cycle(self, i: int) -> np.ndarray:
        """Cycle `i` as float32 in [-1, 1]."""
        o, n = int(self.offsets[i]), int(self.lengths[i])
        return np.asarray(self.audio[o:o + n], dtype=np.float32) / 32767.0

    @classmethod
    def build(cls, folder: Path, cycles: Sequence[Any], sample_rate: int,
              progress: Callable[[int, int], None] | None = None) -> AudioStore:
        """Read `cycles` (manifest records) at `sample_rate` into `folder` (or reuse it)."""
        from rsctool.audio import load_audio, normalize
        from rsctool.utils import atomic_write_json

        folder = Path(folder)
        ids = [c.id for c in cycles]
        index = folder / "index.json"
        if index.exists() and (folder / "audio.i16").exists():
            try:
                old = json.loads(index.read_text(encoding="utf-8"))
                if old.get("ids") == ids and int(old.get("sample_rate", 0)) == sample_rate:
                    return cls(folder)
            except (OSError, ValueError):
                pass  # rebuilt below
        if not cycles:
            raise DataError("no real train cycles to train the vocoder on", folder)
        folder.mkdir(parents=True, exist_ok=True)
        index.unlink(missing_ok=True)  # no index = incomplete store, until the end
        offsets, lengths, pos = [], [], 0
        tmp = folder / ".audio.i16.tmp"
        try:
            with open(tmp, "wb") as fh:
                for i, c in enumerate(cycles):
                    wav = normalize(load_audio(c.audio, sample_rate, c.start, c.end), "peak",
                                    VOCODER_PEAK)
                    q = np.round(np.clip(wav, -1.0, 1.0) * 32767.0).astype("<i2")
                    fh.write(q.tobytes())
                    offsets.append(pos)
                    lengths.append(len(q))
                    pos += len(q)
                    if progress is not None:
                        progress(i + 1, len(cycles))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, folder / "audio.i16")
        finally:
            if tmp.exists():
                tmp.unlink()
        # the index goes last: a store with an index is complete
        atomic_write_json(index, {"sample_rate": sample_rate, "ids": ids,
                                  "offsets": offsets, "lengths": lengths})
        return cls(folder)


# --------------------------------------------------------------------------- training

@dataclass
class VocoderTrainOptions:
    """Optimisation of one vocoder training run.

    Attributes:
        steps: optimizer steps in total (a finished run trained to fewer steps
            continues up to this number).
        batch_size: segments per step.
        segment_frames: mel frames per segment (62 x hop 256 = 15872 samples).
        lr: Adam learning rate.
        grad_clip: max gradient norm.
        checkpoint_every: steps between checkpoints (and at the end / on Ctrl-C).
        seed: seeds every draw (a function of ``(seed, step)``).
    """

    steps: int = 50_000
    batch_size: int = 16
    segment_frames: int = 62
    lr: float = 2e-4
    grad_clip: float = 1e9
    checkpoint_every: int = 1000
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        for name in ("steps", "batch_size", "segment_frames", "checkpoint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"must be an integer >= 1, got {v!r}",
                                  field=f"vocoder_{name}")
        if not self.lr > 0:
            raise ConfigError(f"must be > 0, got {self.lr}", field="vocoder_lr")


class VocoderTrainer:
    """Trains a `DiffWave` on an `AudioStore`; `fit()` runs to `opts.steps` and saves
    ``last.safetensors`` in `folder` every `checkpoint_every` steps."""

    def __init__(self, cfg: DiffWaveConfig, opts: VocoderTrainOptions, store: AudioStore,
                 folder: Path, device: str = "cpu"):
        opts.validate()
        if store.sample_rate != cfg.sample_rate:
            raise ConfigError(f"audio store is at {store.sample_rate} Hz, the vocoder at "
                              f"{cfg.sample_rate} Hz")
        torch.manual_seed(opts.seed)
        self.cfg, self.opts, self.store, self.folder = cfg, opts, store, Path(folder)
        self.device = device
        self.model = DiffWave(cfg).to(device)
        self.mel = MelSpectrogram(cfg).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=opts.lr)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0
        alpha_cum = np.cumprod(1.0 - cfg.betas())
        self.noise_level = torch.tensor(alpha_cum.astype(np.float32), device=device)
        self.amp = str(device).startswith("cuda") and torch.cuda.is_bf16_supported()

    @property
    def checkpoint(self) -> Path:
        return self.folder / "last.safetensors"

    def state(self) -> dict[str, Any]:
        return {"kind": "diffwave", "config": self.cfg.to_dict(), "options": asdict(self.opts),
                "step": self.step, "history": self.history[-200:], "seconds": self.seconds}

    def save(self) -> Path:
        from rsctool.checkpoint import save_checkpoint

        save_checkpoint(self.checkpoint, model=self.model, state=self.state(),
                        optimizer=self.optimizer)
        return self.checkpoint

    def restore(self, path: Path) -> None:
        from rsctool.checkpoint import load_checkpoint

        ck = load_checkpoint(path)
        if DiffWaveConfig.from_dict(ck.state["config"]) != self.cfg:
            raise ConfigError("vocoder checkpoint has another architecture; use another "
                              "{field} name or {field:force}", path, field="vocoder")
        self.model.load_state_dict(ck.model_state)
        if ck.optimizer_state is not None:
            self.optimizer.load_state_dict(ck.optimizer_state)
            for g in self.optimizer.param_groups:  # a changed --vocoder-lr applies
                g["lr"] = self.opts.lr
        self.step = int(ck.state["step"])
        self.history = list(ck.state.get("history", []))
        self.seconds = float(ck.state.get("seconds", 0.0))

    def batch(self, step: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Audio `(B, L*hop)`, mel `(B, M, L)`, steps `(B,)` and noise of step `step`."""
        opts, hop = self.opts, self.cfg.hop
        g = torch.Generator().manual_seed(opts.seed * 1_000_003 + step)
        n = opts.segment_frames * hop
        idx = torch.randint(len(self.store), (opts.batch_size,), generator=g).tolist()
        segs = np.zeros((opts.batch_size, n), dtype=np.float32)
        for b, i in enumerate(idx):
            wav = self.store.cycle(i)
            if len(wav) > n:
                start = int(torch.randint(len(wav) - n + 1, (1,), generator=g))
                wav = wav[start:start + n]
            segs[b, :len(wav)] = wav
        audio = torch.from_numpy(segs).to(self.device)
        with torch.no_grad():
            mel = self.mel(audio)[..., :opts.segment_frames]
        t = torch.randint(self.cfg.diffusion_steps, (opts.batch_size,), generator=g)
        noise = torch.randn(opts.batch_size, n, generator=g)
        return audio, mel, t.to(self.device), noise.to(self.device)

    def train_step(self) -> float:
        self.model.train()
        audio, mel, t, noise = self.batch(self.step)
        a = self.noise_level[t].unsqueeze(1)
        noisy = a.sqrt() * audio + (1.0 - a).sqrt() * noise
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            pred = self.model(noisy, t, mel)
        loss = F.l1_loss(pred.float(), noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.opts.grad_clip)
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    def fit(self, on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
        """Train up to `opts.steps`; returns a summary (loss of the last 100 steps ...)."""
        losses: list[float] = []
        t0 = time.perf_counter()
        start = self.step
        try:
            while self.step < self.opts.steps:
                loss = self.train_step()
                losses.append(loss)
                if self.step % 100 == 0 or self.step == self.opts.steps:
                    self.history.append({"step": self.step,
                                         "loss": float(np.mean(losses[-100:]))})
                if on_step is not None:
                    on_step(self.step, loss)
                if self.step % self.opts.checkpoint_every == 0:
                    self.seconds += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self.save()
        except KeyboardInterrupt:
            self.seconds += time.perf_counter() - t0
            self.save()
            raise
        self.seconds += time.perf_counter() - t0
        if self.step != start or not self.checkpoint.exists():
            self.save()
        done = self.step - start
        return {"step": self.step, "trained_steps": done,
                "loss": float(np.mean(losses[-100:])) if losses else None,
                "seconds": self.seconds}


def load_vocoder(path: Path, device: str = "cpu") -> tuple[DiffWave, MelSpectrogram]:
    """A trained DiffWave (eval mode) and its mel front end from a checkpoint."""
    from rsctool.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    if ck.state.get("kind") != "diffwave":
        raise DataError("not a DiffWave vocoder checkpoint", path)
    cfg = DiffWaveConfig.from_dict(ck.state["config"])
    model = DiffWave(cfg)
    try:
        model.load_state_dict(ck.model_state)
    except RuntimeError as e:
        raise DataError(f"vocoder weights do not fit their config ({str(e).splitlines()[0]})",
                        path) from None
    model.to(device).eval()
    return model, MelSpectrogram(cfg).to(device)


# --------------------------------------------------------------------------- backend

class DiffWaveBackend:
    """Synthesis by re-vocoding perturbed mels of real cycles of the requested class.

    For a request of class `c` with seed `s` (everything below drawn from `s`): pick a
    real train cycle of class `c`, read it at the vocoder rate, peak-normalise it (as
    the training audio), take at most `max_seconds` of it from a random offset, compute
    its mel, optionally perturb it (`perturb_mel`; off by default: seed 002 conditions on
    the real cycles' mels as they are) and sample a waveform with fresh noise, scaled
    back to the source cycle's peak level (real and synthetic cycles share one level
    policy: neither is normalised).

    Args:
        checkpoint: the vocoder's ``last.safetensors``.
        sources: ``{class: [real train cycles]}`` to draw from.
        device: ``cpu`` or ``cuda``.
        fast: the 6-step sampler (else all T training steps).
        max_seconds, stretch, mel_noise, gain_db: see above / `perturb_mel`.
        vocoder: name of the vocoder record (for the generator record).
    """

    name = "diffwave"

    def __init__(self, checkpoint: Path, sources: dict[str, list[Any]], *, device: str = "cpu",
                 fast: bool = True, max_seconds: float = 8.0, stretch: float = 0.0,
                 mel_noise: float = 0.0, gain_db: float = 0.0, vocoder: str = "diffwave"):
        from rsctool.data.manifest import file_sha256

        self.checkpoint = Path(checkpoint)
        self.model, self.mel = load_vocoder(self.checkpoint, device)
        self.cfg = self.model.cfg
        self.sources = {k: sorted(v, key=lambda c: c.id) for k, v in sources.items()}
        self.device, self.fast, self.max_seconds = device, fast, max_seconds
        self.stretch, self.mel_noise, self.gain_db = stretch, mel_noise, gain_db
        self.vocoder = vocoder
        self.sha256 = file_sha256(self.checkpoint)

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    def describe(self) -> dict[str, Any]:
        return {"backend": "diffwave", "model": self.vocoder, "vocoder_sha256": self.sha256,
                "sampler": "fast" if self.fast else "full",
                "steps": len(fast_schedule(self.cfg, self.fast)[0]),
                "max_seconds": self.max_seconds, "stretch": self.stretch,
                "mel_noise": self.mel_noise, "gain_db": self.gain_db,
                "sources": {k: len(v) for k, v in self.sources.items()}}

    def generate(self, requests: list[Any]) -> list[Any]:
        from rsctool.audio import load_audio, normalize
        from rsctool.generators import Generated

        out = []
        for r in requests:
            t0 = time.perf_counter()
            pool = self.sources.get(r.label) or []
            if not pool:
                raise ConfigError(f"diffwave: no real train cycles of class {r.label!r} to "
                                  "re-synthesise")
            rng = np.random.default_rng(r.seed)
            src = pool[int(rng.integers(len(pool)))]
            raw = load_audio(src.audio, self.cfg.sample_rate, src.start, src.end)
            # The vocoder works on peak-normalised audio (as it was trained); its output
            # is scaled back to the source cycle's own level, so a synthetic cycle is as
            # loud as the real one it re-synthesises and level cannot tell them apart.
            source_peak = float(np.max(np.abs(raw))) if len(raw) else 0.0
            wav = normalize(raw, "peak", VOCODER_PEAK)
            limit = int(round(self.max_seconds * self.cfg.sample_rate))
            offset = int(rng.integers(len(wav) - limit + 1)) if len(wav) > limit else 0
            wav = wav[offset:offset + limit]
            mel = self.mel(torch.from_numpy(np.ascontiguousarray(wav)).to(self.device))
            mel, params = perturb_mel(mel, rng, stretch=self.stretch, noise=self.mel_noise,
                                      gain_db=self.gain_db)
            gen = torch.Generator().manual_seed(int(rng.integers(1 << 62)))
            audio = vocode(self.model, mel[None], [gen], self.fast)[0].cpu().numpy()
            if source_peak > 1e-8:
                audio = audio * np.float32(source_peak / VOCODER_PEAK)
            seconds = len(wav) / self.cfg.sample_rate * params["stretch"]
            out.append(Generated(
                wav=audio, sample_rate=self.cfg.sample_rate,
                seconds=time.perf_counter() - t0, target_seconds=seconds,
                info={"source_cycle": src.id, "source_patient": src.patient,
                      "source_offset_s": round(offset / self.cfg.sample_rate, 6),
                      "vocoder": self.vocoder, "source_peak": round(source_peak, 6),
                      **params}))
        return out
