"""Data-parallel scaling: the same `rsctool train` in 1 process and in N processes.

Builds the demo dataset (features cached by a first, discarded run), then runs the same
training command as separate invocations, alternating the configurations over `--repeats`
rounds so a busy machine slows them alike:

* ``1 proc x T threads`` for T in 1 and the per-process thread count of the N-process row
  times N (the same cores as the N processes),
* ``N procs x 1 thread`` (``--processes N``: gloo on CPU, NCCL on CUDA).

and reports the median, over epochs 2.. of each run and over rounds, of the epoch's
training throughput (`samples_per_s`: the global batch samples of the epoch / the
training time of the epoch) and its wall time (training + validation), plus the wall time
of the whole command (start-up included).

    python benchmarks/bench_scaling.py [--models cnn:small ast:tiny] [--processes 2]
        [--epochs 3] [--batch-size 32] [--clip-seconds 4] [--mels 64] [--patients 12]
        [--repeats 2] [--device cpu] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _train(project: Path, run: str, spec: str, args: argparse.Namespace, processes: int,
           threads: int) -> dict[str, Any]:
    model, _, size = spec.partition(":")
    cmd = [sys.executable, "-m", "rsctool", "--quiet", "--device", args.device, "--project",
           str(project), "train", "--model", model, "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--clip-seconds", str(args.clip_seconds),
           "--num-mel-bins", str(args.mels), "--run", run, "--force"]
    if size:
        cmd += ["--size", size]
    if model in ("ast", "grf", "film", "tafilm", "softfilm"):
        cmd += ["--pretrained", "none"]
    if processes > 1:
        cmd += ["--processes", str(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                      os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    hist = json.loads((project.parent / ".rsctool" / "runs" / run / "history.json")
                      .read_text())
    later = hist[1:] or hist
    return {"wall_s": wall, "samples_per_s": [h["samples_per_s"] for h in later],
            "epoch_s": [h["seconds"] for h in later],
            "processes": [h.get("processes", 1) for h in hist]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["cnn:small", "ast:tiny"])
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--clip-seconds", type=float, default=4.0)
    ap.add_argument("--mels", type=int, default=64)
    ap.add_argument("--patients", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from rsctool.analyze import AnalyzeOptions
    from rsctool.analyze import run as analyze
    from rsctool.data.demo import make_demo_dataset
    from rsctool.project import Project

    n = args.processes
    configs = [("1 proc x 1 thread", 1, 1), (f"1 proc x {n} threads", 1, n),
               (f"{n} procs x 1 thread", n, 1)]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_demo_dataset(root / "data", patients=args.patients, seed=0)
        project = root / "rsctool.toml"
        analyze(Project.load(project), AnalyzeOptions(data_dir=root / "data", name="demo",
                                                      val_fraction=0.2, plots=False))
        for spec in args.models:
            _train(project, "warm", spec, args, 1, n)  # fills the feature cache
            got: dict[str, list[dict[str, Any]]] = {c[0]: [] for c in configs}
            for r in range(args.repeats):
                for label, procs, threads in (configs if r % 2 == 0 else configs[::-1]):
                    got[label].append(_train(project, f"b{r}-{procs}-{threads}", spec, args,
                                             procs, threads))
            base = None
            for label, procs, threads in configs:
                runs = got[label]
                sps = statistics.median(s for x in runs for s in x["samples_per_s"])
                row = {"model": spec, "config": label, "processes": procs,
                       "threads": threads, "samples_per_s": sps,
                       "epoch_s": statistics.median(s for x in runs for s in x["epoch_s"]),
                       "command_s": statistics.median(x["wall_s"] for x in runs),
                       "recorded_processes": sorted({p for x in runs for p in x["processes"]})}
                base = base or sps
                row["speedup"] = sps / base
                rows.append(row)
    doc = {"machine": platform.platform(), "cpus": os.cpu_count(),
           "load_avg": os.getloadavg(), "args": vars(args), "rows": rows}
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"{doc['machine']}, {doc['cpus']} CPUs, load {doc['load_avg'][0]:.1f}; "
          f"batch {args.batch_size}, {args.clip_seconds} s clips, {args.mels} mels")
    print("| model | configuration | train samples/s | x vs 1x1 | epoch s | command s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['config']} | {r['samples_per_s']:.1f} | "
              f"{r['speedup']:.2f}x | {r['epoch_s']:.2f} | {r['command_s']:.1f} |")


if __name__ == "__main__":
    main()
