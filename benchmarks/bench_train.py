"""Training and inference throughput of the registered models, and data-loading cost.

For each model it builds the real `rsctool.train.Trainer` on a demo dataset (features
cached first), then measures, in the same run:

* step: one optimizer step (forward, loss, backward, AdamW; AMP on CUDA) on a batch,
  the baseline of this benchmark -> training samples/s;
* load: fetching the next batch from the training DataLoader with the feature cache
  warm (normalisation, collation, host->device copy) -> ratio load / step
  (target < 0.1: the data pipeline must not be what training waits on);
* infer: a no-grad forward pass in eval mode -> inference samples/s.

    python benchmarks/bench_train.py [--device cpu|cuda] [--models cnn ast:tiny ast:base]
        [--batch-size 16] [--steps 5] [--clip-seconds 8] [--attention sdpa|eager] [--json]

`ast:base` is the paper-size AST (86 M parameters, random init: no download); on a
2-core CPU it takes a few seconds per step, so keep --steps small there.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def bench_model(project: Any, spec: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from rsctool.data.dataset import epoch_order
    from rsctool.train import Trainer, TrainOptions

    model, _, size = spec.partition(":")
    # AST-backbone models start from random weights here (no download); speed is the same
    pretrained = "none" if model in ("ast", "grf", "film", "tafilm", "softfilm") else None
    model_cfg = {"attention": args.attention} if pretrained and args.attention else {}
    opts = TrainOptions(model=model, size=size or None, pretrained=pretrained, epochs=1,
                        batch_size=args.batch_size, clip_seconds=args.clip_seconds,
                        specaugment=True, num_workers=args.workers,
                        model_cfg=model_cfg).resolve()
    trainer = Trainer(project, opts, "bench", Path(tempfile.mkdtemp()), args.device)
    trainer.train_set.warm_cache()
    n_params = sum(p.numel() for p in trainer.model.parameters())

    # data loading: time to get each batch onto the device (cache warm)
    order = epoch_order(len(trainer.train_set), 0, 0).tolist()
    order = [order[i:i + opts.batch_size] for i in range(0, len(order), opts.batch_size)]
    load_times: list[float] = []
    batches = []
    it = iter(trainer._loader(trainer.train_set, order))
    for _ in range(args.steps + 1):
        t = time.perf_counter()
        try:
            raw = next(it)
        except StopIteration:  # small dataset: start another pass
            it = iter(trainer._loader(trainer.train_set, order))
            t = time.perf_counter()
            raw = next(it)
        b = trainer._to_device(raw)
        _sync(args.device)
        load_times.append(time.perf_counter() - t)
        batches.append(b)
    load_times = load_times[1:]  # the first includes worker start-up
    batch = batches[0]

    from rsctool.data.dataset import spec_augment

    model, opt, scaler = trainer.model, trainer.optimizer, trainer.scaler
    model.train()

    def step() -> None:
        x = spec_augment(batch["x"])
        with torch.autocast("cuda", enabled=trainer.use_amp):
            out = model(x, batch.get("meta"))
            loss = trainer.loss_fn(out, batch["y"])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    step_times = _timed(step, args.steps, args.device, warmup=2 if args.device == "cuda" else 1)
    model.eval()

    def infer() -> None:
        with torch.no_grad(), torch.autocast("cuda", enabled=trainer.use_amp):
            model(batch["x"], batch.get("meta"))

    infer_times = _timed(infer, args.steps, args.device, warmup=1)
    bs = int(batch["x"].shape[0])
    step_s = statistics.median(step_times)
    load_s = statistics.median(load_times) if load_times else float("nan")
    infer_s = statistics.median(infer_times)
    return {"model": spec, "params_m": n_params / 1e6, "batch": bs,
            "input": list(batch["x"].shape[1:]), "step_s": step_s, "load_s": load_s,
            "load_over_step": load_s / step_s, "train_samples_per_s": bs / step_s,
            "infer_samples_per_s": bs / infer_s}


def _timed(fn: Any, n: int, device: str, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--models", nargs="+", default=["cnn", "ast:tiny", "ast:base"],
                    help="MODEL[:SIZE] entries")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model (median)")
    ap.add_argument("--clip-seconds", type=float, default=8.0)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    ap.add_argument("--patients", type=int, default=12, help="demo dataset size")
    ap.add_argument("--attention", choices=("sdpa", "eager"), default=None,
                    help="attention kernel of AST-backbone models (default: the model's)")
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = ap.parse_args()

    import torch

    from rsctool.analyze import AnalyzeOptions
    from rsctool.analyze import run as analyze
    from rsctool.data.demo import make_demo_dataset
    from rsctool.project import Project

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_demo_dataset(root / "data", patients=args.patients, seed=0)
        project = Project.load(root / "rsctool.toml")
        analyze(project, AnalyzeOptions(data_dir=root / "data", name="demo", plots=False))
        rows = [bench_model(project, spec, args) for spec in args.models]
    hw = (torch.cuda.get_device_name(0) if args.device == "cuda"
          else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    if args.json:
        print(json.dumps({"device": args.device, "hardware": hw, "torch": torch.__version__,
                          "rows": rows}, indent=2))
        return
    print(f"device {args.device} ({hw}), torch {torch.__version__}, batch {args.batch_size}, "
          f"{args.clip_seconds:g} s clips; baseline: one optimizer step")
    print(f"{'model':<12}{'params':>9}{'input':>11}{'step s':>9}{'train/s':>9}"
          f"{'infer/s':>9}{'load s':>9}{'load/step':>11}")
    for r in rows:
        print(f"{r['model']:<12}{r['params_m']:>8.2f}M{'x'.join(map(str, r['input'])):>11}"
              f"{r['step_s']:>9.3f}{r['train_samples_per_s']:>9.1f}"
              f"{r['infer_samples_per_s']:>9.1f}{r['load_s']:>9.4f}{r['load_over_step']:>11.3f}")


if __name__ == "__main__":
    main()
