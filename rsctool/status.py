"""`rsctool status`: what the project file records."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from rsctool.console import err_console, get_state, print_json

if TYPE_CHECKING:
    from rsctool.project import Project

# Fields worth a column per section; everything else is in --json.
_COLUMNS = {
    "datasets": ("format", "root", "split", "cycles", "manifest"),
    "synthetic": ("backend", "classes", "n", "status"),
    "vocoders": ("status", "steps", "dir"),
    "runs": ("model", "dataset", "status", "epoch", "best_score"),
    "groups": ("model", "runs", "status", "eval_test_score_mean", "eval_test_score_std"),
    "exports": ("run", "onnx", "quantize", "parity_max_abs", "accuracy_change"),
}


#: Sections whose ``running`` records hold a lock while their process lives (rsctool.locks).
_LOCKED = ("runs", "synthetic")


def status(project: Project) -> dict:
    """The project document as a plain dict (with the file path), with honest states:
    see `honest`."""
    doc = dict(project.data)
    for section in _LOCKED:
        if doc.get(section):
            doc[section] = {name: honest(project, section, name, rec)
                            for name, rec in doc[section].items()}
    groups = doc.get("groups")
    if groups and doc.get("runs"):
        doc["groups"] = {name: _honest_group(rec, doc["runs"]) for name, rec in groups.items()}
    return {"project": str(project.path), "exists": project.exists(), **doc}


def honest(project: Project, section: str, name: str, rec: dict[str, Any]) -> dict[str, Any]:
    """Record `rec` as `status` shows it: a ``running`` record whose lock no process holds
    (killed by SIGKILL, the machine went down) is ``interrupted`` with ``status_detail =
    "process gone"`` (the same command resumes it); a live one gains ``writer``
    (``{pid, host, since}`` of the process writing it)."""
    if rec.get("status") != "running":
        return rec
    from rsctool.locks import writer

    who = writer(project, section, name)
    if who is None:
        return {**rec, "status": "interrupted", "status_detail": "process gone"}
    return {**rec, "writer": who} if who else rec


def _honest_group(grec: dict[str, Any], runs: dict[str, dict]) -> dict[str, Any]:
    """A ``running`` group none of whose runs is running any more is ``interrupted``."""
    if grec.get("status") != "running":
        return grec
    if any(runs.get(m, {}).get("status") == "running" for m in grec.get("runs") or []):
        return grec
    return {**grec, "status": "interrupted", "status_detail": "process gone"}


def run_status(project: Project, name: str) -> dict[str, Any]:
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
    rec = honest(project, "runs", name, rec)
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
        records = doc.get(section) or {}
        if not records:
            continue
        table = Table(title=section, title_justify="left")
        table.add_column("name")
        for c in cols:
            table.add_column(c)
        for name, rec in records.items():
            table.add_row(name, *(_status(rec) if c == "status" else _fmt(rec.get(c))
                                  for c in cols))
        err_console.print(table)
    from rsctool.console import warn

    for name, rec in project.section("datasets").items():
        if (problem := project.manifest_problem(rec)) is not None:
            warn(f"dataset {name!r}: {problem}")


def _status(rec: dict[str, Any]) -> str:
    """The status column: ``interrupted (process gone)``, ``running (pid 12 on host)``."""
    text = _fmt(rec.get("status"))
    if rec.get("status_detail"):
        return f"{text} ({rec['status_detail']})"
    who = rec.get("writer") or {}
    if who.get("pid"):
        return f"{text} (pid {who['pid']} on {who.get('host') or '?'})"
    return text


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v)
