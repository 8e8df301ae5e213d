"""The `--device` check every computing stage shares (train, eval, synth, export, predict).

`cuda` on a machine where it cannot run is refused (exit 2) by every stage alike, never
silently replaced by the CPU. torch is imported only where the stage runs torch anyway;
an ONNX model asks onnxruntime for its CUDA provider instead.

``--precision`` (train, eval, predict) is resolved here too: bf16 only where it is fast
(`cpu_bf16_fast`: AMX/AVX512-BF16 units; a GPU with bf16), run as ``torch.autocast``
(`inference_precision`). Whether a training step of a given model is faster in bf16 on a
CPU is measured, not assumed (`matrix_flops`, `bf16_speedup`; the rule is `rsctool.train`'s
`choose_precision`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
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


# --------------------------------------------------------------------------- measuring

#: Forward matrix work of one training micro-batch (`matrix_flops`, GFLOP) below which a
#: CPU run stays fp32 without measuring: there autocast's casts cost about what its
#: products gain (2-core AMX CPU, fp32 vs bf16 training step at batch 16 of 4 s x 64 mel
#: clips: cnn tiny 0.3 GFLOP 1.35x, AST tiny 0.1 GFLOP 0.60x, ADD tiny 0.8 GFLOP 0.84x;
#: cnn small 2.0 GFLOP 1.61x, AST small 125 GFLOP 2.11x; docs/benchmarks.md), and a
#: step is a few milliseconds either way.
CPU_BF16_MIN_GFLOP = 1.0
#: The speed-up of a training step in bf16 over fp32 (`bf16_speedup`) that makes
#: ``train --precision auto`` train in bf16 on a CPU: below it fp32's precision is worth
#: more than the time (and a ratio this close to 1 is within the timing noise).
CPU_BF16_MIN_SPEEDUP = 1.2


def matrix_flops(model: Any, call: Callable[[], Any]) -> int:
    """FLOPs (2 x multiply-adds) of the linear and convolution layers of `model` while
    `call()` runs it: the matrix work that bf16 units speed up. Attention products
    computed outside `nn.Linear` (scaled_dot_product_attention) are not counted, so
    this is a lower bound. `call` runs under ``torch.no_grad()`` with the model in eval
    mode (BatchNorm statistics unchanged); its mode is restored."""
    import torch
    from torch import nn

    total = 0

    def count(mod: Any, args: Any, out: Any) -> None:
        nonlocal total
        if isinstance(mod, nn.Linear):
            total += 2 * out.numel() * mod.in_features
        else:  # (B, C_out, *spatial) outputs, each C_in/groups x kernel multiply-adds
            k = 1
            for n in mod.kernel_size:
                k *= n
            total += 2 * out.numel() * (mod.in_channels // mod.groups) * k

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, kinds)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            call()
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total


def bf16_speedup(step: Callable[[bool], Any], *, slow_s: float = 2.0) -> dict[str, float]:
    """How much faster `step(bf16)` runs with ``bf16=True`` than with False: each once to
    warm up (kernel creation, allocator), then alternately (so a change of machine load
    hits both), twice each when a step takes under `slow_s` seconds, once when it takes
    under 10 x `slow_s`; the fastest time of each counts. Slower steps count their
    warm-ups: the first call's costs are then a few percent of a step (AST base at batch
    16 on 2 cores: 43 s fp32, 14 s bf16), and a step more each would cost a minute.
    Returns ``{fp32_s, bf16_s, speedup}`` (fp32 / bf16)."""
    def timed(bf16: bool) -> float:
        t = time.perf_counter()
        step(bf16)
        return time.perf_counter() - t

    first = {bf16: timed(bf16) for bf16 in (False, True)}
    slowest = max(first.values())
    rounds = 2 if slowest < slow_s else 1 if slowest < 10 * slow_s else 0
    best = dict(first) if rounds == 0 else {False: float("inf"), True: float("inf")}
    for _ in range(rounds):
        for bf16 in (False, True):
            best[bf16] = min(best[bf16], timed(bf16))
    return {"fp32_s": best[False], "bf16_s": best[True], "speedup": best[False] / best[True]}
