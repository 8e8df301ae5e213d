"""The command-line reference (`docs/cli/`), generated from the Typer app.

    python -m rsctool.docgen            # (re)write docs/cli/*.md   (`make docs`)
    python -m rsctool.docgen --check    # exit 1 and name the stale pages when they differ

One page per stage (`docs/cli/<stage>.md`: usage, arguments, every option with its help
text and default, as `rsctool STAGE --help` prints them) and an index with the global
options, shell completion and exit codes. `tests/test_docs.py` regenerates the pages
and compares them with the committed ones, so the reference cannot drift from the code:
after adding or changing an option, run `make docs` and commit the result.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path
from typing import Any

#: The default output folder, relative to a source checkout.
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "docs" / "cli"

HEADER = ("<!-- Generated from the CLI by `python -m rsctool.docgen` (`make docs`); "
          "do not edit by hand. typer {typer} -->")

#: Hand-written guides that go with a stage (relative to docs/cli/).
GUIDES: dict[str, list[tuple[str, str]]] = {
    "analyze": [("Data formats", "../data-formats.md"),
                ("Getting started", "../getting-started.md")],
    "demo-data": [("Getting started", "../getting-started.md#the-demo-step-by-step")],
    "status": [("Reproducing results", "../reproducing.md#what-every-run-records")],
    "synth": [("Synthetic cycles", "../synth.md")],
    "train": [("Models and their paper settings", "../models.md"),
              ("Reproducing results", "../reproducing.md"),
              ("Reliability (resume, interruption)", "../reliability.md")],
    "eval": [("Models: evaluate", "../models.md#evaluate"),
             ("Reproducing results: seed groups", "../reproducing.md")],
    "export": [("Export and predict", "../predict.md")],
    "predict": [("Export and predict", "../predict.md")],
}


def _header() -> str:
    import typer

    return HEADER.format(typer=typer.__version__)


def generated_with(text: str) -> str | None:
    """The typer version a generated page was made with (its help layout depends on it)."""
    m = re.search(r"do not edit by hand\. typer (\S+) -->", text)
    return m.group(1) if m else None


def documented_options(text: str) -> set[str]:
    """The option names in the tables of a generated page."""
    names = set()
    for cell in re.findall(r"^\| `([^`]*)` \|", text, flags=re.M):
        names.update(w for w in re.split(r"[\s,/]+", cell) if w.startswith("-"))
    return names


#: Options shared across stages: (option, meaning, stages). A test checks the stages.
CONVENTIONS: list[tuple[str, str, str]] = [
    ("--json", "one JSON document on stdout (the result); human output stays on stderr",
     "every stage"),
    ("--force", "redo work that is already done (otherwise a no-op or a resume)",
     "analyze, synth, train, eval, export"),
    ("--run NAME", "one run: the name to give a new run (train), or the run to use "
     "(eval, export, predict: default the last finished run; status: show that run)",
     "train, eval, export, predict, status"),
    ("--runs NAME ...", "several runs (names or glob patterns such as 'cnn-*'), "
     "compared in one table", "eval"),
    ("--group NAME", "a seed group made by `train --seeds`", "eval"),
    ("--dataset NAME", "a dataset recorded by analyze (synth, train: default the last "
     "analysed; eval: another dataset to score the run on, cross-dataset)",
     "eval, synth, train"),
    ("--name NAME", "the name to record a new dataset or synthetic set under",
     "analyze, synth"),
    ("--checkpoint best\\|last", "best: selected on validation; last: the final epoch",
     "eval, export, predict"),
    ("--out PATH", "where to write the stage's main output file or folder",
     "synth, export, predict"),
    ("--batch-size N", "items per model call (train: per optimizer step)",
     "synth, train, eval, predict"),
]


def _root_command() -> Any:
    import typer.main

    from rsctool.cli import app

    return typer.main.get_command(app)


def _md(text: str) -> str:
    """Help text for a Markdown table cell: `|` escaped, `<` escaped outside code spans,
    whitespace runs collapsed."""
    text = re.sub(r"\s+", " ", text).strip()
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # outside backticks
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts).replace("|", "\\|")


def _code(text: str) -> str:
    """Text for a code span inside a Markdown table cell."""
    return re.sub(r"\s+", " ", text).strip().replace("`", "").replace("|", "\\|")


def _record(param: Any, ctx: Any) -> tuple[str, str]:
    rec = param.get_help_record(ctx)
    if rec is None:  # hidden parameter
        return "", ""
    names, help_text = rec
    return names, help_text or ""


def _table(rows: list[tuple[str, str]], first: str) -> list[str]:
    out = [f"| {first} | description |", "|---|---|"]
    out += [f"| `{_code(n)}` | {_md(h)} |" for n, h in rows if n]
    return out


def _doc(text: str | None) -> str:
    return inspect.cleandoc(text or "").strip()


def stage_page(name: str) -> str:
    """The Markdown reference page of one stage."""
    root = _root_command()
    root_ctx = root.context_class(root, info_name="rsctool")
    cmd = root.get_command(root_ctx, name)
    ctx = cmd.context_class(cmd, info_name=name, parent=root_ctx)
    usage = cmd.get_usage(ctx).replace("Usage: rsctool ", "rsctool [GLOBAL OPTIONS] ", 1)
    lines = [_header(), "", f"# `rsctool {name}`", "", _doc(cmd.help), "", "```text", usage,
             "```", ""]
    args = [_record(p, ctx) for p in cmd.params if p.param_type_name == "argument"]
    # options grouped as in `rsctool STAGE -h` (their help panels), in order of appearance
    panels: dict[str | None, list[tuple[str, str]]] = {None: []}
    for p in cmd.params:
        if p.param_type_name == "option":
            panels.setdefault(getattr(p, "rich_help_panel", None), []).append(_record(p, ctx))
    if any(n for n, _ in args):
        lines += ["## Arguments", "", *_table(args, "argument"), ""]
    lines += ["## Options", "", *_table(panels.pop(None), "option"),
              "| `-h, --help` | Show the help and exit. |", ""]
    for panel, opts in panels.items():
        lines += [f"### {panel}", "", *_table(opts, "option"), ""]
    lines += ["Global options (`--project`, `--device`, `--seed`, `--quiet`) go before the "
              "stage name: [index](index.md#global-options). Exit codes: "
              "[index](index.md#exit-codes).", ""]
    if name in GUIDES:
        links = ", ".join(f"[{title}]({href})" for title, href in GUIDES[name])
        lines += [f"Guides: {links}.", ""]
    return "\n".join(lines)


def index_page() -> str:
    """The index: stages, global options, completion and exit codes."""
    from rsctool.cli import EXIT_CODES

    root = _root_command()
    ctx = root.context_class(root, info_name="rsctool")
    lines = [_header(), "", "# Command-line reference", "", _doc(root.help), "", "```text",
             root.get_usage(ctx).replace("Usage: ", ""), "```", "", "## Stages", "",
             "| stage | what it does |", "|---|---|"]
    for name in root.list_commands(ctx):
        cmd = root.get_command(ctx, name)
        first = _doc(cmd.help).split("\n\n")[0]
        lines.append(f"| [`{name}`]({name}.md) | {_md(first)} |")
    lines += ["", "## Global options", "",
              *_table([_record(p, ctx) for p in root.params], "option"),
              "| `-h, --help` | Show the help and exit. |", "",
              "The project file is `--project`, else `$RSCTOOL_PROJECT`, else "
              "`./rsctool.toml`. Every stage that produces a result takes `--json` and then "
              "prints exactly one JSON document on stdout; tables, progress bars and "
              "messages go to stderr (`--quiet` silences all but warnings and errors).", "",
              "## Option names shared by the stages", "",
              "The same name means the same thing in every stage that has it:", "",
              "| option | meaning | stages |", "|---|---|---|",
              *[f"| `{o}` | {m} | {st} |" for o, m, st in CONVENTIONS], "",
              "## Shell completion", "",
              "```bash",
              "rsctool --install-completion        # bash, zsh, fish or PowerShell: "
              "the shell it runs in",
              "rsctool --show-completion bash      # print the script instead "
              "(e.g. into ~/.bash_completion)",
              "```", "",
              "Completion covers stages and option names; open a new shell after "
              "installing.", "",
              "## Exit codes", "", "| code | meaning |", "|---|---|"]
    lines += [f"| {code} | {_md(text)} |" for code, text in EXIT_CODES.items()]
    lines.append("")
    return "\n".join(lines)


def pages() -> dict[str, str]:
    """File name -> content of every generated page."""
    root = _root_command()
    ctx = root.context_class(root, info_name="rsctool")
    out = {"index.md": index_page()}
    for name in root.list_commands(ctx):
        out[f"{name}.md"] = stage_page(name)
    return out


def stale(out_dir: Path) -> list[str]:
    """Names of the pages in `out_dir` that differ from, lack, or are not generated
    pages (empty when the reference is up to date)."""
    want = pages()
    have = {p.name for p in out_dir.glob("*.md")} if out_dir.is_dir() else set()
    bad = [n for n, text in want.items()
           if n not in have or (out_dir / n).read_text(encoding="utf-8") != text]
    return sorted(bad + sorted(have - set(want)))


def write(out_dir: Path) -> list[str]:
    """Write every page (and remove pages of stages that no longer exist)."""
    want = pages()
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in out_dir.glob("*.md"):
        if p.name not in want:
            p.unlink()
    changed = []
    for name, text in want.items():
        path = out_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(name)
    return changed


def cli_options() -> tuple[set[str], dict[str, set[str]]]:
    """The global option names and, per stage, every option name the CLI accepts."""
    root = _root_command()
    ctx = root.context_class(root, info_name="rsctool")

    def names(cmd: Any) -> set[str]:
        return {o for p in cmd.params if p.param_type_name == "option"
                for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}

    return names(root), {n: names(root.get_command(ctx, n)) for n in root.list_commands(ctx)}


#: Global options that take no value.
_GLOBAL_FLAGS = ("--quiet", "-q", "--version", "--help", "-h", "--install-completion")


def check_command(words: list[str], global_opts: set[str], stages: dict[str, set[str]]
                  ) -> str | None:
    """None when `rsctool WORDS` names a stage and only options it knows, else why not.

    A static check for commands shown in docs and examples: words starting with `--$`
    (shell variables) are skipped; values are not checked.
    """
    i = 0
    while i < len(words) and words[i].startswith("-"):
        opt = words[i].split("=", 1)[0]
        if opt not in global_opts:
            return f"unknown global option {opt}"
        i += 1 if "=" in words[i] or opt in _GLOBAL_FLAGS else 2
    if i >= len(words):
        return None  # `rsctool --version`, `rsctool --install-completion`
    stage = words[i]
    if stage not in stages:
        return f"unknown stage {stage!r}"
    for w in words[i + 1:]:
        if w.startswith("--") and not w.startswith("--$") and len(w) > 2:
            opt = w.split("=", 1)[0]
            if opt not in stages[stage]:
                return f"`{stage}` has no option {opt}"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rsctool.docgen", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", nargs="?", type=Path, default=DEFAULT_DIR,
                    help=f"output folder (default {DEFAULT_DIR})")
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 when a page is out of date")
    a = ap.parse_args(argv)
    if a.check:
        bad = stale(a.out_dir)
        if bad:
            print(f"{a.out_dir}: out of date: {', '.join(bad)} (run `make docs`)",
                  file=sys.stderr)
            return 1
        return 0
    changed = write(a.out_dir)
    print(f"{a.out_dir}: {len(changed)} page(s) updated" + (f": {', '.join(changed)}"
                                                          if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
