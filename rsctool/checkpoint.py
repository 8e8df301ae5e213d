"""Checkpoints as single safetensors files: weights, optimizer state, RNG, and JSON state.

A checkpoint carries everything needed to rebuild and resume a run (nanoGPT-style):
model args and config, optimizer and scheduler state, step, epoch, RNG state. Tensors
live in the safetensors body; everything else is one JSON string in its metadata
header under the key ``"rsctool"``. Loading never unpickles anything, so a checkpoint
from an untrusted source cannot run code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from rsctool.errors import DataError
from rsctool.utils import file_mode, mkstemp_for

FORMAT = "rsctool-checkpoint"
FORMAT_VERSION = 1


def _flatten_optimizer(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], Any]:
    """Split an optimizer state dict into tensors and a JSON-safe rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in opt_state["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        _, pid, k = name.split(".", 2)
        state.setdefault(int(pid), {})[k] = t
    for pid, sc in rest.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(sc)
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module,
                    state: dict[str, Any], optimizer: torch.optim.Optimizer | None = None,
                    rng: bool = False,
                    extras: dict[str, torch.nn.Module] | None = None,
                    rng_extra: dict[str, torch.Tensor] | None = None) -> None:
    """Write a checkpoint atomically (temp file + fsync + rename).

    Args:
        path: the `.safetensors` file.
        model: its `state_dict()` is saved under ``model.*``.
        state: JSON-serialisable run state (config, step, epoch, scheduler, history ...).
        optimizer: saved under ``optim.*`` (tensors) plus its param groups in `state`.
        rng: also save the torch CPU (and CUDA) RNG states, for bit-exact resume.
        extras: further modules trained alongside the model (e.g. the adversarial
            discriminator), saved under ``extra.NAME.*`` so the model's own state dict
            (what `eval` and `export` load strictly) stays exactly the model's.
        rng_extra: further RNG states saved under ``rng.KEY`` (with `rng`): the other
            processes' of a multi-process run, as ``rankR.torch`` / ``rankR.cuda``.
    """
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous()
               for k, v in model.state_dict().items()}
    for name, module in (extras or {}).items():
        tensors.update({f"extra.{name}.{k}": v.detach().cpu().contiguous()
                        for k, v in module.state_dict().items()})
    meta = {"format": FORMAT, "version": FORMAT_VERSION, **state}
    if optimizer is not None:
        opt_tensors, opt_rest = _flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_tensors)
        meta["optimizer"] = opt_rest
    if rng:
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        for k, v in (rng_extra or {}).items():
            tensors[f"rng.{k}"] = v.detach().cpu().contiguous()
    path = Path(path)
    fd, tmp = mkstemp_for(path)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"rsctool": json.dumps(meta, default=_json_default)})
        os.chmod(tmp, file_mode())  # safetensors recreates the file with mode 0600
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class Checkpoint:
    """A loaded checkpoint: `state` (dict), `model_state`, `optimizer_state`, `rng`,
    `extras` (``{name: state dict}`` of the modules saved with ``extras=``)."""

    def __init__(self, path: Path, state: dict[str, Any], tensors: dict[str, torch.Tensor]):
        self.path = path
        self.state = state
        self.model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        opt = {k: v for k, v in tensors.items() if k.startswith("optim.")}
        self.optimizer_state = (_unflatten_optimizer(opt, state["optimizer"])
                                if "optimizer" in state else None)
        self.rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
        self.extras: dict[str, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("extra."):
                name, key = k[6:].split(".", 1)
                self.extras.setdefault(name, {})[key] = v

    def restore_rng(self, rank: int = 0) -> bool:
        """Restore the RNG state of process `rank` of the run that saved it (0: the main
        process, or the only one); False when the checkpoint has none for `rank`."""
        if rank > 0:
            key = f"rank{rank}."
            if key + "torch" not in self.rng:
                return False
            torch.set_rng_state(self.rng[key + "torch"])
            if key + "cuda" in self.rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(self.rng[key + "cuda"])
            return True
        if "torch" in self.rng:
            torch.set_rng_state(self.rng["torch"])
        cuda = [self.rng[k] for k in sorted(self.rng) if k.startswith("cuda.")]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        return "torch" in self.rng


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint` (no pickle involved).

    Raises:
        DataError: missing file, not a safetensors file (e.g. a pickle), or not ours.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise DataError("checkpoint not found", path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise DataError(f"not a safetensors checkpoint ({str(e).strip()[:120]}); "
                        "rsctool never unpickles checkpoints", path) from None
    try:
        state = json.loads(meta["rsctool"])
    except (KeyError, ValueError):
        raise DataError("not an rsctool checkpoint (no rsctool metadata)", path) from None
    if state.get("format") != FORMAT or int(state.get("version", 0)) > FORMAT_VERSION:
        raise DataError(f"unsupported checkpoint format {state.get('format')!r} "
                        f"version {state.get('version')!r}", path)
    return Checkpoint(path, state, tensors)
