"""The CLI surface: help, version, global options, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from rsctool import __version__
from rsctool.cli import app

runner = CliRunner()


def invoke(*args: str, env: dict | None = None):
    return runner.invoke(app, list(args), env=env, catch_exceptions=False)


def test_help_and_version():
    r = invoke("--help")
    assert r.exit_code == 0, r.output
    for stage in ("analyze", "status", "demo-data"):
        assert stage in r.output
    r = invoke("--version")
    assert r.exit_code == 0 and __version__ in r.output


def test_python_dash_m_works():
    r = subprocess.run([sys.executable, "-m", "rsctool", "--version"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"rsctool {__version__}"


def test_bad_global_option_is_usage_error(tmp_path):
    r = invoke("--device", "tpu", "status")
    assert r.exit_code == 2, r.output
    assert "--device" in r.output


def test_status_on_empty_project_json(tmp_path):
    proj = tmp_path / "p.toml"
    r = invoke("--project", str(proj), "status", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["exists"] is False and doc["schema"] == 1
    assert not proj.exists()  # status never creates the file


def test_project_env_var_is_used(tmp_path):
    proj = tmp_path / "env.toml"
    r = invoke("status", "--json", env={"RSCTOOL_PROJECT": str(proj)})
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["project"] == str(proj.resolve())


def test_corrupt_project_is_exit_2_one_line_and_untouched(tmp_path):
    proj = tmp_path / "rsctool.toml"
    proj.write_text("schema = 1\n[datasets.x\nformat = 1\n")
    before = proj.read_bytes()
    r = invoke("--project", str(proj), "status")
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "rsctool.toml" in lines[0], r.stderr
    assert "Traceback" not in r.output
    assert proj.read_bytes() == before


def test_missing_dataset_dir_is_exit_2(tmp_path):
    r = invoke("--project", str(tmp_path / "p.toml"), "analyze", str(tmp_path / "nope"))
    assert r.exit_code == 2, r.output
    assert "nope" in r.stderr and "not found" in r.stderr
    assert not (tmp_path / "p.toml").exists()


def test_console_script_entry_point_exit_code(tmp_path):
    # The installed `rsctool` script maps errors the same way (no traceback).
    env = {**os.environ, "RSCTOOL_PROJECT": str(tmp_path / "p.toml")}
    r = subprocess.run([sys.executable, "-m", "rsctool", "analyze", str(tmp_path / "missing")],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "missing" in r.stderr


@pytest.mark.parametrize("args", [["analyze"], ["analyze", ".", "--format", "xml"],
                                  ["analyze", ".", "--val-fraction", "1.5"]])
def test_bad_options_exit_2(tmp_path, args):
    r = invoke("--project", str(tmp_path / "p.toml"), *args)
    assert r.exit_code == 2, r.output


def test_help_texts_survive_rich_rendering():
    """Help is rendered with rich markup: "[word]" vanishes as a style tag and
    ":word:" becomes an emoji. No command's or option's help may contain either."""
    import re

    import typer

    group = typer.main.get_command(app)
    texts = [group.help or ""]
    for name, cmd in group.commands.items():
        texts.append(cmd.help or "")
        texts += [getattr(p, "help", None) or "" for p in cmd.params]
        r = invoke(name, "--help")
        assert r.exit_code == 0, (name, r.output)
    for text in texts:
        assert not re.search(r"\[[A-Za-z][A-Za-z _/-]*\]", text), text
        assert not re.search(r":[A-Za-z_]+:", text), text
