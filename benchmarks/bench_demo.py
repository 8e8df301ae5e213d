"""Time of `rsctool demo-data` at its default size (24 patients, 48 recordings).

Each of `--repeats` rounds writes the default demo dataset into a fresh temporary folder
and records its CPU time (``time.process_time``: stable on a busy shared machine) and its
wall time; prints the median and the slowest round. Target: under 10 s of CPU time (about
2 s on a laptop core); this was an assert in tests/test_demo.py before it became a
benchmark.

    python benchmarks/bench_demo.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

TARGET_CPU_S = 10.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    args = ap.parse_args()

    from rsctool.data.demo import make_demo_dataset

    cpu, wall = [], []
    summary = None
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0, w0 = time.process_time(), time.perf_counter()
            summary = make_demo_dataset(Path(tmp) / "icbhi")
            cpu.append(time.process_time() - t0)
            wall.append(time.perf_counter() - w0)
        print(f"round {i + 1}: cpu {cpu[-1]:.2f} s, wall {wall[-1]:.2f} s", flush=True)
    assert summary is not None
    med = statistics.median(cpu)
    print(f"demo-data default: {summary.patients} patients, {summary.recordings} recordings, "
          f"{summary.cycles} cycles, {summary.bytes / 1e6:.1f} MB")
    print(f"cpu median {med:.2f} s (max {max(cpu):.2f} s), wall median "
          f"{statistics.median(wall):.2f} s; target cpu < {TARGET_CPU_S:.0f} s: "
          f"{'met' if max(cpu) < TARGET_CPU_S else 'MISSED'}")


if __name__ == "__main__":
    main()
