"""Cost of the GHM losses per training step, against their plain baselines.

For each model configuration it times, in the same run and interleaved (A, B, A, B ...
so that a busy machine slows both alike):

* step: one optimizer step (forward, loss, backward, AdamW) of a score model (ranking,
  `--task ranking`) with ``margin`` (the baseline) and with ``ghm-ranking``, and of a
  class model with ``ce`` (baseline) and ``ghm``; the GHM steps include what the
  trainer adds for them (the per-epoch bin statistics, `_accumulate_ghm`);
* loss: the loss alone, forward and backward on fixed model outputs.

It prints the GHM / baseline ratios (target for the step: < 1.10, i.e. under 10 %
overhead). Inputs are random log-mel-shaped tensors, so no dataset is needed.

    python benchmarks/bench_ghm.py [--device cpu|cuda] [--configs cnn:tiny:100x64 ...]
        [--batch-size 16] [--steps 20] [--bins 10] [--threads N] [--json]

A configuration is ``MODEL:SIZE:FRAMESxMELS`` (``cnn:tiny:100x64`` is the folder demo's
1 s clips with 64 mel bins; ``cnn:base:798x128`` is an 8 s clip with train's defaults).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Any, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def bench_config(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from rsctool.losses import build_loss
    from rsctool.models import create_model
    from rsctool.train import _accumulate_ghm

    model_name, size, shape = spec.split(":")
    frames, mels = (int(v) for v in shape.split("x"))
    dev = args.device
    b = args.batch_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, frames, mels, generator=gen).to(dev)
    y_rank = torch.randint(0, 5, (b,), generator=gen).to(dev)
    y_cls = torch.randint(0, 4, (b,), generator=gen).to(dev)
    cases = {
        "margin": ("score", build_loss("margin", num_classes=1)),
        "ghm-ranking": ("score", build_loss("ghm-ranking", num_classes=1, bins=args.bins)),
        "ce": ("logits", build_loss("ce", num_classes=4)),
        "ghm": ("logits", build_loss("ghm", num_classes=4, bins=args.bins)),
    }
    models, optims = {}, {}
    for name, (output, _) in cases.items():
        torch.manual_seed(0)
        m = create_model(model_name, size=size, num_classes=4, input_tdim=frames,
                         input_fdim=mels, output=output).to(dev)
        m.to(memory_format=torch.channels_last)
        m.train()
        models[name] = m
        optims[name] = torch.optim.AdamW(m.parameters(), lr=1e-4)

    def step(name: str) -> None:
        output, loss_fn = cases[name]
        y = y_rank if output == "score" else y_cls
        acc = {"epoch": 1, "steps": 0, "n": 0, "counts": [0] * args.bins,
               "weight_sums": [0.0] * args.bins, "g_sum": 0.0}
        loss = loss_fn(models[name](x), y)
        optims[name].zero_grad(set_to_none=True)
        loss.backward()
        optims[name].step()
        stats = getattr(loss_fn, "last_stats", None)
        if stats is not None:
            _accumulate_ghm(acc, stats)
        float(loss.detach())  # the trainer reads the loss every step

    # the loss alone on fixed outputs
    outs = {"score": torch.randn(b, 1, device=dev, requires_grad=True),
            "logits": torch.randn(b, 4, device=dev, requires_grad=True)}

    def loss_only(name: str) -> None:
        output, loss_fn = cases[name]
        y = y_rank if output == "score" else y_cls
        for _ in range(10):
            loss = loss_fn({"logits": outs[output]}, y)
            loss.backward()
            stats = getattr(loss_fn, "last_stats", None)
            if stats is not None:
                _accumulate_ghm({"steps": 0, "n": 0, "counts": [0] * args.bins,
                                 "weight_sums": [0.0] * args.bins, "g_sum": 0.0}, stats)

    for name in cases:  # warm-up
        for _ in range(2):
            step(name)
            loss_only(name)
    times: dict[str, list[float]] = {n: [] for n in cases}
    loss_times: dict[str, list[float]] = {n: [] for n in cases}
    for _ in range(args.steps):
        for name in cases:
            times[name].append(_timed(lambda n=name: step(n), dev))
            loss_times[name].append(_timed(lambda n=name: loss_only(n), dev) / 10)
    med = {n: statistics.median(v) for n, v in times.items()}
    lmed = {n: statistics.median(v) for n, v in loss_times.items()}
    return {
        "config": spec, "batch_size": b, "pairs_per_batch": b * (b - 1) // 2,
        "step_ms": {n: round(1e3 * v, 3) for n, v in med.items()},
        "loss_ms": {n: round(1e3 * v, 4) for n, v in lmed.items()},
        "step_ratio_ghm_ranking_vs_margin": round(med["ghm-ranking"] / med["margin"], 4),
        "step_ratio_ghm_vs_ce": round(med["ghm"] / med["ce"], 4),
        "loss_ratio_ghm_ranking_vs_margin": round(lmed["ghm-ranking"] / lmed["margin"], 3),
        "loss_ratio_ghm_vs_ce": round(lmed["ghm"] / lmed["ce"], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--configs", nargs="+", default=["cnn:tiny:100x64", "cnn:small:400x128"])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--bins", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = [bench_config(c, args) for c in args.configs]
    doc = {"device": args.device, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "machine": platform.processor() or
           platform.machine(), "results": results}
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"device {args.device}, torch {torch.__version__}, {doc['threads']} threads, "
          f"batch {args.batch_size}, {args.bins} bins, median of {args.steps}")
    for r in results:
        s, lo = r["step_ms"], r["loss_ms"]
        print(f"{r['config']}: step margin {s['margin']:.2f} ms, ghm-ranking "
              f"{s['ghm-ranking']:.2f} ms -> ratio {r['step_ratio_ghm_ranking_vs_margin']:.3f}"
              f"; ce {s['ce']:.2f} ms, ghm {s['ghm']:.2f} ms -> ratio "
              f"{r['step_ratio_ghm_vs_ce']:.3f}")
        print(f"{'':{len(r['config'])}}  loss alone: margin {lo['margin']:.3f} ms, "
              f"ghm-ranking {lo['ghm-ranking']:.3f} ms (x{r['loss_ratio_ghm_ranking_vs_margin']}"
              f"); ce {lo['ce']:.3f} ms, ghm {lo['ghm']:.3f} ms "
              f"(x{r['loss_ratio_ghm_vs_ce']})")


if __name__ == "__main__":
    main()
