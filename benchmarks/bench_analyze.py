"""analyze on the full real ICBHI 2017 metadata (920 recordings, audio synthesised).

Baseline: the first (cold-cache) analyze in the same run. Prints the cold time, the
warm-cache time (`--force`: every recording re-validated from cached sample
statistics) and the no-op time (nothing changed), and their speed-up ratios.
Targets (issue 3): cold < 60 s on 2 cores; warm >= 10x faster than cold.

    python benchmarks/bench_analyze.py [--meta ../shared/icbhi-meta] [--sample-rate HZ]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meta", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared" / "icbhi-meta")
    ap.add_argument("--sample-rate", type=int, default=None,
                    help="rate of the synthesised audio in Hz (default: each device's real "
                         "rate, 44.1 kHz for AKGC417L and 4 kHz for the others)")
    args = ap.parse_args()
    if not args.meta.is_dir():
        raise SystemExit(f"{args.meta}: ICBHI metadata folder not found")

    from rsctool.analyze import AnalyzeOptions, run
    from rsctool.project import Project
    from rsctool.testing import synthesize_icbhi_audio

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        data = synthesize_icbhi_audio(args.meta, Path(tmp) / "db", sample_rate=args.sample_rate)
        synth_s = time.perf_counter() - t
        project = Project.load(Path(tmp) / "rsctool.toml")
        opts = AnalyzeOptions(data_dir=data)
        cold = run(project, opts)
        warm = run(project, AnalyzeOptions(data_dir=data, force=True))
        noop = run(project, opts)
        assert noop.skipped
        c, w, n = (r.timings["total"] for r in (cold, warm, noop))
        rate = f"{args.sample_rate} Hz" if args.sample_rate else "the devices' real rates"
        print(f"synthesised 920 recordings at {rate} in {synth_s:.1f} s")
        print(f"{'run':<28}{'seconds':>10}{'vs cold':>10}")
        print(f"{'cold (baseline)':<28}{c:>10.2f}{1.0:>9.1f}x")
        print(f"{'warm cache (--force)':<28}{w:>10.2f}{c / w:>9.1f}x")
        print(f"{'unchanged (no-op)':<28}{n:>10.3f}{c / n:>9.1f}x")
        print(f"cycles {cold.report['cycles']}, cold phases: read {cold.timings['read']:.2f} s, "
              f"scan {cold.timings['scan']:.2f} s, write {cold.timings['write']:.2f} s")


if __name__ == "__main__":
    main()
