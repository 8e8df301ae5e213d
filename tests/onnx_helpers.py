"""Shared by test_export.py and test_predict.py: one small trained project per session.

Built once per pytest process (both modules' session fixtures call `trained_project`):
the demo dataset with 6 patients (12 recordings, validation split 0.2) and two tiny runs,
``cnn`` (multiclass, 2 steps) and ``softfilm`` (multilabel, metadata-conditioned, 1 step).
`add_model_run` derives a run of any other registered model from the cnn run's config,
with random weights, so every model can be exported without training it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rsctool.project import Project

FAST = {"size": "tiny", "clip_seconds": 2.0, "num_mel_bins": 64, "batch_size": 32,
        "epochs": 1}
_BUILT: dict[str, Path] = {}


def trained_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project file of the shared trained project (do not modify: copy it)."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _BUILT:
        from rsctool.analyze import AnalyzeOptions
        from rsctool.analyze import run as analyze
        from rsctool.data.demo import make_demo_dataset
        from rsctool.train import TrainOptions
        from rsctool.train import run as train

        root = tmp_path_factory.mktemp("predictproj")
        make_demo_dataset(root / "data", patients=6, seed=0)
        project = Project.load(root / "rsctool.toml")
        analyze(project, AnalyzeOptions(data_dir=root / "data", name="demo",
                                        val_fraction=0.2, plots=False))
        train(project, TrainOptions(model="cnn", seed=0, max_steps=2, **FAST), device="cpu")
        train(project, TrainOptions(model="softfilm", task="multilabel", max_steps=1, lr=1e-3,
                                    **FAST), device="cpu")
        _BUILT[key] = root / "rsctool.toml"
    return _BUILT[key]


def copy_project(src: Path, dst_dir: Path) -> Path:
    """A private copy (runs, caches, exports; the audio stays where it is)."""
    dst = dst_dir / "proj"
    shutil.copytree(src.parent, dst, ignore=shutil.ignore_patterns("data"))
    return dst / "rsctool.toml"


def add_model_run(project_file: Path, model: str, name: str | None = None,
                  base: str = "cnn") -> str:
    """Register a run of tiny `model` with random weights, configured like run `base`
    (same clip, classes, metadata encoder), and return its name."""
    import torch

    from rsctool.checkpoint import load_checkpoint, save_checkpoint
    from rsctool.models import MetadataEncoder, create_model
    from rsctool.runs import checkpoint_path

    project = Project.load(project_file)
    name = name or f"{model}-x"
    rec = project.get("runs", base)
    ck = load_checkpoint(checkpoint_path(project, base, rec, "best"))
    config = dict(ck.state["config"])
    base_model = config["model"]
    enc = MetadataEncoder.from_dict(config["metadata_encoder"])
    torch.manual_seed(0)
    m = create_model(model, size="tiny", num_classes=len(config["classes"]),
                     input_tdim=base_model["input_tdim"], input_fdim=base_model["input_fdim"],
                     meta_spec=enc.spec())
    with torch.no_grad():  # zero-initialised parts would make parity trivially exact
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    config.update(model=m.config, run=name,
                  needs_metadata=bool(getattr(m, "needs_metadata", False)))
    run_dir = project.state_dir() / "runs" / name
    save_checkpoint(run_dir / "best.safetensors", model=m,
                    state={"config": config, "epoch": 1, "best_epoch": 1, "step": 1,
                           "thresholds": None, "history": []})
    project.set_record("runs", name, {
        "model": model, "status": "done", "dataset": rec["dataset"],
        "dir": project.rel(run_dir), "best": project.rel(run_dir / "best.safetensors"),
        "task": rec["task"], "classes": rec["classes"]})
    return name

