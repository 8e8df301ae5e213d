"""Throughput of rsctool's Kaldi fbank against librosa's log-mel spectrogram, one CPU thread.

    python benchmarks/bench_fbank.py [--clips 32] [--seconds 8] [--repeats 5]

Both sides get the same batch of clips at 16 kHz and produce 128 log-mel bins from
400-sample (25 ms) frames every 160 samples (10 ms), power spectrum, no centring
(``center=False``, Kaldi's ``snip_edges``). librosa uses its own mel scale/window and a
400-point FFT where Kaldi pads to 512, so values differ; the work per frame is alike.
Rows: ours per clip (one call per clip) and batched (one `(B, N)` call), the `Fbank`
module's conv formulation (the one ONNX export uses), librosa per clip and batched (its
multichannel `(B, N)` input). The ratio column compares each row with librosa per clip;
the summary line compares like with like. Best of `--repeats` interleaved rounds.
Timings on a shared machine vary by tens of percent between runs: compare within a run.
"""

from __future__ import annotations

import os

# One thread for every library (torch, numpy's BLAS, FFT) before they are imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

try:
    import rsctool  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rsctool.features import Fbank, FbankConfig, fbank  # noqa: E402


def _best_interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Best (minimum) wall time of each function over `repeats` round-robin rounds.

    Round-robin keeps a burst of load from other processes from favouring one method;
    the minimum is the least disturbed measurement.
    """
    for fn in fns.values():
        fn()  # warm-up (allocator, FFT plans, librosa's filter cache)
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=32, help="number of clips (default 32)")
    ap.add_argument("--seconds", type=float, default=8.0, help="clip length in s (default 8)")
    ap.add_argument("--repeats", type=int, default=5,
                    help="interleaved timing rounds, best kept (default 5)")
    args = ap.parse_args(argv)
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
    cfg = FbankConfig(sample_rate=sr, num_mel_bins=128, window="hanning")
    module = Fbank(cfg, normalize=False, method="conv").eval()

    def ours_per_clip():
        for row in batch:
            fbank(row, cfg)

    def ours_batched():
        fbank(batch, cfg)

    def ours_module():
        with torch.inference_mode():
            module(batch)

    def librosa_mel(y: np.ndarray) -> np.ndarray:
        m = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=400, hop_length=160, n_mels=128,
                                           center=False, power=2.0)
        return np.log(np.maximum(m, 1.1920929e-07))

    def librosa_per_clip():
        for row in clips:
            librosa_mel(row)

    def librosa_batched():
        librosa_mel(clips)

    rows = [("rsctool fbank, per clip", ours_per_clip),
            ("rsctool fbank, batched", ours_batched),
            ("rsctool Fbank module (conv)", ours_module),
            ("librosa, per clip", librosa_per_clip),
            ("librosa, batched", librosa_batched)]
    best = _best_interleaved(dict(rows), args.repeats)
    rate = {name: args.clips / t for name, t in best.items()}
    ref = rate["librosa, per clip"]
    print(f"{args.clips} clips x {args.seconds:g} s at {sr} Hz, 128 mel bins, 1 thread, "
          f"torch {torch.__version__}, librosa {librosa.__version__}")
    print(f"{'method':<30} {'clips/s':>9} {'ms/clip':>8} {'vs librosa':>11}")
    for name, _ in rows:
        r = rate[name]
        print(f"{name:<30} {r:>9.1f} {1000 / r:>8.2f} {r / ref:>10.2f}x")
    per_clip = rate["rsctool fbank, per clip"] / rate["librosa, per clip"]
    batched = rate["rsctool fbank, batched"] / rate["librosa, batched"]
    print(f"ours vs librosa: {per_clip:.2f}x per clip, {batched:.2f}x batched (target >= 3x)")
    return rate


if __name__ == "__main__":
    main()
