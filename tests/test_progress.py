"""Speed and time-left lines: training tells its measured speed and ETA early (and
a base transformer on the CPU gets a hint), logs progress lines when stderr is no
terminal, and synth refuses a job too large to finish without --yes. The clock is
`rsctool.eta.monotonic`, replaced by a fake one: no test sleeps or times anything."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rsctool import eta
from rsctool.cli import app
from rsctool.errors import ConfigError
from rsctool.project import Project

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {"model": "cnn", "size": "tiny", "clip_seconds": 1.0, "batch_size": 8, "lr": 3e-3}


class FakeClock:
    """Advances `dt` seconds on every reading."""

    def __init__(self, dt: float):
        self.t, self.dt, self.calls = 1000.0, dt, 0

    def __call__(self) -> float:
        self.t += self.dt
        self.calls += 1
        return self.t


# --------------------------------------------------------------------------- units

def test_format_duration_and_bytes():
    assert eta.format_duration(45) == "45s"
    assert eta.format_duration(725) == "12m05s"
    assert eta.format_duration(3 * 3600 + 20 * 60) == "3h20m"
    assert eta.format_duration(4 * 86400 + 7 * 3600) == "4d07h"
    assert eta.format_bytes(512) == "512 B" and eta.format_bytes(1.2e9) == "1.2 GB"


def test_rate_meter_skips_the_warm_up_tick():
    clock = FakeClock(0)
    meter = eta.RateMeter(clock)
    clock.dt = 100.0  # a slow first (warm-up) step
    meter.tick(1, 8)
    assert meter.rate is None and meter.eta(10) is None
    clock.dt = 2.0
    for _ in range(4):
        meter.tick(1, 8)
    assert meter.rate == pytest.approx(0.5) and meter.unit_rate == pytest.approx(4.0)
    assert meter.eta(10) == pytest.approx(20.0)


def test_train_progress_first_line_then_periodic_lines():
    lines: list[str] = []
    p = eta.TrainProgress(lines.append, total_steps=100, steps_per_epoch=10, epochs=10,
                          lines=True, clock=FakeClock(10.0), hint="hint: x")
    for s in range(1, 5):
        p.step(s, 1, 0.5, 8)
    # warm-up step, then 2 measured steps = 20 s: the speed line and the hint
    assert len(lines) == 2, lines
    assert lines[0].startswith("speed: 0.1 steps/s, 0.8 samples/s"), lines
    assert "1m40s per epoch" in lines[0] and "16m10s for the 10 epoch(s) left" in lines[0]
    assert lines[1] == "hint: x"
    for s in range(5, 12):
        p.step(s, 2, 0.25, 8)
    periodic = lines[2:]
    assert len(periodic) == 2, lines  # one per 30 s: at steps 6 and 9
    assert periodic[0] == "epoch 2/10, step 6/100, loss 0.2500, 0.8 samples/s, ETA 15m40s"


def test_train_progress_leaves_validation_out_of_the_speed_and_adds_it_to_the_eta():
    lines: list[str] = []
    clock = FakeClock(10.0)
    p = eta.TrainProgress(lines.append, total_steps=30, steps_per_epoch=10, epochs=3,
                          lines=True, clock=clock, first_steps=100, first_seconds=1e9)
    for s in range(1, 11):
        p.step(s, 1, 0.5, 8)
    p.pause()
    clock.t += 500.0  # validation and checkpoints
    p.resume()
    p.step(11, 2, 0.5, 8)
    assert p.meter.rate == pytest.approx(0.1)  # 10 steps in 100 s: the 500 s not counted
    # 19 steps at 10 s, plus one validation (pause to resume: 510 s) per epoch left
    assert p.eta(11) == pytest.approx(190 + 510 * 2)


def test_epochs_left_counts_the_epoch_in_progress():
    # 2 epochs of 13 steps cut at --max-steps 14: after step 13 the first epoch's
    # validation is still ahead, after step 14 the second's
    p = eta.TrainProgress(print, total_steps=14, steps_per_epoch=13, epochs=2, lines=True)
    assert [p.epochs_left(s) for s in (2, 13, 14)] == [2, 2, 1]


def test_train_progress_on_a_terminal_tells_the_speed_once():
    lines: list[str] = []
    p = eta.TrainProgress(lines.append, total_steps=100, steps_per_epoch=10, epochs=10,
                          lines=False, clock=FakeClock(10.0))
    for s in range(1, 40):
        p.step(s, 1, 0.5, 8)
    assert len(lines) == 1 and lines[0].startswith("speed: "), lines


@pytest.mark.parametrize(("model", "size", "device", "hinted"), [
    ("tafilm", "base", "cpu", True),
    ("ast", "base", "cpu", True),
    ("add", "base", "cpu", True),
    ("tafilm", "small", "cpu", False),
    ("tafilm", "base", "cuda", False),
    ("cnn", "base", "cpu", False),
])
def test_cpu_hint_for_base_transformers_only(model, size, device, hinted):
    hint = eta.slow_on_cpu_hint(model, size, device)
    assert (hint is not None) == hinted
    if hinted:
        assert "--size small" in hint and "--size tiny" in hint
        assert "rsctool --device cuda train" in hint


def test_training_logs_speed_eta_and_progress_lines(project, monkeypatch):
    from rsctool.train import TrainOptions, run

    clock = FakeClock(7.0)
    monkeypatch.setattr(eta, "monotonic", clock)
    lines: list[str] = []
    res = run(project, TrainOptions(epochs=2, max_steps=12, **FAST), device="cpu",
              log=lines.append)
    assert res.steps == 12
    speed = [x for x in lines if x.startswith("speed: ")]
    assert len(speed) == 1, lines
    # warm-up, then 3 steps of 7 s reach 20 s
    assert re.match(r"speed: 0\.143 steps/s, [\d.]+ samples/s \(measured over 3 steps\); "
                    r"about \S+ per epoch, 56s for the \d+ epoch\(s\) left", speed[0]), speed
    periodic = [x for x in lines if re.match(r"epoch \d/2, step \d+/12, loss [\d.]+, "
                                             r"[\d.]+ samples/s, ETA \S+$", x)]
    assert len(periodic) >= 1, lines
    assert lines.index(speed[0]) < lines.index(periodic[0])
    assert not any(x.startswith("hint:") for x in lines)  # a tiny CNN needs no hint


def test_cli_training_log_has_progress_lines_unless_quiet(project, monkeypatch):
    monkeypatch.setattr(eta, "monotonic", FakeClock(7.0))
    args = ["train", "--model", "cnn", "--size", "tiny", "--epochs", "1", "--max-steps", "10",
            "--batch-size", "8", "--set", "clip_seconds=1"]
    # CliRunner's stderr is no terminal: a log file, where progress comes as lines
    r = runner.invoke(app, ["--project", str(project.path), "--device", "cpu", *args,
                            "--run", "loud"])
    assert r.exit_code == 0, r.output
    assert "speed: " in r.output and "ETA " in r.output, r.output
    q = runner.invoke(app, ["--project", str(project.path), "--device", "cpu", "--quiet",
                            *args, "--run", "quiet"])
    assert q.exit_code == 0, q.output
    assert "speed:" not in q.output and "ETA" not in q.output, q.output


# --------------------------------------------------------------------------- synth

def test_synth_size_check_refuses_without_yes():
    big = eta.SynthEstimate(samples=300_000_000, bytes=2e13, free=10**11, where="--n 100000000")
    with pytest.raises(ConfigError, match="--yes") as e:
        eta.check_synth_size(big, yes=False)
    assert "--n 100000000" in str(e.value) and "free disk space" in str(e.value)
    eta.check_synth_size(big, yes=True)  # --yes: goes ahead
    slow = eta.SynthEstimate(samples=1000, bytes=1e6, free=10**11, where="--n 1000",
                             seconds=25 * 3600.0)
    with pytest.raises(ConfigError, match=r"1d01h.*more than 24 h.*--yes"):
        eta.check_synth_size(slow, yes=False)
    many = eta.SynthEstimate(samples=2_000_000, bytes=1e6, free=10**11, where="--n 1")
    with pytest.raises(ConfigError, match="more than 1000000 samples"):
        eta.check_synth_size(many, yes=False)
    eta.check_synth_size(eta.SynthEstimate(samples=300, bytes=1e8, free=10**11, where="--n 100",
                                           seconds=3600.0), yes=False)


def test_cli_synth_huge_n_exits_2_before_loading_anything(project):
    before = project.path.read_bytes()
    r = runner.invoke(app, ["--project", str(project.path), "--device", "cpu", "synth",
                            "--backend", "diffwave", "--n", "100000000"])
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --n 100000000: "), r.output
    assert "--yes" in lines[0] and "on disk" in lines[0], r.output
    assert project.path.read_bytes() == before  # no vocoder trained, no set reserved
    assert not (project.root / ".rsctool" / "vocoders").exists()


@pytest.fixture(scope="module")
def tiny_ldm(tmp_path_factory) -> Path:
    from rsctool.testing import write_tiny_audioldm

    return write_tiny_audioldm(tmp_path_factory.mktemp("models") / "tiny-audioldm", "audioldm")


def test_synth_measures_its_speed_and_refuses_a_long_job_without_yes(project, tiny_ldm,
                                                                     monkeypatch):
    from rsctool.synth import SynthOptions, run

    opts = {"model": str(tiny_ldm), "steps": 2, "seconds": 1.0, "classes": ["crackle"],
            "n": 8, "name": "slow"}
    monkeypatch.setattr(eta, "monotonic", FakeClock(10 * 3600.0))  # 10 h per sample
    with pytest.raises(ConfigError, match=r"--n 8: 6 samples to make, about 2d12h.*--yes.*"
                                          r"the 2 samples made are kept"):
        run(project, SynthOptions(**opts), device="cpu")
    rec = Project.load(project.path).get("synthetic", "slow")
    assert rec["status"] == "interrupted" and rec["counts"] == {"crackle": 2}
    lines: list[str] = []
    res = run(project, SynthOptions(**opts, yes=True), device="cpu", log=lines.append)
    assert res.made == 6 and res.counts == {"crackle": 8}
    # resumed: 4 left after the warm-up and the measured sample, 40 h: above 24 h, --yes
    assert any(x.startswith("synth slow: 3.6e+04 s/sample, 4 samples to make, about 1d16h")
               for x in lines), lines
