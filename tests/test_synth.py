"""`rsctool synth` with the text-to-audio backends (tiny random AudioLDM pipelines saved
to a folder), its outputs, resume and no-op rules, the quality filter, the selection of
synthetic cycles for training, and bad options."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from train_helpers import crash_and_resume
from typer.testing import CliRunner

from rsctool.cli import app
from rsctool.data.icbhi import read_icbhi
from rsctool.data.manifest import Cycle, read_manifest
from rsctool.data.synthetic import select_synthetic
from rsctool.errors import ConfigError, DataError
from rsctool.generators import postprocess, sample_seed
from rsctool.generators.audioldm import load_prompts, prompt_for
from rsctool.project import Project
from rsctool.synth import SynthOptions, run, stem_for

runner = CliRunner()
# 2 denoising steps of a 1 s clip: a fraction of a second per sample with the tiny model
TINY = {"steps": 2, "seconds": 1.0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def analysed(tmp_path_factory) -> Path:
    """Demo dataset (12 patients) analysed with a synthesis plan capped at 2 per class."""
    from rsctool.analyze import AnalyzeOptions
    from rsctool.analyze import run as analyze
    from rsctool.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("synthproj")
    make_demo_dataset(root / "data", patients=12, seed=0)
    analyze(Project.load(root / "rsctool.toml"),
            AnalyzeOptions(data_dir=root / "data", name="demo", val_fraction=0.2, plots=False,
                           max_synthetic_per_class=2))
    return root


@pytest.fixture(scope="session")
def tiny_ldm(tmp_path_factory) -> Path:
    from rsctool.testing import write_tiny_audioldm

    return write_tiny_audioldm(tmp_path_factory.mktemp("models") / "tiny-audioldm", "audioldm")


@pytest.fixture
def project(analysed, tmp_path) -> Project:
    dst = tmp_path / "proj"
    shutil.copytree(analysed, dst, ignore=shutil.ignore_patterns("data"))
    return Project.load(dst / "rsctool.toml")


def _opts(model: Path, **kw) -> SynthOptions:
    return SynthOptions(model=str(model), **{**TINY, **kw})


def _wav_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*.wav"))}


# --------------------------------------------------------------------------- units

def test_postprocess_resamples_crops_pads_normalises_and_fades():
    rng = np.random.default_rng(0)
    wav = rng.standard_normal(8000).astype(np.float32) * 3.0  # 0.5 s at 16 kHz, too loud
    out = postprocess(wav, 16000, 4000, 1.0, peak=0.9, fade_s=0.01)
    assert out.shape == (4000,) and out.dtype == np.float32
    assert np.max(np.abs(out)) <= 0.9 + 1e-6
    assert abs(out[0]) < 1e-3 and abs(out[-1]) < 1e-3  # faded ends
    cropped = postprocess(np.ones(48000, np.float32), 16000, 16000, 2.0, peak=0.5, fade_s=0)
    assert cropped.shape == (32000,) and np.allclose(cropped, 0.5)
    bad = postprocess(np.array([np.nan, 1.0, np.inf] * 100, np.float32), 16000, 16000, 0.1)
    assert np.isfinite(bad).all()


def test_sample_seeds_are_distinct_and_stable():
    seeds = {sample_seed(0, c, i) for c in ("crackle", "wheeze") for i in range(50)}
    assert len(seeds) == 100
    assert sample_seed(0, "crackle", 3) == sample_seed(0, "crackle", 3)
    assert sample_seed(1, "crackle", 3) != sample_seed(0, "crackle", 3)


def test_packaged_prompts_cover_all_classes_and_custom_files(tmp_path):
    prompts, negative, sha = load_prompts()
    assert set(prompts) == {"normal", "crackle", "wheeze", "both"}
    assert all(len(v) >= 3 for v in prompts.values()) and negative and len(sha) == 64
    assert prompt_for(prompts, "crackle", 0) != prompt_for(prompts, "crackle", 1)
    assert prompt_for(prompts, "crackle", len(prompts["crackle"])) == prompts["crackle"][0]
    custom = tmp_path / "p.toml"
    custom.write_text('[prompts]\ncrackle = ["crackly lungs"]\n', encoding="utf-8")
    assert load_prompts(custom)[:2] == ({"crackle": ["crackly lungs"]}, "")
    custom.write_text('[prompts]\ncrackle = []\n', encoding="utf-8")
    with pytest.raises(DataError, match="prompts.crackle"):
        load_prompts(custom)
    with pytest.raises(DataError, match="not found"):
        load_prompts(tmp_path / "missing.toml")


# --------------------------------------------------------------------------- end to end

def test_audioldm_outputs_read_back_and_register(project, tiny_ldm):
    res = run(project, _opts(tiny_ldm, classes=["crackle", "wheeze"], n=2), device="cpu")
    assert res.counts == {"crackle": 2, "wheeze": 2} and res.made == 4 and not res.skipped
    out = res.dir
    # per class: wav + ICBHI annotation, readable by the dataset reader
    for label, (c, w) in (("crackle", (1, 0)), ("wheeze", (0, 1))):
        cycles = read_icbhi(out / label, val_fraction=0)
        assert [x.label for x in cycles] == [label] * 2
        assert {x.recording for x in cycles} == {stem_for(label, i, "audioldm") for i in (0, 1)}
        assert all(x.crackle == c and x.wheeze == w for x in cycles)
        info = sf.info(str(out / label / f"{stem_for(label, 0, 'audioldm')}.wav"))
        assert info.samplerate == 16000 and info.frames == 16000
        assert (out / "annotations" / f"{label}.txt").read_text().count("\n") == 2
    # the synthetic manifest: valid, DESIGN fields, generator records
    manifest = read_manifest(out / "manifest.jsonl")
    assert len(manifest) == 4
    for cyc in manifest:
        assert cyc.source == "synthetic" and cyc.split == "train"
        assert cyc.patient is None and cyc.device is None  # never made-up metadata
        g = cyc.generator
        assert g["backend"] == "audioldm" and g["steps"] == 2 and g["guidance"] == 7.5
        assert g["prompt"] and g["negative_prompt"] and isinstance(g["seed"], int)
        assert g["seed"] == sample_seed(0, cyc.label, g["index"])
    wav = sf.read(manifest[0].audio)[0]
    assert 0 < np.max(np.abs(wav)) <= 1.0  # the generator's own level (no peak normalisation)
    # summary and project record
    summary = json.loads((out / "generation_summary.json").read_text())
    assert summary["backend"] == "audioldm" and summary["steps"] == 2
    assert summary["counts"] == {"crackle": 2, "wheeze": 2}
    assert set(summary["prompts"]) == {"crackle", "wheeze"}
    assert len(summary["seeds"]["crackle"]) == 2 and summary["seconds_per_sample"]["all"] > 0
    rec = Project.load(project.path).get("synthetic", res.name)
    assert rec["status"] == "done" and rec["backend"] == "audioldm" and rec["n"] == 2
    assert rec["counts"] == {"crackle": 2, "wheeze": 2} and rec["dataset"] == "demo"
    assert project.abs(rec["manifest"]) == out / "manifest.jsonl" and rec["sha256"]


def test_deterministic_per_seed(project, tiny_ldm, tmp_path):
    a = run(project, _opts(tiny_ldm, classes=["both"], n=2, name="a"), device="cpu")
    b = run(project, _opts(tiny_ldm, classes=["both"], n=2, name="b"), device="cpu")
    c = run(project, _opts(tiny_ldm, classes=["both"], n=2, name="c", seed=1), device="cpu")
    assert _wav_bytes(a.dir) == _wav_bytes(b.dir)
    assert _wav_bytes(a.dir) != _wav_bytes(c.dir)
    # a sample does not depend on its batch either
    d = run(project, _opts(tiny_ldm, classes=["both"], n=2, name="d", batch_size=2),
            device="cpu")
    for (ka, va), (kd, vd) in zip(_wav_bytes(a.dir).items(), _wav_bytes(d.dir).items(),
                                  strict=True):
        assert ka == kd
        x, y = (np.frombuffer(v[44:], np.int16).astype(int) for v in (va, vd))
        assert np.max(np.abs(x - y)) <= 2  # batched float rounding only


def test_resume_after_interruption_then_noop(project, tiny_ldm, monkeypatch):
    from rsctool.generators.audioldm import AudioLDMBackend

    straight = run(project, _opts(tiny_ldm, classes=["crackle"], n=4, name="straight"),
                   device="cpu")
    orig = AudioLDMBackend.generate
    calls = {"n": 0}

    def interrupt_third(self, requests):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return orig(self, requests)

    monkeypatch.setattr(AudioLDMBackend, "generate", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        run(project, _opts(tiny_ldm, classes=["crackle"], n=4, name="resumed"), device="cpu")
    rec = Project.load(project.path).get("synthetic", "resumed")
    assert rec["status"] == "interrupted" and rec["counts"] == {"crackle": 2}
    monkeypatch.setattr(AudioLDMBackend, "generate", orig)
    seen = []
    monkeypatch.setattr(AudioLDMBackend, "generate",
                        lambda self, reqs: seen.extend(r.index for r in reqs) or orig(self, reqs))
    res = run(project, _opts(tiny_ldm, classes=["crackle"], n=4, name="resumed"), device="cpu")
    assert seen == [2, 3] and res.made == 2  # continued from the first missing sample
    assert _wav_bytes(res.dir) == _wav_bytes(straight.dir)
    # same options again: nothing to do, nothing loaded
    seen.clear()
    again = run(project, _opts(tiny_ldm, classes=["crackle"], n=4, name="resumed"),
                device="cpu")
    assert again.skipped and seen == [] and again.counts == {"crackle": 4}
    # without --name the set made with the same options is found
    assert run(project, _opts(tiny_ldm, classes=["crackle"], n=4), device="cpu").skipped
    # a larger --n extends the set; a smaller one is refused
    more = run(project, _opts(tiny_ldm, classes=["crackle"], n=5, name="resumed"),
               device="cpu")
    assert more.made == 1 and seen == [4] and more.counts == {"crackle": 5}
    with pytest.raises(ConfigError, match="shrink"):
        run(project, _opts(tiny_ldm, classes=["crackle"], n=3, name="resumed"), device="cpu")


def test_other_options_under_same_name_need_force(project, tiny_ldm):
    first = run(project, _opts(tiny_ldm, classes=["wheeze"], n=1, name="s"), device="cpu")
    with pytest.raises(ConfigError, match="other options"):
        run(project, _opts(tiny_ldm, classes=["wheeze"], n=1, name="s", seed=5), device="cpu")
    forced = run(project, _opts(tiny_ldm, classes=["wheeze"], n=1, name="s", seed=5,
                                force=True), device="cpu")
    assert forced.made == 1 and forced.dir == first.dir


def test_balance_takes_the_synthesis_plan(project, tiny_ldm):
    report = json.loads(project.abs(project.get("datasets", "demo")["report"]).read_text())
    plan = {k: v for k, v in report["synthesis_plan"].items() if v}
    assert plan and max(plan.values()) <= 2
    res = run(project, _opts(tiny_ldm, balance=True), device="cpu")
    assert res.counts == plan
    assert "n" not in project.get("synthetic", res.name)


def test_custom_prompt_file_and_missing_class(project, tiny_ldm, tmp_path):
    prompts = tmp_path / "prompts.toml"
    prompts.write_text('negative = "music"\n[prompts]\nwheeze = ["a whistle", "a tone"]\n',
                       encoding="utf-8")
    res = run(project, _opts(tiny_ldm, classes=["wheeze"], n=2, prompts=str(prompts)),
              device="cpu")
    gens = [c.generator for c in read_manifest(res.dir / "manifest.jsonl")]
    assert [g["prompt"] for g in gens] == ["a whistle", "a tone"]
    assert {g["negative_prompt"] for g in gens} == {"music"}
    with pytest.raises(ConfigError, match="no prompts for class 'crackle'"):
        run(project, _opts(tiny_ldm, classes=["crackle"], n=1, prompts=str(prompts)),
            device="cpu")


def test_audioldm2_backend_end_to_end(project, tmp_path):
    from rsctool.testing import write_tiny_audioldm

    model = write_tiny_audioldm(tmp_path / "tiny-audioldm2", "audioldm2")
    res = run(project, SynthOptions(backend="audioldm2", model=str(model), classes=["crackle"],
                                    n=2, **TINY), device="cpu")
    cycles = read_manifest(res.dir / "manifest.jsonl")
    assert [c.generator["backend"] for c in cycles] == ["audioldm2"] * 2
    assert cycles[0].generator["guidance"] == 3.5  # AudioLDM 2's own default
    assert len(read_icbhi(res.dir / "crackle", val_fraction=0)) == 2


# --------------------------------------------------------------------------- quality filter

@pytest.fixture(scope="session")
def trained(analysed, tmp_path_factory) -> Path:
    """The analysed project plus one tiny trained CNN run named `clf`."""
    from rsctool.train import TrainOptions
    from rsctool.train import run as train

    dst = tmp_path_factory.mktemp("synthtrained") / "proj"
    shutil.copytree(analysed, dst, ignore=shutil.ignore_patterns("data"))
    train(Project.load(dst / "rsctool.toml"),
          TrainOptions(run="clf", model="cnn", size="tiny", epochs=1, clip_seconds=1.0,
                       batch_size=64, lr=3e-3), device="cpu")
    return dst


def test_quality_filter_drops_samples_below_min_confidence(trained, tiny_ldm, tmp_path):
    dst = tmp_path / "proj"
    shutil.copytree(trained, dst)
    project = Project.load(dst / "rsctool.toml")
    keep = run(project, _opts(tiny_ldm, classes=["crackle"], n=2, min_confidence=1e-9),
               device="cpu")
    cycles = read_manifest(keep.dir / "manifest.jsonl")
    assert keep.counts == {"crackle": 2}
    assert all(0 < c.generator["confidence"] <= 1 for c in cycles)
    summary = json.loads((keep.dir / "generation_summary.json").read_text())
    assert summary["filter"]["run"] == "clf" and summary["filter"]["min_confidence"] == 1e-9
    # an unreachable threshold: every try is rejected, recorded, and not tried again
    drop = run(project, _opts(tiny_ldm, classes=["crackle"], n=2, min_confidence=1.0,
                              max_tries=2, name="strict"), device="cpu")
    assert drop.counts == {"crackle": 0} and drop.rejected == {"crackle": 4}
    rejected = (drop.dir / "rejected.jsonl").read_text().splitlines()
    assert [json.loads(x)["index"] for x in rejected] == [0, 1, 2, 3]
    assert not list(drop.dir.rglob("*.wav"))


# --------------------------------------------------------------------------- selection

def _syn(label: str, i: int) -> Cycle:
    return Cycle(id=f"s:{label}{i:03d}", audio="x.wav", start=0.0, end=1.0, label=label,
                 split="train", source="synthetic", generator={"backend": "test"})


def test_select_synthetic_caps_ratio_and_nesting():
    classes = ["normal", "crackle", "wheeze", "both"]
    pool = [_syn("crackle", i) for i in range(10)] + [_syn("wheeze", i) for i in range(3)] \
        + [_syn("both", i) for i in range(6)]
    real = [Cycle(id=f"r{i}", audio="r.wav", start=0, end=1, label="normal", split="train")
            for i in range(20)]
    everything = select_synthetic(pool, real, classes)
    assert len(everything) == 19
    capped = select_synthetic(pool, real, classes, max_per_class=4)
    counts = {c: sum(x.label == c for x in capped) for c in classes}
    assert counts == {"normal": 0, "crackle": 4, "wheeze": 3, "both": 4}
    # nested: a larger cap only adds cycles
    for small, big in ((0, 2), (2, 4), (4, 8)):
        a = {x.id for x in select_synthetic(pool, real, classes, max_per_class=small)}
        b = {x.id for x in select_synthetic(pool, real, classes, max_per_class=big)}
        assert a <= b
    # ratio 0.5 of 20 real = 10, shared evenly; wheeze has only 3, the rest go to others
    ratio = select_synthetic(pool, real, classes, ratio=0.5)
    counts = {c: sum(x.label == c for x in ratio) for c in classes}
    assert sum(counts.values()) == 10 and counts["wheeze"] == 3
    assert abs(counts["crackle"] - counts["both"]) <= 1
    # the seed changes which ones
    assert {x.id for x in select_synthetic(pool, real, classes, max_per_class=2, seed=1)} != \
        {x.id for x in select_synthetic(pool, real, classes, max_per_class=2, seed=0)}
    with pytest.raises(ConfigError, match="does not train"):
        select_synthetic(pool, real, ["normal", "crackle"])
    with pytest.raises(ConfigError, match="^synthetic_ratio must be > 0"):
        select_synthetic(pool, real, classes, ratio=0)


FAST = {"model": "cnn", "size": "tiny", "clip_seconds": 1.0, "batch_size": 64, "lr": 3e-3}


def test_train_mixes_synthetic_into_train_only_and_records_ids(project, tiny_ldm, monkeypatch):
    import rsctool.data.dataset as ds
    from rsctool.train import TrainOptions
    from rsctool.train import run as train

    syn = run(project, _opts(tiny_ldm, classes=["crackle", "both"], n=3, name="syn"),
              device="cpu")
    made: list = []
    orig = ds.CycleDataset.__init__

    def spy(self, cycles, *a, **kw):
        made.append(list(cycles))
        orig(self, cycles, *a, **kw)

    monkeypatch.setattr(ds.CycleDataset, "__init__", spy)
    res = train(project, TrainOptions(epochs=1, synthetic=[syn.name], max_synthetic_per_class=2,
                                      **FAST), device="cpu")
    train_set, val_set = made[0], made[1]
    synthetic = [c for c in train_set if c.source == "synthetic"]
    assert len(synthetic) == 4 and {c.label for c in synthetic} == {"crackle", "both"}
    assert all(c.source == "real" for c in val_set)
    assert all(c.split in ("train", "val") for c in train_set + val_set)
    ids = (res.dir / "synthetic_ids.txt").read_text().split()
    assert ids == sorted(c.id for c in synthetic)
    rec = Project.load(project.path).get("runs", res.run)
    assert rec["synthetic"] == ["syn"] and rec["synthetic_count"] == 4
    cfg = json.loads((res.dir / "config.json").read_text())
    assert cfg["synthetic"]["sha256"] == rec["synthetic_sha256"]
    assert cfg["options"]["max_synthetic_per_class"] == 2


def test_cli_synth_and_train_sweep(project, tiny_ldm):
    proj = str(project.path)
    r = runner.invoke(app, ["--project", proj, "--device", "cpu", "synth", "--classes",
                            "crackle", "wheeze", "--n", "2", "--model", str(tiny_ldm),
                            "--steps", "2", "--seconds", "1", "--name", "cli", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["counts"] == {"crackle": 2, "wheeze": 2} and doc["made"] == 4
    again = runner.invoke(app, ["--project", proj, "--device", "cpu", "synth", "--classes",
                                "crackle,wheeze", "--n", "2", "--model", str(tiny_ldm),
                                "--steps", "2", "--seconds", "1", "--name", "cli", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["skipped"] is True
    # a sweep is one loop over --max-synthetic-per-class
    for n in (0, 2):
        t = runner.invoke(app, ["--project", proj, "--device", "cpu", "train", "--model", "cnn",
                                "--size", "tiny", "--epochs", "1", "--set", "clip_seconds=1",
                                "--batch-size", "64", "--synthetic", "cli",
                                "--max-synthetic-per-class", str(n), "--run", f"sweep-{n}",
                                "--json"])
        assert t.exit_code == 0, t.output
        assert Project.load(proj).get("runs", f"sweep-{n}")["synthetic_count"] == 2 * n


@pytest.mark.parametrize(("args", "message"), [
    (["synth", "--classes", "crackle", "bogus"], "unknown class 'bogus'"),
    (["synth", "--classes", "rales"], "unknown class 'rales'"),
    (["synth", "--n", "0"], "--n must be an integer >= 1"),
    (["synth", "--n", "-3"], "--n must be an integer >= 1"),
    (["synth", "--backend", "wavenet"], "--backend must be one of"),
    (["synth", "--balance", "--n", "3"], "--n and --balance exclude each other"),
    (["synth", "--min-confidence", "0.5"], "--min-confidence needs a trained classifier"),
    (["synth", "--min-confidence", "0.5", "--filter-run", "ghost"], "run 'ghost' is not in"),
    (["synth", "--min-confidence", "1.5"], "--min-confidence must be in (0, 1]"),
    (["synth", "--model", "/no/such/folder", "--n", "1"], "no such folder"),
    (["synth", "--steps", "0"], "--steps"),
    (["synth", "wheeze"], "unexpected argument 'wheeze'"),
    (["train", "--model", "cnn", "--synthetic", "ghost"], "--synthetic 'ghost' is not in"),
    (["train", "--model", "cnn", "--adversarial"], "need --synthetic NAME"),
    (["train", "--model", "cnn", "--synthetic", "x", "--synthetic-ratio", "0"],
     "--synthetic-ratio must be > 0"),
])
def test_bad_options_exit_2_with_one_line(project, args, message):
    before = project.path.read_bytes()
    r = runner.invoke(app, ["--project", str(project.path), "--device", "cpu", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output
    assert project.path.read_bytes() == before  # nothing half-written


def test_unfinished_set_cannot_train(project, tiny_ldm, monkeypatch):
    from rsctool.generators.audioldm import AudioLDMBackend

    monkeypatch.setattr(AudioLDMBackend, "generate",
                        lambda self, reqs: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        run(project, _opts(tiny_ldm, classes=["crackle"], n=1, name="half"), device="cpu")
    r = runner.invoke(app, ["--project", str(project.path), "--device", "cpu", "train",
                            "--model", "cnn", "--synthetic", "half"])
    assert r.exit_code == 2 and "is not finished" in r.output, r.output


# --------------------------------------------------------------------------- adversarial

def test_adversarial_run_records_discriminator_accuracy(project, tiny_ldm):
    from rsctool.checkpoint import load_checkpoint
    from rsctool.runs import load_run

    run(project, _opts(tiny_ldm, classes=["crackle", "wheeze"], n=3, name="adv"),
        device="cpu")
    r = runner.invoke(app, ["--project", str(project.path), "--device", "cpu", "train",
                            "--model", "cnn", "--size", "tiny", "--epochs", "2",
                            "--set", "clip_seconds=1", "--batch-size", "32", "--synthetic",
                            "adv", "--adversarial", "--adv-weight", "0.5", "--run", "adv",
                            "--json"])
    assert r.exit_code == 0, r.output
    run_dir = Path(json.loads(r.stdout)["dir"])
    hist = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
    for h in hist:
        assert 0.0 <= h["disc_accuracy"] <= 1.0 and h["disc_loss"] > 0
        assert 0.0 <= h["disc_balanced_accuracy"] <= 1.0
    assert "disc_accuracy" in (run_dir / "history.csv").read_text().splitlines()[0]
    ck = load_checkpoint(run_dir / "last.safetensors")
    assert "adversary" in ck.extras and not any(k.startswith("extra") for k in ck.model_state)
    opts = ck.state["config"]["options"]
    assert opts["adversarial"] is True and opts["adv_weight"] == 0.5
    assert load_run(Project.load(project.path), "adv").model is not None  # eval unaffected


def test_adversarial_run_resumes_with_its_discriminator(project, tiny_ldm, monkeypatch):
    import torch

    from rsctool.checkpoint import load_checkpoint
    from rsctool.train import run as train

    run(project, _opts(tiny_ldm, classes=["crackle"], n=4, name="advr"), device="cpu")
    opts = dict(epochs=2, synthetic=["advr"], adversarial=True, deterministic=True,
                checkpoint_every=1, **{**FAST, "batch_size": 32})
    straight, resumed = crash_and_resume(monkeypatch, functools.partial(train, device="cpu"),
                                         project, opts, crash_at=3)
    a = load_checkpoint(straight.dir / "last.safetensors")
    b = load_checkpoint(resumed.dir / "last.safetensors")
    for k, v in a.extras["adversary"].items():
        assert torch.equal(v, b.extras["adversary"][k]), k
    for k, v in a.model_state.items():
        assert torch.equal(v, b.model_state[k]), k
