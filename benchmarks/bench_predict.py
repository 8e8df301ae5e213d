"""Prediction speed on CPU: onnxruntime vs torch eager, int8 vs fp32, CLI start-up.

    python benchmarks/bench_predict.py [--models ast cnn] [--threads 2] [--repeats 5]

Models: ``ast`` base (86 M parameters, random initialisation: nothing is downloaded) and
``cnn`` base, both on 8 s clips at 16 kHz with 128 mel bins (798 x 128 features), exported
with `rsctool.export` exactly as ``rsctool export`` does (TorchScript exporter, opset 17,
eager attention, dynamic batch) and int8-quantised as ``--quantize int8`` does. torch runs
the model as trained (AST: fused scaled-dot-product attention). Rows:

* latency, batch 1 (median of `--repeats` calls after a warm-up), and throughput,
  batch 32 (best of `--batch32-repeats` calls), for torch eager (``torch.inference_mode``;
  the baseline), onnxruntime fp32 and onnxruntime int8, the backends taking turns call by
  call so that load from other processes hits them alike;
* CLI start-up of the installed ``rsctool`` console script, median of `--repeats` runs:
  ``rsctool predict --help``, and ``rsctool predict`` on one 8 s recording with the cnn
  run's ONNX export (the default backend) and with ``--backend torch``; the baseline is
  the torch backend. The run is a 1-step cnn (base) on a 2-patient demo dataset, exported
  with ``rsctool export`` (timed too).

With ``--precision`` (the rows of `rsctool predict --precision`; other rows skipped
unless also asked for):

* per clip, torch fp32 vs bf16 (``torch.autocast("cpu", torch.bfloat16)``) and, for
  AST-family models, "bf16 fused" (autocast with the fused AST blocks of
  `rsctool.models.ast_backbone.pack_for_inference`: what ``--precision bf16`` runs on the
  CPU) at batch 1 and 2 (median of `--repeats` calls) and at batch 16 (best of
  `--batch16-repeats` calls), for `--precision-models` (``MODEL:SIZE``; default
  cnn:small ast:tiny ast:small), with the max abs probability difference to fp32;
* end to end, ``rsctool predict`` of one 3-minute recording (`--recording-seconds`) with
  ``--backend torch``: fp32 vs bf16, ``--hop`` half a window vs a whole window, and
  ``--batch-size`` 1 vs 16, for the runs of `--e2e-models` (1-step runs, 8 s clips;
  AST with random initialisation). Baseline: fp32, half-window hop, batch 16 (the
  defaults before `--precision`).

With ``--layouts``: the four products of one AST-base block in bf16 through oneDNN
(``torch.ops.mkldnn._linear_pointwise``), ms per product (median of `--repeats` x 10 calls)
at one and two 8 s clips' rows (950, 1,900), with the weight packed in oneDNN's default
layout and in its one-row layout (``_reorder_linear_weight(w, 1)``): the measurement
behind the layouts `rsctool.models.ast_backbone._Packed` picks; the residual addition
and the GELU are fused as there.

With ``--startup``: what `rsctool.cli.main` adds around a command, ``python -m rsctool``
(the console script's path: torch imported with the collector paused and then frozen,
`freeze_on_import`; the process ended without the interpreter's teardown, `exit_now`)
against the same Typer app called plainly (``python -c "...; app()"``, the baseline),
taking turns, median of `--repeats` runs each: ``predict`` of a one-window recording and
of a `--recording-seconds` recording (``--hop 8``) with a 1-step AST-base run (torch,
the default bf16 fused path here), of the recording with a 1-step cnn-small run (torch,
and its ONNX export), and ``status``.

The CLI, start-up and end-to-end rows byte-compile rsctool's modules first (`_compile_rsctool`), as
installing a wheel does.

torch and onnxruntime get the same number of threads (`--threads`, default all cores).
Ratios are against the named baseline measured in the same run; on a shared machine
absolute times vary by tens of percent between runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    import rsctool  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

T, F = 798, 128


def _interleaved(fns: dict, rounds: int, warmup: bool) -> dict[str, list[float]]:
    """Wall times of each function over `rounds` round-robin rounds.

    Round-robin spreads bursts of load from other processes over every backend instead
    of penalising whichever happened to run during one.
    """
    if warmup:  # allocations, thread pools, onnxruntime's first-run work
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def bench_model(name: str, tmp: Path, threads: int, repeats: int,
                batch32_repeats: int) -> list[dict]:
    import onnxruntime as ort
    import torch

    from rsctool.export import export_wrapper, quantize_int8, write_onnx
    from rsctool.models import create_model

    torch.manual_seed(0)
    kw = {"pretrained": None} if name == "ast" else {}
    model = create_model(name, size="base", input_tdim=T, input_fdim=F, num_classes=4, **kw)
    model.eval()
    wrapper = export_wrapper(model, task="multiclass", needs_metadata=False)
    fp32 = tmp / f"{name}.onnx"
    t0 = time.perf_counter()
    write_onnx(wrapper, (torch.randn(2, T, F),), fp32, ["features"], 17)
    t_export = time.perf_counter() - t0
    int8 = tmp / f"{name}.int8.onnx"
    quantize_int8(fp32, int8)
    if "attention" in model.config:
        # export_wrapper switched the AST attention to eager for the graph; torch eager
        # runs what `--backend torch` runs: the trained config's fused SDPA attention.
        from rsctool.models.ast import set_attention

        set_attention(model, model.config["attention"])

    def session(path: Path):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as rsctool
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    s32, s8 = session(fp32), session(int8)
    rng = np.random.default_rng(0)
    x1 = (0.5 * rng.standard_normal((1, T, F))).astype(np.float32)
    x32 = (0.5 * rng.standard_normal((32, T, F))).astype(np.float32)
    tx1, tx32 = torch.from_numpy(x1), torch.from_numpy(x32)

    def torch_run(x):
        with torch.inference_mode():
            return model(x)["logits"]

    with torch.inference_mode():
        ref = model(tx1)["logits"].numpy()
    diff = float(np.abs(s32.run(["logits"], {"features": x1})[0] - ref).max())
    backends = {
        "torch eager": (lambda: torch_run(tx1), lambda: torch_run(tx32)),
        "onnxruntime fp32": (lambda: s32.run(["logits"], {"features": x1}),
                             lambda: s32.run(["logits"], {"features": x32})),
        "onnxruntime int8": (lambda: s8.run(["logits"], {"features": x1}),
                             lambda: s8.run(["logits"], {"features": x32})),
    }
    # Batch 32 without a separate warm-up: a call of AST base takes about a minute on
    # 2 cores, and the batch-1 rounds have warmed every backend up already.
    lat = _interleaved({k: v[0] for k, v in backends.items()}, repeats, warmup=True)
    big = _interleaved({k: v[1] for k, v in backends.items()}, max(1, batch32_repeats),
                       warmup=False)
    rows = []
    for backend in backends:
        t1 = statistics.median(lat[backend])
        thr = 32 / min(big[backend])
        rows.append({"model": name, "backend": backend, "latency_ms": 1000 * t1,
                     "throughput": thr})
        print(f"  {name:4s} {backend:17s} batch 1: {1000 * t1:8.1f} ms   batch 32: "
              f"{thr:7.2f} clips/s", flush=True)
    mb = {p: os.path.getsize(p) / 1e6 for p in (fp32, int8)}
    print(f"  {name}: export {t_export:.1f} s, fp32 {mb[fp32]:.1f} MB, int8 {mb[int8]:.1f} MB, "
          f"max |onnx - torch| {diff:.1e}", flush=True)
    return rows


def _exe() -> str:
    """The ``rsctool`` console script: on PATH, else beside this Python (a venv)."""
    return shutil.which("rsctool") or str(Path(sys.executable).with_name("rsctool"))


def _compile_rsctool() -> None:
    """Byte-compile rsctool's modules, as ``pip install`` (and so pipx) does: from a
    checkout installed with ``pip install -e .`` each CLI run would otherwise compile the
    modules it imports, or find them compiled only where Python may write (not with
    ``PYTHONDONTWRITEBYTECODE``): 40-100 ms of every ``rsctool`` command measured here."""
    import compileall

    import rsctool

    compileall.compile_dir(str(Path(rsctool.__file__).parent), quiet=1)


def _cli_runner(args: list[str], cwd: Path):
    exe = _exe()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def run() -> None:
        r = subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"rsctool {' '.join(args)} failed: {r.stderr.strip()[-500:]}")

    return run


def bench_cli(tmp: Path, repeats: int) -> list[dict]:
    from rsctool.analyze import AnalyzeOptions
    from rsctool.analyze import run as analyze
    from rsctool.data.demo import make_demo_dataset
    from rsctool.project import Project
    from rsctool.train import TrainOptions
    from rsctool.train import run as train

    root = tmp / "proj"
    make_demo_dataset(root / "data", patients=2, seed=0)
    project = Project.load(root / "rsctool.toml")
    analyze(project, AnalyzeOptions(data_dir=root / "data", name="demo", plots=False))
    train(project, TrainOptions(model="cnn", size="base", max_steps=1, epochs=1,
                                batch_size=8, clip_seconds=8.0), device="cpu")
    t0 = time.perf_counter()
    r = subprocess.run([_exe(), "-q", "export"], cwd=root,
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if r.returncode != 0:
        raise SystemExit(f"rsctool export failed: {r.stderr}")
    t_export = time.perf_counter() - t0
    from rsctool.audio import write_audio

    wav = root / "one.wav"  # one 8 s recording, no annotation: one window
    write_audio(wav, (0.1 * np.random.default_rng(0).standard_normal(8 * 16000)), 16000)
    rows = [
        ("rsctool predict --help", ["predict", "--help"]),
        ("rsctool predict one.wav (onnx, default)", ["-q", "predict", "one.wav",
                                                     "--format", "json"]),
        ("rsctool predict one.wav --backend torch", ["-q", "predict", "one.wav",
                                                     "--backend", "torch", "--format",
                                                     "json"]),
    ]
    # warm-up round: the page cache
    times = _interleaved({label: _cli_runner(args, root) for label, args in rows}, repeats,
                         warmup=True)
    out = [{"what": label, "seconds": statistics.median(times[label])} for label, _ in rows]
    print(f"  rsctool export (cnn base, 8 s clips): {t_export:.1f} s", flush=True)
    return out


def _build(spec: str):
    import torch

    from rsctool.models import create_model

    name, size = spec.split(":")
    kw = {"pretrained": None} if name == "ast" else {}
    torch.manual_seed(0)
    return create_model(name, size=size, input_tdim=T, input_fdim=F, num_classes=4,
                        **kw).eval()


def bench_precision(specs: list[str], repeats: int, batch16_repeats: int) -> list[dict]:
    """Per-clip ms at batch 1 and 16 of torch fp32, bf16 autocast and, for AST-family
    models, bf16 with the fused AST blocks (`pack_for_inference`, what `predict` and
    `eval` run), per `specs`."""
    import copy

    import torch

    from rsctool.devices import cpu_bf16_fast, inference_precision
    from rsctool.models.ast_backbone import pack_for_inference

    print(f"  bf16 units (AMX/AVX512-BF16): {cpu_bf16_fast()}", flush=True)
    rows = []
    rng = np.random.default_rng(0)
    for spec in specs:
        model = _build(spec)
        fused = copy.deepcopy(model)
        models = {"fp32": model, "bf16": model}
        if pack_for_inference(fused):
            models["bf16 fused"] = fused
        x1 = torch.from_numpy((0.5 * rng.standard_normal((1, T, F))).astype(np.float32))
        x16 = torch.from_numpy((0.5 * rng.standard_normal((16, T, F))).astype(np.float32))
        x2 = x16[:2]

        def call(x, label, models=models):
            m, prec = models[label], label.split()[0]

            def f():
                with torch.inference_mode(), inference_precision(prec, "cpu"):
                    return m(x)["logits"].float()
            return f

        p32 = torch.softmax(call(x16, "fp32")(), -1)
        lat = _interleaved({p: call(x1, p) for p in models}, repeats, warmup=True)
        two = _interleaved({p: call(x2, p) for p in models}, repeats, warmup=False)
        big = _interleaved({p: call(x16, p) for p in models}, max(1, batch16_repeats),
                           warmup=False)
        for p in models:
            p16 = torch.softmax(call(x16, p)(), -1)
            r = {"model": spec, "precision": p,
                 "b1_ms": 1000 * statistics.median(lat[p]),
                 "b2_ms": 1000 * statistics.median(two[p]) / 2,
                 "b16_ms": 1000 * min(big[p]) / 16,
                 "max_prob_diff": float((p32 - p16).abs().max()),
                 "agree": float((p32.argmax(-1) == p16.argmax(-1)).float().mean())}
            rows.append(r)
            print(f"  {spec:10s} {p}: batch 1 {r['b1_ms']:8.1f}, batch 2 {r['b2_ms']:8.1f}, "
                  f"batch 16 {r['b16_ms']:8.1f} ms/clip", flush=True)
    return rows


def bench_layouts(repeats: int) -> list[dict]:
    """ms per product of one AST-base block (D = 768) in both oneDNN weight layouts, at
    one and two clips' rows; see the module docstring."""
    import torch

    ops = torch.ops.mkldnn
    pack = ops._reorder_linear_weight
    d, rows_per_clip = 768, 950
    products = [("q/k/v (D, 3D)", d, 3 * d, ""), ("out (D, D) + residual", d, d, "add"),
                ("fc1 (D, 4D) + GELU", d, 4 * d, "gelu"),
                ("fc2 (4D, D) + residual", 4 * d, d, "add")]
    g = torch.Generator().manual_seed(0)
    out = []
    with torch.inference_mode():
        for name, k, n, post in products:
            w = torch.randn(n, k, generator=g).bfloat16()
            b = torch.randn(n, generator=g).bfloat16()
            layouts = {"default": pack(w), "one-row": pack(w, 1)}
            for clips in (1, 2):
                m = clips * rows_per_clip
                x = torch.randn(m, k, generator=g).bfloat16()
                h = torch.randn(m, n, generator=g).bfloat16()

                def product(wp, x=x, b=b, h=h, post=post):
                    if post == "add":
                        return lambda: ops._linear_pointwise.binary(x, h, wp, b, "add")
                    act, algo = ("gelu", "none") if post == "gelu" else ("none", "")
                    return lambda: ops._linear_pointwise(x, wp, b, act, [], algo)

                times = _interleaved({k: product(v) for k, v in layouts.items()},
                                     10 * repeats, warmup=True)
                r = {"product": name, "rows": m,
                     **{k: 1000 * statistics.median(v) for k, v in times.items()}}
                out.append(r)
                print(f"  {name:24s} {m:5d} rows: default {r['default']:.2f} ms, "
                      f"one-row {r['one-row']:.2f} ms", flush=True)
    return out


def print_layouts(rows: list[dict]) -> None:
    if not rows:
        return
    print("\n| product (AST base block, bf16) | rows | default layout (ms) | one-row layout "
          "(ms) | faster |\n|---|---:|---:|---:|---|")
    for r in rows:
        best = "one-row" if r["one-row"] < r["default"] else "default"
        print(f"| {r['product']} | {r['rows']:,} | {r['default']:.2f} | {r['one-row']:.2f} "
              f"| {best} |")


def _project_with_runs(root: Path, specs: list[str], seconds: float) -> Path:
    """A project at `root` (a 2-patient demo dataset, analysed) with a 1-step run
    ``MODEL-SIZE`` per ``MODEL:SIZE`` in `specs` (8 s clips; AST from random weights) and
    ``rec.wav``, `seconds` of noise at 16 kHz; returns `root`."""
    from rsctool.analyze import AnalyzeOptions
    from rsctool.analyze import run as analyze
    from rsctool.audio import write_audio
    from rsctool.data.demo import make_demo_dataset
    from rsctool.project import Project
    from rsctool.train import TrainOptions
    from rsctool.train import run as train

    make_demo_dataset(root / "data", patients=2, seed=0)
    project = Project.load(root / "rsctool.toml")
    analyze(project, AnalyzeOptions(data_dir=root / "data", name="demo", plots=False))
    for spec in specs:
        name, size = spec.split(":")
        train(project, TrainOptions(
            model=name, size=size, max_steps=1, epochs=1, batch_size=2, clip_seconds=8.0,
            run=spec.replace(":", "-"), pretrained="none" if name == "ast" else None),
            device="cpu")
    write_audio(root / "rec.wav",
                0.1 * np.random.default_rng(0).standard_normal(int(seconds * 16000)), 16000)
    return root


def bench_recording(tmp: Path, specs: list[str], seconds: float, repeats: int,
                    onnx: bool = False, configs: list | None = None) -> list[dict]:
    """`rsctool predict` wall time of one recording, torch backend, per run/precision/hop;
    with `onnx`, also the run's ``export --quantize int8`` model in onnxruntime
    (``--model FILE``, its default batch size) at both hops."""
    root = _project_with_runs(tmp / "e2e", specs, seconds)
    configs = configs or [("fp32", 4.0, 16), ("bf16", 4.0, 16), ("fp32", 8.0, 16),
                          ("bf16", 8.0, 16), ("fp32", 4.0, 1), ("bf16", 4.0, 1)]
    if onnx:
        configs = [*configs, ("onnx-int8", 4.0, None), ("onnx-int8", 8.0, None)]
    rows = []
    for spec in specs:
        run = spec.replace(":", "-")
        int8 = None
        if onnx:
            import json

            r = subprocess.run([_exe(), "-q", "export", "--run",
                                run, "--quantize", "int8", "--json"], cwd=root,
                               capture_output=True, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if r.returncode != 0:
                raise SystemExit(f"rsctool export failed: {r.stderr}")
            int8 = str(root / json.loads(r.stdout)["onnx"])

        def args_of(c, run=run, int8=int8):
            if c[0] == "onnx-int8":
                return ["-q", "predict", "rec.wav", "--model", int8, "--hop", str(c[1]),
                        "--format", "json"]
            return ["-q", "predict", "rec.wav", "--run", run, "--backend", "torch",
                    "--precision", c[0], "--hop", str(c[1]), "--batch-size", str(c[2]),
                    "--format", "json"]

        fns = {c: _cli_runner(args_of(c), root) for c in configs}
        times = _interleaved(fns, repeats, warmup=False)
        for c in configs:
            rows.append({"model": spec, "precision": c[0], "hop": c[1], "batch": c[2],
                         "seconds": statistics.median(times[c])})
            print(f"  {spec:10s} {c[0]} hop {c[1]:g} s batch {c[2] or 'default'}: "
                  f"{rows[-1]['seconds']:.2f} s", flush=True)
    return rows


def bench_startup(tmp: Path, seconds: float, repeats: int) -> list[dict]:
    """Wall time of commands through `rsctool.cli.main` (``python -m rsctool``) against
    the plain Typer app (baseline), taking turns; see the module docstring."""
    from rsctool.audio import write_audio

    root = _project_with_runs(tmp / "startup", ["ast:base", "cnn:small"], seconds)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "rsctool", "-q", "export", "--run", "cnn-small"],
                       cwd=root, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"rsctool export failed: {r.stderr}")
    write_audio(root / "one.wav", 0.1 * np.random.default_rng(1).standard_normal(8 * 16000),
                16000)
    commands = [
        ("predict one.wav, AST base (torch)", ["predict", "one.wav", "--run", "ast-base"]),
        (f"predict {seconds:g} s --hop 8, AST base (torch)",
         ["predict", "rec.wav", "--run", "ast-base", "--hop", "8"]),
        (f"predict {seconds:g} s, cnn small (torch)",
         ["predict", "rec.wav", "--run", "cnn-small", "--backend", "torch"]),
        (f"predict {seconds:g} s, cnn small (ONNX)",
         ["predict", "rec.wav", "--run", "cnn-small", "--backend", "onnx"]),
        ("status", ["status"]),
    ]
    entries = {"plain app()": [sys.executable, "-c",
                               "from rsctool.cli import app; app(prog_name='rsctool')"],
               "main()": [sys.executable, "-m", "rsctool"]}

    def runner(entry: list[str], args: list[str]):
        def run() -> None:
            r = subprocess.run([*entry, "-q", *args, "--format", "json"]
                               if args[0] == "predict" else [*entry, "-q", *args],
                               cwd=root, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"{' '.join(args)} failed: {r.stderr.strip()[-500:]}")
        return run

    rows = []
    for what, args in commands:
        fns = {k: runner(e, args) for k, e in entries.items()}
        times = _interleaved(fns, repeats, warmup=True)
        rows.append({"what": what, **{k: statistics.median(v) for k, v in times.items()}})
        print(f"  {what}: plain {rows[-1]['plain app()']:.2f} s, main "
              f"{rows[-1]['main()']:.2f} s", flush=True)
    return rows


def print_startup(rows: list[dict]) -> None:
    if not rows:
        return
    print("\n| command | plain `app()` (baseline, s) | `main()` (s) | saved (s) | vs baseline |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        a, b = r["plain app()"], r["main()"]
        print(f"| `rsctool {r['what']}` | {a:.2f} | {b:.2f} | {a - b:.2f} | {a / b:.2f}x |")


def print_precision(prec: list[dict], e2e: list[dict], seconds: float) -> None:
    if prec:
        print("\n| model | precision | batch 1 (ms/clip) | vs fp32 | batch 2 (ms/clip) | "
              "vs fp32 | batch 16 (ms/clip) | vs fp32 | max abs prob diff | same label |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in prec:
            b = next(x for x in prec if x["model"] == r["model"] and x["precision"] == "fp32")
            same = r["precision"] == "fp32"
            cells = [f"{r[k]:.1f} | {b[k] / r[k]:.2f}x" for k in ("b1_ms", "b2_ms", "b16_ms")]
            print(f"| {r['model']} | {r['precision']} | {' | '.join(cells)} | "
                  + ("| |" if same else f"{r['max_prob_diff']:.1e} | "
                     f"{100 * r['agree']:.0f} % |"))
    if e2e:
        print(f"\n| `rsctool predict` {seconds:g} s recording | precision | hop (s) "
              "| batch | seconds | vs fp32, hop 4, batch 16 |")
        print("|---|---|---:|---:|---:|---:|")
        for r in e2e:
            b = next(x for x in e2e if x["model"] == r["model"] and x["precision"] == "fp32"
                     and x["hop"] == 4.0 and x["batch"] == 16)
            print(f"| {r['model']} | {r['precision']} | {r['hop']:g} | {r['batch'] or 'default'} | "
                  f"{r['seconds']:.2f} | {b['seconds'] / r['seconds']:.2f}x |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["ast", "cnn"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed calls for batch-1 latency and CLI start-up (median)")
    ap.add_argument("--batch32-repeats", type=int, default=2,
                    help="timed batch-32 calls (best of)")
    ap.add_argument("--no-cli", action="store_true", help="skip the CLI start-up rows")
    ap.add_argument("--precision", action="store_true",
                    help="the fp32 vs bf16 and end-to-end recording rows (other rows only "
                         "with --models / --cli)")
    ap.add_argument("--cli", action="store_true", help="with --precision: also the CLI rows")
    ap.add_argument("--startup", action="store_true",
                    help="only the rows of what rsctool.cli.main adds around a command")
    ap.add_argument("--layouts", action="store_true",
                    help="the oneDNN weight-layout rows of an AST-base block only")
    ap.add_argument("--precision-models", nargs="*",
                    default=["cnn:small", "ast:tiny", "ast:small"])
    ap.add_argument("--e2e-models", nargs="*", default=["cnn:small", "ast:tiny"])
    ap.add_argument("--recording-seconds", type=float, default=180.0)
    ap.add_argument("--batch16-repeats", type=int, default=3)
    ap.add_argument("--e2e-onnx", action="store_true",
                    help="end to end: also each run's int8 ONNX export (onnxruntime)")
    ap.add_argument("--e2e-configs", nargs="*", default=None, metavar="PREC:HOP:BATCH",
                    help="end-to-end torch settings (default: fp32/bf16 x hop 4/8 x batch "
                         "16, and batch 1 at hop 4); the first must be fp32:4:16")
    args = ap.parse_args(argv)
    if args.precision:
        given = argv if argv is not None else sys.argv[1:]
        if "--models" not in given:
            args.models = []
        args.no_cli = not args.cli

    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"{args.threads} thread(s), {os.cpu_count()} CPU(s), load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    if args.layouts:
        print_layouts(bench_layouts(args.repeats))
        print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
        return
    if not args.no_cli or args.precision or args.startup:
        _compile_rsctool()
    if args.startup:
        with tempfile.TemporaryDirectory(prefix="bench_predict.") as d:
            print_startup(bench_startup(Path(d), args.recording_seconds, args.repeats))
        print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
        return
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_predict.") as d:
        tmp = Path(d)
        for name in args.models:
            rows += bench_model(name, tmp, args.threads, args.repeats,
                                args.batch32_repeats)
        cli = [] if args.no_cli else bench_cli(tmp, args.repeats)
        prec, e2e = [], []
        if args.precision:
            prec = bench_precision(args.precision_models, args.repeats, args.batch16_repeats)
            confs = ([(p, float(h), int(b)) for p, h, b in
                      (c.split(":") for c in args.e2e_configs)] if args.e2e_configs else None)
            e2e = bench_recording(tmp, args.e2e_models, args.recording_seconds,
                                  max(1, args.repeats // 2), args.e2e_onnx, confs)

    if rows:
        print("\n| model | backend | batch 1 latency (ms) | vs torch | batch 32 (clips/s) "
              "| vs torch | vs onnx fp32 |")
        print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        rs = {r["backend"]: r for r in rows if r["model"] == name}
        base, f32 = rs["torch eager"], rs["onnxruntime fp32"]
        for b, r in rs.items():
            speed1 = base["latency_ms"] / r["latency_ms"]
            speed32 = r["throughput"] / base["throughput"]
            vs32 = (f"{f32['latency_ms'] / r['latency_ms']:.2f}x / "
                    f"{r['throughput'] / f32['throughput']:.2f}x" if b.endswith("int8") else "")
            print(f"| {name} | {b}{' (baseline)' if b == 'torch eager' else ''} | "
                  f"{r['latency_ms']:.1f} | {speed1:.2f}x | {r['throughput']:.1f} | "
                  f"{speed32:.2f}x | {vs32} |")
    if cli:
        base = cli[-1]["seconds"]
        print("\n| command | seconds | vs torch backend |\n|---|---:|---:|")
        for r in cli:
            print(f"| `{r['what']}` | {r['seconds']:.2f} | {base / r['seconds']:.2f}x |")
    print_precision(prec, e2e, args.recording_seconds)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    summary = []
    for name in args.models:
        rs = {r["backend"]: r for r in rows if r["model"] == name}
        r1 = rs["torch eager"]["latency_ms"] / rs["onnxruntime fp32"]["latency_ms"]
        r8 = rs["onnxruntime fp32"]["latency_ms"] / rs["onnxruntime int8"]["latency_ms"]
        summary.append(f"{name}: onnx fp32 {r1:.2f}x torch at batch 1, int8 {r8:.2f}x fp32")
    if cli:
        summary.append(f"start-up: predict --help {cli[0]['seconds']:.2f} s, one file "
                       f"onnx {cli[1]['seconds']:.2f} s vs torch {cli[2]['seconds']:.2f} s")
    print("\nsummary: " + "; ".join(summary))


if __name__ == "__main__":
    main()
