"""`rsctool train --dry-run [--json]`: every seed recipe resolves to the settings
docs/fidelity.md states, the model is built (parameters per block, input shape, memory)
and nothing is trained or written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rsctool.cli import app

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: The recipes' models given on the command line by their example scripts.
SCRIPT_MODEL = {"seed-001-paper.toml": "softfilm"}


def recipes() -> list[Path]:
    """Every examples/seed-*.toml with a [train] table."""
    return sorted(p for p in EXAMPLES.glob("seed-*.toml")
                  if "train" in tomllib.loads(p.read_text(encoding="utf-8")))


def dry_run(project_file: Path, *args: str) -> dict:
    r = runner.invoke(app, ["--project", str(project_file), "train", *args, "--dry-run",
                            "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_there_are_train_recipes():
    assert {p.name for p in recipes()} >= {"seed-000-add-audioldm.toml", "seed-001-paper.toml",
                                          "seed-002-aft.toml", "seed-003-add.toml",
                                          "seed-004-ghm.toml"}


@pytest.mark.parametrize("recipe", recipes(), ids=lambda p: p.stem)
def test_every_seed_recipe_resolves_without_a_project(recipe, tmp_path):
    project_file = tmp_path / "rsctool.toml"
    model = SCRIPT_MODEL.get(recipe.name)
    doc = dry_run(project_file, "--config", str(recipe), *(["--model", model] if model else []))
    assert not project_file.exists() and not list(tmp_path.iterdir())  # nothing written
    table = tomllib.loads(recipe.read_text(encoding="utf-8"))["train"]
    opts = doc["options"]
    for key, value in table.items():  # the recipe's values arrive as written
        if isinstance(value, dict):
            assert {k: opts[key][k] for k in value} == value, key
        else:
            assert opts[key] == value, key
    m, x = doc["model"], doc["input"]
    assert m["parameters"] == sum(b["parameters"] for b in m["blocks"]) > 0
    assert x["x"] == [opts["batch_size"], x["frames"], opts["num_mel_bins"]]
    samples = int(round(opts["clip_seconds"] * opts["sample_rate"]))  # 25 ms frames, 10 ms hop
    assert x["frames"] == (samples - opts["sample_rate"] // 40) // (opts["sample_rate"] // 100) + 1
    mem = doc["memory"]
    assert mem["weights"] == 4 * m["parameters"]
    assert mem["activations_per_clip"] > 0
    assert mem["total"] > mem["weights"] + mem["gradients_optimizer"]


def test_the_seed_recipes_hold_the_fidelity_tables_values(tmp_path):
    """A few rows of docs/fidelity.md, read through the dry run (what training uses)."""
    p = tmp_path / "rsctool.toml"
    s1 = dry_run(p, "--config", str(EXAMPLES / "seed-001-paper.toml"), "--model", "softfilm")
    assert s1["options"]["task"] == "multilabel" and s1["options"]["sensitivity_bias"] == 1.5
    assert s1["outputs"] == 2 and s1["input"]["x"][1:] == [1024, 128]
    assert s1["input"]["metadata"] == ["device", "site", "age", "bmi", "duration"]
    assert s1["options"]["metadata_impute"] == "median"
    s3 = dry_run(p, "--config", str(EXAMPLES / "seed-003-add.toml"))
    blocks = {b["name"]: b["parameters"] for b in s3["model"]["blocks"]}
    assert s3["options"]["model"] == "add" and {"backbone", "front", "aux_head"} <= set(blocks)
    assert 85e6 < blocks["backbone"] < 87e6  # the AST base backbone in front of the ADD front
    s4 = dry_run(p, "--config", str(EXAMPLES / "seed-004-ghm.toml"))
    assert s4["options"]["loss"] == "ghm" and s4["options"]["loss_cfg"]["momentum"] == 0
    # the command line wins over the recipe
    s4b = dry_run(p, "--config", str(EXAMPLES / "seed-004-ghm.toml"), "--batch-size", "4")
    assert s4b["input"]["x"][0] == 4
    assert s4b["memory"]["activations"] == 4 * s4b["memory"]["activations_per_clip"]


def test_dry_run_reads_the_projects_dataset_and_changes_nothing(project):
    before = project.path.read_bytes()
    files = sorted(project.path.parent.rglob("*"))
    doc = dry_run(project.path, "--model", "cnn", "--size", "tiny", "--task", "binary",
                  "--grad-accum", "2", "--batch-size", "8")
    assert doc["dataset"] == "demo" and doc["classes"] == ["normal", "abnormal"]
    assert doc["outputs"] == 2
    assert doc["memory"]["activations"] == 4 * doc["memory"]["activations_per_clip"]
    assert project.path.read_bytes() == before
    assert sorted(project.path.parent.rglob("*")) == files
    assert "runs" not in project.reload() or not project.reload()["runs"]


def test_dry_run_of_a_metadata_model_reports_its_inputs_and_table(project):
    r = runner.invoke(app, ["--project", str(project.path), "train", "--model", "tafilm",
                            "--size", "tiny", "--dry-run"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert r.stdout == ""  # the table is decoration: stderr
    assert "parameters" in r.output and "metadata device, site" in r.output
    assert "memory per process" in r.output


def test_bad_options_fail_the_dry_run_like_training(tmp_path):
    r = runner.invoke(app, ["--project", str(tmp_path / "p.toml"), "train", "--model", "nosuch",
                            "--dry-run"])
    assert r.exit_code == 2, r.output
    assert "unknown model 'nosuch'" in r.output
    assert not (tmp_path / "p.toml").exists()


def test_the_dry_run_says_what_precision_auto_does_on_this_cpu(tmp_path, monkeypatch):
    """The matrix work per batch (`rsctool.devices.matrix_flops`, counted on the meta
    device) and what `--precision auto` makes of it here: fp32 below
    `CPU_BF16_MIN_GFLOP` or without bf16 units, a measurement at the start above it."""
    from rsctool import devices

    project_file = tmp_path / "rsctool.toml"
    monkeypatch.setattr(devices, "cpu_bf16_fast", lambda: True)
    small = dry_run(project_file, "--model", "cnn", "--size", "tiny", "--batch-size", "2",
                    "--clip-seconds", "2")["precision"]
    big = dry_run(project_file, "--model", "cnn", "--size", "small", "--batch-size", "16",
                  "--clip-seconds", "4", "--num-mel-bins", "64")["precision"]
    assert 0 < small["matrix_gflop"] < devices.CPU_BF16_MIN_GFLOP <= big["matrix_gflop"]
    # cnn small, batch 16 of 4 s x 64 mel: 2.0 GFLOP (docs/benchmarks.md)
    assert big["matrix_gflop"] == pytest.approx(1.99, abs=0.01)
    assert small["option"] == "auto" and small["cpu_auto"].startswith("fp32 (too little")
    assert big["cpu_auto"].startswith("bf16 if a training step measures faster")
    monkeypatch.setattr(devices, "cpu_bf16_fast", lambda: False)
    assert dry_run(project_file, "--model", "cnn", "--size", "small")["precision"][
        "cpu_auto"] == "fp32"
    asked = dry_run(project_file, "--model", "cnn", "--precision", "bf16")["precision"]
    assert asked == {**asked, "option": "bf16", "cpu_auto": "bf16"}
    assert not project_file.exists()
