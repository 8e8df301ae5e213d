"""One writer per run, synthetic set and dataset; SIGTERM/SIGHUP stop like Ctrl-C;
`status` tells a live `running` record from one whose process is gone."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rsctool.cli import app
from rsctool.project import Project

runner = CliRunner()

TRAIN = ["train", "--model", "cnn", "--size", "tiny", "--clip-seconds", "2",
         "--batch-size", "32"]

_HOLDER = """
import sys
from pathlib import Path
from rsctool.locks import hold
hold(Path(sys.argv[1]), sys.argv[2], sys.argv[3], what="x", hint="y")
print("held", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def held_elsewhere(project: Project, section: str, name: str) -> Iterator[int]:
    """Another process holds the lock of record `name` of `section` while the block runs;
    yields its pid."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(project.state_dir() / "locks"),
                             section, name], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        assert proc.stdout.readline().strip() == b"held"
        yield proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


@pytest.fixture
def unhandled_signals_fail() -> Iterator[None]:
    """SIGTERM/SIGHUP that the CLI does not handle itself fail the test with an error
    instead of killing the test session (the default action)."""
    def fail(signum, frame):
        raise RuntimeError(f"signal {signum} reached the test process unhandled")

    old = {s: signal.signal(s, fail) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _cli(project: Project, *args: str):
    return runner.invoke(app, ["--project", str(project.path), *args])


def _holder_named(output: str, pid: int) -> bool:
    return f"(pid {pid} on host {socket.gethostname()}, since " in output


# ------------------------------------------------------------------ one writer per thing

def test_second_train_of_a_held_run_exits_2_naming_run_and_holder(project):
    before = project.path.read_bytes()
    with held_elsewhere(project, "runs", "d") as pid:
        r = _cli(project, *TRAIN, "--epochs", "1", "--run", "d")
    assert r.exit_code == 2, r.output
    line = r.stderr.strip()
    assert line.startswith("error: run 'd' is being written by another rsctool process")
    assert _holder_named(line, pid) and "use another --run" in line
    assert len(line.splitlines()) == 1 and "Traceback" not in r.output
    assert project.path.read_bytes() == before
    assert not (project.state_dir() / "runs" / "d").exists()
    # the holder is gone: its lock went with it, the same command trains
    r = _cli(project, *TRAIN, "--epochs", "1", "--run", "d")
    assert r.exit_code == 0, r.output
    assert Project.load(project.path).get("runs", "d")["status"] == "done"


def test_second_synth_of_a_held_set_exits_2(project):
    before = project.path.read_bytes()
    with held_elsewhere(project, "synthetic", "s") as pid:
        r = _cli(project, "synth", "--backend", "diffwave", "--name", "s",
                 "--classes", "crackle", "--n", "1")
    assert r.exit_code == 2, r.output
    assert "synthetic set 's' is being written by another rsctool process" in r.stderr
    assert _holder_named(r.stderr, pid) and "use another --name" in r.stderr
    assert project.path.read_bytes() == before


def test_second_analyze_of_a_held_dataset_name_exits_2(project, analysed):
    before = project.path.read_bytes()
    with held_elsewhere(project, "datasets", "demo") as pid:
        r = _cli(project, "analyze", str(analysed / "data"), "--name", "demo", "--force")
    assert r.exit_code == 2, r.output
    assert "dataset 'demo' is being written by another rsctool process" in r.stderr
    assert _holder_named(r.stderr, pid)
    assert project.path.read_bytes() == before


def test_locks_are_released_and_reentrant_in_one_process(tmp_path):
    from rsctool.locks import hold, scope, writer

    p = Project(tmp_path / "rsctool.toml")
    with scope():
        hold(p.state_dir() / "locks", "runs", "a", what="run 'a'", hint="")
        hold(p.state_dir() / "locks", "runs", "a", what="run 'a'", hint="")  # again: fine
        assert writer(p, "runs", "a")["pid"] == os.getpid()
    assert writer(p, "runs", "a") is None  # released on leaving the scope
    with pytest.raises(KeyError), scope():
        hold(p.state_dir() / "locks", "runs", "b", what="run 'b'", hint="")
        raise KeyError("any exit")
    assert writer(p, "runs", "b") is None


# ------------------------------------------------------------------ honest run states

def test_status_shows_a_running_record_without_a_live_writer_as_interrupted(project):
    project.set_record("runs", "gone", {"model": "cnn", "status": "running"})
    project.set_record("runs", "live", {"model": "cnn", "status": "running"})
    project.set_record("synthetic", "half", {"backend": "diffwave", "status": "running"})
    with held_elsewhere(project, "runs", "live") as pid:
        r = _cli(project, "status", "--json")
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        r = _cli(project, "status")
        assert r.exit_code == 0, r.output
        table = r.stderr
    runs = doc["runs"]
    assert runs["gone"]["status"] == "interrupted"
    assert runs["gone"]["status_detail"] == "process gone"
    assert runs["live"]["status"] == "running" and runs["live"]["writer"]["pid"] == pid
    assert doc["synthetic"]["half"]["status"] == "interrupted"
    assert "interrupted (process gone)" in table and f"running (pid {pid}" in table
    r = _cli(project, "status", "--run", "gone", "--json")
    assert json.loads(r.stdout)["record"]["status"] == "interrupted"
    # status only reads: the project file still says what the stages wrote
    assert Project.load(project.path).get("runs", "gone")["status"] == "running"


def test_sigterm_during_train_checkpoints_records_interrupted_and_resumes(
        project, monkeypatch, unhandled_signals_fail):
    """SIGTERM (`timeout`, SLURM, `docker stop`) takes the Ctrl-C path: exit 143, one
    line, run `interrupted` with its last checkpoint; the same command finishes it."""
    from rsctool.train import Trainer

    orig = Trainer.train_epoch
    calls = {"n": 0}

    def epoch_then_sigterm(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return orig(self, *a, **kw)

    monkeypatch.setattr(Trainer, "train_epoch", epoch_then_sigterm)
    before = signal.getsignal(signal.SIGTERM)
    args = [*TRAIN, "--epochs", "2", "--run", "t"]
    r = _cli(project, *args)
    assert r.exit_code == 143, r.output
    assert r.stderr.strip().splitlines()[-1] == (
        "interrupted by SIGTERM: stopped cleanly; run the same command again to resume")
    assert "Traceback" not in r.output
    assert signal.getsignal(signal.SIGTERM) == before  # the CLI's handler is gone again
    rec = Project.load(project.path).get("runs", "t")
    assert rec["status"] == "interrupted" and rec["epoch"] == 1
    assert (project.state_dir() / "runs" / "t" / "last.safetensors").is_file()
    r = _cli(project, *args, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["resumed"] is True
    assert Project.load(project.path).get("runs", "t")["status"] == "done"


def test_sighup_stops_any_stage_with_exit_129(project, monkeypatch, unhandled_signals_fail):
    import rsctool.status as status

    def hang_up(*a, **kw):
        os.kill(os.getpid(), signal.SIGHUP)
        raise AssertionError("SIGHUP did not stop the stage")

    monkeypatch.setattr(status, "status", hang_up)
    r = _cli(project, "status", "--json")
    assert r.exit_code == 129, r.output
    assert "interrupted by SIGHUP" in r.stderr and "Traceback" not in r.output


def test_an_ignored_sighup_stays_ignored():
    from rsctool.signals import handled

    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under `nohup`
    try:
        with handled():
            os.kill(os.getpid(), signal.SIGHUP)  # ignored: nothing raised
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)


def test_sigterm_during_synth_records_interrupted_and_the_same_command_finishes(
        project, tmp_path, monkeypatch, unhandled_signals_fail):
    from rsctool.generators.audioldm import AudioLDMBackend
    from rsctool.testing import write_tiny_audioldm

    model = write_tiny_audioldm(tmp_path / "tiny-audioldm", "audioldm")
    orig = AudioLDMBackend.generate
    calls = {"n": 0}

    def sigterm_third(self, requests):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return orig(self, requests)

    monkeypatch.setattr(AudioLDMBackend, "generate", sigterm_third)
    args = ["synth", "--backend", "audioldm", "--model", str(model), "--classes", "crackle",
            "--n", "4", "--steps", "2", "--seconds", "1", "--name", "st"]
    r = _cli(project, *args)
    assert r.exit_code == 143, r.output
    assert "interrupted by SIGTERM" in r.stderr and "Traceback" not in r.output
    rec = Project.load(project.path).get("synthetic", "st")
    assert rec["status"] == "interrupted" and rec["counts"] == {"crackle": 2}
    r = _cli(project, *args, "--json")
    assert r.exit_code == 0, r.output
    assert Project.load(project.path).get("synthetic", "st")["status"] == "done"
