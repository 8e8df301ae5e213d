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


def _python(code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, **kw)


@pytest.mark.parametrize(("code", "status"), [("None", 0), ("0", 0), ("3", 3)])
def test_exit_now_keeps_status_atexit_handlers_and_buffered_output(code, status):
    # A pipe makes stdout block-buffered: the records still in the buffer must come out.
    r = _python("import atexit, sys\nfrom rsctool.cli import exit_now\n"
                "atexit.register(lambda: print('handler', file=sys.stderr))\n"
                f"sys.stdout.write('x' * 100000)\nexit_now({code})\n")
    assert r.returncode == status, r.stderr
    assert r.stdout == "x" * 100000 and r.stderr == "handler\n"


def test_exit_now_falls_back_to_the_normal_exit_when_it_must():
    # A running non-daemon thread is waited for, as the interpreter's teardown does.
    r = _python("import threading, time\nfrom rsctool.cli import exit_now\n"
                "threading.Thread(target=lambda: (time.sleep(0.3), print('thread'))).start()\n"
                "exit_now(4)\n")
    assert (r.returncode, r.stdout) == (4, "thread\n"), r.stderr
    # A message instead of a status: printed, status 1 (sys.exit's rule).
    r = _python("from rsctool.cli import exit_now\nexit_now('bad thing')\n")
    assert (r.returncode, r.stderr) == (1, "bad thing\n")
    # A multi-process launch keeps the teardown (its process group).
    r = _python("import atexit\nfrom rsctool.cli import exit_now\n"
                "class Late:\n    def __del__(self): print('teardown')\n"
                "keep = Late()\nexit_now(0)\n", env={**os.environ, "WORLD_SIZE": "2"})
    assert (r.returncode, r.stdout) == (0, "teardown\n"), r.stderr


def test_exit_now_ends_an_initialized_process_group_first(tmp_path):
    # left to the interpreter's teardown, gloo's threads can abort the process (SIGABRT)
    r = _python("import atexit, torch.distributed as td\nfrom rsctool.cli import exit_now\n"
                f"td.init_process_group('gloo', init_method='file://{tmp_path}/store', "
                "rank=0, world_size=1)\n"
                "atexit.register(lambda: print('initialized at exit:', td.is_initialized()))\n"
                "exit_now(5)\n")
    assert (r.returncode, r.stdout) == (5, "initialized at exit: False\n"), r.stderr


def test_console_script_skips_the_teardown_but_not_its_output():
    # Objects alive at the end are not finalised (that is the time saved); the command's
    # records and status are unchanged.
    r = _python("import sys\nsys.argv = ['rsctool', '--version']\n"
                "class Late:\n    def __del__(self): print('teardown')\n"
                "keep = Late()\nfrom rsctool.cli import main\nmain()\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"rsctool {__version__}\n"


def test_freeze_on_import_pauses_the_collector_for_that_import_only(tmp_path):
    (tmp_path / "heavy.py").write_text("import gc\nenabled_while_importing = gc.isenabled()\n"
                                       "objects = [[i] for i in range(1000)]\n")
    r = _python("import gc, sys, json\nfrom rsctool.cli import freeze_on_import\n"
                "freeze_on_import('heavy'); freeze_on_import('heavy')\n"
                "hooks = sum(type(f).__name__ == '_FreezeOnImport' for f in sys.meta_path)\n"
                "import heavy\n"
                "print(json.dumps([hooks, heavy.enabled_while_importing, gc.isenabled(),\n"
                "    gc.get_freeze_count() >= 1000, 'exec_module' in vars(heavy.__loader__),\n"
                "    any(type(f).__name__ == '_FreezeOnImport' for f in sys.meta_path)]))\n",
                cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [1, False, True, True, False, False]
