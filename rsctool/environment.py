"""The software and hardware a run was made with, recorded so a number can be traced.

`collect()` returns a JSON- and TOML-safe dict (strings, numbers, booleans and nested
tables; no None anywhere, so it round-trips through the project file unchanged)::

    rsctool, python, platform, machine        versions and OS
    packages {torch, transformers, diffusers, numpy, safetensors, ...}   installed versions
    device, device_name                       "cpu" / "cuda" and the CPU model or GPU name
    cuda, cudnn                               the CUDA and cuDNN versions torch was built with
                                              (CUDA runs only)
    torch_threads                             intra-op threads (CPU results depend on it)
    git {commit, dirty, source}               the checkout rsctool runs from (source
                                              "package"), else the one the current folder is
                                              in (source "cwd"); absent outside a checkout

Package versions come from the installed distributions' metadata (`importlib.metadata`),
so collecting them imports nothing heavy; only `device_name` on CUDA asks torch. Git is
asked with a short timeout and any failure (no git, not a checkout) just leaves `git`
out. `compact()` is the short form stored in the project file, `differences()` lists
what changed between two records (for `rsctool train --like` and resumed runs).
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

#: Distributions whose versions a run records (those missing are left out).
PACKAGES = ("torch", "transformers", "diffusers", "accelerate", "numpy", "safetensors",
            "soundfile", "soxr", "onnx", "onnxruntime")
#: Seconds each git call may take.
GIT_TIMEOUT = 5.0


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """``{name: version}`` of the installed distributions among `names`."""
    out: dict[str, str] = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError, ValueError):
            out[name] = metadata.version(name)
    return out


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                             timeout=GIT_TIMEOUT, check=False,
                             env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def git_state(folder: str | os.PathLike) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding `folder`, or None.

    `dirty`: tracked files differ from the commit (untracked files do not count).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    commit = _git(["rev-parse", "HEAD"], folder)
    if not commit:
        return None
    status = _git(["status", "--porcelain", "--untracked-files=no"], folder)
    out: dict[str, Any] = {"commit": commit}
    if status is not None:
        out["dirty"] = bool(status)
    return out


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), else `platform.processor()`."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def device_info(device: str) -> dict[str, Any]:
    """``device``, ``device_name`` (and on CUDA the ``cuda``/``cudnn`` versions)."""
    out: dict[str, Any] = {"device": device}
    if device == "cuda":
        try:
            import torch

            out["device_name"] = torch.cuda.get_device_name()
            if torch.version.cuda:
                out["cuda"] = str(torch.version.cuda)
            cudnn = torch.backends.cudnn.version()
            if cudnn:
                out["cudnn"] = int(cudnn)
        except Exception:  # a broken driver must not stop a run from being recorded
            out["device_name"] = "cuda (unknown)"
    else:
        out["device_name"] = cpu_name()
    return out


def collect(device: str = "cpu") -> dict[str, Any]:
    """The environment record of a run on `device` (``cpu`` or ``cuda``)."""
    from rsctool import __version__

    env: dict[str, Any] = {
        "rsctool": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": package_versions(),
        **device_info(device),
    }
    with contextlib.suppress(Exception):
        import torch

        env["torch_threads"] = int(torch.get_num_threads())
    pkg_dir = Path(__file__).resolve().parent
    for source, folder in (("package", pkg_dir), ("cwd", Path.cwd())):
        # an installed copy inside some checkout (a venv in a clone) is not that checkout
        if source == "package" and _git(["ls-files", "--error-unmatch", "__init__.py"],
                                        pkg_dir) is None:
            continue
        state = git_state(folder)
        if state is not None:
            env["git"] = {**state, "source": source}
            break
    return env


def compact(env: dict[str, Any]) -> dict[str, Any]:
    """The project-file form: versions of rsctool, torch, transformers and diffusers,
    python, device name, and the git commit (``+dirty`` when tracked files changed)."""
    pk = env.get("packages", {})
    out: dict[str, Any] = {"rsctool": env.get("rsctool"), "python": env.get("python"),
                           **{k: pk.get(k) for k in ("torch", "transformers", "diffusers")},
                           "device_name": env.get("device_name")}
    git = env.get("git")
    if git:
        out["git"] = git["commit"][:12] + ("+dirty" if git.get("dirty") else "")
    return {k: v for k, v in out.items() if v is not None}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(old: dict[str, Any] | None, new: dict[str, Any] | None,
                ignore: tuple[str, ...] = ("platform",)) -> list[str]:
    """``["packages.torch 2.12.0 -> 2.13.0", ...]``: the fields that differ."""
    a, b = _flat(old or {}), _flat(new or {})
    return [f"{k} {a.get(k, '-')} -> {b.get(k, '-')}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in ignore]
