"""Several processes (GPUs, nodes) through accelerate: who is who, collectives, launching.

rsctool does not run its own process group. A multi-process run is started by an
existing launcher — ``accelerate launch -m rsctool train ...``, ``torchrun ... -m rsctool
train ...``, or ``rsctool train --processes N`` (torch's elastic launcher, the engine
behind torchrun, on this machine) — and `setup` then builds an `accelerate.Accelerator`,
which joins the process group the launcher described (NCCL on CUDA, gloo on CPU).

`Dist` is what the stages use: ``rank``, ``world``, ``is_main``, the device of this
process, and a handful of collectives (`barrier`, `broadcast`, `all_gather`, `all_sum`)
plus `prepare` (DistributedDataParallel through ``Accelerator.prepare``) and `no_sync`.
In a single process (no launcher) it is a trivial object with the same interface and
no Accelerator: the stages take the same code path, and the Accelerator's process-wide
state (it pins one device per Python process) never leaks into the many runs one Python
process may do (seed sweeps, tests, the Python API).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rsctool.errors import ConfigError, ExitStatus

if TYPE_CHECKING:
    from rsctool.project import Project

#: Environment variables a launcher sets for each process it starts.
_WORLD_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


def launched_world_size() -> int:
    """The number of processes the launcher that started this one asked for (1 without
    a launcher)."""
    for var in _WORLD_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                return 1
    return 1


def env_rank() -> int:
    """This process's global rank from the launcher's environment (0 without one); usable
    before any process group exists (e.g. to print an error once)."""
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


@dataclass
class Dist:
    """One process of a (possibly one-process) run; see the module docstring."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None
    accelerator: Any = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def device_type(self) -> str:
        return self.device.split(":", 1)[0]

    def describe(self) -> dict[str, Any]:
        """What the run records about how it was computed."""
        return {"processes": self.world, "backend": self.backend,
                "nodes": int(os.environ.get("GROUP_WORLD_SIZE", "0") or 0) or None}

    # ----- collectives (no-ops in one process) -----------------------------------------
    def barrier(self) -> None:
        if self.distributed:
            self.accelerator.wait_for_everyone()

    def broadcast(self, obj: Any) -> Any:
        """The main process's `obj`, on every process (picklable objects)."""
        if not self.distributed:
            return obj
        import torch.distributed as td

        box = [obj if self.is_main else None]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every process's `obj`, in rank order, on every process."""
        if not self.distributed:
            return [obj]
        import torch.distributed as td

        out: list[Any] = [None] * self.world
        td.all_gather_object(out, obj)
        return out

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of `values` over the processes (float64)."""
        if not self.distributed:
            return [float(v) for v in values]
        import torch
        import torch.distributed as td

        t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                         device=self.device if self.backend == "nccl" else "cpu")
        td.all_reduce(t, op=td.ReduceOp.SUM)
        return [float(v) for v in t.cpu()]

    # ----- models ---------------------------------------------------------------------
    def prepare(self, module: Any, find_unused: bool = False) -> Any:
        """`module` wrapped for data-parallel training (DistributedDataParallel through
        ``Accelerator.prepare``); `module` itself in one process. Parameters are shared
        with `module`, so its state dict stays the checkpoint's (no ``module.`` prefix).
        `find_unused`: some trainable parameters take no part in the forward pass."""
        if not self.distributed:
            return module
        from accelerate.utils import DistributedDataParallelKwargs

        self.accelerator.ddp_handler = DistributedDataParallelKwargs(
            find_unused_parameters=bool(find_unused))
        return self.accelerator.prepare(module)

    @contextlib.contextmanager
    def no_sync(self, *modules: Any) -> Iterator[None]:
        """Skip the gradient all-reduce of `modules` (accumulation micro-steps)."""
        with contextlib.ExitStack() as stack:
            if self.distributed:
                for m in modules:
                    if m is not None:
                        stack.enter_context(self.accelerator.no_sync(m))
            yield


def setup(device: str) -> Dist:
    """This process's `Dist` for a stage running on `device` (``cpu`` or ``cuda``, as
    `rsctool.devices.resolve_device` returns it).

    Under a launcher with more than one process: an `accelerate.Accelerator` (mixed
    precision is rsctool's own ``--amp``, so accelerate's is off). With ``--device cpu``
    the processes use gloo even on a GPU machine.
    """
    world = launched_world_size()
    if world <= 1:
        return Dist(device=device)
    try:
        from accelerate import Accelerator
    except ImportError:  # pragma: no cover - accelerate is a dependency
        raise ConfigError("several processes need the accelerate package "
                          "(pip install accelerate)") from None
    mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if mp not in ("", "no") and env_rank() == 0:
        print(f"note: accelerate's mixed precision {mp!r} is not used; rsctool's --amp "
              "(on by default on CUDA: bf16 where supported) decides", file=sys.stderr)
    try:
        acc = Accelerator(cpu=device == "cpu", mixed_precision="no")
    except ValueError as e:  # e.g. the state was initialised for another device
        raise ConfigError(f"cannot start the distributed run: {e}") from None
    import torch.distributed as td

    backend = td.get_backend() if td.is_initialized() else None
    dev = str(acc.device)
    if dev == "cuda":
        dev = f"cuda:{acc.local_process_index}"
    return Dist(rank=acc.process_index, world=acc.num_processes,
                local_rank=acc.local_process_index, device=dev, backend=backend,
                accelerator=acc)


def shard_range(n: int, rank: int, world: int) -> range:
    """Contiguous share of ``range(n)`` for `rank` (sizes differ by at most one)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def sync_project(project: Project, dist: Any) -> None:
    """After the main process wrote the project file: the others wait for it and re-read
    the file, so their next reads see what it wrote."""
    if not dist.distributed:
        return
    dist.barrier()
    if not dist.is_main:
        project.reload()


# --------------------------------------------------------------------------- launching

def cli_argv() -> list[str]:
    """The arguments of this ``rsctool`` invocation (for re-launching it), or ConfigError
    when rsctool was not started from the command line (then use torchrun or
    ``accelerate launch``)."""
    from pathlib import Path

    argv0 = Path(sys.argv[0]) if sys.argv else Path()
    if not (argv0.name == "rsctool"  # the console script
            or (argv0.name == "__main__.py" and argv0.parent.name == "rsctool")):  # -m
        raise ConfigError("works from the command line; from Python, start the "
                          "processes with torchrun or `accelerate launch`",
                          field="processes")
    return list(sys.argv[1:])


def launch(argv: Sequence[str], processes: int) -> int:
    """Run ``python -m rsctool ARGV`` in `processes` processes on this machine through
    torch's elastic launcher (what ``torchrun --standalone --nproc-per-node N`` does) and
    return the exit code: 0, or the first failed process's (2 for bad input, printed
    once by the main process); 128 + N when signal N (SIGTERM, SIGHUP, SIGINT) stopped
    the launcher, which hands it on to the processes (they stop like on Ctrl-C)."""
    import uuid

    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if "OMP_NUM_THREADS" not in os.environ:
        # N processes share the cores: oversubscribed threads cost more than they give
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes,
                          run_id=str(uuid.uuid4()), rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
                          start_method="spawn")
    # The processes print their own messages (an error once, by the main process); the
    # launcher's log lines about a failed process would repeat it as noise.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, sys.executable)("-m", "rsctool", *argv)
    except ChildFailedError as e:
        codes = [f.exitcode for _, f in sorted(e.failures.items())]
        for code in codes:
            if code in (2, 130, 143, 129):
                return code
        return next((c for c in codes if c and c > 0), 1)
    except SignalException as e:
        # SIGTERM/SIGHUP/SIGINT reached the launcher (`timeout`, `docker stop`): it passed
        # the signal on to the processes, whose main one checkpointed, recorded the run
        # `interrupted` and said so; exit as they did, without repeating it
        return 128 + int(e.sigval)
    return 0


def launch_here(processes: int) -> None:
    """A stage's ``--processes N``: start N processes running this same command and exit
    with their exit code (`launch`). Returns for N = 1, and in a process a launcher
    started as one of N (ConfigError if it started another number)."""
    world = launched_world_size()
    if world > 1:
        if world != processes:
            raise ConfigError(f"{{field}} {processes}, but this process was launched as "
                              f"one of {world}: drop {{field}} under torchrun or "
                              "accelerate launch", field="processes")
        return
    if processes <= 1:
        return
    raise ExitStatus(launch(strip_processes(cli_argv()), processes))


def strip_processes(argv: Sequence[str]) -> list[str]:
    """`argv` without ``--processes N`` / ``--processes=N`` (what each launched process
    gets: one process of the group, not another launcher)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--processes":
            skip = True
            continue
        if a.startswith("--processes="):
            continue
        out.append(a)
    return out
