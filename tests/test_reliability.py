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


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resumes(project_dir):
    proc = _rsctool(project_dir, *TRAIN, "--run", "intr")
    ckpt = project_dir / ".rsctool" / "runs" / "intr" / "last.safetensors"
    _wait_for_step(ckpt, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    text = err.decode()
    assert "interrupted" in text and "Traceback" not in text
    rec = Project.load(project_dir / "rsctool.toml").get("runs", "intr")
    assert rec["status"] == "interrupted"
    again = _rsctool(project_dir, *TRAIN, "--run", "intr")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()
    assert Project.load(project_dir / "rsctool.toml").get("runs", "intr")["status"] == "done"


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
