"""Every script in examples/ runs, in its fast mode, so the recipes cannot rot.

`RSCTOOL_FAST=1` makes each script a smoke test: the same commands in the same order,
with tiny models, a couple of optimizer steps and 1 s clips on a small demo dataset
(results meaningless). A static check also runs every `$RSCTOOL STAGE --option` of the
scripts against the CLI, without running anything.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rsctool.docgen import check_command, cli_options

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.sh"))
#: Scripts run by other tests with more checks: sweep.sh by
#: test_sweep_ends_with_a_table_csv_and_json, demo.sh by
#: test_demo.py::test_readme_demo_reaches_the_quality_bar (the whole demo),
#: folder-ranking-ghm.sh by test_ranking.py::test_example_script_runs and
#: cross-dataset.sh by test_cross_dataset_script_scores_sprsound_through_the_map.
RUN_SEPARATELY = ("sweep.sh", "demo.sh", "folder-ranking-ghm.sh", "cross-dataset.sh")

#: Fast-mode wall-clock budget per script (s) on the 2-core CI machine; a script that
#: needs more should trim its fast mode.
BUDGET = 240


def _dataset_kind(script: str) -> str | None:
    """What the script's DATA argument is, from its usage line: `PATH/TO/FOLDER_DATASET`
    a `<class>/**/*.wav` folder dataset, another `PATH/TO/...` the ICBHI database;
    None: the script takes WORK only (demo, sweep)."""
    text = (EXAMPLES / script).read_text()
    if "PATH/TO/FOLDER_DATASET" in text:
        return "folder"
    return "icbhi" if "PATH/TO/" in text else None


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    """A small demo dataset (ICBHI format, 12 patients) shared by the recipes."""
    from rsctool.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("examples") / "ICBHI_final_database"
    make_demo_dataset(root, patients=12, seed=0)
    return root


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory) -> Path:
    """A small `<class>/<material>/<material>_<class>_<frequency>_<n>.wav` folder dataset
    (seed 004's angle layout: 3 classes, 2 materials, 2 frequencies, 4 files each)."""
    from rsctool.testing import write_folder_dataset

    files = [f"{c}/{m}/{m}_{c}_{f}_{i}.wav" for c in ("0_degree", "90_degree", "180_degree")
             for m in ("plastic", "metal") for f in ("1000hz", "2000hz") for i in range(4)]
    return write_folder_dataset(tmp_path_factory.mktemp("examples") / "angles", files,
                                seconds=1.0, sample_rate=8000)


@pytest.fixture(scope="module")
def tiny_audioldm(tmp_path_factory) -> Path:
    from rsctool.testing import write_tiny_audioldm

    return write_tiny_audioldm(tmp_path_factory.mktemp("models") / "tiny-audioldm")


def _run(script: str, args: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "RSCTOOL": f"{shlex.quote(sys.executable)} -m rsctool",
           "RSCTOOL_FAST": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           **env_extra}
    env.pop("RSCTOOL_PROJECT", None)
    return subprocess.run(["bash", str(EXAMPLES / script), *args], env=env, cwd=args[-1],
                          capture_output=True, text=True, timeout=BUDGET)


def _check(proc: subprocess.CompletedProcess, script: str) -> None:
    assert proc.returncode == 0, (f"{script} (RSCTOOL_FAST=1) exited {proc.returncode}\n"
                                  f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n"
                                  f"{proc.stderr[-4000:]}")


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- running


@pytest.mark.slow
@pytest.mark.parametrize("script", [s for s in SCRIPTS if s not in RUN_SEPARATELY])
def test_example_runs_in_fast_mode(script, demo_data, tmp_path, request):
    work = tmp_path / "work"
    work.mkdir()
    env: dict[str, str] = {}
    if "AUDIOLDM_MODEL" in (EXAMPLES / script).read_text():
        env["AUDIOLDM_MODEL"] = str(request.getfixturevalue("tiny_audioldm"))
    kind = _dataset_kind(script)
    data = request.getfixturevalue("folder_data") if kind == "folder" else demo_data
    args = [str(data), str(work)] if kind else [str(work)]
    proc = _run(script, args, env)
    _check(proc, script)
    assert (work / "rsctool.toml").is_file(), "the script did not use WORK_DIR's project"
    assert "Traceback" not in proc.stderr
    if "--csv" in (EXAMPLES / script).read_text():
        csvs = sorted(work.glob("*.csv"))
        assert csvs, f"{script} wrote no comparison CSV into {work}"
        assert all(_csv_rows(p) for p in csvs), "an empty comparison CSV"


@pytest.mark.slow
def test_sweep_ends_with_a_table_csv_and_json(demo_data, tmp_path):
    work = tmp_path / "sweep"
    work.mkdir()
    proc = _run("sweep.sh", [str(work)], {"DATA": str(demo_data), "MODELS": "cnn ast"})
    _check(proc, "sweep.sh")
    rows = _csv_rows(work / "sweep.csv")
    assert sorted(r["run"] for r in rows) == ["sweep-ast-s0", "sweep-ast-s1", "sweep-cnn-s0",
                                              "sweep-cnn-s1"]
    assert {r["group"] for r in rows} == {"sweep-ast", "sweep-cnn"}
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    doc = json.loads((work / "sweep.json").read_text())
    assert isinstance(doc, list) and len(doc) == 4, doc
    assert "sweep-cnn" in proc.stderr and "mean" in proc.stderr  # the per-model summary rows


@pytest.mark.slow
def test_cross_dataset_script_scores_sprsound_through_the_map(tmp_path):
    from rsctool.data.labelmap import load_map

    work = tmp_path / "cross"
    work.mkdir()
    proc = _run("cross-dataset.sh", [str(work)], {})
    _check(proc, "cross-dataset.sh")
    assert "Traceback" not in proc.stderr
    (row,) = _csv_rows(work / "cross-dataset.csv")
    assert (row["run"], row["trained_on"]) == ("icbhi-cnn", "icbhi")
    assert 0.0 <= float(row["sprsound"]) <= 1.0 and 0.0 <= float(row["icbhi"]) <= 1.0
    assert row["sprsound map"] == f"sprsound-to-icbhi@{load_map('sprsound-to-icbhi').sha256}"
    stored = json.loads(next(work.glob(".rsctool/runs/icbhi-cnn/metrics_test_on_sprsound.json"))
                        .read_text())
    assert stored["cross_dataset"]["map"]["name"] == "sprsound-to-icbhi"
    assert "cross-dataset Score" in proc.stderr


@pytest.mark.slow
def test_audioldm_recipe_skips_synthesis_without_a_local_model(demo_data, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    proc = _run("seed-000-add-audioldm.sh", [str(demo_data), str(work)],
                {"AUDIOLDM_MODEL": "cvssp/audioldm-s-full-v2"})
    _check(proc, "seed-000-add-audioldm.sh")
    assert "skipping AudioLDM synthesis" in proc.stderr
    assert [r["run"] for r in _csv_rows(work / "seed-000.csv")] == ["add-paper-s0"]


# --------------------------------------------------------------------------- static


def test_every_script_is_strict_and_has_a_fast_mode():
    for script in SCRIPTS:
        text = (EXAMPLES / script).read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), script
        assert "set -euo pipefail" in text, script
        assert "RSCTOOL=${RSCTOOL:-rsctool}" in text, f"{script}: honour $RSCTOOL"
        assert "RSCTOOL_FAST" in text, f"{script}: needs a fast mode (RSCTOOL_FAST=1)"
        assert "# Usage:" in text, f"{script}: say how to run it"
        syntax = subprocess.run(["bash", "-n", str(EXAMPLES / script)], capture_output=True,
                                text=True)
        assert syntax.returncode == 0, f"{script}: {syntax.stderr}"


def _commands(text: str, prefix: str) -> list[str]:
    """The rsctool command lines in `text` (continuation lines joined, comments cut)."""
    text = text.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        for m in re.finditer(re.escape(prefix) + r"\s+(.*)", line):
            out.append(m.group(1).split("|")[0].split(">")[0])
    return out


def test_every_option_in_the_scripts_exists():
    global_opts, stages = cli_options()
    bad = []
    for script in SCRIPTS:
        for cmd in _commands((EXAMPLES / script).read_text(), "$RSCTOOL"):
            why = check_command(shlex.split(cmd.replace("$", "\\$"), comments=True),
                                global_opts, stages)
            if why:
                bad.append(f"{script}: rsctool {cmd.strip()}: {why}")
    assert not bad, "\n".join(bad)


def test_fast_mode_options_exist():
    """The FAST_* option strings are applied to stages too: check them the same way."""
    global_opts, stages = cli_options()
    for script in SCRIPTS:
        text = (EXAMPLES / script).read_text()
        for var, stage in (("FAST_TRAIN", "train"), ("FAST_ANALYZE", "analyze"),
                           ("FAST_EVAL", "eval"), ("FAST_SYNTH", "synth"),
                           ("FAST_DATA", "demo-data")):
            for m in re.finditer(var + r'\+?="([^"]*)"', text):
                why = check_command([stage, *m.group(1).split()], global_opts, stages)
                assert why is None, f"{script}: {var}: {why}"


def test_config_files_are_valid_train_options():
    import tomllib

    from rsctool.train import TrainOptions, _load_config_file

    configs = [p for p in sorted(EXAMPLES.glob("*.toml"))
               if "train" in tomllib.loads(p.read_text())]
    assert len(configs) >= 5, configs
    for path in configs:
        TrainOptions(**_load_config_file(path)).resolve()  # unknown keys or values raise
        used = [s for s in SCRIPTS if path.name in (EXAMPLES / s).read_text()]
        assert used, f"{path.name} is used by no example script (so no test runs it)"
