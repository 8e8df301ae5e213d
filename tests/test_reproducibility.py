"""Reproducible results (issue 11): deterministic reruns, seed groups, --like, recorded
environment, normalisation statistics from analyze, and the split as a hashed object."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rsctool.checkpoint import load_checkpoint, save_checkpoint
from rsctool.cli import app
from rsctool.errors import ConfigError
from rsctool.project import Project
from rsctool.train import TrainOptions, parse_seeds, run, run_group

runner = CliRunner()
FAST = {"model": "cnn", "size": "tiny", "clip_seconds": 2.0, "batch_size": 32, "lr": 3e-3}
FAST_CLI = ["--model", "cnn", "--size", "tiny", "--clip-seconds", "2", "--batch-size", "32",
            "--lr", "0.003", "--epochs", "1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def invoke(project: Project | Path, *args: str):
    path = project.path if isinstance(project, Project) else project
    return runner.invoke(app, ["--project", str(path), "-q", *args], catch_exceptions=False)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).model_state


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# --------------------------------------------------------------------------- determinism

def test_deterministic_reruns_give_identical_weights_and_metrics(project):
    """Same seed, --deterministic, same machine: bit-identical weights, identical
    validation history and identical test metrics (CPU)."""
    opts = dict(epochs=2, max_steps=4, mixup=0.2, specaugment=True, deterministic=True,
                seed=7, **FAST)
    a = run(project, TrainOptions(run="det-a", **opts), device="cpu")
    b = run(project, TrainOptions(run="det-b", **opts), device="cpu")
    for ck in ("best.safetensors", "last.safetensors"):
        assert _same_weights(a.dir / ck, b.dir / ck), ck
    strip = ("seconds", "samples_per_s")
    ha = [{k: v for k, v in row.items() if k not in strip} for row in a.history]
    hb = [{k: v for k, v in row.items() if k not in strip} for row in b.history]
    assert ha == hb and a.best_score == b.best_score
    docs = []
    for name in ("det-a", "det-b"):
        r = invoke(project, "eval", "--run", name, "--json", "--no-plots")
        assert r.exit_code == 0, r.output
        docs.append(json.loads(r.stdout))
    keys = ("specificity", "sensitivity", "score", "accuracy", "confusion", "two_class")
    assert {k: docs[0][k] for k in keys} == {k: docs[1][k] for k in keys}
    preds = [(a.dir / "predictions_test.jsonl").read_text(),
             (b.dir / "predictions_test.jsonl").read_text()]
    assert preds[0] == preds[1]  # every probability, to 6 digits
    # another seed is another run (the test above is not vacuous)
    c = run(project, TrainOptions(run="det-c", **{**opts, "seed": 8}), device="cpu")
    assert not _same_weights(a.dir / "last.safetensors", c.dir / "last.safetensors")


@pytest.mark.gpu
def test_deterministic_cuda_runs_match(project):
    """On CUDA (same GPU, same versions): two deterministic runs give the same weights;
    the run records the GPU's name."""
    opts = dict(epochs=1, max_steps=3, deterministic=True, seed=1, **FAST)
    a = run(project, TrainOptions(run="cuda-a", **opts), device="cuda")
    b = run(project, TrainOptions(run="cuda-b", **opts), device="cuda")
    assert _same_weights(a.dir / "last.safetensors", b.dir / "last.safetensors")
    env = json.loads((a.dir / "config.json").read_text())["environment"]
    assert env["device"] == "cuda" and env["device_name"] == torch.cuda.get_device_name()


# --------------------------------------------------------------------------- environment

def test_environment_is_recorded_and_round_trips(project, tmp_path):
    from rsctool.environment import collect, compact, differences

    env = collect("cpu")
    assert env["rsctool"] and env["python"] and env["device"] == "cpu" and env["device_name"]
    assert {"torch", "transformers", "diffusers"} <= set(env["packages"])
    assert env["packages"]["torch"] == torch.__version__
    # JSON (config.json), TOML (project file) and the checkpoint header give it back unchanged
    assert json.loads(json.dumps(env)) == env
    project.update_record("runs", "envtest", environment=env)
    assert Project.load(project.path).get("runs", "envtest")["environment"] == env
    save_checkpoint(tmp_path / "ck.safetensors", model=torch.nn.Linear(2, 2),
                    state={"config": {"environment": env}})
    assert load_checkpoint(tmp_path / "ck.safetensors").state["config"]["environment"] == env
    assert differences(env, env) == []
    other = json.loads(json.dumps(env))
    other["packages"]["torch"] = "0.0.1"
    assert differences(env, other) == [f"packages.torch {env['packages']['torch']} -> 0.0.1"]
    small = compact(env)
    assert small["torch"] == env["packages"]["torch"] and small["rsctool"] == env["rsctool"]

    # a training run records it in its config, checkpoints and project record
    res = run(project, TrainOptions(epochs=1, max_steps=1, **FAST), device="cpu")
    cfg = json.loads((res.dir / "config.json").read_text())
    assert cfg["environment"]["packages"] == env["packages"]
    assert load_checkpoint(res.dir / "last.safetensors").state["config"]["environment"] == \
        cfg["environment"]
    rec = project.get("runs", res.run)
    assert rec["environment"]["torch"] == env["packages"]["torch"]
    assert cfg["data"]["manifest_sha256"] == rec["dataset_sha256"]
    assert cfg["split"]["hash"] == rec["split_hash"] and cfg["split"]["official"] is True
    assert cfg["options"]["seed"] == 0 and cfg["normalization"]["norm"] == "audioset"


def test_git_state_of_a_checkout(tmp_path):
    from rsctool.environment import git_state

    assert git_state(tmp_path) is None  # not a checkout
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org",
           "-c", "commit.gpgsign=false"]
    (repo / "a.txt").write_text("one\n")
    for args in (["init", "-q"], ["add", "a.txt"], ["commit", "-q", "-m", "x"]):
        subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()
    assert git_state(repo) == {"commit": head, "dirty": False}
    (repo / "a.txt").write_text("two\n")
    assert git_state(repo) == {"commit": head, "dirty": True}


# --------------------------------------------------------------------------- normalisation

def test_analyze_records_fbank_stats_and_train_uses_them(project, monkeypatch):
    import rsctool.data.dataset as ds
    from rsctool.data.dataset import default_stats_clip, fbank_statistics, stats_key
    from rsctool.datasets import load_dataset_cycles
    from rsctool.onnx_runtime import ModelSpec

    rec = project.get("datasets", "demo")
    clip = default_stats_clip()
    assert clip.fbank.window == "hanning" and clip.clip_seconds == 8.0
    entry = rec["fbank_stats"][stats_key(clip)]
    assert entry["source"] == "analyze" and entry["split_hash"] == rec["split_hash"]
    assert entry["manifest_sha256"] == rec["sha256"]
    # anyone can recompute them from the manifest, to the last bit
    train = [c for c in load_dataset_cycles(project, rec) if c.split == "train"]
    again = fbank_statistics(train, clip)
    assert (again["mean"], again["std"]) == (entry["mean"], entry["std"])
    assert entry["clips"] == len(train) and -20 < entry["mean"] < 5 and entry["std"] > 0
    report = json.loads(project.abs(rec["report"]).read_text())
    assert report["fbank_stats"][stats_key(clip)]["mean"] == entry["mean"]

    # train --norm dataset with the analyzed feature configuration: the recorded numbers
    def no_compute(*a, **k):
        raise AssertionError("statistics recomputed")

    monkeypatch.setattr(ds, "fbank_statistics", no_compute)
    res = run(project, TrainOptions(run="n-an", epochs=1, max_steps=1, norm="dataset",
                                    **{**FAST, "clip_seconds": 8.0, "model": "cnn"},
                                    window="hanning"), device="cpu")
    ck = load_checkpoint(res.dir / "best.safetensors")
    norm = ck.state["config"]["normalization"]
    assert norm["norm"] == "dataset" and norm["source"] == "analyze"
    assert ck.state["config"]["clip"]["fbank"]["mean"] == entry["mean"]
    assert project.get("runs", "n-an")["norm"] == "dataset"
    from rsctool.runs import load_run

    assert ModelSpec.from_run(load_run(project, "n-an")).norm == "dataset"  # and the export

    # another feature configuration: computed by the first run, recorded, then reused
    monkeypatch.setattr(ds, "fbank_statistics", fbank_statistics)
    res = run(project, TrainOptions(run="n-1", epochs=1, max_steps=1, norm="dataset", **FAST),
              device="cpu")
    key = load_checkpoint(res.dir / "best.safetensors").state["config"]["normalization"]["key"]
    new = project.get("datasets", "demo")["fbank_stats"][key]
    assert new["source"] == "train" and key != stats_key(clip)
    monkeypatch.setattr(ds, "fbank_statistics", no_compute)
    res = run(project, TrainOptions(run="n-2", seed=3, epochs=1, max_steps=1, norm="dataset",
                                    **FAST), device="cpu")
    assert load_checkpoint(res.dir / "best.safetensors").state["config"]["clip"]["fbank"][
        "mean"] == new["mean"]
    # audioset: AST's pretraining values
    res = run(project, TrainOptions(run="n-as", epochs=1, max_steps=1, **FAST), device="cpu")
    fb = load_checkpoint(res.dir / "best.safetensors").state["config"]["clip"]["fbank"]
    assert (round(fb["mean"], 2), round(fb["std"], 2)) == (-4.27, 4.57)


# --------------------------------------------------------------------------- seed groups

def test_parse_seeds():
    assert parse_seeds(["5"]) == [0, 1, 2, 3, 4]
    assert parse_seeds(["0", "1", "2"]) == [0, 1, 2]
    assert parse_seeds(["3,7"]) == [3, 7]
    for bad in (["0"], ["1", "1"], ["x"], ["-1", "2"], []):
        with pytest.raises(ConfigError):
            parse_seeds(bad)


def test_seeds_make_a_group_and_eval_group_reports_mean_and_std(project, tmp_path):
    args = ["train", *FAST_CLI, "--set", "max_steps=2", "--run", "sweep", "--json"]
    r = invoke(project, *args, "--seeds", "0", "1", "2")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["group"] == "sweep" and doc["seeds"] == [0, 1, 2]
    assert [d["run"] for d in doc["runs"]] == ["sweep-s0", "sweep-s1", "sweep-s2"]
    p = Project.load(project.path)
    g = p.get("groups", "sweep")
    assert g["runs"] == ["sweep-s0", "sweep-s1", "sweep-s2"] and g["seeds"] == [0, 1, 2]
    assert g["status"] == "done" and g["model"] == "cnn"
    for s in (0, 1, 2):
        rec = p.get("runs", f"sweep-s{s}")
        assert rec["group"] == "sweep" and rec["seed"] == s and rec["status"] == "done"
        cfg = json.loads((p.abs(rec["dir"]) / "config.json").read_text())
        assert cfg["options"]["seed"] == s and cfg["group"] == "sweep"
    # the same command again: every seed is done, nothing to do
    r = invoke(project, *args, "--seeds", "0", "1", "2")
    assert r.exit_code == 0 and json.loads(r.stdout)["skipped"] is True, r.output
    # other options for an existing group are refused, the project untouched
    before = project.path.read_bytes()
    r = invoke(project, *args[:-1], "--seeds", "3", "--lr", "0.5")
    assert r.exit_code == 2 and "exists with other options" in r.output, r.output
    assert project.path.read_bytes() == before

    r = invoke(project, "eval", "--group", "sweep", "--json", "--no-plots",
               "--csv", str(tmp_path / "g.csv"))
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["group"] == "sweep" and summary["n_runs"] == 3
    assert summary["split_spec"] == "official" and summary["official_split"] is True
    assert summary["split_hash"] == p.get("datasets", "demo")["split_hash"]
    assert [x["seed"] for x in summary["runs"]] == [0, 1, 2]
    for k in ("specificity", "sensitivity", "score"):
        vals = [x[k] for x in summary["runs"]]
        assert summary["mean"][k] == pytest.approx(np.mean(vals))
        assert summary["std"][k] == pytest.approx(np.std(vals, ddof=1))
        per_run = json.loads(Path(summary["runs"][0]["metrics"]).read_text())
        assert per_run[k] == summary["runs"][0][k]
    rows = list(csv.DictReader((tmp_path / "g.csv").open()))
    assert [row["group"] for row in rows] == ["sweep"] * 3
    assert [row["seed"] for row in rows] == ["0", "1", "2"]
    g = Project.load(project.path).get("groups", "sweep")
    assert g["eval_test_score_mean"] == pytest.approx(summary["mean"]["score"])
    assert g["eval_test_runs"] == 3
    r = runner.invoke(app, ["--project", str(project.path), "eval", "--group", "sweep",
                            "--no-plots"], catch_exceptions=False)
    assert r.exit_code == 0 and "mean of 3 (group sweep)" in r.output, r.output
    assert "group sweep" in r.output and "+-" in r.output and "official" in r.output
    for bad, needle in ((["--group", "nope"], "not in the project"),
                        (["--group", "sweep", "--run", "sweep-s0"], "not both")):
        r = invoke(project, "eval", *bad)
        assert r.exit_code == 2 and needle in r.output, r.output


def test_group_without_a_name_and_python_api(project):
    res = run_group(project, TrainOptions(epochs=1, max_steps=1, **FAST), [4, 2])
    assert res.group == "cnn" and [r.run for r in res.results] == ["cnn-s4", "cnn-s2"]
    # the same options without a name are that group: another seed extends it
    res2 = run_group(project, TrainOptions(epochs=1, max_steps=1, **FAST), [0])
    assert res2.group == "cnn" and res2.results[0].run == "cnn-s0"
    assert project.get("groups", "cnn")["seeds"] == [0, 2, 4]
    res3 = run_group(project, TrainOptions(epochs=1, max_steps=1, **FAST), [0], new=True)
    assert res3.group == "cnn-1" and res3.results[0].run == "cnn-1-s0"
    # a plain run in the way of a group member is refused before anything is written
    run(project, TrainOptions(run="x-s0", epochs=1, max_steps=1, **FAST))
    before = project.path.read_bytes()
    with pytest.raises(ConfigError, match="not part of seed group"):
        run_group(project, TrainOptions(run="x", epochs=1, max_steps=1, **FAST), [0, 1])
    assert project.path.read_bytes() == before


def test_seed_arguments_on_the_command_line(project):
    r = invoke(project, "--seed", "3", "train", *FAST_CLI, "--seeds", "2")
    assert r.exit_code == 2 and "not both" in r.output
    r = invoke(project, "train", *FAST_CLI, "--seeds", "0", "x")
    assert r.exit_code == 2 and "--seeds expects integers" in r.output
    r = invoke(project, "train", *FAST_CLI, "stray")
    assert r.exit_code == 2 and "unexpected argument" in r.output


# --------------------------------------------------------------------------- --like

def test_like_reruns_with_the_identical_config(project):
    base = ["train", *FAST_CLI, "--set", "max_steps=3", "--set", "mixup=0.2", "--deterministic",
            "--norm", "dataset", "--run", "orig", "--json"]
    r = invoke(project, "--seed", "5", *base)
    assert r.exit_code == 0, r.output
    r = invoke(project, "train", "--like", "orig", "--json")
    assert r.exit_code == 0, r.output
    copy = json.loads(r.stdout)["run"]
    p = Project.load(project.path)
    a = json.loads((p.abs(p.get("runs", "orig")["dir"]) / "config.json").read_text())
    b = json.loads((p.abs(p.get("runs", copy)["dir"]) / "config.json").read_text())
    assert {**a["options"], "run": None} == {**b["options"], "run": None}
    assert b["options"]["seed"] == 5 and p.get("runs", copy)["like"] == "orig"
    assert a["normalization"] == b["normalization"] and a["split"] == b["split"]
    # deterministic: the re-run reproduces the weights bit for bit
    assert _same_weights(p.abs(p.get("runs", "orig")["best"]), p.abs(p.get("runs", copy)["best"]))
    # explicit options override the recorded ones; the rest stays
    r = invoke(project, "train", "--like", "orig", "--lr", "0.002", "--run", "orig-lr", "--json")
    assert r.exit_code == 0, r.output
    c = json.loads((Project.load(project.path).state_dir() / "runs" / "orig-lr" /
                    "config.json").read_text())["options"]
    diff = {k for k in c if c[k] != a["options"][k]}
    assert diff == {"lr", "run"}
    # --like a group re-runs all its seeds
    r = invoke(project, "train", *FAST_CLI, "--set", "max_steps=1", "--run", "g1",
               "--seeds", "2")
    assert r.exit_code == 0, r.output
    r = invoke(project, "train", "--like", "g1", "--run", "g2", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["seeds"] == [0, 1]
    r = invoke(project, "train", "--like", "nope")
    assert r.exit_code == 2 and "is not a run or seed group" in r.output


def test_like_source_is_recorded_in_the_runs_config_json(project):
    # docs/reproducing.md: `like` is in the run record and in its config.json
    r = invoke(project, "train", *FAST_CLI, "--set", "max_steps=1", "--run", "src")
    assert r.exit_code == 0, r.output
    r = invoke(project, "train", "--like", "src", "--run", "src-again", "--json")
    assert r.exit_code == 0, r.output
    p = Project.load(project.path)
    cfg = json.loads((p.abs(p.get("runs", "src-again")["dir"]) / "config.json").read_text())
    assert cfg["like"] == "src" and p.get("runs", "src-again")["like"] == "src"
    assert "like" not in json.loads((p.abs(p.get("runs", "src")["dir"]) /
                                     "config.json").read_text())


# --------------------------------------------------------------------------- status

def test_status_run_shows_the_full_record(project):
    res = run(project, TrainOptions(run="st", epochs=1, max_steps=1, **FAST), device="cpu")
    r = invoke(project, "status", "--run", "st", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["record"]["status"] == "done"
    cfg = doc["config"]
    assert cfg["options"] == json.loads((res.dir / "config.json").read_text())["options"]
    for key in ("environment", "data", "split", "normalization", "model"):
        assert cfg[key], key
    r = runner.invoke(app, ["--project", str(project.path), "status", "--run", "st"],
                      env={"COLUMNS": "200"}, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    for needle in ("environment", "packages", "torch", cfg["split"]["hash"], "official",
                   "audioset", "manifest_sha256"):
        assert needle in r.output, needle
    r = invoke(project, "status", "--run", "nope")
    assert r.exit_code == 2 and "not in the project" in r.output


# --------------------------------------------------------------------------- splits

def test_changing_the_split_changes_its_hash_and_eval_says_so(project, analysed, tmp_path):
    from rsctool.analyze import AnalyzeOptions
    from rsctool.analyze import run as analyze

    analyze(project, AnalyzeOptions(data_dir=analysed / "data", name="pat",
                                    split="patients:0.6", val_fraction=0.2, plots=False,
                                    fbank_stats=False))
    off, pat = project.get("datasets", "demo"), project.get("datasets", "pat")
    assert pat["split"] == "patients:0.6" and pat["split_hash"] != off["split_hash"]
    assert pat["split_train_test_hash"] != off["split_train_test_hash"]
    run(project, TrainOptions(run="on-off", epochs=1, max_steps=1, dataset="demo", **FAST))
    run(project, TrainOptions(run="on-pat", epochs=1, max_steps=1, dataset="pat", **FAST))
    r = invoke(project, "eval", "--runs", "on-off", "on-pat", "--json", "--no-plots",
               "--csv", str(tmp_path / "c.csv"))
    assert r.exit_code == 0, r.output
    a, b = json.loads(r.stdout)
    assert (a["split_spec"], a["official_split"], a["split_hash"]) == (
        "official", True, off["split_hash"])
    assert (b["split_spec"], b["official_split"], b["split_hash"]) == (
        "patients:0.6", False, pat["split_hash"])
    rows = list(csv.DictReader((tmp_path / "c.csv").open()))
    assert [row["split_hash"] for row in rows] == [off["split_hash"], pat["split_hash"]]
    r = runner.invoke(app, ["--project", str(project.path), "eval", "--run", "on-pat",
                            "--no-plots"], env={"COLUMNS": "200"}, catch_exceptions=False)
    assert "not the official ICBHI split" in r.output and pat["split_hash"][:12] in r.output
    r = runner.invoke(app, ["--project", str(project.path), "eval", "--runs", "on-*",
                            "--no-plots"], env={"COLUMNS": "200"}, catch_exceptions=False)
    assert "not the official ICBHI 2017 split" in r.output and "patients:0.6" in r.output


#: `train_test_hash` of the official ICBHI 2017 split on the real annotation files
#: (val counted as train, so the same for every --val-fraction).
OFFICIAL_TRAIN_TEST_HASH = "6aa608aa7dda48fe8d81635c24bca68da98e4622af3100e6180ae92e4bf92ff7"


def test_official_split_reproduces_the_challenge_file(icbhi_meta, tmp_path):
    from rsctool.data.icbhi import read_icbhi
    from rsctool.data.splits import split_hash, train_test_hash
    from rsctool.testing import synthesize_icbhi_audio

    db = synthesize_icbhi_audio(icbhi_meta, tmp_path / "db")
    words = (icbhi_meta / "ICBHI_challenge_train_test.txt").read_text().split()
    challenge = dict(zip(words[0::2], words[1::2], strict=True))
    # the file's one known misnaming (see icbhi-meta/SOURCE.md)
    challenge["226_1b1_Pl_sc_LittC2SE"] = challenge.pop("226_1b1_Pl_sc_Meditron")
    hashes, full = set(), set()
    for vf in (0.0, 0.1, 0.2):
        cycles = read_icbhi(db, val_fraction=vf)
        assert {c.recording for c in cycles} == set(challenge)
        assert all(("train" if c.split == "val" else c.split) == challenge[c.recording]
                   for c in cycles)
        hashes.add(train_test_hash(cycles))
        full.add(split_hash(cycles))
    assert hashes == {OFFICIAL_TRAIN_TEST_HASH}
    assert len(full) == 3  # the validation carve-out is part of the split hash
    other = read_icbhi(db, split="patients:0.6", val_fraction=0.1)
    assert train_test_hash(other) != OFFICIAL_TRAIN_TEST_HASH


# --------------------------------------------------------------------------- recipes

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _recipe_commands(script: Path) -> list[list[str]]:
    """The `$RSCTOOL ...` command lines of a recipe, variables replaced by stand-ins."""
    import re
    import shlex

    text = script.read_text(encoding="utf-8").replace("\\\n", " ")
    stand_in = {"SEEDS": "5", "m": "ast", "g": "ast-real", "n": "500", "N_SYNTH": "100"}
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("$RSCTOOL "):
            continue
        # option lists (`$FAST_TRAIN`, `$extra`) stand for no option at all here
        line = re.sub(r"\$\{?(\w+)\}?",
                      lambda m: "" if m.group(1).startswith("FAST_") or m.group(1) == "extra"
                      else stand_in.get(m.group(1), "x"), line)
        out.append(shlex.split(line)[1:])
    return out


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("seed-*.sh")))
def test_recipes_use_existing_options_and_seed_groups(script):
    from rsctool.cli import _load_command

    commands = _recipe_commands(EXAMPLES / script)
    assert commands, script
    stages = [c[0] for c in commands]
    assert stages[0] == "analyze" and "train" in stages and "eval" in stages
    for args in commands:
        cmd = _load_command(args[0])
        ctx = cmd.make_context(args[0], list(args[1:]))  # unknown option: UsageError
        if args[0] == "analyze":
            assert ctx.params["split"] == "official"
        if args[0] == "train":
            assert ctx.params["seeds"] == ["5"] and ctx.params["run_name"]
        if args[0] == "eval":  # a seed group, or its runs beside the other models'
            assert ctx.params["group"] or ctx.params["runs"]
    text = (EXAMPLES / script).read_text(encoding="utf-8")
    assert "Paper (seed 00" in text  # the number the paper reports sits next to the command
    doc = (EXAMPLES.parent / "docs" / "reproducing.md").read_text(encoding="utf-8")
    assert f"examples/{script}" in doc
