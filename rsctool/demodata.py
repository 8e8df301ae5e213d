"""`rsctool demo-data DIR`: write a built-in synthetic demo dataset (ICBHI, SPRSound or folder
format)."""

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
        "--kind", help="icbhi (respiratory cycles in the ICBHI 2017 format), sprsound "
                       "(events and records in the SPRSound layout) or folder "
                       "(<angle>_degree/<material>/*.wav tones for --task ranking).")
    ] = "icbhi",
    patients: Annotated[int | None, typer.Option(
        min=4, help="Number of patients (default: 24; sprsound: 16).")] = None,
    seed: Annotated[int | None, typer.Option(
        help="Generator seed (default: the global --seed).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
    = False,
) -> None:
    """Write a small deterministic demo dataset (ICBHI 2017 format, or --kind sprsound|folder).

    icbhi: recordings (wav + cycle annotations) and the split, diagnosis and demographic
    files, with learnable crackles and wheezes. sprsound: 8 s recordings with JSON event
    and record annotations in train2022_*/test2022_* folders, every SPRSound event type
    and record label in both splits. folder: tones at 5 angles x 3 materials x
    3 frequencies (135 one-second files) for the ranking task. Seconds to build.
    """
    from rsctool.data.demo import make_demo_dataset, make_demo_folder_dataset
    from rsctool.errors import ConfigError

    state = get_state(ctx)
    if kind not in ("icbhi", "sprsound", "folder"):
        raise ConfigError(f"--kind must be icbhi, sprsound or folder, got {kind!r}")
    if kind == "sprsound":
        from rsctool.data.demo_sprsound import make_demo_sprsound_dataset

        ssum = make_demo_sprsound_dataset(out_dir, patients=16 if patients is None
                                          else patients,
                                          seed=state.seed if seed is None else seed)
        sdoc = {**ssum.to_dict(), "root": str(Path(out_dir).resolve())}
        if json_out:
            print_json(sdoc)
        info(state, f"demo SPRSound dataset: {ssum.recordings} recordings, {ssum.patients} "
                    f"patients, {ssum.events} events in {sdoc['root']}")
        return
    if kind == "folder":
        fsum = make_demo_folder_dataset(out_dir, seed=state.seed if seed is None else seed)
        fdoc = {**fsum.to_dict(), "root": str(Path(out_dir).resolve())}
        if json_out:
            print_json(fdoc)
        info(state, f"demo folder dataset: {fsum.files} files, classes "
                    f"{', '.join(fsum.classes)} in {fdoc['root']} (analyze it with "
                    f"--name-pattern '{fsum.name_pattern}')")
        return
    summary = make_demo_dataset(out_dir, patients=24 if patients is None else patients,
                                seed=state.seed if seed is None else seed)
    doc = {**summary.to_dict(), "root": str(Path(out_dir).resolve())}
    if json_out:
        print_json(doc)
    info(state, f"demo dataset: {summary.recordings} recordings, {summary.patients} patients, "
                f"{summary.cycles} cycles in {doc['root']}")
