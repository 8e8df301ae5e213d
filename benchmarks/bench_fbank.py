"""Throughput of rsctool's Kaldi fbank against librosa's log-mel spectrogram on CPU.

    python benchmarks/bench_fbank.py [--clips 32] [--seconds 8] [--repeats 15]
                                     [--threads 1|default]

Both sides get the same batch of clips at 16 kHz in one process and compute the same
thing: power spectra of 400-sample (25 ms) windows every 160 samples (10 ms), zero-padded
to a 512-point FFT, no centring (``center=False``, Kaldi's ``snip_edges``), 128 mel
filters, log. librosa is called as ``melspectrogram(y, sr=16000, n_fft=512,
win_length=400, hop_length=160, n_mels=128, center=False, power=2.0)`` followed by
``np.log(np.maximum(m, eps))``; ours is `rsctool.features.fbank` with the default
`FbankConfig` (which adds Kaldi's per-frame DC removal and pre-emphasis on top).
Their windows (periodic Hann vs Povey) and mel scales (Slaney vs HTK) differ, so values
differ; the work is alike. A 400-point librosa FFT (``n_fft=400``: no zero padding, a
smaller FFT than ours) is timed as well, as a stricter reference.

Rows: ours per clip (one call per clip), batched (one `(B, N)` call) and the `Fbank`
module's conv formulation (the one ONNX export uses); librosa per clip (one call per
clip: librosa builds its mel filters on every call) and batched (its multichannel
`(B, N)` input: filters built once). Each row is timed in `--repeats` interleaved
rounds after a warm-up round; the table shows the median wall time per round (and the
median CPU time of the process, which other jobs on a shared machine disturb less).
The summary compares like with like: ours per clip vs librosa per clip, ours batched
vs librosa batched.

Threads: ``--threads 1`` (default) pins torch, numpy's BLAS and every FFT to one
thread (environment variables set before the libraries load, and
``torch.set_num_threads(1)``); ``--threads default`` leaves each library at its own
default (torch: one intra-op thread per core; librosa: scipy's FFT single-threaded,
numpy's BLAS one thread per core).
"""

from __future__ import annotations

import os
import sys

_THREADS = "default" if "--threads=default" in sys.argv or (
    "--threads" in sys.argv[:-1] and sys.argv[sys.argv.index("--threads") + 1] == "default"
) else "1"
if _THREADS == "1":  # before numpy / torch / scipy are imported
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

try:
    import rsctool  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rsctool.features import Fbank, FbankConfig, fbank  # noqa: E402

EPS = float(np.finfo(np.float32).eps)


def time_interleaved(fns: dict, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and process-CPU seconds of each function over `repeats` rounds.

    One warm-up call each (allocator, FFT plans), then round-robin rounds, so a burst of
    load from other processes does not favour one method.
    """
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return ({k: statistics.median(v) for k, v in wall.items()},
            {k: statistics.median(v) for k, v in cpu.items()})


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=32, help="number of clips (default 32)")
    ap.add_argument("--seconds", type=float, default=8.0, help="clip length in s (default 8)")
    ap.add_argument("--repeats", type=int, default=15,
                    help="interleaved timing rounds; medians are reported (default 15)")
    ap.add_argument("--threads", choices=("1", "default"), default="1",
                    help="1: every library on one thread (default); default: each "
                         "library's own default")
    args = ap.parse_args(argv)
    if args.threads != _THREADS:
        raise SystemExit("--threads must be given on the command line (it acts at import)")
    if args.threads == "1":
        torch.set_num_threads(1)
    import librosa

    sr = 16000
    n = int(args.seconds * sr)
    rng = np.random.default_rng(0)
    t = np.arange(n) / sr
    clips = (0.1 * rng.standard_normal((args.clips, n))
             + 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000, (args.clips, 1)) * t))
    clips = clips.astype(np.float32)
    batch = torch.from_numpy(clips)
    cfg = FbankConfig(sample_rate=sr, num_mel_bins=128)
    assert (cfg.window_size, cfg.window_shift, cfg.n_fft) == (400, 160, 512)
    module = Fbank(cfg, normalize=False, method="conv").eval()

    def ours_per_clip():
        for row in batch:
            fbank(row, cfg)

    def ours_batched():
        fbank(batch, cfg)

    def ours_module():
        with torch.inference_mode():
            module(batch)

    def librosa_mel(y: np.ndarray, n_fft: int) -> np.ndarray:
        m = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, win_length=400,
                                           hop_length=160, n_mels=128, center=False,
                                           power=2.0)
        return np.log(np.maximum(m, EPS))

    # The outputs agree in shape (librosa frames a 512-sample span per hop: one frame less).
    ref, ours = librosa_mel(clips[0], 512), fbank(batch[0], cfg)[0]
    assert ref.shape[0] == 128 and abs(ref.shape[1] - ours.shape[0]) <= 1

    rows = [("rsctool fbank, per clip", ours_per_clip),
            ("rsctool fbank, batched", ours_batched),
            ("rsctool Fbank module (conv)", ours_module),
            ("librosa, per clip", lambda: [librosa_mel(r, 512) for r in clips]),
            ("librosa, batched", lambda: librosa_mel(clips, 512)),
            ("librosa n_fft=400, per clip", lambda: [librosa_mel(r, 400) for r in clips]),
            ("librosa n_fft=400, batched", lambda: librosa_mel(clips, 400))]
    wall, cpu = time_interleaved(dict(rows), args.repeats)
    rate = {name: args.clips / s for name, s in wall.items()}
    ref_rate = rate["librosa, per clip"]
    threads = ("1 thread" if args.threads == "1"
               else f"default threads (torch {torch.get_num_threads()})")
    print(f"{args.clips} clips x {args.seconds:g} s at {sr} Hz, 128 mel bins, {threads}, "
          f"median of {args.repeats} rounds; torch {torch.__version__}, "
          f"librosa {librosa.__version__}, numpy {np.__version__}")
    print(f"{'method':<30} {'clips/s':>9} {'ms/clip':>8} {'cpu ms/clip':>12} {'vs librosa':>11}")
    for name, _ in rows:
        r = rate[name]
        print(f"{name:<30} {r:>9.1f} {1000 / r:>8.2f} {1000 * cpu[name] / args.clips:>12.2f} "
              f"{r / ref_rate:>10.2f}x")
    summary = {}
    for label, suffix in (("", ""), (" (librosa n_fft=400)", " n_fft=400")):
        per_clip = rate["rsctool fbank, per clip"] / rate[f"librosa{suffix}, per clip"]
        batched = rate["rsctool fbank, batched"] / rate[f"librosa{suffix}, batched"]
        summary[suffix or "512"] = (per_clip, batched)
        print(f"ours vs librosa{label}: {per_clip:.2f}x per clip, {batched:.2f}x batched "
              f"(target >= 3x)")
    cpu_pc = cpu["librosa, per clip"] / cpu["rsctool fbank, per clip"]
    cpu_b = cpu["librosa, batched"] / cpu["rsctool fbank, batched"]
    print(f"same on CPU time: {cpu_pc:.2f}x per clip, {cpu_b:.2f}x batched")
    return rate


if __name__ == "__main__":
    main()
