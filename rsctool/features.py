"""Kaldi-compatible log-mel filterbank features in pure torch, and their normalisation.

`fbank` reproduces ``torchaudio.compliance.kaldi.fbank`` (the front end of the Audio
Spectrogram Transformer), batched over clips and vectorised over frames; torchaudio
itself is not used (see DESIGN.md, "Dependencies"). Against a fixture computed by
torchaudio 2.9 the log energies agree to ~1e-4 wherever a filter is within 60 dB of
its frame's strongest one; in deeper valleys float32 rounding of either FFT dominates
and the two differ by up to a few 1e-3, as each does from a float64 computation.

Pipeline per frame of `W` samples, shifted by `S` (Kaldi's order of operations):
optional dither, removal of the frame's DC offset, pre-emphasis (first sample
replicated), window, zero padding to `n_fft`, power (or magnitude) spectrum,
triangular mel filters (HTK mel scale ``1127 ln(1 + f/700)``), ``log(max(x, eps))``.

AST's ``_wav2fbank`` subtracts the waveform mean before calling torchaudio; with
``remove_dc_offset=True`` every frame has its own mean removed, which makes that step
a no-op here (up to rounding), so it is not repeated.

Two equivalent implementations share the configuration:

* `fbank` (training, caching): frames as strided views, one real FFT per frame,
  processed in cache-sized chunks of clips through work buffers kept per thread (CPU);
  the fastest path on CPU.
* `Fbank` (a `torch.nn.Module` with normalisation, for models and ONNX graphs): eagerly
  it calls `fbank`; traced for ONNX, DC removal, pre-emphasis, window and DFT (all
  linear in the frame) are folded into one precomputed kernel and applied as a single
  strided ``conv1d``: no complex tensors or FFT op, dynamic batch and length.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
import torch
import torch.nn.functional as F

from rsctool import features_np as _fnp
from rsctool.errors import ConfigError, DataError
from rsctool.features_np import FbankConfig

#: ``numeric_limits<float>::epsilon()``: Kaldi's floor before the log.
_EPS = float(torch.finfo(torch.float32).eps)
_MS = 0.001  # the same float expression as torchaudio, so int() truncates identically

#: Elements of the (clips, frames, n_fft) work buffer per CPU chunk (2 MB: one 8 s clip,
#: or several short ones). Chunks keep the passes and the FFT in cache: 32 clips of 8 s run
#: ~2x faster in chunks than as one batch tensor.
_CPU_CHUNK_ELEMENTS = 1 << 19


def num_frames(num_samples: int, cfg: FbankConfig = FbankConfig()) -> int:
    """Number of frames T that `fbank` returns for `num_samples` samples."""
    return _fnp.num_frames(num_samples, cfg)


# ----- constant matrices -----------------------------------------------------------------
# Computed in float64 numpy by `rsctool.features_np` (the torch-free twin used by the
# onnx predict path), so both front ends share one definition of the window and filters.
def window_function(cfg: FbankConfig) -> torch.Tensor:
    """`(W,)` float64 analysis window (Kaldi's symmetric definitions)."""
    return torch.from_numpy(_fnp.window_function(cfg))


def mel_filterbank(cfg: FbankConfig = FbankConfig()) -> torch.Tensor:
    """Triangular filters on the HTK mel scale, as torchaudio's ``get_mel_banks``.

    Returns:
        `(n_fft // 2 + 1, F)` float32; row k weights FFT bin k (k * sr / n_fft Hz); the
        Nyquist row is zero, as in Kaldi.
    """
    return torch.from_numpy(_fnp.mel_filterbank(cfg))


def _frame_operator(cfg: FbankConfig) -> np.ndarray:
    """`(W, W)` float64 matrix A with ``windowed_frame = A @ raw_frame``.

    DC removal ``I - 11'/W``, pre-emphasis with the first sample replicated, and the
    window are each linear in the frame, so their product is one matrix.
    """
    w = cfg.window_size
    a = np.eye(w)
    if cfg.remove_dc_offset:
        a = a - 1.0 / w
    c = cfg.preemphasis
    if c != 0.0:
        pre = np.eye(w)
        pre[np.arange(1, w), np.arange(w - 1)] = -c
        pre[0, 0] = 1.0 - c
        a = pre @ a
    return window_function(cfg).numpy()[:, None] * a


def dft_kernel(cfg: FbankConfig) -> torch.Tensor:
    """`(2 * (n_fft//2 + 1), W)` float32: rows ``[re_0, im_0, re_1, im_1, ...]`` of the
    spectrum of the windowed, zero-padded frame, as a linear map of the raw frame."""
    w, n = cfg.window_size, cfg.n_fft
    k = np.arange(n // 2 + 1, dtype=np.float64)[:, None]
    t = np.arange(w, dtype=np.float64)[None, :]
    ang = 2.0 * math.pi * ((k * t) % n) / n  # reduce first: exact angles for large k*t
    dft = np.empty((2 * (n // 2 + 1), w))
    dft[0::2], dft[1::2] = np.cos(ang), -np.sin(ang)
    return torch.from_numpy((dft @ _frame_operator(cfg)).astype(np.float32))


# ----- the functional path ---------------------------------------------------------------
def _as_batch(wav: torch.Tensor | np.ndarray) -> torch.Tensor:
    """`(N,)` / `(B, N)` float waveform (tensor or numpy) -> `(B, N)` float32 tensor."""
    if isinstance(wav, np.ndarray):
        if wav.dtype.kind != "f":
            raise DataError(f"fbank needs a float waveform in [-1, 1], got dtype {wav.dtype}"
                            + (" (integer PCM: divide by its full scale)"
                               if wav.dtype.kind in "iu" else ""))
        wav = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
    elif not isinstance(wav, torch.Tensor):
        raise DataError(f"fbank needs a tensor or numpy array, got {type(wav).__name__}")
    if not wav.is_floating_point():
        raise DataError(f"fbank needs a float waveform in [-1, 1], got dtype {wav.dtype}")
    if wav.dim() not in (1, 2):
        raise DataError(f"fbank needs a (N,) or (B, N) waveform, got shape {tuple(wav.shape)}")
    if wav.dtype != torch.float32:
        wav = wav.to(torch.float32)
    return wav.unsqueeze(0) if wav.dim() == 1 else wav


def _mirror_pad(x: torch.Tensor, cfg: FbankConfig, frames: int) -> torch.Tensor:
    """`(B, L)` signal whose snip-edges frames are Kaldi's mirrored (snip_edges=False) ones.

    Sample ``i`` of the padded signal is input sample ``i - pad`` reflected at the ends
    ("symmetric": ... x1 x0 | x0 x1 ... x_{N-1} | x_{N-1} x_{N-2} ...), as Kaldi's
    ExtractWindow and torchaudio's concatenation of the reversed waveform.
    """
    n = x.shape[-1]
    pad = cfg.window_size // 2 - cfg.window_shift // 2
    length = (frames - 1) * cfg.window_shift + cfg.window_size
    pos = torch.arange(length, device=x.device) - pad
    pos = torch.remainder(pos, 2 * n)  # repeat the reflection for very short signals
    idx = torch.where(pos < n, pos, 2 * n - 1 - pos)
    return x[:, idx]


def _log_or_linear(e: torch.Tensor, cfg: FbankConfig) -> torch.Tensor:
    """In place: ``log(max(e, eps))`` (Kaldi's floor) or `e` unchanged."""
    return e.clamp_min_(_EPS).log_() if cfg.use_log_fbank else e


class _MelBands:
    """The mel matmul split into bands of 16 adjacent filters.

    Each triangular filter covers a few FFT bins, so a band of filters only needs the
    bins under it: for 128 filters, 8 matmuls do 13% of the multiply-adds of the dense
    `(K, 128)` one and run ~3x faster (narrower bands are slower again: BLAS is
    inefficient below ~16 output columns). With ``use_power`` the rows are repeated for
    the interleaved (re, im) squares, so the matmul also sums them.
    """

    BAND = 16

    def __init__(self, cfg: FbankConfig, device: torch.device):
        mel = mel_filterbank(cfg)
        rep = 2 if cfg.use_power else 1
        self.bands: list[tuple[int, int, torch.Tensor]] = []
        self.widths: list[int] = []  # filters per band
        for f0 in range(0, cfg.num_mel_bins, self.BAND):
            cols = mel[:, f0:f0 + self.BAND]
            rows = torch.nonzero(cols.any(dim=1))[:, 0]
            # Narrow low filters can cover no bin at all; such a band still gets one row.
            k0, k1 = (int(rows.min()), int(rows.max()) + 1) if len(rows) else (0, 1)
            w = cols[k0:k1].repeat_interleave(rep, dim=0).contiguous().to(device)
            self.bands.append((rep * k0, rep * k1, w))
            self.widths.append(cols.shape[1])

    def __call__(self, z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`(..., rep*K)` energies per bin -> `out` `(..., F)` filter energies."""
        return torch.cat([z[..., a:b] @ w for a, b, w in self.bands], dim=-1, out=out)

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`out` `(M, F)` (contiguous) -> the column block of each band, for `into`."""
        return out.split_with_sizes(self.widths, dim=1)

    def into(self, z: torch.Tensor, blocks: tuple[torch.Tensor, ...]) -> None:
        """`(M, rep*K)` energies per bin -> filter energies, each band's matmul written
        into its block of columns (`split`; no concatenation)."""
        for (a, b, w), o in zip(self.bands, blocks, strict=True):
            torch.mm(z[:, a:b], w, out=o)


@functools.lru_cache(maxsize=16)
def _constants(cfg: FbankConfig, device: torch.device) -> tuple[torch.Tensor, float, _MelBands]:
    """Window `(W,)` on `device`, its first value (a Python float: no device sync), bands."""
    win = window_function(cfg)
    return win.to(device, torch.float32), float(win[0]), _MelBands(cfg, device)


def _bin_energies(spec: torch.Tensor, cfg: FbankConfig) -> torch.Tensor:
    """`(..., K)` complex spectrum -> `(..., 2K)` interleaved squares (power) or `(..., K)`
    magnitudes, the layout `_MelBands` expects."""
    z = torch.view_as_real(spec)  # (..., K, 2), a view
    if cfg.use_power:
        return z.square_().flatten(-2)
    return torch.linalg.vector_norm(z, dim=-1)


def _fbank_dithered(x: torch.Tensor, cfg: FbankConfig, generator: torch.Generator | None
                    ) -> torch.Tensor:
    """Plain per-frame formulation (noise is independent per frame, as in Kaldi)."""
    win, _, bands = _constants(cfg, x.device)
    frames = x.unfold(-1, cfg.window_size, cfg.window_shift)  # (B, T, W) view
    noise = torch.randn(frames.shape, generator=generator, device=x.device, dtype=x.dtype)
    frames = frames + cfg.dither * noise
    if cfg.remove_dc_offset:
        frames = frames - frames.mean(-1, keepdim=True)
    c = cfg.preemphasis
    if c != 0.0:
        prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = frames - c * prev
    spec = torch.fft.rfft(frames * win, n=cfg.n_fft)
    out = x.new_empty(*frames.shape[:2], cfg.num_mel_bins)
    return _log_or_linear(bands(_bin_energies(spec, cfg), out), cfg)


def _fbank_fast(x: torch.Tensor, cfg: FbankConfig) -> torch.Tensor:
    """Dither-free path: one multiply-add per frame sample before the FFT.

    With the waveform pre-emphasised once globally (``g[n] = x[n] - c x[n-1]``), frame t
    (starting at sample s, mean m) after DC removal and pre-emphasis is
    ``g[s+j] - (1-c) m`` for j >= 1 and ``(1-c) (x[s] - m)`` for j = 0. On CPU, clips
    are processed in chunks whose work buffers stay in cache (`_fbank_cpu`).
    """
    if x.device.type == "cpu":
        return _fbank_cpu(x, cfg)
    b, n = x.shape
    w, s, nfft = cfg.window_size, cfg.window_shift, cfg.n_fft
    t = 1 + (n - w) // s
    c = cfg.preemphasis
    win, win0, bands = _constants(cfg, x.device)

    if cfg.remove_dc_offset:
        sums = x.unfold(-1, w, s).sum(-1)  # (B, T) frame sums; a strided read, no copy
    else:
        sums = x.new_zeros(b, t)
    if c != 0.0:
        g = torch.empty_like(x)
        g[:, 0] = x[:, 0]  # overwritten by `first` below, like every frame's column 0
        torch.sub(x[:, 1:], x[:, :-1], alpha=c, out=g[:, 1:])
    else:
        g = x
    buf = x.new_zeros(b, t, nfft)  # the zero tail is the FFT padding
    y = buf[..., :w]
    torch.mul(g.unfold(-1, w, s), win, out=y)
    if cfg.remove_dc_offset and c != 1.0:
        y.addcmul_(sums[..., None], win, value=-(1.0 - c) / w)  # - (1-c) mean win
    if win0 != 0.0:  # hanning and povey windows start at zero: column 0 stays 0
        starts = torch.arange(t, device=x.device) * s
        y[..., 0] = (1.0 - c) * win0 * (x[:, starts] - sums / w)  # windowed 1st samples
    spec = torch.fft.rfft(buf, dim=-1)  # (B, T, K) complex
    out = x.new_empty(b, t, cfg.num_mel_bins)
    return _log_or_linear(bands(_bin_energies(spec, cfg), out), cfg)


class _CpuWork:
    """Buffers and views of `_fbank_cpu` for chunks of `m` clips of `n` samples.

    Made under ``torch.inference_mode``; the most recent one is kept per thread
    (`_cpu_work`), so repeated calls with one shape (a per-clip loop, training batches)
    skip the allocations and view set-up.
    """

    def __init__(self, cfg: FbankConfig, m: int, n: int, device: torch.device):
        w, s, nfft, nf = cfg.window_size, cfg.window_shift, cfg.n_fft, cfg.num_mel_bins
        t = 1 + (n - w) // s
        self.key = (cfg, m, n, device)
        self.win, self.win0, self.bands = _constants(cfg, device)
        self.buf = torch.empty(m, t, nfft, device=device)  # frames, zero-padded for the FFT
        self.buf[:, :, w:] = 0.0
        self.energies = torch.empty(m * t, nf, device=device)
        self.g = torch.empty(m, n, device=device)  # the pre-emphasised chunk
        # g[:, 0] is never computed; only frame 0's column 0 reads it, where the window is
        # 0 or the value is overwritten: it must just be finite.
        self.g[:, 0] = 0.0
        self.sums = torch.empty(m, t, 1, device=device)
        self.nbytes = 4 * (self.buf.numel() + self.energies.numel() + self.g.numel() + m * t)
        self._views(w, s)

    def _views(self, w: int, s: int) -> None:
        self.y = self.buf[:, :, :w]
        self.blocks = self.bands.split(self.energies)
        self.g_hi, self.frames = self.g[:, 1:], self.g.unfold(1, w, s)

    def head(self, m: int, cfg: FbankConfig) -> _CpuWork:
        """The first rows of the buffers, for a shorter chunk of `m` clips."""
        part = object.__new__(_CpuWork)
        t = self.sums.shape[1]
        part.key, part.nbytes = None, 0
        part.win, part.win0, part.bands = self.win, self.win0, self.bands
        part.buf, part.energies = self.buf[:m], self.energies[: m * t]
        part.g, part.sums = self.g[:m], self.sums[:m]
        part._views(cfg.window_size, cfg.window_shift)
        return part


_CPU_WORK = threading.local()
#: Work buffers larger than this (bytes) are not kept between calls (long recordings).
_CPU_WORK_KEEP_BYTES = 16 << 20


def _cpu_work(cfg: FbankConfig, m: int, n: int, device: torch.device) -> _CpuWork:
    """This thread's last `_CpuWork` if it fits, else a new one (kept unless too large)."""
    work = getattr(_CPU_WORK, "last", None)
    if work is None or work.key != (cfg, m, n, device):
        work = _CpuWork(cfg, m, n, device)
        _CPU_WORK.last = work if work.nbytes <= _CPU_WORK_KEEP_BYTES else None
    return work


def _fbank_cpu(x: torch.Tensor, cfg: FbankConfig) -> torch.Tensor:
    """`_fbank_fast` on CPU: chunks of clips through preallocated buffers.

    Each chunk (one 8 s clip, or several short ones: `_CPU_CHUNK_ELEMENTS`) goes through
    the same few buffers (`_CpuWork`) with ``out=`` operations: every pass works on data
    in cache, nothing is allocated per chunk but the FFT output, and the mel matmuls
    write their bands of columns in place. Python and dispatch overhead is kept low (few
    operations per chunk, buffers and views kept between calls, ``torch.inference_mode``).
    The returned tensor is allocated outside inference mode (an ordinary tensor).
    """
    b, n = x.shape
    w, s, nfft, nf = cfg.window_size, cfg.window_shift, cfg.n_fft, cfg.num_mel_bins
    t = 1 + (n - w) // s
    c = cfg.preemphasis
    dc = cfg.remove_dc_offset
    out = x.new_empty(b, t, nf)
    m = min(b, max(1, _CPU_CHUNK_ELEMENTS // (t * nfft)))  # clips per chunk
    # An input that requires grad keeps autograd on, and the out= operations below raise
    # (as they always did: this path is not differentiable).
    grad = x.requires_grad
    with torch.inference_mode(not grad):
        work = _CpuWork(cfg, m, n, x.device) if grad else _cpu_work(cfg, m, n, x.device)
        win, win0, bands = work.win, work.win0, work.bands
        for i in range(0, b, m):
            if i + m > b:  # a shorter last chunk
                m = b - i
                work = work.head(m, cfg)
            y, energies = work.y, work.energies
            xs = x if m == b else x[i:i + m]
            if c != 0.0:
                torch.sub(xs[:, 1:], xs[:, :-1], alpha=c, out=work.g_hi)
                torch.mul(work.frames, win, out=y)  # column 0 is fixed below (or weight 0)
            else:
                torch.mul(xs.unfold(1, w, s), win, out=y)
            if dc:
                sums = work.sums
                torch.sum(xs.unfold(1, w, s), dim=-1, keepdim=True, out=sums)
                if c != 1.0:
                    y.addcmul_(sums, win, value=-(1.0 - c) / w)  # - (1-c) mean win
            if win0 != 0.0:  # hanning and povey windows start at zero: column 0 stays 0
                first = xs[:, : (t - 1) * s + 1: s]  # (m, T) first samples of the frames
                if dc:
                    first = torch.sub(first, sums[..., 0], alpha=1.0 / w)
                torch.mul(first, (1.0 - c) * win0, out=y[..., 0])
            z = _bin_energies(torch.fft.rfft(work.buf), cfg)  # (m, T, 2K | K)
            bands.into(z.view(m * t, -1), work.blocks)
            dst = (out if m == b else out[i:i + m]).view(m * t, nf)
            if cfg.use_log_fbank:
                torch.log(energies.clamp_min_(_EPS), out=dst)
            else:
                dst.copy_(energies)
    return out


def fbank(wav: torch.Tensor | np.ndarray, cfg: FbankConfig = FbankConfig(),
          generator: torch.Generator | None = None) -> torch.Tensor:
    """Kaldi log-mel filter bank of one or more clips (no normalisation).

    Args:
        wav: `(N,)` or `(B, N)` float waveform at `cfg.sample_rate` Hz, nominally in
            [-1, 1] (tensor or numpy; computed in float32 on the tensor's device).
        cfg: the options.
        generator: random source of the dither (used only when ``cfg.dither > 0``; on
            the waveform's device).

    Returns:
        `(B, T, F)` float32 with ``T = num_frames(N, cfg)`` (B = 1 for a `(N,)` input;
        T = 0 when a clip is shorter than one frame with ``snip_edges``).

    Raises:
        DataError: not a `(N,)` / `(B, N)` floating-point waveform.
    """
    x = _as_batch(wav)
    b, n = x.shape
    t = num_frames(n, cfg)
    if t == 0 or b == 0:
        return x.new_zeros(b, t, cfg.num_mel_bins)
    if not cfg.snip_edges:
        x = _mirror_pad(x, cfg, t)
    if cfg.dither > 0:
        return _fbank_dithered(x, cfg, generator)
    return _fbank_fast(x.contiguous(), cfg)


def normalize_fbank(x: torch.Tensor, mean: float = FbankConfig.mean,
                    std: float = FbankConfig.std) -> torch.Tensor:
    """AST's normalisation ``(x - mean) / (2 * std)`` (output std about 0.5)."""
    return (x - mean) / (2.0 * std)


# ----- the module path -------------------------------------------------------------------
def _exporting() -> bool:
    """True while tracing (TorchScript ONNX exporter) or exporting (torch.export / dynamo)."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.5
    return (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
            or bool(is_exporting and is_exporting()))


class Fbank(torch.nn.Module):
    """`(B, N)` waveform -> `(B, T, F)` (normalised) Kaldi filter bank, ONNX-exportable.

    Two formulations, chosen by `method`:

    * ``"conv"``: the linear part (framing, DC removal, pre-emphasis, window, DFT) is one
      strided ``conv1d`` with a precomputed `(2K, 1, W)` kernel (K = n_fft//2 + 1),
      followed by squares, a matmul with the mel filters and the log: only real tensors,
      no FFT op, no shape-dependent Python, so a traced/exported ONNX graph takes any
      batch and length.
    * ``"fft"``: `fbank` (strided frames + real FFT): ~4x faster on CPU, and exact fp32 on
      CUDA, where cuDNN may run the conv in TF32 (~1e-3 relative error).
    * ``"auto"`` (default): conv while tracing or exporting (both ONNX exporters), fft
      otherwise.

    Both agree to ~1e-4 (tests check each against torchaudio). In training mode with
    ``cfg.dither > 0`` the fft path adds the dither.

    The constant matrices are non-persistent buffers: they follow ``.to(device)`` but are
    not in a model's state dict (they are a function of `cfg`, which callers store).
    """

    METHODS = ("auto", "fft", "conv")

    def __init__(self, cfg: FbankConfig = FbankConfig(), normalize: bool = True,
                 method: str = "auto"):
        super().__init__()
        if method not in self.METHODS:
            raise ConfigError(f"unknown Fbank method {method!r} ({'|'.join(self.METHODS)})")
        self.cfg = cfg
        self.normalize = normalize
        self.method = method
        self.register_buffer("kernel", dft_kernel(cfg).unsqueeze(1), persistent=False)
        mel = mel_filterbank(cfg)
        if cfg.use_power:
            mel = mel.repeat_interleave(2, dim=0)  # one row per (re, im) channel
        self.register_buffer("mel_t", mel.T.contiguous(), persistent=False)  # (F, 2K | K)

    def extra_repr(self) -> str:
        return f"key={self.cfg.key()}, normalize={self.normalize}, method={self.method!r}"

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """`(B, N)` or `(N,)` float waveform -> `(B, T, F)` float32."""
        cfg = self.cfg
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        exporting = _exporting()
        use_conv = self.method == "conv" or (self.method == "auto" and exporting)
        if self.training and cfg.dither > 0 and not exporting:
            use_conv = False
        if not use_conv:
            feats = fbank(wav, cfg)
        elif not exporting and num_frames(wav.shape[-1], cfg) == 0:
            feats = wav.new_zeros(wav.shape[0], 0, cfg.num_mel_bins, dtype=torch.float32)
        else:
            feats = self._conv_fbank(wav.to(self.kernel.dtype))
        if self.normalize:
            feats = normalize_fbank(feats, cfg.mean, cfg.std)
        return feats

    def _conv_fbank(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if not cfg.snip_edges:
            x = self._mirror(x)
        z = F.conv1d(x.unsqueeze(1), self.kernel, stride=cfg.window_shift)  # (B, 2K, T)
        e = z.square()
        if not cfg.use_power:
            e = torch.sqrt(e[:, 0::2] + e[:, 1::2])
        feats = torch.matmul(self.mel_t, e).transpose(1, 2)  # (B, T, F)
        if cfg.use_log_fbank:
            feats = torch.log(torch.clamp(feats, min=_EPS))
        return feats

    def _mirror(self, x: torch.Tensor) -> torch.Tensor:
        # The same index arithmetic as `_mirror_pad`, written on the length itself:
        # under tracing `x.shape[-1]` is a traced value, so the ONNX graph stays dynamic.
        w, s = self.cfg.window_size, self.cfg.window_shift
        n = x.shape[-1]
        frames = (n + s // 2) // s
        pos = torch.arange((frames - 1) * s + w, device=x.device) - (w // 2 - s // 2)
        pos = torch.remainder(pos, 2 * n)
        idx = torch.where(pos < n, pos, 2 * n - 1 - pos)
        return x.index_select(1, idx)
