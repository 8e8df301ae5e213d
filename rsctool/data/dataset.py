"""Training/evaluation data: cycles -> cached log-mel features, labels, metadata.

Feature pipeline of one cycle: read the segment (any rate) -> resample to
`ClipConfig.sample_rate` -> pad by repetition with fades (or crop) to
`clip_seconds` -> Kaldi fbank `(T, F)` -> cached (unnormalised, float16) -> normalised
with the run's statistics. Augmentation (SpecAugment, mixup) happens on batches in
the training loop, in the main process, so its randomness is part of the
checkpointed RNG state and a resumed run draws the same numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsctool.audio import DEFAULT_CLIP_SECONDS, DEFAULT_SAMPLE_RATE, PAD_MODES, load_cycle
from rsctool.data.cache import FeatureCache
from rsctool.data.manifest import BINARY_CLASSES, Cycle, binary_label
from rsctool.errors import ConfigError
from rsctool.features import FbankConfig, fbank, num_frames


@dataclass(frozen=True)
class ClipConfig:
    """How a cycle becomes a fixed-size model input.

    Attributes:
        sample_rate: Hz the audio is resampled to.
        clip_seconds: every cycle is padded (repeat + fades) or cropped to this length.
        pad_mode: one of `rsctool.audio.PAD_MODES` (``repeat|repeat-fadeout|zero``).
        fbank: the filter-bank options (its `mean`/`std` are the normalisation).
    """

    sample_rate: int = DEFAULT_SAMPLE_RATE
    clip_seconds: float = DEFAULT_CLIP_SECONDS
    pad_mode: str = "repeat"
    fbank: FbankConfig = field(default_factory=FbankConfig)

    def __post_init__(self) -> None:
        if self.fbank.sample_rate != self.sample_rate:
            object.__setattr__(self, "fbank", self.fbank.replace(sample_rate=self.sample_rate))
        if self.clip_seconds <= 0:
            raise ConfigError(f"clip length must be positive, got {self.clip_seconds} s")
        if self.pad_mode not in PAD_MODES:
            raise ConfigError(f"pad mode must be one of {', '.join(PAD_MODES)}, "
                              f"got {self.pad_mode!r}")

    @property
    def num_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def frames(self) -> int:
        """T: frames per clip (798 for 8 s at 16 kHz with the default fbank)."""
        return num_frames(self.num_samples, self.fbank)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["fbank"] = self.fbank.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClipConfig:
        d = dict(d)
        d["fbank"] = FbankConfig.from_dict(d.get("fbank", {}))
        return cls(**d)

    def with_norm(self, mean: float, std: float) -> ClipConfig:
        return dataclasses.replace(self, fbank=self.fbank.replace(mean=float(mean),
                                                                  std=float(std)))


def clip_config(opts: Any) -> ClipConfig:
    """The `ClipConfig` (unnormalised) a run with resolved options `opts` feeds its model
    (`rsctool.train.TrainOptions`: ``sample_rate``, ``clip_seconds``, ``num_mel_bins``,
    ``window``, ``pad_mode``)."""
    return ClipConfig(sample_rate=opts.sample_rate, clip_seconds=opts.clip_seconds,
                      pad_mode=opts.pad_mode,
                      fbank=FbankConfig(sample_rate=opts.sample_rate,
                                        num_mel_bins=opts.num_mel_bins, window=opts.window))


def default_stats_clip() -> ClipConfig:
    """The `ClipConfig` of `rsctool train` with default options (the default model's
    features: 8 s at 16 kHz, 128 mel bins, Hanning window), whose statistics `rsctool
    analyze` records. Equal to ``clip_config(TrainOptions().resolve())``
    (tests/test_architecture.py holds the two together)."""
    return ClipConfig(fbank=FbankConfig(window="hanning"))


def cycle_features(cycle: Cycle, clip: ClipConfig, cache: FeatureCache | None) -> np.ndarray:
    """Unnormalised log-mel `(T, F)` of one cycle (float16 from the cache, else float32)."""

    def compute() -> np.ndarray:
        wav = load_cycle(cycle.audio, cycle.start, cycle.end, clip.sample_rate,
                         clip.clip_seconds, clip.pad_mode)
        return fbank(torch.from_numpy(wav), clip.fbank)[0].numpy()

    if cache is None:
        return compute()
    # normalisation is applied after the cache, so mean/std do not enter the key
    cfg_key = clip.fbank.replace(mean=0.0, std=1.0).key()
    key = cache.key(cycle.audio, cycle.start, cycle.end, cfg_key, clip_s=clip.clip_seconds,
                    pad=clip.pad_mode)
    return cache.get_or_compute(key, compute)


#: What `fbank_statistics` reads at most (a seeded sample above it).
STATS_MAX_ITEMS = 2000
#: Seed of that sample: fixed, so the statistics depend on the data and the feature
#: config only (every seed of a sweep normalises with the same numbers).
STATS_SEED = 0


def stats_key(clip: ClipConfig) -> str:
    """Key of the normalisation statistics of a feature configuration: the filter bank
    (all fields but the normalisation itself), sample rate, clip length and padding, which
    are everything the log-mel values depend on. 16 hex digits."""
    from rsctool.utils import params_hash

    return params_hash({"fbank": clip.fbank.replace(mean=0.0, std=1.0).key(),
                        "sample_rate": clip.sample_rate, "clip_seconds": clip.clip_seconds,
                        "pad_mode": clip.pad_mode})[:16]


def fbank_statistics(cycles: Sequence[Cycle], clip: ClipConfig,
                     cache: FeatureCache | None = None, max_items: int = STATS_MAX_ITEMS,
                     seed: int = STATS_SEED) -> dict[str, Any]:
    """Mean and standard deviation of the log-mel values of (a seeded sample of) `cycles`.

    Every value counts once (all frames and mel bins of every clip), after the float16
    rounding the feature cache applies, so the result is the same whether the features
    come from the cache or are computed now. Runs single-threaded: per-clip torch ops
    are small and a busy machine made the thread pool 50x slower.

    Returns (JSON/TOML-safe)::

        mean, std, clips (clips read), of (cycles given), values (numbers averaged),
        seed, max_items, key (`stats_key`), clip_seconds, sample_rate, num_mel_bins,
        window, pad_mode
    """
    rng = np.random.default_rng(seed)
    idx = np.arange(len(cycles))
    if len(idx) > max_items:
        idx = np.sort(rng.choice(idx, max_items, replace=False))
    total, total_sq, n = 0.0, 0.0, 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i in idx:
            x = np.asarray(cycle_features(cycles[i], clip, cache))
            x = x.astype(np.float16).astype(np.float64)
            total += float(x.sum())
            total_sq += float(np.square(x).sum())
            n += x.size
    finally:
        torch.set_num_threads(threads)
    if n == 0:
        raise ConfigError("no training cycles to compute normalisation statistics from")
    mean = total / n
    std = math.sqrt(max(total_sq / n - mean * mean, 1e-12))
    return {"mean": mean, "std": std, "clips": int(len(idx)), "of": len(cycles),
            "values": int(n), "seed": int(seed), "max_items": int(max_items),
            "key": stats_key(clip), "clip_seconds": clip.clip_seconds,
            "sample_rate": clip.sample_rate, "num_mel_bins": clip.fbank.num_mel_bins,
            "window": clip.fbank.window, "pad_mode": clip.pad_mode}


def dataset_statistics(cycles: Sequence[Cycle], clip: ClipConfig,
                       cache: FeatureCache | None, max_items: int = STATS_MAX_ITEMS,
                       seed: int = STATS_SEED) -> tuple[float, float]:
    """``(mean, std)`` of `fbank_statistics`."""
    st = fbank_statistics(cycles, clip, cache, max_items, seed)
    return st["mean"], st["std"]


class CycleDataset(torch.utils.data.Dataset):
    """Items for training and evaluation.

    Each item is a dict: ``x`` `(T, F)` float32 normalised log-mel, ``y`` (class index,
    long; or `(2,)` float crackle/wheeze targets for ``task="multilabel"``), ``domain``
    (0 real, 1 synthetic), ``index``, and ``meta`` (per-item metadata tensors) when a
    metadata encoder is given. ``task="binary"`` takes `classes` = `BINARY_CLASSES` and
    maps every non-normal label to ``abnormal``.
    """

    def __init__(self, cycles: Sequence[Cycle], classes: Sequence[str], clip: ClipConfig,
                 cache: FeatureCache | None = None, meta_encoder: Any = None,
                 task: str = "multiclass"):
        self.cycles = list(cycles)
        self.classes = list(classes)
        self.clip = clip
        self.cache = cache
        self.task = task
        index = {c: i for i, c in enumerate(self.classes)}
        if task == "binary":
            if tuple(self.classes) != BINARY_CLASSES:
                raise ConfigError(f"task binary has the classes {list(BINARY_CLASSES)}, "
                                  f"got {self.classes}")
            labels = [binary_label(c.label) for c in self.cycles]
        else:
            labels = [c.label for c in self.cycles]
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise ConfigError(f"labels {unknown} are not among the classes {self.classes}")
        self.targets = torch.tensor([index[label] for label in labels], dtype=torch.long)
        if task == "multilabel":
            if any(c.crackle is None for c in self.cycles):
                raise ConfigError("multilabel task needs crackle/wheeze flags (ICBHI data)")
            self.multilabel = torch.tensor([[c.crackle, c.wheeze] for c in self.cycles],
                                           dtype=torch.float32)
        self.meta = meta_encoder.encode(self.cycles) if meta_encoder is not None else None
        self.domain = torch.tensor([int(c.source == "synthetic") for c in self.cycles])

    def __len__(self) -> int:
        return len(self.cycles)

    def features(self, i: int) -> torch.Tensor:
        # In numpy, in place: per-item torch ops wake torch's intra-op thread pool, which
        # made this 20-30x slower (34 ms vs 1 ms per 8 s clip on a busy 2-core machine).
        x = np.array(cycle_features(self.cycles[i], self.clip, self.cache), dtype=np.float32)
        x -= np.float32(self.clip.fbank.mean)
        x /= np.float32(2.0 * self.clip.fbank.std)
        return torch.from_numpy(x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {
            "x": self.features(i),
            "y": self.multilabel[i] if self.task == "multilabel" else self.targets[i],
            "domain": self.domain[i],
            "index": i,
        }
        if self.meta is not None:
            item["meta"] = {k: v[i] for k, v in self.meta.items()}
        return item

    def warm_cache(self, progress: Any = None) -> int:
        """Compute every missing feature now; returns how many were computed."""
        before = self.cache.stats.misses if self.cache is not None else 0
        for i in range(len(self)):
            cycle_features(self.cycles[i], self.clip, self.cache)
            if progress is not None:
                progress(i + 1, len(self))
        return (self.cache.stats.misses - before) if self.cache is not None else len(self)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "x": torch.stack([it["x"] for it in items]),
        "y": torch.stack([torch.as_tensor(it["y"]) for it in items]),
        "domain": torch.stack([torch.as_tensor(it["domain"]) for it in items]),
        "index": torch.tensor([it["index"] for it in items]),
    }
    if "meta" in items[0]:
        out["meta"] = {k: torch.stack([it["meta"][k] for it in items]) for k in items[0]["meta"]}
    return out


def epoch_order(n: int, epoch: int, seed: int, weights: torch.Tensor | None = None
                ) -> torch.Tensor:
    """Sample order of one epoch, a pure function of (seed, epoch).

    Without `weights` a permutation; with per-item `weights` (class-balanced sampling)
    `n` draws with replacement. Being a function of its arguments (no sampler state)
    is what lets a resumed run skip exactly the batches it already trained on.
    """
    g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    if weights is None:
        return torch.randperm(n, generator=g)
    return torch.multinomial(weights, n, replacement=True, generator=g)


def class_balanced_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-item sampling weight 1 / count(class), so each class is drawn equally often."""
    counts = torch.bincount(targets, minlength=num_classes).clamp(min=1).float()
    return (1.0 / counts)[targets]


#: SpecAugment mask fills: ``zero`` (the normalised global mean) or ``mean`` (each
#: spectrogram's own mean, as the ICBHI AST papers' public code fills its masks).
SPECAUG_FILLS = ("zero", "mean")


def spec_augment(x: torch.Tensor, *, freq_frac: float = 0.1875, time_frac: float = 0.12,
                 n_masks: int = 1, freq_width: int | None = None,
                 time_width: int | None = None, fill: str = "zero",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """SpecAugment masks on a normalised batch `(B, T, F)`: per item, `n_masks` bands of up
    to `freq_width` mel bins and `n_masks` spans of up to `time_width` frames are filled.

    Widths default to ``freq_frac * F`` and ``time_frac * T`` (AST's 24-of-128 bins and
    ~96-of-798 frames, scaled to the input, so small inputs are not wiped out); the ICBHI
    AST papers use ``n_masks=2, freq_width=48, time_width=160, fill="mean"``. Each width
    is drawn uniformly from ``0..width`` (clamped to the axis). `fill`: ``zero`` sets the
    masked values to 0 (the normalised dataset mean), ``mean`` to the item's own mean
    (taken before masking).
    """
    if fill not in SPECAUG_FILLS:
        raise ConfigError(f"specaug_fill must be one of {', '.join(SPECAUG_FILLS)}, "
                          f"got {fill!r}")
    b, t, f = x.shape
    freq_mask = int(freq_width) if freq_width is not None else int(round(freq_frac * f))
    time_mask = int(time_width) if time_width is not None else int(round(time_frac * t))
    x = x.clone()
    value = (x.mean(dim=(1, 2), keepdim=True) if fill == "mean"
             else torch.zeros((b, 1, 1), dtype=x.dtype, device=x.device))
    ar_t = torch.arange(t, device=x.device)
    ar_f = torch.arange(f, device=x.device)
    for _ in range(n_masks):
        for size, length, ar, dim in ((freq_mask, f, ar_f, 2), (time_mask, t, ar_t, 1)):
            if size <= 0:
                continue
            w = torch.randint(0, min(size, length) + 1, (b,), generator=generator)
            s = (torch.rand(b, generator=generator) * (length - w + 1).float()).long()
            m = (ar[None, :] >= s[:, None].to(x.device)) & (
                ar[None, :] < (s + w)[:, None].to(x.device))
            m = m[:, None, :] if dim == 2 else m[:, :, None]
            x = torch.where(m, value, x)
    return x


def mixup(x: torch.Tensor, y: torch.Tensor, num_classes: int, alpha: float,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup of a batch: returns mixed inputs and soft targets `(B, C)` (or mixed
    multilabel targets when `y` is already `(B, C)` float)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 1.0
    perm = torch.randperm(x.shape[0], generator=generator)
    yt = y if y.dim() == 2 else torch.nn.functional.one_hot(y, num_classes).float()
    return lam * x + (1 - lam) * x[perm], lam * yt + (1 - lam) * yt[perm.to(yt.device)]


def feature_cache(state_dir: Path) -> FeatureCache:
    return FeatureCache(state_dir / "features")
