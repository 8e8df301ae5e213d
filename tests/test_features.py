"""The Kaldi filter bank: agreement with torchaudio, shapes, batching, the module, ONNX."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from rsctool.errors import ConfigError, DataError
from rsctool.features import (
    Fbank,
    FbankConfig,
    fbank,
    mel_filterbank,
    normalize_fbank,
    num_frames,
)

FIXTURE = Path(__file__).parent / "data" / "fbank_reference.npz"

# torchaudio keyword -> FbankConfig field (the fixture stores torchaudio's arguments).
_TA_TO_CFG = {"sample_frequency": "sample_rate", "window_type": "window",
              "frame_length": "frame_length_ms", "frame_shift": "frame_shift_ms",
              "preemphasis_coefficient": "preemphasis"}
# Options that do not change torchaudio's output when use_energy=False (the energy column).
_TA_IGNORED = {"htk_compat", "use_energy"}


def _reference_cases() -> list[tuple[str, FbankConfig, np.ndarray, np.ndarray]]:
    data = np.load(FIXTURE, allow_pickle=False)
    cases = []
    i = 0
    while f"wav_{i}" in data:
        args = json.loads(str(data[f"args_{i}"]))
        kw = {_TA_TO_CFG.get(k, k): v for k, v in args.items() if k not in _TA_IGNORED}
        wav = data[f"wav_{i}"].astype(np.float32) / 32768.0
        label = f"{i}-{args['window_type']}-{args['sample_frequency']}Hz"
        cases.append((label, FbankConfig(**kw), wav, data[f"fbank_{i}"]))
        i += 1
    return cases


CASES = _reference_cases()


def _assert_matches_reference(ours: np.ndarray, ref: np.ndarray, cfg: FbankConfig) -> None:
    """Max abs difference <= 1e-3 against torchaudio.

    In the log domain the bound applies to every filter within 60 dB of its frame's
    strongest filter. Weaker filters (a noise valley, the narrow filters below 100 Hz
    after pre-emphasis) hold ~1e-10 of the frame's energy: there, float32 rounding of
    any FFT makes two implementations differ by up to a few 1e-3 (torchaudio's own
    result differs that much from a float64 computation), so they get 5e-3.
    Linear energies (use_log_fbank=False) are compared relatively.
    """
    assert ours.shape == ref.shape
    if not cfg.use_log_fbank:
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-3)
        return
    diff = np.abs(ours - ref)
    strong = ref >= ref.max(axis=1, keepdims=True) - np.log(1e6)
    assert strong.mean() > 0.85  # the fixture's signals are mostly well above the floor
    assert diff[strong].max() <= 1e-3, diff[strong].max()
    assert diff.max() <= 5e-3, diff.max()


@pytest.mark.parametrize("label,cfg,wav,ref", CASES, ids=[c[0] for c in CASES])
def test_fbank_matches_torchaudio(label, cfg, wav, ref):
    assert len(CASES) == 6
    out = fbank(torch.from_numpy(wav), cfg)
    assert out.dtype == torch.float32 and out.shape == (1, *ref.shape)
    _assert_matches_reference(out[0].numpy(), ref, cfg)


@pytest.mark.parametrize("label,cfg,wav,ref", CASES, ids=[c[0] for c in CASES])
def test_module_conv_path_matches_torchaudio(label, cfg, wav, ref):
    module = Fbank(cfg, normalize=False, method="conv").eval()
    with torch.no_grad():
        out = module(torch.from_numpy(wav)[None])
    _assert_matches_reference(out[0].numpy(), ref, cfg)


def _kaldi_fbank_float64(wav: np.ndarray, cfg: FbankConfig) -> np.ndarray:
    """Kaldi's recipe written out plainly in float64 numpy (snip_edges=True only)."""
    w, s, n = cfg.window_size, cfg.window_shift, cfg.n_fft
    t = 1 + (len(wav) - w) // s
    frames = np.stack([wav[i * s:i * s + w] for i in range(t)]).astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    frames = frames - cfg.preemphasis * np.concatenate([frames[:, :1], frames[:, :-1]], 1)
    i = np.arange(w)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * i / (w - 1))
    win = {"hanning": hann, "povey": hann**0.85,
           "hamming": 0.54 - 0.46 * np.cos(2 * np.pi * i / (w - 1))}[cfg.window]
    power = np.abs(np.fft.rfft(frames * win, n=n)) ** 2
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    lo, hi = mel(cfg.low_freq), mel(cfg.high_freq_hz)
    step = (hi - lo) / (cfg.num_mel_bins + 1)
    bins = mel(np.arange(n // 2 + 1) * cfg.sample_rate / n)
    banks = np.zeros((n // 2 + 1, cfg.num_mel_bins))
    for m in range(cfg.num_mel_bins):
        left, centre, right = lo + m * step, lo + (m + 1) * step, lo + (m + 2) * step
        up, down = (bins - left) / (centre - left), (right - bins) / (right - centre)
        banks[:-1, m] = np.maximum(0.0, np.minimum(up, down))[:-1]
    return np.log(np.maximum(power @ banks, np.finfo(np.float32).eps))


@pytest.mark.parametrize("cfg", [
    FbankConfig(sample_rate=22050, num_mel_bins=80, window="hamming"),
    FbankConfig(sample_rate=4000, num_mel_bins=32, low_freq=60.0, high_freq=-100.0),
    FbankConfig(sample_rate=44100, num_mel_bins=128, window="hanning", preemphasis=0.9),
], ids=["22k-80", "4k-32", "44k-128"])
def test_fbank_matches_plain_float64_recipe(cfg):
    # Sample rates and filter counts the torchaudio fixture does not cover.
    rng = np.random.default_rng(cfg.sample_rate)
    n = int(0.6 * cfg.sample_rate)
    t = np.arange(n) / cfg.sample_rate
    wav = (0.05 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * 310 * t) + 0.05)
    wav = wav.astype(np.float32)
    ref = _kaldi_fbank_float64(wav, cfg).astype(np.float32)
    _assert_matches_reference(fbank(wav, cfg)[0].numpy(), ref, cfg)
    with torch.no_grad():
        conv = Fbank(cfg, normalize=False, method="conv")(torch.from_numpy(wav))
    _assert_matches_reference(conv[0].numpy(), ref, cfg)


def test_dithered_path_matches_reference_when_dither_is_negligible():
    # dither > 0 takes the plain per-frame formulation; with a 1e-9 std it must agree.
    label, cfg, wav, ref = CASES[0]
    out = fbank(wav, cfg.replace(dither=1e-9), generator=torch.Generator().manual_seed(0))
    _assert_matches_reference(out[0].numpy(), ref, cfg)


def test_dither_uses_the_generator():
    cfg = FbankConfig(dither=1.0)
    wav = torch.zeros(2, 4000)
    a = fbank(wav, cfg, generator=torch.Generator().manual_seed(1))
    b = fbank(wav, cfg, generator=torch.Generator().manual_seed(1))
    c = fbank(wav, cfg, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 0.1
    # Without dither, silence is Kaldi's floor log(eps) everywhere.
    silent = fbank(wav, FbankConfig())
    assert torch.allclose(silent, torch.full_like(silent, np.log(np.finfo(np.float32).eps)))


# ----- shapes and frame counts -------------------------------------------------------------
@pytest.mark.parametrize("n,snip,expected", [
    (0, True, 0), (399, True, 0), (400, True, 1), (559, True, 1), (560, True, 2),
    (16000, True, 98), (128000, True, 798),
    (1, False, 0), (80, False, 1), (239, False, 1), (240, False, 2), (16000, False, 100),
])
def test_num_frames_and_output_shape(n, snip, expected):
    cfg = FbankConfig(snip_edges=snip, num_mel_bins=40)
    assert num_frames(n, cfg) == expected
    rng = np.random.default_rng(n)
    out = fbank(rng.standard_normal(n).astype(np.float32) * 0.1, cfg)
    assert out.shape == (1, expected, 40)
    assert torch.isfinite(out).all()


def test_window_and_fft_sizes_follow_kaldi_truncation():
    assert (FbankConfig().window_size, FbankConfig().window_shift, FbankConfig().n_fft) \
        == (400, 160, 512)
    cfg = FbankConfig(sample_rate=8000)
    assert (cfg.window_size, cfg.window_shift, cfg.n_fft) == (200, 80, 256)
    cfg = FbankConfig(sample_rate=22050)  # 551.25 -> 551 samples, 220.5 -> 220
    assert (cfg.window_size, cfg.window_shift, cfg.n_fft) == (551, 220, 1024)


def test_one_dimensional_and_numpy_inputs():
    rng = np.random.default_rng(0)
    wav = (0.1 * rng.standard_normal(8000)).astype(np.float32)
    a = fbank(wav)
    b = fbank(torch.from_numpy(wav))
    c = fbank(torch.from_numpy(wav)[None].double())
    assert a.shape == (1, 48, 128)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cfg", [FbankConfig(), FbankConfig(window="hanning", snip_edges=False),
                                 FbankConfig(dither=0.5)], ids=["povey", "mirror", "dither"])
def test_batch_equals_per_item(cfg):
    rng = np.random.default_rng(3)
    t = np.arange(24000) / 16000
    batch = np.stack([0.1 * rng.standard_normal(24000) + 0.3 * np.sin(2 * np.pi * f * t)
                      for f in (200, 700, 1500, 3000, 5000)]).astype(np.float32)
    if cfg.dither > 0:
        # One generator draws the batch's noise in order; a per-item loop cannot match
        # it, so compare shapes and reproducibility instead of values.
        a = fbank(batch, cfg, generator=torch.Generator().manual_seed(0))
        b = fbank(batch, cfg, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert a.shape == (5, num_frames(24000, cfg), 128)
        return
    whole = fbank(batch, cfg)
    single = torch.cat([fbank(row, cfg) for row in batch])
    torch.testing.assert_close(whole, single, rtol=0, atol=1e-5)


def test_batches_larger_than_one_cpu_chunk():
    # 4 clips of 8 s span several cache-sized chunks; each must land in its own row.
    rng = np.random.default_rng(4)
    batch = torch.from_numpy((0.1 * rng.standard_normal((4, 128000))).astype(np.float32))
    batch[2] *= 10.0  # +20 dB: a row mix-up would shift the values by ~4.6
    out = fbank(batch)
    assert out.shape == (4, 798, 128)
    torch.testing.assert_close(out[2:3], fbank(batch[2]), rtol=0, atol=1e-5)
    torch.testing.assert_close(out[3:4], fbank(batch[3]), rtol=0, atol=1e-5)
    assert (out[2].mean() - out[1].mean()).item() == pytest.approx(np.log(100.0), abs=0.2)


@pytest.mark.parametrize("window", ["povey", "hamming", "rectangular"])
@pytest.mark.parametrize("pre,dc", [(0.97, True), (0.0, True), (0.97, False), (1.0, True)])
def test_cpu_chunks_and_first_column_agree_with_per_frame_path(window, pre, dc):
    # 7 clips of 0.5 s: several clips per cache-sized chunk and a shorter last chunk.
    # Windows with a non-zero first sample (hamming, rectangular) take the column-0 fix.
    # The reference is the plain per-frame formulation (the dither path, noise ~1e-12).
    cfg = FbankConfig(window=window, preemphasis=pre, remove_dc_offset=dc, num_mel_bins=64)
    rng = np.random.default_rng(7)
    batch = torch.from_numpy((0.1 * rng.standard_normal((7, 8000)) + 0.02).astype(np.float32))
    fast = fbank(batch, cfg)
    ref = fbank(batch, cfg.replace(dither=1e-12), generator=torch.Generator().manual_seed(0))
    assert fast.shape == ref.shape == (7, num_frames(8000, cfg), 64)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-4)


def test_repeated_and_concurrent_calls_keep_their_outputs():
    # The CPU path keeps its work buffers between calls (per thread): outputs must be
    # fresh tensors, and threads must not share buffers.
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(8)
    clips = [torch.from_numpy((a * rng.standard_normal(16000)).astype(np.float32))
             for a in (0.01, 0.1, 1.0)]
    refs = [fbank(c).clone() for c in clips]
    first = fbank(clips[0])
    for c in clips[1:]:
        fbank(c)
    torch.testing.assert_close(first, refs[0], rtol=0, atol=1e-5)
    with ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(fbank, clips * 4))
    for i, out in enumerate(outs):  # the clips are 20 dB apart: a mix-up shows as ~4.6
        torch.testing.assert_close(out, refs[i % 3], rtol=0, atol=1e-5)


def test_output_is_an_ordinary_tensor():
    # The CPU path runs under torch.inference_mode; what it returns must not be an
    # inference tensor (in-place ops and autograd outside inference mode must work).
    out = fbank(torch.randn(2, 16000) * 0.1)
    assert not out.is_inference() and out.is_contiguous()
    out.mul_(2.0)
    w = torch.ones(128, requires_grad=True)
    (out * w).sum().backward()
    assert w.grad is not None


def test_dc_offset_is_removed_per_frame():
    rng = np.random.default_rng(5)
    wav = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    torch.testing.assert_close(fbank(wav + 0.5), fbank(wav), rtol=0, atol=2e-3)
    raw = FbankConfig(remove_dc_offset=False)
    assert (fbank(wav + 0.5, raw) - fbank(wav, raw)).abs().max() > 1.0


def test_mel_filterbank_layout():
    mel = mel_filterbank(FbankConfig())
    assert mel.shape == (257, 128) and mel.dtype == torch.float32
    assert (mel >= 0).all() and mel.max() <= 1.0
    assert (mel[-1] == 0).all() and (mel[0] == 0).all()  # Nyquist row; DC is below 20 Hz
    # Filter peaks rise with the filter index (mel-spaced centres).
    peaks = mel[:, 40:].argmax(dim=0)
    assert (peaks[1:] >= peaks[:-1]).all()
    # Above 1 kHz a bin's up- and down-slope weights of adjacent filters sum to 1.
    assert torch.allclose(mel[40:200].sum(dim=1), torch.ones(160), atol=1e-5)
    small = mel_filterbank(FbankConfig(sample_rate=8000, num_mel_bins=23, high_freq=3000.0))
    assert small.shape == (129, 23)
    assert (small[97:] == 0).all()  # 3000 Hz = bin 96 at 31.25 Hz per bin


# ----- normalisation and the module -----------------------------------------------------------
def test_normalize_fbank_is_ast_convention():
    x = torch.tensor([-4.27, 0.0, 4.57])
    y = normalize_fbank(x, mean=-4.27, std=4.57)
    torch.testing.assert_close(y, torch.tensor([0.0, 4.27 / 9.14, (4.57 + 4.27) / 9.14]))
    cfg = FbankConfig()
    assert (cfg.mean, cfg.std) == (pytest.approx(-4.27, abs=0.01), pytest.approx(4.57, abs=0.01))


def test_module_normalises_and_has_no_state():
    cfg = FbankConfig(window="hanning", mean=-3.0, std=2.0)
    module = Fbank(cfg).eval()
    assert module.state_dict() == {}  # constants are derived from cfg, never saved
    rng = np.random.default_rng(6)
    wav = torch.from_numpy((0.1 * rng.standard_normal((2, 12000))).astype(np.float32))
    expected = (fbank(wav, cfg) + 3.0) / 4.0
    torch.testing.assert_close(module(wav), expected, rtol=0, atol=1e-6)
    conv = Fbank(cfg, method="conv").eval()
    torch.testing.assert_close(conv(wav), expected, rtol=0, atol=5e-4)
    assert conv(torch.zeros(3, 100)).shape == (3, 0, 128)  # shorter than a frame
    with pytest.raises(ConfigError, match="method"):
        Fbank(cfg, method="stft")


def test_module_onnx_export_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    cfg = FbankConfig(window="hanning")
    module = Fbank(cfg).eval()
    path = tmp_path / "fbank.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, (torch.randn(2, 16000),), str(path), dynamo=False,
                          input_names=["wav"], output_names=["fbank"], opset_version=17,
                          dynamic_axes={"wav": {0: "batch", 1: "samples"},
                                        "fbank": {0: "batch", 1: "frames"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    op_types = {node.op_type for node in __import__("onnx").load(str(path)).graph.node}
    assert "Conv" in op_types and not op_types & {"DFT", "STFT"}
    rng = np.random.default_rng(7)
    t = np.arange(24011) / 16000
    for shape in [(2, 16000), (3, 24011)]:  # another batch size and length than traced
        wav = (0.1 * rng.standard_normal(shape) + 0.3 * np.sin(2 * np.pi * 500 * t[:shape[1]]))
        wav = wav.astype(np.float32)
        got = session.run(None, {"wav": wav})[0]
        with torch.no_grad():
            want = module(torch.from_numpy(wav)).numpy()
        assert got.shape == want.shape == (shape[0], num_frames(shape[1], cfg), 128)
        assert np.abs(got - want).max() < 1e-3


@pytest.mark.slow
def test_module_dynamo_onnx_export(tmp_path):
    # The torch.export-based exporter (~10 s) must also take the conv formulation.
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    cfg = FbankConfig(window="hanning", num_mel_bins=64)
    module = Fbank(cfg).eval()
    path = tmp_path / "fbank.onnx"
    batch, samples = torch.export.Dim("batch"), torch.export.Dim("samples", min=400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 16000),), str(path), dynamo=True,
                          input_names=["wav"], output_names=["fbank"],
                          dynamic_shapes={"wav": {0: batch, 1: samples}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wav = (0.1 * np.random.default_rng(8).standard_normal((3, 20000))).astype(np.float32)
    got = session.run(None, {"wav": wav})[0]
    with torch.no_grad():
        want = module(torch.from_numpy(wav)).numpy()
    assert got.shape == want.shape == (3, num_frames(20000, cfg), 64)
    assert np.abs(got - want).max() < 1e-3


# ----- configuration ----------------------------------------------------------------------
def test_config_key_is_stable_and_sensitive():
    base = FbankConfig()
    # A fixed value: a change here invalidates every user's feature cache, so it must be
    # deliberate (bump FEATURES_VERSION when feature values change).
    assert base.key() == "cc2ad3bca1de03f1"
    assert FbankConfig(low_freq=20, sample_rate=16000).key() == base.key()  # 20 == 20.0
    assert FbankConfig.from_dict(json.loads(json.dumps(base.to_dict()))) == base
    keys = {base.key()}
    for change in [{"window": "hanning"}, {"num_mel_bins": 64}, {"sample_rate": 8000},
                   {"dither": 1e-5}, {"mean": -4.0}, {"std": 4.0}, {"snip_edges": False},
                   {"frame_shift_ms": 12.5}, {"preemphasis": 0.0}, {"high_freq": -200.0}]:
        keys.add(base.replace(**change).key())
    assert len(keys) == 11


@pytest.mark.parametrize("bad,match", [
    ({"window": "kaiser"}, "window"), ({"num_mel_bins": 3}, "num_mel_bins"),
    ({"sample_rate": 0}, "sample_rate"), ({"high_freq": 9000.0}, "nyquist"),
    ({"low_freq": 500.0, "high_freq": 400.0}, "nyquist"), ({"std": 0.0}, "std"),
    ({"frame_length_ms": 0.05}, "frame_length_ms"), ({"dither": -1.0}, "dither"),
    ({"num_mel_bins": "128"}, "num_mel_bins"), ({"snip_edges": 1}, "snip_edges"),
    ({"mean": float("nan")}, "mean"),
    ({"frame_length_ms": 25.0625, "round_to_power_of_two": False}, "odd"),
])
def test_bad_config_raises_config_error(bad, match):
    with pytest.raises(ConfigError, match=match):
        FbankConfig(**bad)


def test_from_dict_rejects_unknown_options():
    with pytest.raises(ConfigError, match="use_energy"):
        FbankConfig.from_dict({"use_energy": True})
    with pytest.raises(ConfigError):
        FbankConfig.from_dict(["povey"])


@pytest.mark.parametrize("bad,match", [
    (np.zeros((2, 3, 400), np.float32), "shape"), (np.array(["a", "b"]), "float"),
    (np.zeros(400, np.int16), "integer PCM"), (torch.zeros(400, dtype=torch.int32), "float"),
    (torch.zeros(2, 400, dtype=torch.complex64), "float"), ([0.0] * 400, "list"),
])
def test_bad_waveforms_raise_data_error(bad, match):
    with pytest.raises(DataError, match=match):
        fbank(bad)
