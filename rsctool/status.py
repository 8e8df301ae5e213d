"""`rsctool status`: what the project file records."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from rsctool.console import err_console, get_state, print_json

# Fields worth a column per section; everything else is in --json.
_COLUMNS = {
    "datasets": ("format", "root", "split", "cycles", "manifest"),
    "synthetic": ("backend", "classes", "n", "status"),
    "vocoders": ("status", "steps", "dir"),
    "runs": ("model", "dataset", "status", "epoch", "best_score"),
    "groups": ("runs",),
    "exports": ("onnx", "parity_max_abs"),
}


def status(project: Any) -> dict:
    """The project document as a plain dict (with the file path)."""
    doc = dict(project.data)
    return {"project": str(project.path), "exists": project.exists(), **doc}


def command(
    ctx: typer.Context,
    *,
    json_out: Annotated[bool, typer.Option("--json", help="Print the project as JSON.")] = False,
) -> None:
    """Show the datasets, synthetic sets, runs and exports recorded in the project file."""
    from rich.table import Table

    state = get_state(ctx)
    project = state.load_project()
    doc = status(project)
    if json_out:
        print_json(doc)
        return
    if state.quiet:
        return
    if not project.exists():
        err_console.print(f"{project.path}: no project file yet (run `rsctool analyze DATA_DIR`)")
        return
    err_console.print(f"project {project.path} (schema {project.data.get('schema')})")
    for section, cols in _COLUMNS.items():
        records = project.section(section)
        if not records:
            continue
        table = Table(title=section, title_justify="left")
        table.add_column("name")
        for c in cols:
            table.add_column(c)
        for name, rec in records.items():
            table.add_row(name, *(_fmt(rec.get(c)) for c in cols))
        err_console.print(table)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v)
