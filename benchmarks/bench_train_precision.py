"""CPU training in fp32 vs bf16: speed and what the run learns, same seed and epochs.

    python benchmarks/bench_train_precision.py [--models cnn:small ast:tiny ast:small]
        [--epochs 15] [--seeds 0] [--patients 24] [--threads 2] [--json]
        [--precisions fp32 bf16 auto]

For each model, `rsctool train` is run twice on the same demo dataset (the demo's
`make_demo_dataset(patients, seed=0)`, analysed with a 0.2 validation fraction), once with
``precision="fp32"`` (the baseline) and once with ``precision="bf16"`` (autocast, fp32
master weights), same seed, same epochs, for every seed of `--seeds`; with ``auto`` in
`--precisions` also with ``precision="auto"``, whose row names what it chose and why
(`rsctool.train.choose_precision`: the matrix work per batch, the measured speed-up), so
the table shows whether auto trains as fast as the faster of the two. Compared is what
training records per epoch: the training samples/s (median over the epochs after the
first, which also caches the features), the training loss, and the validation Score after
every epoch (the test split is not touched). A bf16 speed-up that breaks
training shows as a validation Score that falls behind fp32's.

Settings: the demo's recipe (`examples/demo.sh`: 4 s clips, 64 mel bins, balanced
sampling, no SpecAugment, batch 16), for AST-family models from random weights
(``--pretrained none``) with lr 1e-4 and one warm-up epoch (the fine-tuning defaults,
3e-5 and ten warm-up epochs, assume pretrained weights). The two precisions of a model run
back to back, so a change of machine load between them shows in the ratio; the load
average is printed with every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

try:
    import rsctool  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def train_once(project, spec: str, precision: str, epochs: int, seed: int) -> dict:
    from rsctool.train import TrainOptions
    from rsctool.train import run as train

    name, _, size = spec.partition(":")
    ast = name in ("ast", "grf", "film", "tafilm", "softfilm")
    opts = TrainOptions(
        model=name, size=size or None, run=f"{name}-{size}-{precision}-{seed}", epochs=epochs,
        batch_size=16, clip_seconds=4.0, num_mel_bins=64, balanced=True, specaugment=False,
        precision=precision, seed=seed,
        **({"pretrained": "none", "lr": 1e-4, "warmup_epochs": 1.0} if ast else {}))
    load = os.getloadavg()[0]
    result = train(project, opts, device="cpu")
    rows = result.history
    speed = [r["samples_per_s"] for r in rows[1:]] or [rows[0]["samples_per_s"]]
    return {"model": spec, "precision": precision, "seed": seed, "epochs": len(rows),
            "samples_per_s": statistics.median(speed),
            "train_loss": rows[-1]["train_loss"],
            "val_score": [round(r["val_score"], 4) for r in rows],
            "best_val_score": max(r["val_score"] for r in rows),
            "load_before": load, "load_after": os.getloadavg()[0],
            "choice": json.loads((Path(result.dir) / "config.json").read_text())
            ["precision_choice"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["cnn:small", "ast:tiny", "ast:small"])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--patients", type=int, default=24)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                    choices=["fp32", "bf16", "auto"], help="fp32 is the baseline; always run")
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = ap.parse_args(argv)

    import torch

    from rsctool.analyze import AnalyzeOptions
    from rsctool.analyze import run as analyze
    from rsctool.data.demo import make_demo_dataset
    from rsctool.devices import cpu_bf16_fast
    from rsctool.project import Project

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), bf16 units: "
          f"{cpu_bf16_fast()}", file=sys.stderr, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_precision.") as d:
        root = Path(d)
        make_demo_dataset(root / "data", patients=args.patients, seed=0)
        project = Project.load(root / "rsctool.toml")
        analyze(project, AnalyzeOptions(data_dir=root / "data", name="demo", plots=False,
                                        val_fraction=0.2))
        for spec in args.models:
            precisions = ["fp32", *(p for p in args.precisions if p != "fp32")]
            for seed, precision in ((s, p) for s in args.seeds for p in precisions):
                r = train_once(project, spec, precision, args.epochs, seed)
                rows.append(r)
                print(f"  {spec} {precision} seed {seed}: {r['samples_per_s']:.1f} "
                      f"samples/s, val Score "
                      f"per epoch {r['val_score']}, load {r['load_before']:.1f}-"
                      f"{r['load_after']:.1f}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| model | precision | seed | samples/s (training) | vs fp32 | train loss, last epoch | "
          "validation Score, last epoch | best validation Score | load average |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["seed"] == r["seed"]
                    and b["precision"] == "fp32")
        c = r["choice"]
        label = (r["precision"] if r["precision"] != "auto" else
                 f"auto: {c['precision']} ({c['how']}"
                 + (f", {c['gflop']:.3g} GFLOP" if "gflop" in c else "")
                 + (f", {c['speedup']:.2f}x" if "speedup" in c else "") + ")")
        print(f"| {r['model']} | {label}{' (baseline)' if r is base else ''} | "
              f"{r['seed']} | "
              f"{r['samples_per_s']:.1f} | {r['samples_per_s'] / base['samples_per_s']:.2f}x | "
              f"{r['train_loss']:.4f} | {r['val_score'][-1]:.3f} | {r['best_val_score']:.3f} | "
              f"{r['load_before']:.1f}-{r['load_after']:.1f} |")


if __name__ == "__main__":
    main()
