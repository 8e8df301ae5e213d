"""Dataset lookup shared by the stages: which analysed dataset a stage works on, and its
verified manifest (the cycles `rsctool analyze` wrote)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rsctool.errors import ConfigError, DataError

if TYPE_CHECKING:
    from rsctool.project import Project


def pick_dataset(project: Project, name: str | None) -> tuple[str, dict[str, Any]]:
    """The dataset record to train on: `name`, else the only (or last) one analysed."""
    datasets = project.section("datasets")
    if name is not None:
        if name not in datasets:
            known = ", ".join(sorted(datasets)) or "none"
            raise ConfigError(f"{name!r} is not in the project (known: {known}); "
                              "run `rsctool analyze DATA_DIR` first", field="dataset")
        return name, datasets[name]
    if not datasets:
        raise ConfigError(f"{project.path}: no dataset in the project; run "
                          "`rsctool analyze DATA_DIR` first")
    name = list(datasets)[-1]
    return name, datasets[name]


def load_dataset_cycles(project: Project, record: dict[str, Any]) -> list:
    """Read and verify the manifest of a dataset record (sha256 must match)."""
    from rsctool.data.manifest import file_sha256, read_manifest

    path = project.abs(record["manifest"])
    if not path.exists():
        raise DataError("manifest recorded in the project is missing; run "
                        f"`{project.analyze_command(record)}`", path)
    if record.get("sha256") and file_sha256(path) != record["sha256"]:
        # e.g. another project file's analyze of a dataset of the same name wrote it
        raise DataError("manifest changed since analyze recorded it (sha256 differs: edited, "
                        "or written by another project's analyze); run "
                        f"`{project.analyze_command(record)}`", path)
    return read_manifest(path)
