"""`rsctool analyze` end to end on the demo dataset, the real ICBHI metadata and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from rsctool.cli import app
from rsctool.data.manifest import read_manifest
from rsctool.project import Project

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from rsctool.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "data"
    make_demo_dataset(root, patients=12, seed=0)
    return root


@pytest.fixture
def demo_copy(demo_dir, tmp_path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(demo_dir, dst)
    return dst


def test_analyze_demo_json_report_and_project(demo_dir, tmp_path):
    proj = tmp_path / "rsctool.toml"
    r = invoke("--project", proj, "analyze", demo_dir, "--json", "--name", "demo")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    for key in ("recordings", "patients", "cycles", "splits", "devices", "sample_rates",
                "duration_s", "synthesis_plan"):
        assert key in rep, key
    assert set(rep["splits"]) == {"train", "val", "test"}
    assert rep["cycles"] == sum(sum(v.values()) for v in rep["splits"].values())
    assert set(rep["duration_s"]) == {"min", "mean", "max"}
    assert rep["duration_s"]["min"] <= rep["duration_s"]["mean"] <= rep["duration_s"]["max"]
    assert len(rep["sample_rates"]) >= 2  # the demo mixes devices and rates
    # the synthesis plan fills minority classes of *train* up to the target ratio
    train = rep["splits"]["train"]
    target = int(np.ceil(0.5 * max(train.values())))
    for k, need in rep["synthesis_plan"].items():
        assert need == min(500, max(0, target - train[k]))

    project = Project.load(proj)
    rec = project.get("datasets", "demo")
    assert rec["status"] == "done" and rec["cycles"] == rep["cycles"]
    manifest = project.abs(rec["manifest"])
    cycles = read_manifest(manifest)
    assert len(cycles) == rep["cycles"]
    # validation is patient-wise and carved from train only
    pat = {s: {c.patient for c in cycles if c.split == s} for s in ("train", "val", "test")}
    assert pat["val"] and not (pat["val"] & pat["train"]) and not (pat["val"] & pat["test"])
    for png in rec["plots"]:
        assert project.abs(png).stat().st_size > 1000
    assert {Path(p).name for p in rec["plots"]} == {
        "class_distribution.png", "cycle_durations.png", "devices.png"}


def test_rerun_is_noop_force_reruns_change_reruns(demo_copy, tmp_path):
    proj = tmp_path / "rsctool.toml"
    assert invoke("--project", proj, "analyze", demo_copy).exit_code == 0
    before = proj.read_bytes()
    manifest = next((tmp_path / ".rsctool" / "manifests").glob("*.jsonl"))
    mtime = manifest.stat().st_mtime_ns
    r = invoke("--project", proj, "analyze", demo_copy)
    assert r.exit_code == 0 and "nothing to do" in r.stderr
    assert proj.read_bytes() == before and manifest.stat().st_mtime_ns == mtime
    r = invoke("--project", proj, "analyze", demo_copy, "--force")
    assert r.exit_code == 0 and "nothing to do" not in r.stderr
    # a changed annotation makes it run again
    txt = sorted(demo_copy.glob("*_*_*_*_*.txt"))[0]
    lines = txt.read_text().splitlines()
    txt.write_text("\n".join(lines[:-1]) + "\n")
    r = invoke("--project", proj, "analyze", demo_copy, "--json")
    assert r.exit_code == 0 and "nothing to do" not in r.stderr
    assert json.loads(r.stdout)["cycles"] == len(read_manifest(manifest))


def _bad_line_case(root: Path) -> Path:
    txt = sorted(root.glob("*_*_*_*_*.txt"))[1]
    lines = txt.read_text().splitlines()
    lines[2] = "0.5\tabc\t0\t0"
    txt.write_text("\n".join(lines) + "\n")
    return txt


def test_malformed_line_strict_exit_2_nothing_written(demo_copy, tmp_path):
    proj = tmp_path / "rsctool.toml"
    proj.write_text("schema = 1\n")
    before = proj.read_bytes()
    txt = _bad_line_case(demo_copy)
    r = invoke("--project", proj, "analyze", demo_copy)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert f"{txt.name}:3" in lines[0]
    assert proj.read_bytes() == before
    assert not (tmp_path / ".rsctool" / "manifests").exists()


def test_malformed_line_lenient_skips_and_counts(demo_copy, tmp_path):
    proj = tmp_path / "rsctool.toml"
    txt = _bad_line_case(demo_copy)
    r = invoke("--project", proj, "analyze", demo_copy, "--lenient", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["problem_count"] >= 1
    assert any(txt.name in p["path"] for p in rep["problems"])
    assert "warning" in r.stderr and txt.name in r.stderr


@pytest.mark.parametrize("kind", ["nan", "silent", "empty", "junk"])
def test_bad_audio_exit_2_names_file(demo_copy, tmp_path, kind):
    wav = sorted(demo_copy.glob("*.wav"))[0]
    info = sf.info(wav)
    if kind == "nan":
        x, sr = sf.read(wav, dtype="float32")
        x[100] = np.nan
        sf.write(wav, x, sr, subtype="FLOAT")
    elif kind == "silent":
        sf.write(wav, np.zeros(info.frames, dtype=np.float32), info.samplerate)
    elif kind == "empty":
        wav.write_bytes(b"")
    else:
        wav.write_bytes(b"RIFF\x00\x00junkjunkjunk" * 20)
    proj = tmp_path / "rsctool.toml"
    r = invoke("--project", proj, "analyze", demo_copy)
    assert r.exit_code == 2, r.output
    assert wav.name in r.stderr and "Traceback" not in r.output
    assert not proj.exists()


def test_second_run_reads_audio_stats_from_cache(demo_copy, tmp_path):
    from rsctool.analyze import AnalyzeOptions, run

    project = Project.load(tmp_path / "rsctool.toml")
    first = run(project, AnalyzeOptions(data_dir=demo_copy, plots=False))
    assert first.timings["cache_misses"] > 0 and first.timings["cache_hits"] == 0
    again = run(project, AnalyzeOptions(data_dir=demo_copy, plots=False, force=True))
    assert again.timings["cache_misses"] == 0
    assert again.timings["cache_hits"] == first.timings["cache_misses"]
    assert again.report["splits"] == first.report["splits"]


def test_patient_split_changes_split_hash(demo_dir, tmp_path):
    r1 = invoke("--project", tmp_path / "a.toml", "analyze", demo_dir, "--json", "--no-plots")
    r2 = invoke("--project", tmp_path / "b.toml", "analyze", demo_dir, "--json", "--no-plots",
                "--split", "patients:0.6")
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    a, b = json.loads(r1.stdout), json.loads(r2.stdout)
    assert a["split"]["spec"] == "official" and b["split"]["spec"] == "patients:0.6"
    assert a["split"]["hash"] != b["split"]["hash"]
    assert a["cycles"] == b["cycles"]


def test_folder_dataset(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "angles"
    for cls in ("0_degree", "45_degree", "90_degree"):
        for mat in ("plastic", "metal"):
            for i in range(6):
                p = root / cls / mat / f"{mat}_{cls}_1000hz_{i}.wav"
                p.parent.mkdir(parents=True, exist_ok=True)
                sf.write(p, 0.1 * rng.standard_normal(1600).astype(np.float32), 16000)
    r = invoke("--project", tmp_path / "p.toml", "analyze", root, "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["format"] == "folder" and rep["cycles"] == 36
    assert rep["classes"] == ["0_degree", "45_degree", "90_degree"]


def test_real_icbhi_metadata_counts(icbhi_meta, tmp_path_factory):
    from rsctool.analyze import AnalyzeOptions, run
    from rsctool.testing import synthesize_icbhi_audio

    data = synthesize_icbhi_audio(icbhi_meta, tmp_path_factory.mktemp("icbhi") / "db")
    project = Project.load(tmp_path_factory.mktemp("proj") / "rsctool.toml")
    # its time (target < 60 s on 2 cores) is benchmarks/bench_analyze.py's "cold" row
    res = run(project, AnalyzeOptions(data_dir=data, val_fraction=0.0, plots=False))
    rep = res.report
    assert (rep["recordings"], rep["patients"], rep["cycles"]) == (920, 126, 6898)
    assert rep["splits"]["train"] == {"normal": 2063, "crackle": 1215, "wheeze": 501, "both": 363}
    assert rep["splits"]["test"] == {"normal": 1579, "crackle": 649, "wheeze": 385, "both": 143}
    assert set(rep["devices"]) == {"AKGC417L", "LittC2SE", "Litt3200", "Meditron"}


def test_concurrent_analyze_invocations_lose_nothing(demo_dir, tmp_path):
    proj = tmp_path / "rsctool.toml"
    env = {**os.environ, "RSCTOOL_PROJECT": str(proj)}
    procs = [subprocess.Popen([sys.executable, "-m", "rsctool", "--quiet", "analyze",
                               str(demo_dir), "--name", f"d{i}", "--no-plots"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(8)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode()
    datasets = Project.load(proj).section("datasets")
    assert sorted(datasets) == [f"d{i}" for i in range(8)]


def _full_read_run(data: Path, root: Path, **kw):
    """A run on a fresh project (no audio-stats cache): the reference result."""
    from rsctool.analyze import AnalyzeOptions, run

    return run(Project.load(root / "rsctool.toml"), AnalyzeOptions(data_dir=data, **kw))


def test_warm_run_takes_audio_headers_from_the_cache(demo_copy, tmp_path, monkeypatch):
    import rsctool.audio
    from rsctool.analyze import AnalyzeOptions, run

    project = Project.load(tmp_path / "p" / "rsctool.toml")
    first = run(project, AnalyzeOptions(data_dir=demo_copy, plots=False))
    manifest = first.manifest.read_bytes()
    calls = []
    real_info = rsctool.audio.audio_info
    monkeypatch.setattr(rsctool.audio, "audio_info", lambda p: calls.append(p) or real_info(p))
    again = run(project, AnalyzeOptions(data_dir=demo_copy, plots=False, force=True))
    assert calls == []  # neither the reader nor the scanner opened an audio file
    assert again.report == first.report and again.manifest.read_bytes() == manifest
    # a replaced audio file (new size/mtime) is read again: its header is not trusted
    wav = sorted(demo_copy.glob("*.wav"))[0]
    x, sr = sf.read(wav, dtype="float32")
    sf.write(wav, x[: len(x) - sr // 10], sr)  # 0.1 s shorter
    third = run(project, AnalyzeOptions(data_dir=demo_copy, plots=False, force=True))
    assert str(wav) in calls and third.timings["cache_misses"] == 1
    ref = _full_read_run(demo_copy, tmp_path / "ref", plots=False)
    assert third.report["cycles"] == ref.report["cycles"]
    assert third.manifest.read_bytes() == ref.manifest.read_bytes()


def test_cached_headers_defer_to_the_full_read_for_cycles_past_the_audio(demo_copy, tmp_path):
    # With every header cached, a cycle that starts after the end of its audio must be
    # reported and dropped exactly as a run without a cache does it (strict: exit 2).
    from rsctool.analyze import AnalyzeOptions, run
    from rsctool.errors import DataError

    project = Project.load(tmp_path / "p" / "rsctool.toml")
    run(project, AnalyzeOptions(data_dir=demo_copy, plots=False, strict=False))
    txt = sorted(demo_copy.glob("*_*_*_*_*.txt"))[0]
    txt.write_text(txt.read_text().rstrip("\n") + "\n999.0\t1000.0\t0\t0\n")
    lenient = run(project, AnalyzeOptions(data_dir=demo_copy, plots=False, strict=False))
    ref = _full_read_run(demo_copy, tmp_path / "ref", plots=False, strict=False)
    assert lenient.report["problems"] == ref.report["problems"]
    assert any("after the end of the audio" in p["message"] for p in ref.report["problems"])
    assert lenient.manifest.read_bytes() == ref.manifest.read_bytes()
    with pytest.raises(DataError, match="after the end of the audio"):
        run(project, AnalyzeOptions(data_dir=demo_copy, plots=False, force=True))


def test_fast_manifest_encoding_matches_the_manifest_module(tmp_path):
    import dataclasses

    from rsctool.analyze import _write_manifest
    from rsctool.data.manifest import Cycle, write_manifest

    @dataclasses.dataclass
    class Extra:
        steps: int

    cycles = [
        Cycle(id="a_000", audio="/d/a.wav", start=0.0, end=1.25, label="crackle",
              split="train", crackle=1, wheeze=0, patient="101", age=0.5, sex="F",
              bmi=None, diagnosis="URTI", sample_rate=4000),
        Cycle(id="b", audio="ü/b.wav", start=0.1, end=2.0, label="normal", split="test",
              source="synthetic", generator={"backend": "x", "seed": 3, "prompt": "ä\n",
                                              "shape": (1, 2), "nested": {"k": [1.5]}},
              meta={"groups": ["g1", "g2"], "x": None}),
        Cycle(id="c", audio="c.wav", start=0.0, end=1.0, label="normal", split="val",
              source="synthetic", generator={"cfg": Extra(4)}),  # asdict turns it into a dict
    ]
    sha = _write_manifest(tmp_path / "new.jsonl", cycles)
    assert sha == write_manifest(tmp_path / "old.jsonl", cycles)
    assert (tmp_path / "new.jsonl").read_bytes() == (tmp_path / "old.jsonl").read_bytes()
    mtime = (tmp_path / "new.jsonl").stat().st_mtime_ns
    time.sleep(0.01)
    assert _write_manifest(tmp_path / "new.jsonl", cycles) == sha  # unchanged: not rewritten
    assert (tmp_path / "new.jsonl").stat().st_mtime_ns == mtime


def test_dataset_fingerprint_matches_an_os_walk(tmp_path):
    # The fingerprint is stored in the project: it must not change between versions.
    from rsctool.analyze import _dataset_fingerprint
    from rsctool.utils import params_hash

    root = tmp_path / "data"
    for rel in ("b.wav", "a.txt", ".hidden.txt", "sub/z.wav", "sub/deeper/y.txt",
                "a_dir/x.wav", ".git/ignored", "sub2/.h/ignored"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    (root / "link").symlink_to(root / "sub", target_is_directory=True)
    (root / "broken").symlink_to(root / "missing")
    (tmp_path / "ICBHI_challenge_train_test.txt").write_text("x")

    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            p = Path(dirpath, f)
            try:
                st = p.stat()
            except OSError:
                continue
            entries.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    for p in sorted(root.resolve().parent.glob("ICBHI_*.txt")):
        st = p.stat()
        entries.append(("../" + p.name, st.st_size, st.st_mtime_ns))
    digest, stats = _dataset_fingerprint(root)
    assert digest == params_hash(entries)
    assert set(stats) == {str(root / e[0]) for e in entries if not e[0].startswith("../")}


def _data_formats_commands() -> list[list[str]]:
    """The `rsctool ...` lines of docs/data-formats.md's folder example, as argv."""
    import shlex

    doc = (Path(__file__).resolve().parents[1] / "docs" / "data-formats.md").read_text()
    block = doc.split("rsctool demo-data angles", 1)[1].split("```", 1)[0]
    lines = ("rsctool demo-data angles" + block).replace("\\\n", " ").splitlines()
    return [shlex.split(line.split(" #", 1)[0])[1:] for line in lines
            if line.startswith("rsctool ")]


def test_an_empty_split_a_later_stage_needs_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    commands = _data_formats_commands()
    assert commands[0][:3] == ["demo-data", "angles", "--kind"], commands
    r = invoke("-q", *commands[0])
    assert r.exit_code == 0, r.output
    base = ["-q", "analyze", "angles", "--format", "folder", "--no-fbank-stats",
            "--name-pattern", "{material}_{class}_{frequency}_{seq}", "--group-by", "material"]
    for split, empty in ((None, "test"), ("random:0.6:0.2", "val")):
        r = invoke(*base, *(["--split", split] if split else []))
        assert r.exit_code == 2, r.output
        line = r.output.strip()
        assert len(line.splitlines()) == 1, r.output
        assert f"the {empty} split is empty (3 material groups: train " in line, line
        assert "metal" in line and "plastic" in line and "wood" in line
        assert "--split random:0.34:0.33" in line, line
        project = Path("rsctool.toml")  # nothing recorded
        assert not project.exists() or "[datasets" not in project.read_text()
    # the docs' example (as written there) works and gives every split a material
    for argv in commands[1:]:
        r = invoke("-q", *argv, "--no-fbank-stats", "--json")
        assert r.exit_code == 0, (argv, r.output)
        rep = json.loads(r.stdout)
        assert {s for s, n in rep["splits"].items() if sum(n.values())} >= \
            {"train", "val", "test"}, rep["splits"]


def test_dataset_paths_in_the_project_file_are_relative_inside_absolute_outside(tmp_path):
    # docs/data-formats.md says exactly what is stored (it said "relative" for every path)
    from rsctool.testing import write_folder_dataset

    files = [f"{c}/{c}_{i}.wav" for c in ("a", "b") for i in range(6)]
    inside = write_folder_dataset(tmp_path / "proj" / "data", files, seconds=0.2)
    outside = write_folder_dataset(tmp_path / "elsewhere" / "data", files, seconds=0.2)
    project = tmp_path / "proj" / "rsctool.toml"
    for name, root in (("in", inside), ("out", outside)):
        r = invoke("--project", project, "-q", "analyze", root, "--name", name,
                   "--no-fbank-stats", "--no-plots", "--split", "random:0.5:0.25")
        assert r.exit_code == 0, r.output
    p = Project.load(project)
    assert p.get("datasets", "in")["root"] == "data"
    assert p.get("datasets", "out")["root"] == outside.resolve().as_posix()
    assert p.get("datasets", "out")["manifest"] == ".rsctool/manifests/out.jsonl"
    doc = (Path(__file__).resolve().parents[1] / "docs" / "data-formats.md").read_text()
    section = doc.split("## The project file", 1)[1].split("\n## ", 1)[0]
    assert "stored relative to it" in section and "stored absolute" in section
