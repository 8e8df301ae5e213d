"""Errors from below the stages name an option by its field (`UserError(field=...)`);
the command that prints one shows its own flag for it (`rsctool.errors.render_message`,
called by rsctool/cli.py), or the field name as `--set` and config files write it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click
import pytest
from typer.testing import CliRunner

import rsctool
from rsctool.cli import app
from rsctool.errors import ConfigError, DataError, flag_lookup, render_message

ROOT = Path(rsctool.__file__).parent
#: The command-line layer: these may spell flags (`--max-steps`) in their messages.
COMMAND_LINE = {"analyze", "synth", "train", "eval", "export", "predict", "status",
                "demodata", "cli", "docgen", "__main__"}
ERRORS = {"UserError", "ConfigError", "DataError"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
#: A backticked command hint: "run `rsctool synth --name X` again".
COMMAND_HINT = re.compile(r"`rsctool [^`]*`?")


def _lower_modules() -> list[Path]:
    return [p for p in sorted(ROOT.rglob("*.py"))
            if not (p.parent == ROOT and p.stem in COMMAND_LINE)]


def _call_name(node: ast.Call) -> str | None:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _message_text(call: ast.Call) -> str:
    """The string literals (f-string parts included) inside the call, joined as they
    appear (an f-string's values become ``{}``)."""
    parts: list[str] = []

    def walk(node: ast.AST) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            parts.append(node.value)
        elif isinstance(node, ast.FormattedValue):
            parts.append("{}")
        else:
            for child in ast.iter_child_nodes(node):
                walk(child)

    for arg in [*call.args, *(k.value for k in call.keywords)]:
        walk(arg)
    return "".join(parts)


def test_no_error_below_the_stages_spells_a_flag():
    """A `UserError`/`ConfigError`/`DataError` raised below the stages names an option by
    `field=` (or ``{field}`` in its text), never as ``--name``: the spelling belongs to
    the command. The one exception is a backticked command hint containing "rsctool "
    (``run `rsctool synth --name X` again``): advice text giving a whole command line,
    not the option the error is about."""
    found = []
    for path in _lower_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _call_name(node) in ERRORS:
                text = COMMAND_HINT.sub("", _message_text(node))
                for flag in FLAG.findall(text):
                    found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {flag}")
    assert not found, "\n".join(found)


def test_the_check_sees_flags_in_fstrings_and_allows_command_hints():
    call = ast.parse('ConfigError(f"--x {v}: bad; run `rsctool train --y 1` again")').body[0]
    text = COMMAND_HINT.sub("", _message_text(call.value))
    assert FLAG.findall(text) == ["--x"]


# ------------------------------------------------------------------------- rendering

def test_without_a_command_the_field_name_comes_first():
    e = ConfigError("must be auto, fp32 or bf16, got 'fp16'", field="precision")
    assert str(e) == "precision must be auto, fp32 or bf16, got 'fp16'"
    assert e.field == "precision" and e.message == "must be auto, fp32 or bf16, got 'fp16'"
    # {field} places it; {field:NAME} names another option; path and line come first
    e = DataError("{field} cuda: none here (use {field} cpu, or {field:max_steps} 1)",
                  "a.txt", 3, field="device")
    assert str(e) == "a.txt:3: device cuda: none here (use device cpu, or max_steps 1)"
    # without a field, braces are the message's own
    assert str(DataError("name pattern has no {field}")) == "name pattern has no {field}"


def _command(*options: str) -> click.Command:
    return click.Command("stage", params=[click.Option([o]) for o in options])


def _render_under(command: click.Command, err: ConfigError) -> str:
    with click.Context(command) as ctx:
        return render_message(err, flag_lookup(ctx))


def test_under_a_command_the_field_is_its_flag_or_else_the_config_key():
    err = ConfigError("must be >= 1, got 0", field="max_steps")
    assert _render_under(_command("--max-steps", "--epochs"), err) == \
        "--max-steps must be >= 1, got 0"
    # no such option (set by --set max_steps=0 or a config file): the key as written there
    assert _render_under(_command("--epochs"), err) == "max_steps must be >= 1, got 0"
    # an option spelled like the field whose parameter has another name (`--run`, run_name)
    run = click.Command("stage", params=[click.Option(["--run", "run_name"])])
    assert _render_under(run, ConfigError("'x' is unknown", field="run")) == \
        "--run 'x' is unknown"


def test_a_group_ctx_looks_in_the_chosen_subcommand_then_the_global_options():
    sub = _command("--max-steps")
    group = click.Group("rsctool", commands={"train": sub},
                        params=[click.Option(["--device"])])
    with click.Context(group) as ctx:
        ctx.invoked_subcommand = "train"
        flag_of = flag_lookup(ctx)
        assert flag_of("max_steps") == "--max-steps"
        assert flag_of("device") == "--device"
        assert flag_of("epochs") is None
    assert flag_lookup(None)("device") is None


# ------------------------------------------------------------------ end to end (CLI)

runner = CliRunner()


@pytest.mark.parametrize("args, needle", [
    (["train", "--dataset", "nope", "--max-steps", "1"], "error: --dataset 'nope' is not"),
    # `--log`: an option whose parameter has another name (log_to)
    (["train", "--log", "nope", "--max-steps", "1"], "error: --log: unknown tracker 'nope'"),
])
def test_the_command_line_shows_the_flag(project, args, needle):
    r = runner.invoke(app, ["--project", str(project.path), "-q", *args])
    assert r.exit_code == 2, r.output
    assert needle in r.output, r.output
