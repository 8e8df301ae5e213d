"""Killed and interrupted runs resume exactly; checkpoints never unpickle."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rsctool.checkpoint import load_checkpoint
from rsctool.errors import DataError
from rsctool.project import Project

TRAIN = ["train", "--model", "cnn", "--size", "tiny", "--epochs", "3", "--batch-size", "16",
         "--set", "clip_seconds=2", "--set", "checkpoint_every=1", "--deterministic"]


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory) -> Path:
    from rsctool.analyze import AnalyzeOptions
    from rsctool.analyze import run as analyze
    from rsctool.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("rel")
    make_demo_dataset(root / "data", patients=8, seed=1)
    analyze(Project.load(root / "rsctool.toml"),
            AnalyzeOptions(data_dir=root / "data", name="demo", val_fraction=0.2, plots=False))
    return root


def _rsctool(project: Path, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "RSCTOOL_PROJECT": str(project / "rsctool.toml"),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "rsctool", "--quiet", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _step_of(path: Path) -> int:
    try:
        return int(load_checkpoint(path).state["step"])
    except (DataError, KeyError):
        return -1


def _wait_for_step(ckpt: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read().decode()}")
        if ckpt.exists() and _step_of(ckpt) >= step:
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for a checkpoint")


@pytest.mark.slow
def test_sigkill_then_rerun_matches_uninterrupted(project_dir):
    ref = _rsctool(project_dir, *TRAIN, "--run", "ref")
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err.decode()

    victim = _rsctool(project_dir, *TRAIN, "--run", "victim")
    ckpt = project_dir / ".rsctool" / "runs" / "victim" / "last.safetensors"
    _wait_for_step(ckpt, 3, victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert Project.load(project_dir / "rsctool.toml").get("runs", "victim")["status"] == \
        "running"
    again = _rsctool(project_dir, *TRAIN, "--run", "victim")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()

    runs = Project.load(project_dir / "rsctool.toml").section("runs")
    assert runs["victim"]["status"] == "done"
    a = load_checkpoint(project_dir / ".rsctool/runs/ref/last.safetensors")
    b = load_checkpoint(ckpt)
    assert a.state["step"] == b.state["step"]
    for k, v in a.model_state.items():
        assert torch.equal(v, b.model_state[k]), k


def _default_sigint() -> None:
    """In the child before exec: SIGINT delivered and handled by default, whatever this
    test process inherited from earlier tests (a library that left SIGINT ignored or
    blocked in the parent makes the child ignore Ctrl-C, as a shell's background job)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resumes(project_dir):
    # batch 4: ~4x the steps of TRAIN, so that on a loaded machine the signal still lands
    # long before the last step (it once arrived after training had finished)
    args = [*TRAIN[:TRAIN.index("--batch-size")], "--batch-size", "4",
            *TRAIN[TRAIN.index("--batch-size") + 2:], "--run", "intr"]
    proc = _rsctool(project_dir, *args, preexec_fn=_default_sigint)
    ckpt = project_dir / ".rsctool" / "runs" / "intr" / "last.safetensors"
    _wait_for_step(ckpt, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (
        f"{err.decode()}\n(parent: SIGINT handler {signal.getsignal(signal.SIGINT)!r}, "
        f"blocked {signal.pthread_sigmask(signal.SIG_BLOCK, [])!r})")
    text = err.decode()
    assert "interrupted" in text and "Traceback" not in text
    rec = Project.load(project_dir / "rsctool.toml").get("runs", "intr")
    assert rec["status"] == "interrupted"
    again = _rsctool(project_dir, *args)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()
    assert Project.load(project_dir / "rsctool.toml").get("runs", "intr")["status"] == "done"


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_resumes(project_dir):
    """`timeout` / SLURM / `docker stop` send SIGTERM: handled like Ctrl-C (it used to
    kill train on the spot, exit 143 with the run `running` forever)."""
    args = [*TRAIN[:TRAIN.index("--batch-size")], "--batch-size", "4",
            *TRAIN[TRAIN.index("--batch-size") + 2:], "--run", "term"]
    proc = _rsctool(project_dir, *args)
    ckpt = project_dir / ".rsctool" / "runs" / "term" / "last.safetensors"
    _wait_for_step(ckpt, 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == 143, text
    assert "interrupted by SIGTERM: stopped cleanly; run the same command again to resume" \
        in text and "Traceback" not in text
    rec = Project.load(project_dir / "rsctool.toml").get("runs", "term")
    assert rec["status"] == "interrupted"
    assert _step_of(ckpt) >= 2
    again = _rsctool(project_dir, *args)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()
    assert Project.load(project_dir / "rsctool.toml").get("runs", "term")["status"] == "done"


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/rsctool-pwned",))


def test_checkpoint_loader_rejects_pickle(tmp_path):
    bad = tmp_path / "last.safetensors"
    bad.write_bytes(pickle.dumps({"model": _Evil()}))
    with pytest.raises(DataError, match="never unpickles"):
        load_checkpoint(bad)
    torch.save({"w": torch.zeros(2)}, tmp_path / "torch.pt")
    with pytest.raises(DataError):
        load_checkpoint(tmp_path / "torch.pt")
    assert not Path("/tmp/rsctool-pwned").exists()


# ------------------------------------------------ synth and export: kill and re-run (slow)

SYNTH = ["synth", "--classes", "crackle", "--n", "6", "--steps", "2", "--seconds", "1"]


@pytest.fixture(scope="module")
def tiny_ldm(tmp_path_factory) -> Path:
    from rsctool.testing import write_tiny_audioldm

    return write_tiny_audioldm(tmp_path_factory.mktemp("models") / "tiny-audioldm", "audioldm")


def _wavs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.wav"))}


def _wait_for_file(folder: Path, pattern: str, proc: subprocess.Popen, timeout: float = 180
                   ) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None or any(folder.rglob(pattern)):
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {pattern} in {folder}")


@pytest.mark.slow
@pytest.mark.parametrize("after", [0, 3])
def test_sigkill_during_synth_then_rerun_matches_uninterrupted(project_dir, tiny_ldm, after):
    """Killed after `after` samples are on disk (0: while the pipeline loads), `synth`
    never records a set as done; the re-run writes exactly the uninterrupted bytes."""
    ref = _rsctool(project_dir, *SYNTH, "--model", str(tiny_ldm), "--name", f"ref{after}")
    _, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err.decode()
    name = f"victim{after}"
    victim = _rsctool(project_dir, *SYNTH, "--model", str(tiny_ldm), "--name", name)
    if after:
        folder = project_dir / ".rsctool" / "synthetic" / name
        t0 = time.time()
        while len(list(folder.rglob("*.wav"))) < after and victim.poll() is None:
            assert time.time() - t0 < 300, "timed out waiting for samples"
            time.sleep(0.02)
    else:
        time.sleep(1.0)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    p = Project.load(project_dir / "rsctool.toml")  # valid TOML whatever the moment
    rec = p.get("synthetic", name)
    assert rec is None or rec["status"] != "done" or victim.returncode == 0
    again = _rsctool(project_dir, *SYNTH, "--model", str(tiny_ldm), "--name", name)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err.decode()
    p = Project.load(project_dir / "rsctool.toml")
    a, b = p.get("synthetic", f"ref{after}"), p.get("synthetic", name)
    assert b["status"] == "done" and b["counts"] == a["counts"]
    assert _wavs(p.abs(b["dir"])) == _wavs(p.abs(a["dir"]))
    from rsctool.data.manifest import file_sha256, read_manifest

    assert file_sha256(p.abs(b["manifest"])) == b["sha256"]
    assert [c.id.split(":", 1)[1] for c in read_manifest(p.abs(b["manifest"]))] == \
        [c.id.split(":", 1)[1] for c in read_manifest(p.abs(a["manifest"]))]


@pytest.fixture(scope="module")
def trained_dir(project_dir) -> Path:
    proc = _rsctool(project_dir, *TRAIN[:-1], "--epochs", "1", "--max-steps", "2",
                    "--run", "exp")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()
    return project_dir


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.5, 2.5, 5.0])
def test_sigkill_during_export_never_records_partial_output(trained_dir, delay):
    """Killed at some point, `export` has recorded nothing, or a done record whose file is
    complete (hash matches); no file at the output path is ever partial; the re-run ends
    with a checked export."""
    import onnxruntime as ort

    from rsctool.data.manifest import file_sha256

    out = trained_dir / f"kill-{delay}.onnx"
    victim = _rsctool(trained_dir, "export", "--run", "exp", "--out", str(out))
    time.sleep(delay)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    p = Project.load(trained_dir / "rsctool.toml")
    recs = [r for r in (p.section("exports") or {}).values() if r.get("onnx") == p.rel(out)]
    for rec in recs:
        if rec.get("status") == "done":
            assert file_sha256(out) == rec["sha256"]
    if out.exists():  # only ever moved into place complete
        ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    again = _rsctool(trained_dir, "export", "--run", "exp", "--out", str(out), "--json")
    stdout, err = again.communicate(timeout=600)
    assert again.returncode == 0, err.decode()
    import json

    doc = json.loads(stdout)
    assert doc["status"] == "done" and doc["parity_max_abs"] <= 1e-4
    assert file_sha256(out) == doc["sha256"]
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert not list(out.parent.glob(".*.tmp.onnx"))  # the killed export's temp files too


# ------------------------------------------------------------------ concurrency (slow)

@pytest.mark.slow
def test_eight_parallel_train_invocations_lose_no_record(project_dir):
    """A sweep of 8 `rsctool train` processes against one project file: every run is
    recorded done, every earlier record survives, the file stays valid TOML."""
    before = Project.load(project_dir / "rsctool.toml")
    datasets = before.section("datasets")
    procs = {f"par{i}": _rsctool(project_dir, "--seed", str(i), *TRAIN[:-1], "--epochs", "1",
                                 "--max-steps", "1", "--run", f"par{i}")
             for i in range(8)}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{name}: {err.decode()}"
    p = Project.load(project_dir / "rsctool.toml")
    runs = p.section("runs")
    assert set(procs) <= set(runs)
    for n in procs:
        assert runs[n]["status"] == "done" and runs[n]["step"] == 1, (n, runs[n])
        assert runs[n]["seed"] == int(n[3:])
        assert p.abs(runs[n]["last"]).is_file() and p.abs(runs[n]["best"]).is_file()
    assert p.section("datasets") == datasets
    assert not list(project_dir.glob("rsctool.toml.*tmp*"))
