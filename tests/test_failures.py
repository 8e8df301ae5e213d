"""Everyday failures end in one clear line: a read-only project folder, the umask,
offline weights, usage errors, a missing CUDA device, shell completion."""

from __future__ import annotations

import builtins
import errno
import io
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rsctool.cli import app
from rsctool.project import Project

runner = CliRunner()

FAST = {"size": "tiny", "clip_seconds": 2.0, "num_mel_bins": 64, "batch_size": 32,
        "epochs": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A demo project (6 patients) with one tiny `cnn` run (2 steps): do not modify, copy."""
    from rsctool.analyze import AnalyzeOptions
    from rsctool.analyze import run as analyze
    from rsctool.data.demo import make_demo_dataset
    from rsctool.train import TrainOptions
    from rsctool.train import run as train

    root = tmp_path_factory.mktemp("failproj")
    make_demo_dataset(root / "data", patients=6, seed=0)
    project = Project.load(root / "rsctool.toml")
    analyze(project, AnalyzeOptions(data_dir=root / "data", name="demo", val_fraction=0.2,
                                    plots=False))
    train(project, TrainOptions(model="cnn", seed=0, max_steps=2, **FAST), device="cpu")
    return root


@pytest.fixture
def proj(trained, tmp_path) -> Path:
    """A private copy of `trained` (the audio stays shared)."""
    dst = tmp_path / "proj"
    shutil.copytree(trained, dst, ignore=shutil.ignore_patterns("data"))
    return dst


def _invoke(project: Path, *args: str):
    return runner.invoke(app, ["--project", str(project / "rsctool.toml"), "-q", *args])


def _one_error_line(r, exit_code: int = 2) -> str:
    assert r.exit_code == exit_code, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith(("error:", "internal error:"))]
    assert len(errors) == 1 and errors[0].startswith("error: "), r.output
    assert "Traceback" not in r.output, r.output
    return errors[0]


# ------------------------------------------------------------- a read-only project folder

def _read_only(monkeypatch, root: Path, err: int) -> None:
    """Make every write under `root` fail like a read-only folder (`err`: EROFS or EACCES);
    root ignores file modes, so chmod cannot show it in a test run as root."""
    root = os.path.realpath(root)
    strerror = os.strerror(err)

    def under(path) -> bool:
        try:
            p = os.path.realpath(os.fspath(path))
        except TypeError:  # a file descriptor
            return False
        return p == root or p.startswith(root + os.sep)

    def refuse(path):
        raise OSError(err, strerror, os.fspath(path))

    real_open, real_os_open = builtins.open, os.open
    real_mkdir, real_replace = os.mkdir, os.replace

    def fake_open(file, mode="r", *a, **kw):
        if any(c in mode for c in "wax+") and under(file):
            refuse(file)
        return real_open(file, mode, *a, **kw)

    def fake_os_open(path, flags, *a, **kw):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path):
            refuse(path)
        return real_os_open(path, flags, *a, **kw)

    def fake_mkdir(path, *a, **kw):
        if under(path):
            refuse(path)
        return real_mkdir(path, *a, **kw)

    def fake_replace(src, dst, *a, **kw):
        if under(dst):
            refuse(dst)
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "replace", fake_replace)


@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("stage", ["analyze", "export", "eval", "predict"])
def test_read_only_project_folder_is_one_line_naming_the_path(proj, trained, monkeypatch,
                                                               stage, err):
    args = {"analyze": ["analyze", str(trained / "data"), "--name", "other", "--no-plots"],
            "export": ["export", "--run", "cnn"],
            "eval": ["eval", "--run", "cnn"],
            "predict": ["predict", str(next((trained / "data").glob("*.wav"))), "--run",
                        "cnn", "--format", "json", "--out", str(proj / "out.json")]}[stage]
    before = (proj / "rsctool.toml").read_bytes()
    _read_only(monkeypatch, proj, err)
    line = _one_error_line(_invoke(proj, *args))
    assert os.strerror(err) in line, line
    assert f" {proj}" in line, line
    assert ".tmp" not in line, line  # the path the user can fix, not a temp file
    monkeypatch.undo()
    assert (proj / "rsctool.toml").read_bytes() == before


def _can_mount_read_only() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind / /mnt 2>/dev/null "
                        "|| mount --bind /tmp /tmp"], capture_output=True)
    return r.returncode == 0


@pytest.mark.slow  # four CLI processes
@pytest.mark.skipif(not _can_mount_read_only(), reason="needs unshare and mount (root)")
def test_read_only_file_system_for_real(proj, trained):
    """The project folder bind-mounted read-only in a private mount namespace: the real
    EROFS, with every writer rsctool has (manifest, feature cache, lock folder)."""
    wav = next((trained / "data").glob("*.wav"))
    for args in (["analyze", str(trained / "data"), "--name", "other", "--no-plots"],
                 ["eval", "--run", "cnn"], ["export", "--run", "cnn"],
                 ["predict", str(wav), "--run", "cnn", "--out", str(proj / "o.json")]):
        script = ('mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift '
                  '&& exec "$@"')
        r = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(proj),
                            sys.executable, "-m", "rsctool", "-q", "--project",
                            str(proj / "rsctool.toml"), *args],
                           capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, r.stderr)
        assert f" {proj}" in lines[0] and ".tmp" not in lines[0], (args, r.stderr)
        assert "Read-only file system" in lines[0], (args, r.stderr)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes")
def test_read_only_folder_by_mode(proj, trained):
    for p in [proj, *proj.rglob("*")]:
        if p.is_dir():
            p.chmod(0o555)
    try:
        r = _invoke(proj, "analyze", str(trained / "data"), "--name", "other", "--no-plots")
        line = _one_error_line(r)
        assert str(proj) in line and "Permission denied" in line, line
    finally:
        for p in [proj, *proj.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)


def test_internal_errors_stay_internal(proj, monkeypatch):
    """The safety net maps only write failures with a path: other OSErrors are bugs."""
    import rsctool.status

    def boom(*a, **kw):
        raise OSError(errno.EIO, "Input/output error", str(proj))

    monkeypatch.setattr(rsctool.status, "status", boom)
    r = runner.invoke(app, ["--project", str(proj / "rsctool.toml"), "status"])
    assert r.exit_code == 1 and "internal error: OSError" in r.output, r.output


# ------------------------------------------------------------------------------ umask

@pytest.fixture
def umask():
    """Set the process umask for one test (returns the setter)."""
    before = os.umask(0o022)
    os.umask(before)
    yield os.umask
    os.umask(before)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_honour_the_umask(proj, trained, umask, mask):
    umask(mask)
    want = 0o666 & ~mask
    r = _invoke(proj, "analyze", str(trained / "data"), "--name", "other", "--no-plots")
    assert r.exit_code == 0, r.output
    r = _invoke(proj, "export", "--run", "cnn", "--out", str(proj / "m.onnx"))
    assert r.exit_code == 0, r.output
    wav = next((trained / "data").glob("*.wav"))
    r = _invoke(proj, "predict", str(wav), "--model", str(proj / "m.onnx"),
                "--out", str(proj / "p.json"))
    assert r.exit_code == 0, r.output
    files = [proj / "rsctool.toml", proj / ".rsctool" / "manifests" / "other.jsonl",
             proj / "m.onnx", proj / "p.json"]
    modes = {p.name: oct(_mode(p)) for p in files}
    assert modes == {p.name: oct(want) for p in files}


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_checkpoints_audio_plots_and_caches_honour_the_umask(tmp_path, umask, mask):
    import numpy as np
    import torch

    from rsctool.audio import write_audio
    from rsctool.checkpoint import save_checkpoint
    from rsctool.data.cache import FeatureCache
    from rsctool.utils import atomic_write_json

    umask(mask)
    want = 0o666 & ~mask
    save_checkpoint(tmp_path / "c.safetensors", model=torch.nn.Linear(2, 2), state={"step": 1})
    write_audio(tmp_path / "a.wav", np.zeros(800, dtype=np.float32), 8000)
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    cache = FeatureCache(tmp_path / "cache")
    cache.put("abcdef12", np.zeros((2, 2), dtype=np.float32))
    files = [tmp_path / "c.safetensors", tmp_path / "a.wav", tmp_path / "x.json",
             *(tmp_path / "cache").rglob("*.npy")]
    assert len(files) == 4
    assert {p.name: oct(_mode(p)) for p in files} == {p.name: oct(want) for p in files}


# ------------------------------------------------------------------- shell completion

def _via_sh(*args: str) -> subprocess.CompletedProcess:
    """`rsctool ARGS` started by /bin/sh (as `make test-fast` starts pytest): the
    `; exit` keeps sh from exec-ing, so sh stays the parent process."""
    return subprocess.run(["sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-m", "rsctool",
                           *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("shell,marker", [("bash", "_rsctool_completion"),
                                          ("zsh", "#compdef rsctool"),
                                          ("fish", "complete --command rsctool")])
def test_show_completion_uses_the_shell_given_not_the_parent(shell, marker):
    r = _via_sh("--show-completion", shell)
    assert r.returncode == 0, r.stderr
    assert marker in r.stdout, r.stdout


def test_show_completion_without_a_shell_detects_or_says_what_to_give():
    r = _via_sh("--show-completion")  # the parent is sh: not a completion shell
    assert r.returncode == 2, r.stderr
    assert "bash" in r.stderr and "zsh" in r.stderr, r.stderr
    r = runner.invoke(app, ["--show-completion", "tcsh"])
    assert r.exit_code == 2 and "tcsh" in r.output, r.output


# ---------------------------------------------------------------------- usage errors

@pytest.mark.parametrize("args,names", [
    (["--device", "tpu", "status"], "--device"),
    (["train", "--epoch", "3"], "--epoch"),
    (["--devise", "cpu", "status"], "--devise"),
    (["train", "--epochs", "many"], "--epochs"),
    (["status", "--device", "cpu"], "--device"),
])
def test_usage_error_is_one_line_off_a_terminal(args, names):
    r = runner.invoke(app, args)
    line = _one_error_line(r)
    assert names in line, r.output
    assert len([x for x in r.output.splitlines() if x.strip()]) == 1, r.output
    assert "╭" not in r.output, r.output


def test_usage_error_in_a_log_file_is_one_line(tmp_path):
    log = tmp_path / "log"
    with log.open("w") as fh:
        r = subprocess.run([sys.executable, "-m", "rsctool", "--device", "tpu", "status"],
                           stdout=subprocess.PIPE, stderr=fh, text=True, timeout=60)
    assert r.returncode == 2
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--device" in lines[0], lines


def test_help_has_no_bool_and_groups_train_and_synth_options():
    for args in (["--help"], ["train", "--help"], ["synth", "--help"], ["eval", "--help"]):
        r = runner.invoke(app, args, terminal_width=120)
        assert r.exit_code == 0, r.output
        assert "<bool>" not in r.output, (args, r.output)
    train = runner.invoke(app, ["train", "--help"], terminal_width=120).output
    for panel in ("Data", "Model", "Optimisation", "Synthetic data", "Distributed",
                  "Run and output"):
        assert f"─ {panel} ─" in train, train
    synth = runner.invoke(app, ["synth", "--help"], terminal_width=120).output
    for panel in ("Generation", "Text to audio", "DiffWave", "Quality filter", "Output"):
        assert f"─ {panel} ─" in synth, synth


# ------------------------------------------------------------------- --device cuda

@pytest.fixture
def no_cuda(monkeypatch):
    """A machine without CUDA, for torch and for onnxruntime."""
    import onnxruntime
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CPUExecutionProvider"])


def test_device_cuda_without_cuda_is_refused_by_every_stage(proj, trained, no_cuda):
    r = _invoke(proj, "export", "--run", "cnn", "--out", str(proj / "m.onnx"))
    assert r.exit_code == 0, r.output
    wav = str(next((trained / "data").glob("*.wav")))
    cuda = ["--project", str(proj / "rsctool.toml"), "-q", "--device", "cuda"]
    for args in (["predict", wav, "--model", str(proj / "m.onnx")],  # onnx, no project
                 ["predict", wav, "--run", "cnn", "--backend", "torch"],
                 ["predict", wav, "--run", "cnn"],  # finds the recorded export
                 ["export", "--run", "cnn", "--out", str(proj / "m2.onnx")],
                 ["eval", "--run", "cnn"],
                 ["train", "--model", "cnn", "--size", "tiny", "--run", "c2"]):
        r = runner.invoke(app, [*cuda, *args])
        line = _one_error_line(r)
        assert "--device cuda" in line, (args, r.output)
    assert not (proj / "m2.onnx").exists()


def test_onnx_device_check_needs_no_torch():
    code = ("import sys; from rsctool.devices import onnx_providers; "
            "print(onnx_providers('cpu'), onnx_providers('auto')); "
            "assert 'torch' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ offline weights

@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, HF_HUB_OFFLINE set."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _offline_line(r) -> str:
    line = _one_error_line(r)
    assert "Retry" not in r.output and "thrown while requesting" not in r.output, r.output
    return line


@pytest.mark.parametrize("offline", ["env", "unreachable"])
def test_train_pretrained_offline_is_one_line_naming_the_option(proj, empty_hub, monkeypatch,
                                                                 offline):
    import rsctool.hub

    if offline == "unreachable":  # no HF_HUB_OFFLINE, no network: asked, not retried
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setattr(rsctool.hub, "hub_reachable", lambda timeout=3.0: False)
    r = _invoke(proj, "train", "--model", "tafilm", "--epochs", "1", "--run", "t")
    line = _offline_line(r)
    assert "--pretrained none" in line and "--pretrained DIR" in line, line
    assert ("HF_HUB_OFFLINE" if offline == "env" else "cannot be reached") in line, line
    assert line.rstrip().endswith(")"), line  # complete, not cut


@pytest.mark.parametrize("offline", ["env", "unreachable"])
def test_synth_offline_is_one_complete_line_naming_diffwave(proj, empty_hub, monkeypatch,
                                                            offline):
    import rsctool.hub

    if offline == "unreachable":
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setattr(rsctool.hub, "hub_reachable", lambda timeout=3.0: False)
    r = _invoke(proj, "synth", "--n", "1", "--classes", "crackle")
    line = _offline_line(r)
    assert "--model cvssp/audioldm-s-full-v2" in line, line
    assert "--backend diffwave" in line and "--model DIR" in line, line
    assert line.rstrip().endswith(")"), line


def test_hub_plan_uses_the_cache_without_the_network(tmp_path, monkeypatch):
    from rsctool import hub

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    assert hub.plan_load("org/model", "config.json")[1] is not None
    repo = tmp_path / "hf" / "hub" / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / "config.json").write_text("{}")
    assert hub.plan_load("org/model", "config.json") == (True, None)  # cache only
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
    assert hub.plan_load("org/model", "config.json") == (False, None)
