"""The documentation stays true: the generated CLI reference matches the code, every
`rsctool` command shown in README.md and docs/ names real stages and options, relative
links resolve, shell completion works, and the README opens with the two set-up commands.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rsctool.cli import EXIT_CODES, app
from rsctool.docgen import (
    check_command,
    cli_options,
    documented_options,
    generated_with,
    pages,
    stale,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", *DOCS.rglob("*.md")])
runner = CliRunner()


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")])}
    env.pop("RSCTOOL_PROJECT", None)
    return env


# --------------------------------------------------------------------------- reference


def test_cli_reference_is_up_to_date():
    import typer

    committed = generated_with((DOCS / "cli" / "index.md").read_text())
    if committed == typer.__version__:
        bad = stale(DOCS / "cli")
    else:  # another typer lays help out differently: compare the options only
        _, stages = cli_options()
        bad = [s for s, names in stages.items() if not (DOCS / "cli" / f"{s}.md").is_file()
               or documented_options((DOCS / "cli" / f"{s}.md").read_text()) != names]
    assert not bad, (f"docs/cli is out of date ({', '.join(bad)}): run `make docs` "
                     "(python -m rsctool.docgen) and commit the result")


def test_documented_options_are_the_cli_options():
    _, stages = cli_options()
    generated = pages()
    for stage, names in stages.items():
        assert documented_options(generated[f"{stage}.md"]) == names, stage


def test_reference_has_a_page_per_stage_with_every_option():
    _, stages = cli_options()
    generated = pages()
    assert set(generated) == {"index.md", *(f"{s}.md" for s in stages)}
    for stage, names in stages.items():
        text = generated[f"{stage}.md"]
        for name in names - {"-h", "--help"}:
            assert re.search(rf"`[^`]*{re.escape(name)}\b", text), (stage, name)
    index = generated["index.md"]
    for code in EXIT_CODES:
        assert f"| {code} |" in index
    assert "--install-completion" in index


def test_docgen_check_command_line(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "rsctool.docgen", "--check", str(out)],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 1 and "make docs" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "rsctool.docgen", str(out)],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    (out / "gone.md").write_text("a stage that no longer exists")
    assert stale(out) == ["gone.md"]
    (out / "train.md").write_text("edited by hand")
    assert stale(out) == ["gone.md", "train.md"]


# --------------------------------------------------------------------------- commands


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, flags=re.S)


_CMD = re.compile(r"(?:^|[;&|(]\s*|\bdo\s+|\bthen\s+)(?:[A-Z_]+=\S+\s+)*(?:\S*/)?rsctool"
                  r"\s+(.*)")


def _doc_commands() -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        for block in _bash_blocks(page.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"^\s*\$\s+", "", line).split(" #", 1)[0].strip()
                for m in _CMD.finditer(line):
                    out.append((page.relative_to(ROOT).as_posix(), m.group(1)))
    return out


def test_docs_show_commands():
    pages_with = {p for p, _ in _doc_commands()}
    assert {"README.md", "docs/getting-started.md", "docs/models.md"} <= pages_with


def test_every_command_in_the_docs_names_real_stages_and_options():
    global_opts, stages = cli_options()
    bad = []
    for page, cmd in _doc_commands():
        cmd = re.split(r"\s(?:\||&&|;|>|2>)\s", cmd)[0]
        try:
            words = shlex.split(cmd.replace("$", "\\$"))
        except ValueError:
            words = cmd.split()
        why = check_command(words, global_opts, stages)
        if why:
            bad.append(f"{page}: rsctool {cmd}: {why}")
    assert not bad, "\n".join(bad)


def test_relative_links_resolve():
    bad = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                bad.append(f"{page.relative_to(ROOT)}: {target}")
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------- README


def test_readme_starts_with_the_two_setup_commands_and_shows_the_pipeline():
    text = (ROOT / "README.md").read_text()
    first = _bash_blocks(text)[0].strip().splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["make demo", "make test"]
    assert text.index("make demo") < text.index("## ")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images, "the README shows a picture of the pipeline's output"
    for img in images:
        assert (ROOT / img).is_file(), img
    for stage in ("analyze", "train", "eval", "export", "predict"):
        assert f"rsctool {stage}" in text


# --------------------------------------------------------------------------- CLI surface


def test_every_stage_has_json_and_quiet_is_global():
    global_opts, stages = cli_options()
    assert {"--quiet", "-q", "--project", "--device", "--seed"} <= global_opts
    for stage, names in stages.items():
        assert "--json" in names, f"`rsctool {stage}` has no --json"


def test_predict_json_refuses_another_format():
    r = runner.invoke(app, ["predict", "x.wav", "--json", "--format", "csv"])
    assert r.exit_code == 2, r.output
    assert "--json" in r.output and "Traceback" not in r.output


def test_show_completion_prints_a_bash_script():
    r = subprocess.run([sys.executable, "-m", "rsctool", "--show-completion", "bash"],
                       capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert "_rsctool_completion" in r.stdout and "complete " in r.stdout


@pytest.mark.parametrize("words,cword,expect", [
    ("rsctool tr", 1, "train"),
    ("rsctool ev", 1, "eval"),
    ("rsctool train --mod", 2, "--model"),
    ("rsctool eval --ru", 2, "--runs"),
])
def test_completion_completes_stages_and_options(words, cword, expect):
    env = {**_env(), "_RSCTOOL_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(cword)}
    r = subprocess.run([sys.executable, "-m", "rsctool"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert expect in r.stdout.split(), r.stdout


@pytest.mark.parametrize("args,hint", [
    (["status", "--seed", "1"], "rsctool --seed N status"),
    (["status", "--device", "cpu"], "rsctool --device cpu status"),
    (["status", "--quiet"], "rsctool --quiet status"),
])
def test_global_option_after_the_stage_gets_a_hint(args, hint):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "global option" in r.output and hint in " ".join(r.output.split()), r.output


def test_unknown_option_has_no_global_hint():
    r = runner.invoke(app, ["status", "--bogus"])
    assert r.exit_code == 2 and "global option" not in r.output, r.output


def test_shared_option_names_table_lists_exactly_the_stages_that_have_them():
    from rsctool.docgen import CONVENTIONS

    _, stages = cli_options()
    for option, _meaning, where in CONVENTIONS:
        name = option.split()[0]
        want = set(stages) if where == "every stage" else {s.strip() for s in where.split(",")}
        have = {s for s, names in stages.items() if name in names}
        assert have == want, f"{name}: the table says {sorted(want)}, the CLI {sorted(have)}"


#: Options of other programs that the docs name in prose (torchrun's, in scaling.md).
_OTHER_PROGRAMS_OPTIONS = {"--run-path", "--log-dir"}


def test_options_named_in_prose_exist():
    # `--mixup` (docs/synth.md) and `--num-workers` (benchmarks.md) were named as options
    # but only exist as `--set mixup=...` / `--set num_workers=...`.
    global_opts, stages = cli_options()
    known = set(global_opts).union(*stages.values()) | _OTHER_PROGRAMS_OPTIONS
    bad = []
    for page in PAGES:
        if page.parent.name == "cli":
            continue
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for span in re.findall(r"`(--[a-z][a-z0-9-]*)(?=[\s`=\[])", text):
            if span not in known:
                bad.append(f"{page.relative_to(ROOT).as_posix()}: {span}")
    assert not bad, "options that no stage has:\n" + "\n".join(bad)
