"""Several processes (issue 9): data-parallel training and sharded synthesis through
accelerate / torch's launcher, on 2 CPU processes (gloo).

The fast tests cover the pieces (the global-batch split, gradient accumulation, option
checks); the slow ones start real process groups: 2 processes match 1 process with the
same global batch, a run whose second process is killed resumes exactly, and a sharded
synthesis merges one manifest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import rsctool
from rsctool.checkpoint import load_checkpoint
from rsctool.cli import app
from rsctool.distributed import Dist, launched_world_size, shard_range, strip_processes
from rsctool.errors import ConfigError
from rsctool.project import Project
from rsctool.train import TrainOptions, check_batch_split, micro_batches, run

runner = CliRunner()
#: The worktree whose rsctool the launched processes must import.
ROOT = Path(rsctool.__file__).resolve().parents[1]
#: A model without batch norm or dropout: its gradient over a batch is the mean of the
#: per-sample gradients however the batch is split, so 1 and 2 processes can agree.
PARITY = {"model": "ast", "size": "tiny", "clip_seconds": 2.0, "batch_size": 16, "lr": 1e-3,
          "specaugment": False, "deterministic": True}
PARITY_ARGS = ["--model", "ast", "--size", "tiny", "--clip-seconds", "2", "--batch-size", "16",
               "--lr", "1e-3", "--no-specaugment", "--deterministic"]
#: Weights after a few AdamW steps: 1 vs 2 processes differ by float summation order
#: only (measured max |diff| 1.3e-5 after 4 steps of lr 1e-3; docs/scaling.md).
ATOL, RTOL = 1e-4, 1e-3


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).model_state


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _cli(project: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "rsctool", "--quiet", "--device", "cpu", "--project",
            str(project), *args]


def _torchrun(project: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", "2", "-m", "rsctool", "--quiet", "--device", "cpu",
            "--project", str(project), *args]


def _accelerate(project: Path, *args: str) -> list[str]:
    # --multi_gpu also on CPU: `--cpu --num_processes 2` starts one process without MPI
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "-m", "rsctool", "--quiet", "--device", "cpu",
            "--project", str(project), *args]


def _check(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


# --------------------------------------------------------------------------- fast

@pytest.mark.parametrize("m,batch,world,accum", [
    (16, 16, 2, 1), (16, 16, 2, 2), (16, 16, 1, 4), (5, 16, 2, 1), (9, 16, 2, 2),
    (1, 16, 2, 2), (7, 8, 4, 1), (3, 12, 3, 2)])
def test_micro_batches_split_the_global_batch_exactly(m, batch, world, accum):
    items = list(range(100, 100 + m))
    plans = [micro_batches(items, batch, world, accum, r) for r in range(world)]
    real = [i for plan in plans for idx, f, _ in plan if f > 0 for i in idx]
    assert sorted(real) == items  # every sample once, on one process
    for plan in plans:
        assert sum(sync for _, _, sync in plan) == 1 and plan[-1][2]  # one all-reduce, last
        assert all(0 < len(idx) <= batch // (world * accum) for idx, _, _ in plan)
    # DDP averages over processes: sum(factor * mean grad) / world = the batch mean
    weight = dict.fromkeys(items, 0.0)
    for plan in plans:
        for idx, f, _ in plan:
            for i in idx:
                weight[i] += f / len(idx) / world
    assert all(abs(w - 1 / m) < 1e-12 for w in weight.values())
    # one process, no accumulation: the batch itself with factor exactly 1
    assert micro_batches(items, batch, 1, 1, 0) == [(items, 1.0, True)]


def test_shard_range_and_one_process_dist():
    for n in (0, 1, 5, 12):
        for w in (1, 2, 3):
            parts = [list(shard_range(n, r, w)) for r in range(w)]
            assert sum(parts, []) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    d = Dist()
    assert d.is_main and not d.distributed and d.world == 1
    assert d.broadcast("x") == "x" and d.all_gather(3) == [3] and d.all_sum([1, 2]) == [1, 2]
    m = torch.nn.Linear(2, 2)
    assert d.prepare(m) is m
    with d.no_sync(m):
        pass
    assert strip_processes(["train", "--processes", "2", "--epochs", "1", "--processes=3"]) \
        == ["train", "--epochs", "1"]
    assert launched_world_size() == 1


def test_batch_split_and_grad_accum_options(project):
    check_batch_split(16, 2, 2)
    with pytest.raises(ConfigError, match="divisible by processes x --grad-accum = 2 x 3"):
        check_batch_split(16, 2, 3)
    with pytest.raises(ConfigError, match="--grad-accum must be >= 1"):
        TrainOptions(grad_accum=0).resolve()
    before = project.path.read_bytes()
    cases = [
        (["--batch-size", "3", "--processes", "2"], "global batch: it must be divisible"),
        (["--batch-size", "16", "--grad-accum", "3"], "1 x 3"),
        (["--grad-accum", "0"], "--grad-accum must be >= 1"),
        # a valid split outside a shell: there is no command line to re-launch
        (["--batch-size", "16", "--processes", "2"], "--processes works from the command"),
    ]
    for args, message in cases:
        res = runner.invoke(app, ["--project", str(project.path), "train", "--model", "cnn",
                                  "--size", "tiny", *args])
        assert res.exit_code == 2, (args, res.output)
        lines = [x for x in res.output.strip().splitlines() if x.strip()]
        assert len(lines) == 1 and message in lines[0], res.output
    res = runner.invoke(app, ["--project", str(project.path), "train", "--processes", "0"])
    assert res.exit_code == 2
    assert project.path.read_bytes() == before  # nothing recorded


def test_grad_accum_gives_the_same_steps(project):
    """--grad-accum splits each global batch into micro-batches: same optimizer steps and
    (up to float summation order) the same weights; the history records it."""
    a = run(project, TrainOptions(run="accum1", epochs=1, max_steps=3, **PARITY))
    b = run(project, TrainOptions(run="accum4", epochs=1, max_steps=3, grad_accum=4,
                                  **PARITY))
    assert a.steps == b.steps == 3
    diff = _max_diff(_weights(a.dir / "last.safetensors"), _weights(b.dir / "last.safetensors"))
    assert diff < ATOL, diff
    cfg = json.loads((b.dir / "config.json").read_text())
    assert cfg["distributed"] == {"processes": 1, "backend": None, "nodes": None,
                                  "grad_accum": 4, "per_process_batch": 4}
    assert b.history[0]["processes"] == 1
    assert a.history[0]["train_loss"] == pytest.approx(b.history[0]["train_loss"], rel=1e-5)


# --------------------------------------------------------------------------- slow

def _pids_of_rank(parent: int, rank: int) -> list[int]:
    """Processes under `parent` (any depth) whose environment says RANK=`rank`."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    found, todo = [], [parent]
    while todo:
        pid = todo.pop()
        for c in children.get(pid, []):
            todo.append(c)
            try:
                env = (Path("/proc") / str(c) / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                found.append(c)
    return found


@pytest.mark.slow
def test_two_processes_match_one_process(project):
    """`train --processes 2`: 2 gloo processes (each epoch row counts the processes that
    contributed), the weights of 1 process with the same global batch, one set of files
    written by the main process, and resume/skip rules as for one process."""
    one = run(project, TrainOptions(run="one", epochs=2, **PARITY))
    steps = 2 * json.loads((one.dir / "config.json").read_text())["steps_per_epoch"]
    res = _check(_cli(project.path, "train", *PARITY_ARGS, "--epochs", "2", "--run", "two",
                      "--processes", "2", "--json"))
    doc = json.loads(res.stdout)  # one JSON document: only the main process prints
    assert doc["run"] == "two" and doc["steps"] == steps == one.steps
    assert res.stderr.count("error") == 0
    project.reload()
    rec = project.get("runs", "two")
    assert rec["status"] == "done" and rec["processes"] == 2 and rec["step"] == steps
    run_dir = project.abs(rec["dir"])
    hist = json.loads((run_dir / "history.json").read_text())
    assert [h["processes"] for h in hist] == [2, 2]
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["distributed"]["processes"] == 2 and cfg["distributed"]["backend"] == "gloo"
    assert cfg["distributed"]["per_process_batch"] == 8
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        ["best.safetensors", "config.json", "history.csv", "history.json",
         "last.safetensors", "summary.json"])
    ck = load_checkpoint(run_dir / "last.safetensors")
    assert "torch" in ck.rng and "rank1.torch" in ck.rng  # every process's RNG
    diff = _max_diff(_weights(one.dir / "last.safetensors"), ck.model_state)
    assert diff < ATOL, f"1 vs 2 processes: max |diff| {diff}"
    for h1, h2 in zip(one.history, hist, strict=True):
        assert h1["train_loss"] == pytest.approx(h2["train_loss"], rel=1e-4)
        assert h1["val_loss"] == pytest.approx(h2["val_loss"], rel=1e-4)
    # a finished multi-process run is skipped like any other
    again = _check(_cli(project.path, "train", "--run", "two", "--processes", "2", "--json"))
    assert json.loads(again.stdout)["skipped"] is True


@pytest.mark.slow
def test_killed_process_then_resume_matches_uninterrupted(project):
    """The uninterrupted run under `accelerate launch`, the other under torchrun, 2
    processes; its second process is killed mid-run (torchrun then stops the first): the
    project file and checkpoint stay whole, the record says running, and re-running it
    with `--processes 2` resumes (each process's RNG restored) to the uninterrupted
    weights."""
    args = [*PARITY_ARGS[:-2], "--specaugment", "--deterministic", "--epochs", "3",
            "--set", "checkpoint_every=1"]
    _check(_accelerate(project.path, "train", *args, "--run", "straight"))
    # torchrun's own parser takes `--run` for its `--run-path`: hence --run-name
    proc = subprocess.Popen(_torchrun(project.path, "train", *args, "--run-name", "crash"),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = project.path.parent / ".rsctool" / "runs" / "crash" / "last.safetensors"
    t0 = time.time()
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() - t0 < 240, "no checkpoint"
        try:
            if ckpt.exists() and int(load_checkpoint(ckpt).state["step"]) >= 2:
                break
        except Exception:
            pass
        time.sleep(0.05)
    victims = _pids_of_rank(proc.pid, 1)
    assert victims, "rank 1 not found"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    rec = Project.load(project.path).get("runs", "crash")  # parses: no torn write
    # torchrun stops the survivor with SIGTERM, which it may handle (recording the run
    # interrupted, keeping the last full checkpoint) or die of while blocked
    assert rec["status"] in ("running", "interrupted")
    killed_at = int(load_checkpoint(ckpt).state["step"])
    assert killed_at >= 2
    steps_total = int(load_checkpoint(ckpt).state["config"]["total_steps"])
    assert killed_at < steps_total, "killed too late to test a resume"
    res = _check(_cli(project.path, "train", *args, "--run", "crash", "--processes", "2",
                      "--json"))
    assert json.loads(res.stdout)["resumed"] is True
    straight_dir = project.path.parent / ".rsctool" / "runs" / "straight"
    hist = json.loads((straight_dir / "history.json").read_text())
    assert [h["processes"] for h in hist] == [2, 2, 2]
    a, b = _weights(straight_dir / "last.safetensors"), _weights(ckpt)
    assert _max_diff(a, b) == 0.0  # bit for bit: same batches, same RNG per process
    assert Project.load(project.path).get("runs", "crash")["status"] == "done"


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_process_like_ctrl_c(project):
    """`timeout`/`docker stop` signal `train --processes 2` itself: the launcher passes
    SIGTERM on, the run is recorded interrupted, everything exits 143 (it used to be an
    internal error), and the same command resumes it."""
    args = [*PARITY_ARGS, "--epochs", "2", "--set", "checkpoint_every=1", "--run", "term",
            "--processes", "2"]
    proc = subprocess.Popen(_cli(project.path, "train", *args), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = project.path.parent / ".rsctool" / "runs" / "term" / "last.safetensors"
    t0 = time.time()
    while not ckpt.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() - t0 < 240, "no checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err.decode()[-3000:]
    assert "internal error" not in err.decode()
    assert Project.load(project.path).get("runs", "term")["status"] == "interrupted"
    res = _check(_cli(project.path, "train", *args, "--json"))
    assert json.loads(res.stdout)["resumed"] is True
    assert Project.load(project.path).get("runs", "term")["status"] == "done"


@pytest.mark.slow
def test_synth_shards_samples_and_merges_one_manifest(project, tmp_path):
    from rsctool.synth import SynthOptions
    from rsctool.synth import run as synth
    from rsctool.testing import write_tiny_audioldm

    model = write_tiny_audioldm(tmp_path / "tiny-ldm", "audioldm")
    opts = {"classes": ["wheeze", "crackle"], "n": 3, "steps": 2, "seconds": 1.0,
            "model": str(model)}
    single = synth(project, SynthOptions(name="single", **opts), device="cpu")
    res = _check(_cli(project.path, "synth", "--classes", "wheeze", "crackle", "--n", "3",
                      "--steps", "2", "--seconds", "1", "--model", str(model), "--name",
                      "sharded", "--processes", "2", "--json"))
    doc = json.loads(res.stdout)
    assert doc["counts"] == {"wheeze": 3, "crackle": 3} and doc["made"] == 6
    project.reload()
    rec = project.get("synthetic", "sharded")
    assert rec["status"] == "done" and rec["processes"] == 2 and rec["samples"] == 6
    out = project.abs(rec["dir"])
    assert not list(out.glob("*.part-*")), "parts are merged and removed"
    lines = (out / "manifest.jsonl").read_text().splitlines()
    ids = [json.loads(x)["id"] for x in lines]
    ref = [json.loads(x)["id"].replace("single:", "sharded:")
           for x in (single.dir / "manifest.jsonl").read_text().splitlines()]
    assert ids == ref  # one manifest, in the one-process order (class, index)
    for a in sorted(single.dir.rglob("*.wav")):
        b = out / a.relative_to(single.dir)
        x, y = (np.frombuffer(p.read_bytes()[44:], np.int16).astype(int) for p in (a, b))
        assert np.max(np.abs(x - y)) <= 2  # float rounding in another process only
    # the same command again: nothing to do (here in one process)
    again = synth(project, SynthOptions(name="sharded", **opts), device="cpu")
    assert again.skipped


def test_processes_shortcut_is_documented():
    text = (ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")
    for needle in ("--processes", "accelerate launch", "torchrun", "srun", "--grad-accum"):
        assert needle in text


@pytest.mark.slow
def test_error_inside_the_processes_is_one_line(project):
    """A bad option only the processes can see (an unknown dataset): exit 2, one line
    (printed by the main process; the launcher's own log lines are silenced)."""
    before = project.path.read_bytes()
    res = subprocess.run(_cli(project.path, "train", "--model", "cnn", "--size", "tiny",
                              "--dataset", "nope", "--processes", "2"),
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "--dataset 'nope' is not in the project" in lines[0], lines
    assert project.path.read_bytes() == before


@pytest.mark.slow
def test_ghm_statistics_cover_every_process(project):
    """With 2 processes the epoch's GHM histogram counts the examples of both (the main
    process writes it), as one process does."""
    one = run(project, TrainOptions(run="ghm-one", epochs=1, loss="ghm", **PARITY))
    _check(_cli(project.path, "train", *PARITY_ARGS, "--epochs", "1", "--loss", "ghm",
                "--run", "ghm-two", "--processes", "2"))
    project.reload()
    a = json.loads((one.dir / "ghm_stats.json").read_text())
    b = json.loads((project.abs(project.get("runs", "ghm-two")["dir"]) / "ghm_stats.json")
                   .read_text())
    assert [s["epoch"] for s in b] == [1]
    assert b[0]["n"] == a[0]["n"] == sum(b[0]["counts"]) > 0
