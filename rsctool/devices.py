"""The `--device` check every computing stage shares (train, eval, synth, export, predict).

`cuda` on a machine where it cannot run is refused (exit 2) by every stage alike, never
silently replaced by the CPU. torch is imported only where the stage runs torch anyway;
an ONNX model asks onnxruntime for its CUDA provider instead.
"""

from __future__ import annotations

from rsctool.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def _check_name(device: str) -> None:
    if device not in DEVICES:
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")


def resolve_device(device: str) -> str:
    """The torch device for ``--device``: ``auto`` -> ``cuda`` when available else ``cpu``;
    ``cuda`` without a CUDA device is a ConfigError naming the option."""
    _check_name(device)
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available to torch "
                          "(use --device cpu or auto)")
    return device


def onnx_providers(device: str) -> list[str]:
    """onnxruntime execution providers for ``--device`` (no torch import): ``cuda`` needs
    onnxruntime's CUDA provider (the onnxruntime-gpu package and a GPU), else it is a
    ConfigError. ``auto`` and ``cpu`` run on the CPU (exports are checked there)."""
    _check_name(device)
    if device != "cuda":
        return ["CPUExecutionProvider"]
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ConfigError("--device cuda: this onnxruntime has no CUDA provider (install "
                          "onnxruntime-gpu on a machine with a GPU, or use --device cpu "
                          "or auto)")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]
