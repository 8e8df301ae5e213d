"""Shared fixtures. Tests never reach a hub and never need a display."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module's tests (``pytestmark =
    pytest.mark.usefixtures("one_torch_thread")``): tiny models on a busy 2-core machine
    spend 10-50x more in intra-op thread hand-offs than in their math."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: The real ICBHI 2017 metadata (no audio), present in the developers' checkout only.
ICBHI_META = Path(__file__).resolve().parents[2] / "shared" / "icbhi-meta"


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:  # importing torch costs seconds: only when a gpu test is collected
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_project_env(monkeypatch):
    # A developer's RSCTOOL_PROJECT must not leak into tests.
    monkeypatch.delenv("RSCTOOL_PROJECT", raising=False)


@pytest.fixture(scope="session")
def icbhi_meta() -> Path:
    if not ICBHI_META.is_dir():
        pytest.skip(f"real ICBHI metadata not available ({ICBHI_META} absent: a user checkout)")
    return ICBHI_META


@pytest.fixture(scope="session")
def analysed(tmp_path_factory) -> Path:
    """A project with the demo dataset analysed (12 patients), built once."""
    from rsctool.analyze import AnalyzeOptions
    from rsctool.analyze import run as analyze
    from rsctool.data.demo import make_demo_dataset
    from rsctool.project import Project

    root = tmp_path_factory.mktemp("trainproj")
    make_demo_dataset(root / "data", patients=12, seed=0)
    analyze(Project.load(root / "rsctool.toml"),
            AnalyzeOptions(data_dir=root / "data", name="demo", val_fraction=0.2, plots=False))
    return root


@pytest.fixture
def project(analysed, tmp_path):
    """A private copy of `analysed` (the audio stays shared), as a loaded Project."""
    from rsctool.project import Project

    dst = tmp_path / "proj"
    shutil.copytree(analysed, dst, ignore=shutil.ignore_patterns("data"))
    return Project.load(dst / "rsctool.toml")
