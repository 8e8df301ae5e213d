"""Cost of `rsctool synth`: seconds per synthetic cycle and per vocoder training step.

Measured with randomly initialised models (the compute of a trained model is the same):

* diffwave vocoding: one cycle of `--cycle-seconds` through the fast 6-step sampler
  (and the 50-step one for the tiny size), for the ``tiny`` and ``base`` vocoders;
* diffwave training: one optimizer step (batch 16 x 62 frames x hop 256 for base);
* audioldm / audioldm2: one sample of the tiny test pipelines (`write_tiny_audioldm`,
  2 steps, 1 s) — plumbing cost only; the real 50-step AudioLDM cannot be measured
  without its weights.

    python benchmarks/bench_synth.py [--device cpu|cuda] [--threads N]
        [--cycle-seconds 2.7] [--skip-base] [--json]

2.7 s is the mean ICBHI 2017 cycle length; 8 s is the classifier's clip length.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Any, device: str, repeat: int = 1) -> float:
    fn()  # warm-up (allocations, kernel selection)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / repeat


def bench_diffwave(size: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from rsctool.generators.diffwave import DiffWave, DiffWaveConfig, MelSpectrogram, vocode

    cfg = DiffWaveConfig.sized(size)
    model = DiffWave(cfg).to(args.device).eval()
    mel = MelSpectrogram(cfg).to(args.device)
    wav = torch.randn(int(args.cycle_seconds * cfg.sample_rate), device=args.device) * 0.1
    m = mel(wav)[None]
    out: dict[str, Any] = {"size": size, "parameters": model.num_parameters()}

    def fast() -> None:
        vocode(model, m, [torch.Generator().manual_seed(0)], fast=True)

    out["vocode_fast_s"] = _timed(fast, args.device)
    if size == "tiny":
        out["vocode_full_s"] = _timed(
            lambda: vocode(model, m, [torch.Generator().manual_seed(0)], fast=False),
            args.device)
    # one training step at the default batch (16 x 62 frames)
    batch, frames = 16, 62
    audio = torch.randn(batch, frames * cfg.hop, device=args.device) * 0.1
    cond = mel(audio)[..., :frames]
    t = torch.randint(cfg.diffusion_steps, (batch,), device=args.device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    model.train()

    def step() -> None:
        loss = (model(audio, t, cond) - audio).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    out["train_step_s"] = _timed(step, args.device)
    return out


def bench_audioldm(version: str, args: argparse.Namespace) -> dict[str, Any]:
    from rsctool.generators import Request
    from rsctool.generators.audioldm import AudioLDMBackend
    from rsctool.testing import write_tiny_audioldm

    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_audioldm(Path(tmp) / version, version)
        backend = AudioLDMBackend(version, str(model), device=args.device, steps=2,
                                  guidance=7.5, seconds=1.0, negative_prompt="music")
        t0 = time.perf_counter()
        backend.pipe  # noqa: B018 - load
        load = time.perf_counter() - t0
        per = _timed(lambda: backend.generate([Request("crackle", 0, 1, "crackles")]),
                     args.device, repeat=3)
    return {"backend": version, "tiny_load_s": load, "tiny_sample_s": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--cycle-seconds", type=float, default=2.7)
    ap.add_argument("--skip-base", action="store_true", help="only the tiny vocoder")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [bench_diffwave("tiny", args)]
    if not args.skip_base:
        rows.append(bench_diffwave("base", args))
    ldm = [bench_audioldm(v, args) for v in ("audioldm", "audioldm2")]
    doc = {"device": args.device, "threads": torch.get_num_threads(),
           "machine": platform.machine(), "torch": torch.__version__,
           "cycle_seconds": args.cycle_seconds, "diffwave": rows, "audioldm": ldm}
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"device {args.device}, {doc['threads']} threads, cycle {args.cycle_seconds} s")
    for r in rows:
        full = f", full 50-step {r['vocode_full_s']:.2f} s" if "vocode_full_s" in r else ""
        print(f"diffwave {r['size']:>4} ({r['parameters'] / 1e6:.2f} M params): "
              f"{r['vocode_fast_s']:.2f} s/sample (fast 6-step){full}; "
              f"train step (16 x 62 frames) {r['train_step_s']:.2f} s")
    for r in ldm:
        print(f"{r['backend']} tiny test pipeline: load {r['tiny_load_s']:.2f} s, "
              f"{r['tiny_sample_s']:.3f} s/sample (2 steps, 1 s)")


if __name__ == "__main__":
    main()
