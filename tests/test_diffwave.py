"""DiffWave vocoder: architecture, features, fast sampler, training resume, and
`rsctool synth --backend diffwave` end to end with a tiny vocoder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rsctool.cli import app
from rsctool.data.icbhi import read_icbhi
from rsctool.data.manifest import Cycle, read_manifest
from rsctool.errors import ConfigError
from rsctool.generators.diffwave import (
    AudioStore,
    DiffWave,
    DiffWaveConfig,
    MelSpectrogram,
    VocoderTrainer,
    VocoderTrainOptions,
    fast_schedule,
    perturb_mel,
    vocode,
)
from rsctool.project import Project
from rsctool.synth import SynthOptions, run

runner = CliRunner()
TINY = DiffWaveConfig.sized("tiny")
#: synth options that train a tiny vocoder in a few steps
TINY_SYNTH = {"backend": "diffwave", "vocoder_size": "tiny", "vocoder_steps": 4,
              "vocoder_batch_size": 2, "vocoder_segment_frames": 8,
              "vocoder_checkpoint_every": 2, "max_seconds": 1.0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- model

def test_default_config_is_diffwave_base():
    cfg = DiffWaveConfig()
    assert (cfg.residual_layers, cfg.residual_channels, cfg.n_mels, cfg.hop) == (30, 64, 80, 256)
    assert cfg.diffusion_steps == 50 and len(cfg.inference_betas) == 6
    betas = cfg.betas()
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.05)
    assert np.allclose(np.diff(betas), np.diff(betas)[0])  # linear
    m = DiffWave(cfg)
    dilations = [layer.dilated_conv.dilation[0] for layer in m.residual_layers]
    assert dilations[:11] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1]
    assert 2.5e6 < m.num_parameters() < 2.7e6  # DiffWave-base: ~2.6 M


@pytest.mark.parametrize("bad", [{"hop": 100}, {"n_mels": 0}, {"beta_end": 1.5},
                                 {"win_length": 4096}, {"inference_betas": (0.5, 1.0)}])
def test_config_validation(bad):
    with pytest.raises(ConfigError):
        DiffWaveConfig(**bad)
    with pytest.raises(ConfigError, match="unknown size"):
        DiffWaveConfig.sized("huge")
    cfg = DiffWaveConfig.sized("tiny", residual_layers=3)
    assert DiffWaveConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("hop", [64, 128, 256])
def test_forward_shapes_and_zero_init_output(hop):
    cfg = DiffWaveConfig.sized("tiny", hop=hop, n_fft=max(256, 4 * hop))
    m = DiffWave(cfg)
    frames = 5
    audio = torch.randn(2, frames * hop)
    mel = torch.rand(2, cfg.n_mels, frames)
    out = m(audio, torch.tensor([0, 49]), mel)
    assert out.shape == (2, frames * hop)
    # zero-initialised output weights: the first predictions are the bias alone
    assert torch.allclose(out, out.flatten()[0].expand_as(out))
    frac = m(audio, torch.tensor([3.25, 10.5]), mel)  # fractional steps interpolate
    assert frac.shape == out.shape
    with pytest.raises(ValueError, match="frames"):
        m(torch.randn(2, frames * hop + 1), torch.tensor([0, 1]), mel)


def test_mel_features_shape_and_range():
    mel = MelSpectrogram(TINY)
    x = torch.sin(torch.arange(TINY.hop * 10) * 0.3) * 0.5
    m = mel(x)
    assert m.shape == (TINY.n_mels, 11)  # N // hop + 1 centred frames
    assert float(m.min()) >= 0 and float(m.max()) <= 1
    assert mel(torch.stack([x, x])).shape == (2, TINY.n_mels, 11)
    silence = mel(torch.zeros(TINY.hop * 4))
    assert torch.all(silence == 0)  # the -100 dB floor maps to 0


def test_fast_schedule_aligns_to_training_steps():
    betas, alpha_cum, steps = fast_schedule(DiffWaveConfig())
    assert list(betas) == [1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5]
    assert np.all(np.diff(steps) > 0) and steps[0] == pytest.approx(0.0, abs=1e-6)
    assert steps[-1] < 49
    # the training schedule's cumulative alpha at the aligned step matches the sampler's
    talpha = np.cumprod(1 - DiffWaveConfig().betas())
    for s, t in zip(alpha_cum[1:], steps[1:], strict=True):
        lo = int(t)
        interp = talpha[lo] ** 0.5 + (t - lo) * (talpha[lo + 1] ** 0.5 - talpha[lo] ** 0.5)
        assert interp == pytest.approx(s ** 0.5, rel=1e-9)
    full = fast_schedule(DiffWaveConfig(), fast=False)
    assert len(full[0]) == 50
    with pytest.raises(ConfigError, match="beyond the training schedule"):
        fast_schedule(DiffWaveConfig(inference_betas=(0.5, 0.9, 0.9)))


def test_vocode_is_deterministic_per_generator_and_batch_independent():
    torch.manual_seed(0)
    m = DiffWave(TINY).eval()
    torch.nn.init.normal_(m.output_projection.weight, std=0.1)  # non-trivial output
    mel = torch.rand(2, TINY.n_mels, 6)
    a = vocode(m, mel, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    b = vocode(m, mel[1:], [torch.Generator().manual_seed(2)])
    c = vocode(m, mel[:1], [torch.Generator().manual_seed(1)])
    assert a.shape == (2, 6 * TINY.hop) and float(a.abs().max()) <= 1.0
    assert torch.allclose(a[1], b[0], atol=1e-5) and torch.allclose(a[0], c[0], atol=1e-5)
    d = vocode(m, mel[:1], [torch.Generator().manual_seed(3)])
    assert not torch.allclose(c, d)


def test_perturb_mel_is_seeded_and_bounded():
    mel = torch.rand(TINY.n_mels, 40)
    a, pa = perturb_mel(mel, np.random.default_rng(0), stretch=0.2, noise=0.05, gain_db=6)
    b, pb = perturb_mel(mel, np.random.default_rng(0), stretch=0.2, noise=0.05, gain_db=6)
    assert torch.equal(a, b) and pa == pb
    assert 0.8 <= pa["stretch"] <= 1.2 and abs(pa["gain_db"]) <= 6
    assert a.shape[-1] == round(40 * pa["stretch"])
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    same, p0 = perturb_mel(mel, np.random.default_rng(1), stretch=0, noise=0, gain_db=0)
    assert torch.equal(same, mel) and p0["stretch"] == 1.0


# --------------------------------------------------------------------------- training

def _store(tmp_path: Path, n: int = 3) -> AudioStore:
    from rsctool.testing import write_noise_wav

    cycles = []
    for i in range(n):
        wav = write_noise_wav(tmp_path / f"c{i}.wav", 1.0 + 0.3 * i, 8000, seed=i)
        cycles.append(Cycle(id=f"c{i}", audio=str(wav), start=0.1, end=0.9 + 0.3 * i,
                            label="normal", split="train"))
    return AudioStore.build(tmp_path / "store", cycles, TINY.sample_rate)


def test_audio_store_builds_once(tmp_path):
    store = _store(tmp_path)
    assert len(store) == 3 and store.sample_rate == 16000
    x = store.cycle(0)
    assert x.dtype == np.float32 and len(x) == round(0.8 * 16000)
    assert np.max(np.abs(x)) == pytest.approx(0.95, abs=1e-3)  # peak-normalised
    mtime = (tmp_path / "store" / "audio.i16").stat().st_mtime_ns
    again = _store(tmp_path)
    assert (tmp_path / "store" / "audio.i16").stat().st_mtime_ns == mtime
    assert again.ids == store.ids


def test_vocoder_training_resumes_exactly(tmp_path):
    store = _store(tmp_path)
    opts = VocoderTrainOptions(steps=4, batch_size=2, segment_frames=6, checkpoint_every=2,
                               lr=1e-3)
    straight = VocoderTrainer(TINY, opts, store, tmp_path / "a")
    summary = straight.fit()
    assert summary["step"] == 4 and np.isfinite(summary["loss"])
    half = VocoderTrainer(TINY, VocoderTrainOptions(**{**opts.__dict__, "steps": 2}), store,
                          tmp_path / "b")
    half.fit()
    resumed = VocoderTrainer(TINY, opts, store, tmp_path / "b")
    resumed.restore(tmp_path / "b" / "last.safetensors")
    assert resumed.step == 2
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    with pytest.raises(ConfigError, match="another architecture"):
        VocoderTrainer(DiffWaveConfig.sized("tiny", residual_layers=3), opts, store,
                       tmp_path / "c").restore(tmp_path / "b" / "last.safetensors")


# --------------------------------------------------------------------------- synth

@pytest.fixture(scope="session")
def analysed(tmp_path_factory) -> Path:
    from rsctool.analyze import AnalyzeOptions
    from rsctool.analyze import run as analyze
    from rsctool.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("dwproj")
    make_demo_dataset(root / "data", patients=8, seed=1, recordings_per_patient=1)
    analyze(Project.load(root / "rsctool.toml"),
            AnalyzeOptions(data_dir=root / "data", name="demo", val_fraction=0.2, plots=False))
    return root


@pytest.fixture
def project(analysed, tmp_path) -> Project:
    dst = tmp_path / "proj"
    shutil.copytree(analysed, dst, ignore=shutil.ignore_patterns("data"))
    return Project.load(dst / "rsctool.toml")


def test_diffwave_synth_trains_vocoder_once_and_resynthesises(project):
    res = run(project, SynthOptions(classes=["crackle", "wheeze"], n=2, **TINY_SYNTH),
              device="cpu")
    assert res.counts == {"crackle": 2, "wheeze": 2}
    voc = Project.load(project.path).get("vocoders", "diffwave-demo")
    assert voc["status"] == "done" and voc["step"] == 4 and voc["dataset"] == "demo"
    assert DiffWaveConfig.from_dict(voc["config"]) == TINY
    ckpt = project.abs(voc["checkpoint"])
    assert ckpt.suffix == ".safetensors" and ckpt.exists()
    real = {c.id: c for c in read_manifest(project.abs(project.get("datasets", "demo")
                                                          ["manifest"]))}
    for c in read_manifest(res.dir / "manifest.jsonl"):
        g = c.generator
        src = real[g["source_cycle"]]
        assert src.split == "train" and src.label == c.label  # never val/test audio
        assert c.patient == src.patient and c.device == src.device
        assert g["vocoder"] == "diffwave-demo" and g["steps"] == 6
        assert 0.9 <= g["stretch"] <= 1.1
        assert c.duration == pytest.approx(min(src.duration, 1.0) * g["stretch"], abs=1e-3)
    assert len(read_icbhi(res.dir / "wheeze", val_fraction=0)) == 2
    summary = json.loads((res.dir / "generation_summary.json").read_text())
    assert summary["backend"] == "diffwave" and summary["vocoder"] == "diffwave-demo"
    # a second set with another seed reuses the trained vocoder (no training steps)
    mtime = ckpt.stat().st_mtime_ns
    other = run(project, SynthOptions(classes=["both"], n=1, seed=7, **TINY_SYNTH),
                device="cpu")
    assert other.counts == {"both": 1} and ckpt.stat().st_mtime_ns == mtime
    # same options: a no-op
    assert run(project, SynthOptions(classes=["crackle", "wheeze"], n=2, **TINY_SYNTH),
               device="cpu").skipped
    # more vocoder steps continue its training (a new set: the vocoder changed)
    longer = run(project, SynthOptions(classes=["both"], n=1, **{**TINY_SYNTH,
                                                                 "vocoder_steps": 6}),
                 device="cpu")
    assert Project.load(project.path).get("vocoders", "diffwave-demo")["step"] == 6
    assert longer.name != other.name and longer.made == 1
    # another architecture needs a new name
    with pytest.raises(ConfigError, match="another architecture"):
        run(project, SynthOptions(classes=["both"], n=1, **{**TINY_SYNTH,
                                                            "vocoder_layers": 3}),
            device="cpu")


def test_diffwave_vocoder_training_interrupt_and_resume(project, monkeypatch):
    calls = {"n": 0}
    orig = VocoderTrainer.train_step

    def interrupt_at_3(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return orig(self)

    monkeypatch.setattr(VocoderTrainer, "train_step", interrupt_at_3)
    with pytest.raises(KeyboardInterrupt):
        run(project, SynthOptions(classes=["crackle"], n=1, **TINY_SYNTH), device="cpu")
    voc = Project.load(project.path).get("vocoders", "diffwave-demo")
    assert voc["status"] == "interrupted" and voc["step"] == 2
    monkeypatch.setattr(VocoderTrainer, "train_step", orig)
    res = run(project, SynthOptions(classes=["crackle"], n=1, **TINY_SYNTH), device="cpu")
    assert res.counts == {"crackle": 1}
    assert Project.load(project.path).get("vocoders", "diffwave-demo")["step"] == 4


def test_cli_diffwave_and_bad_class(project):
    proj = str(project.path)
    args = ["--project", proj, "--device", "cpu", "synth", "--backend", "diffwave",
            "--vocoder-size", "tiny", "--vocoder-steps", "2", "--vocoder-batch-size", "2",
            "--vocoder-segment-frames", "8", "--max-seconds", "1"]
    r = runner.invoke(app, [*args, "--classes", "both", "--n", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["counts"] == {"both": 1}
    bad = runner.invoke(app, [*args, "--classes", "stridor", "--n", "1"])
    assert bad.exit_code == 2 and "unknown class 'stridor'" in bad.output, bad.output


def test_resynthesis_keeps_the_source_cycles_level_like_real_cycles(tmp_path):
    # One level policy for real and synthetic cycles: neither is peak-normalised. Two
    # sources that differ only in level give outputs that differ by the same factor
    # (before: both came out at peak 0.95, a level no real cycle is guaranteed to have).
    from rsctool.generators import Request, postprocess
    from rsctool.generators.diffwave import DiffWaveBackend
    from rsctool.testing import write_noise_wav

    store = _store(tmp_path)
    VocoderTrainer(TINY, VocoderTrainOptions(steps=1, batch_size=2, segment_frames=6,
                                             checkpoint_every=1), store, tmp_path / "v").fit()
    ckpt = tmp_path / "v" / "last.safetensors"
    peaks = []
    for amp in (0.1, 0.02):
        wav = write_noise_wav(tmp_path / f"src{amp}.wav", 0.5, 16000, seed=3, amplitude=amp,
                              subtype="FLOAT")
        src = Cycle(id=f"s{amp}", audio=str(wav), start=0.0, end=0.5, label="crackle",
                    split="train")
        backend = DiffWaveBackend(ckpt, {"crackle": [src]}, max_seconds=1.0)
        gen = backend.generate([Request("crackle", 0, seed=11)])[0]
        assert gen.info["source_peak"] == pytest.approx(
            float(np.max(np.abs(sf_read(wav)))), rel=1e-5)
        assert gen.info["stretch"] == 1.0 and gen.info["gain_db"] == 0.0  # no perturbation
        assert gen.info["mel_noise"] == 0.0
        out = postprocess(gen.wav, gen.sample_rate, 16000, 0.5)   # default: no peak norm
        peaks.append(float(np.max(np.abs(out))))
    assert peaks[1] / peaks[0] == pytest.approx(0.2, rel=1e-3)
    # and the post-processing default keeps any level (real cycles are read as they are)
    quiet = 0.05 * np.sin(np.linspace(0, 200, 16000, dtype=np.float32))
    assert np.max(np.abs(postprocess(quiet, 16000, 16000, 1.0))) == pytest.approx(0.05, rel=1e-2)
    loud = postprocess(3.0 * quiet / 0.05, 16000, 16000, 1.0, fade_s=0)
    np.testing.assert_allclose(loud, quiet / 0.05 / np.max(np.abs(quiet / 0.05)), atol=1e-5)


def sf_read(path) -> np.ndarray:
    import soundfile as sf

    return sf.read(str(path), dtype="float32")[0]


def test_synth_defaults_follow_seed_002_and_the_shared_level_policy():
    o = SynthOptions()
    assert o.peak == 0.0                                     # no peak normalisation
    assert (o.stretch, o.mel_noise, o.gain_db) == (0.0, 0.0, 0.0)   # no mel perturbation
