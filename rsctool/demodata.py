"""`rsctool demo-data DIR`: write a built-in synthetic demo dataset (ICBHI or folder format)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rsctool.console import get_state, info, print_json


def command(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
    *,
    kind: Annotated[str, typer.Option(
        "--kind", help="icbhi (respiratory cycles in the ICBHI 2017 format) or folder "
                       "(<angle>_degree/<material>/*.wav tones for --task ranking).")
    ] = "icbhi",
    patients: Annotated[int, typer.Option(min=4, help="Number of patients.")] = 24,
    seed: Annotated[int | None, typer.Option(
        help="Generator seed (default: the global --seed).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
    = False,
) -> None:
    """Write a small deterministic demo dataset (ICBHI 2017 format, or --kind folder).

    icbhi: recordings (wav + cycle annotations) and the split, diagnosis and demographic
    files, with learnable crackles and wheezes. folder: tones at 5 angles x 3 materials x
    3 frequencies (135 one-second files) for the ranking task. Seconds to build.
    """
    from rsctool.data.demo import make_demo_dataset, make_demo_folder_dataset
    from rsctool.errors import ConfigError

    state = get_state(ctx)
    if kind not in ("icbhi", "folder"):
        raise ConfigError(f"--kind must be icbhi or folder, got {kind!r}")
    if kind == "folder":
        fsum = make_demo_folder_dataset(out_dir, seed=state.seed if seed is None else seed)
        fdoc = {**fsum.to_dict(), "root": str(Path(out_dir).resolve())}
        if json_out:
            print_json(fdoc)
        info(state, f"demo folder dataset: {fsum.files} files, classes "
                    f"{', '.join(fsum.classes)} in {fdoc['root']} (analyze it with "
                    f"--name-pattern '{fsum.name_pattern}')")
        return
    summary = make_demo_dataset(out_dir, patients=patients,
                                seed=state.seed if seed is None else seed)
    doc = {**summary.to_dict(), "root": str(Path(out_dir).resolve())}
    if json_out:
        print_json(doc)
    info(state, f"demo dataset: {summary.recordings} recordings, {summary.patients} patients, "
                f"{summary.cycles} cycles in {doc['root']}")
