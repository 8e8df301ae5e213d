"""The `--device` check every computing stage shares (train, eval, synth, export, predict).

`cuda` on a machine where it cannot run is refused (exit 2) by every stage alike, never
silently replaced by the CPU. torch is imported only where the stage runs torch anyway;
an ONNX model asks onnxruntime for its CUDA provider instead.

``--precision`` (train, eval, predict) is resolved here too: bf16 only where it is fast
(`cpu_bf16_fast`: AMX/AVX512-BF16 units; a GPU with bf16), run as ``torch.autocast``
(`inference_precision`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rsctool.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def _check_name(device: str) -> None:
    if device not in DEVICES:
        raise ConfigError(f"must be auto, cpu or cuda, got {device!r}", field="device")


def resolve_device(device: str) -> str:
    """The torch device for ``--device``: ``auto`` -> ``cuda`` when available else ``cpu``;
    ``cuda`` without a CUDA device is a ConfigError naming the option."""
    _check_name(device)
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("{field} cuda: no CUDA device is available to torch "
                          "(use {field} cpu or auto)", field="device")
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
        raise ConfigError("{field} cuda: this onnxruntime has no CUDA provider (install "
                          "onnxruntime-gpu on a machine with a GPU, or use {field} cpu "
                          "or auto)", field="device")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


# --------------------------------------------------------------------------- precision

#: What ``--precision`` accepts (train, eval, predict).
PRECISIONS = ("auto", "fp32", "bf16")
#: /proc/cpuinfo flags of CPU units that run bf16 matmuls faster than fp32 (Intel AMX,
#: AVX512-BF16 on Intel Cooper Lake+ and AMD Zen 4+). Without them bf16 is emulated
#: (converted to fp32 and back) and slower than fp32.
_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU flags Linux reports, or None where there is no /proc/cpuinfo."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return set()


def cpu_bf16_fast() -> bool:
    """Whether this CPU has bf16 matrix units (AMX or AVX512-BF16), so that bf16
    inference is faster than fp32: the Linux CPU flags, else torch's CPU capability
    (``AVX512_BF16``/``AMX`` in ``torch.backends.cpu.get_cpu_capability()``)."""
    flags = _cpuinfo_flags()
    if flags is not None:
        return any(f in flags for f in _BF16_FLAGS)
    try:
        import torch

        cap = str(torch.backends.cpu.get_cpu_capability()).upper()
    except Exception:  # noqa: BLE001 - an old torch: assume no units (fp32 is safe)
        return False
    return "AMX" in cap or "BF16" in cap


def check_precision(precision: str) -> str:
    """`precision` if it is one of `PRECISIONS`, else a ConfigError (field ``precision``)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"must be auto, fp32 or bf16, got {precision!r}",
                          field="precision")
    return precision


def resolve_precision(precision: str, device: str) -> str:
    """``fp32`` or ``bf16`` for ``--precision`` on the torch `device` (``cpu``/``cuda``,
    already resolved): ``auto`` is bf16 on a CUDA device that supports it and on a CPU
    with bf16 units (`cpu_bf16_fast`), fp32 elsewhere. ``bf16`` on a CPU without the
    units is allowed with a warning (it is emulated there and slower than fp32); on a
    GPU without bf16 it is a ConfigError."""
    check_precision(precision)
    if precision == "fp32":
        return "fp32"
    if device.startswith("cuda"):
        import torch

        ok = torch.cuda.is_bf16_supported()
        if precision == "bf16" and not ok:
            raise ConfigError("{field} bf16: this CUDA device has no bf16 support "
                              "(use {field} fp32 or auto)", field="precision")
        return "bf16" if ok else "fp32"
    fast = cpu_bf16_fast()
    if precision == "bf16" and not fast:
        from rsctool.console import warn

        warn("--precision bf16: this CPU has no bf16 units (AMX/AVX512-BF16); bf16 is "
             "emulated here and slower than fp32")
    return "bf16" if precision == "bf16" or fast else "fp32"


def inference_precision(precision: str, device: str, model: Any = None) -> Any:
    """Context manager to run a model's forward pass in `precision` (a resolved
    ``fp32``/``bf16``) on `device`: bf16 is ``torch.autocast`` (weights stay fp32, so the
    model is not converted and fp32 code after it is unaffected; matmuls and convolutions
    run in bf16, reductions such as softmax and LayerNorm in fp32). Outputs of autocast
    layers are bf16: callers take ``.float()`` of what they keep.

    Given the `model`, on the CPU its AST blocks also take the fused bf16 path for the
    duration (`rsctool.models.ast_backbone.pack_for_inference`: 148 instead of 224 ms per
    AST-base clip at batch 1 here, docs/benchmarks.md); callers that run one model many
    times pack it once instead."""
    if precision != "bf16":
        return contextlib.nullcontext()
    import torch

    on_gpu = device.startswith("cuda")
    autocast = torch.autocast("cuda" if on_gpu else "cpu", dtype=torch.bfloat16)
    return autocast if model is None or on_gpu else _fused(model, autocast)


@contextlib.contextmanager
def _fused(model: Any, autocast: Any) -> Iterator[None]:
    from rsctool.models.ast_backbone import pack_for_inference, unpack

    packed = pack_for_inference(model)
    try:
        with autocast:
            yield
    finally:
        unpack(packed)
