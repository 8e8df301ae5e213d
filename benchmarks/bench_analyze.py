"""analyze on the full real ICBHI 2017 metadata (920 recordings, audio synthesised).

Baseline: the first (cold-cache) analyze of a fresh project in the same run. Each of
`--repeats` rounds starts a new project (empty state folder: no audio-stats cache, no
manifest, report or plots) on the same synthesised dataset and times three analyzes:

* cold: read and check every sample, compute the train split's log-mel statistics
  (unless ``--no-fbank-stats``), write manifest, report and plots;
* warm cache (``--force``): everything re-read and re-checked, with the sample
  statistics and audio headers taken from the cache (files unchanged);
* unchanged (no-op): nothing changed, nothing to do.

Prints the medians over the rounds and the speed-ups of the medians (and the median of
the per-round speed-ups). Targets (issue 3): cold < 60 s on 2 cores; warm >= 10x faster
than cold. The audio files are in the OS page cache in every round (they were just
written): "cold" is rsctool's cache, not the disk's.

    python benchmarks/bench_analyze.py [--meta ../shared/icbhi-meta] [--sample-rate HZ]
        [--repeats 3] [--no-fbank-stats]
"""

from __future__ import annotations

import argparse
import statistics
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
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds of cold / warm / no-op on fresh projects (default 3)")
    ap.add_argument("--no-fbank-stats", action="store_true",
                    help="skip the train split's log-mel statistics (analyze --no-fbank-stats)")
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
        times: dict[str, list[float]] = {"cold": [], "warm": [], "noop": []}
        cold = None
        for i in range(args.repeats):
            project = Project.load(Path(tmp) / f"proj{i}" / "rsctool.toml")
            kw = {"fbank_stats": False} if args.no_fbank_stats else {}
            first = run(project, AnalyzeOptions(data_dir=data, **kw))
            warm = run(project, AnalyzeOptions(data_dir=data, force=True, **kw))
            noop = run(project, AnalyzeOptions(data_dir=data, **kw))
            assert noop.skipped and not first.skipped and not warm.skipped
            assert warm.timings["cache_misses"] == 0 and warm.report == first.report
            for key, res in (("cold", first), ("warm", warm), ("noop", noop)):
                times[key].append(res.timings["total"])
            cold = cold or first
            print(f"round {i + 1}: cold {times['cold'][-1]:.2f} s, warm "
                  f"{times['warm'][-1]:.3f} s, no-op {times['noop'][-1]:.4f} s", flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        per_round = statistics.median(
            c / w for c, w in zip(times["cold"], times["warm"], strict=True))
        rate = f"{args.sample_rate} Hz" if args.sample_rate else "the devices' real rates"
        print(f"synthesised 920 recordings at {rate} in {synth_s:.1f} s; "
              f"medians of {args.repeats} round(s)")
        print(f"{'run':<28}{'seconds':>10}{'vs cold':>10}")
        print(f"{'cold (baseline)':<28}{med['cold']:>10.2f}{1.0:>9.1f}x")
        print(f"{'warm cache (--force)':<28}{med['warm']:>10.3f}{med['cold'] / med['warm']:>9.1f}x")
        print(f"{'unchanged (no-op)':<28}{med['noop']:>10.4f}{med['cold'] / med['noop']:>9.1f}x")
        print(f"warm vs cold, median of the per-round ratios: {per_round:.1f}x (target >= 10x)")
        print(f"cycles {cold.report['cycles']}, cold phases (round 1): read "
              f"{cold.timings['read']:.2f} s, scan {cold.timings['scan']:.2f} s, write "
              f"{cold.timings['write']:.2f} s")


if __name__ == "__main__":
    main()
