"""`rsctool demo-data DIR`: write the built-in synthetic demo dataset (ICBHI format)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rsctool.console import get_state, info, print_json


def command(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
    *,
    patients: Annotated[int, typer.Option(min=4, help="Number of patients.")] = 24,
    seed: Annotated[int | None, typer.Option(
        help="Generator seed (default: the global --seed).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
    = False,
) -> None:
    """Write a small deterministic demo dataset in the ICBHI 2017 format.

    Recordings (wav + cycle annotations) and the split, diagnosis and demographic files,
    with learnable crackles and wheezes; seconds to build.
    """
    from rsctool.data.demo import make_demo_dataset

    state = get_state(ctx)
    summary = make_demo_dataset(out_dir, patients=patients,
                                seed=state.seed if seed is None else seed)
    doc = {**summary.to_dict(), "root": str(Path(out_dir).resolve())}
    if json_out:
        print_json(doc)
    info(state, f"demo dataset: {summary.recordings} recordings, {summary.patients} patients, "
                f"{summary.cycles} cycles in {doc['root']}")
