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
    "groups": ("model", "runs", "status", "eval_test_score_mean", "eval_test_score_std"),
    "exports": ("run", "onnx", "quantize", "parity_max_abs", "accuracy_change"),
}


def status(project: Any) -> dict:
    """The project document as a plain dict (with the file path)."""
    doc = dict(project.data)
    return {"project": str(project.path), "exists": project.exists(), **doc}


def run_status(project: Any, name: str) -> dict[str, Any]:
    """Everything recorded about run `name`: its project record and its ``config.json``
    (the full resolved options, model config, data manifest hash, split definition and
    hash, normalisation, synthetic cycles, environment: package versions, device, git
    commit). ConfigError for an unknown run."""
    import json

    from rsctool.errors import ConfigError

    rec = project.get("runs", name)
    if rec is None:
        known = ", ".join(project.section("runs")) or "none"
        raise ConfigError(f"--run {name!r} is not in the project (known runs: {known})")
    run_dir = project.abs(rec["dir"]) if rec.get("dir") else project.state_dir() / "runs" / name
    config_path = run_dir / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    return {"run": name, "record": rec, "config_file": str(config_path), "config": config}


def print_run_status(doc: dict[str, Any]) -> None:
    """The `run_status` document as titled key/value blocks on stderr."""
    from rich.table import Table

    rec, cfg = doc["record"], doc["config"] or {}

    def block(title: str, items: dict[str, Any]) -> None:
        items = {k: v for k, v in items.items() if v is not None}
        if not items:
            return
        t = Table(title=title, title_justify="left", show_header=False)
        t.add_column("key", style="bold")
        t.add_column("value", overflow="fold")
        for k, v in items.items():
            t.add_row(str(k), _full(v))
        err_console.print(t)

    block(f"run {doc['run']}", rec)
    if not cfg:
        err_console.print(f"no run config yet ({doc['config_file']})")
        return
    block("options (train --like " + doc["run"] + " re-runs them)", cfg.get("options", {}))
    block("data", cfg.get("data", {}))
    block("split", cfg.get("split", {}))
    block("normalisation", cfg.get("normalization", {}))
    if cfg.get("synthetic"):
        block("synthetic cycles", cfg["synthetic"])
    env = dict(cfg.get("environment", {}))
    packages = env.pop("packages", {})
    git = env.pop("git", None)
    block("environment", {**env, **({"git": git} if git else {})})
    block("packages", packages)
    for i, later in enumerate(cfg.get("resumed_in") or []):
        block(f"resumed in (#{i + 1})", later)
    block("model", cfg.get("model", {}))


def _full(v: Any) -> str:
    """Like `_fmt`, without rounding (hashes, statistics and versions are read exactly)."""
    if isinstance(v, dict):
        return ", ".join(f"{k}={_full(x)}" for k, x in v.items())
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return ", ".join(_full(x) for x in v)
    return _fmt(v)


def command(
    ctx: typer.Context,
    *,
    run_name: Annotated[str | None, typer.Option(
        "--run", help="Show everything recorded about this run: options, data and split "
                      "hashes, normalisation, environment.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the project as JSON.")] = False,
) -> None:
    """Show the datasets, synthetic sets, runs and exports recorded in the project file."""
    from rich.table import Table

    state = get_state(ctx)
    project = state.load_project(must_exist=run_name is not None)
    if run_name is not None:
        rdoc = run_status(project, run_name)
        if json_out:
            print_json(rdoc)
        elif not state.quiet:
            print_run_status(rdoc)
        return
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
    from rsctool.console import warn

    for name, rec in project.section("datasets").items():
        if (problem := project.manifest_problem(rec)) is not None:
            warn(f"dataset {name!r}: {problem}")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v)
