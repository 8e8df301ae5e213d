"""`--precision auto|fp32|bf16`: detection of the CPU's bf16 units, the resolver, bf16
compute under the inference context, and predict / eval / train in bf16 on a tiny model."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx_helpers import copy_project, trained_project
from typer.testing import CliRunner

from rsctool import devices
from rsctool.cli import app
from rsctool.errors import ConfigError

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")
REC = "101_1b1_Lr_sc_Litt3200"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return trained_project(tmp_path_factory)


def invoke(project: Path | None, *args: str):
    pre = ["--project", str(project)] if project is not None else []
    return runner.invoke(app, [*pre, "-q", *args], catch_exceptions=False)


# --------------------------------------------------------------------------- decisions

def test_cpu_bf16_units_are_read_from_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(devices, "_cpuinfo_flags", lambda: {"avx2", "amx_bf16", "fma"})
    assert devices.cpu_bf16_fast()
    monkeypatch.setattr(devices, "_cpuinfo_flags", lambda: {"avx2", "avx512_bf16"})
    assert devices.cpu_bf16_fast()
    monkeypatch.setattr(devices, "_cpuinfo_flags", lambda: {"avx2", "avx512f", "fma"})
    assert not devices.cpu_bf16_fast()


def test_resolve_precision_decisions(monkeypatch, capsys):
    monkeypatch.setattr(devices, "cpu_bf16_fast", lambda: True)
    assert devices.resolve_precision("auto", "cpu") == "bf16"
    assert devices.resolve_precision("fp32", "cpu") == "fp32"
    assert devices.resolve_precision("bf16", "cpu") == "bf16"
    capsys.readouterr()
    monkeypatch.setattr(devices, "cpu_bf16_fast", lambda: False)
    assert devices.resolve_precision("auto", "cpu") == "fp32"  # never bf16 by default there
    assert devices.resolve_precision("fp32", "cpu") == "fp32"
    assert capsys.readouterr().err == ""
    assert devices.resolve_precision("bf16", "cpu") == "bf16"  # asked for: allowed, warned
    assert "no bf16 units" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert devices.resolve_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert devices.resolve_precision("auto", "cuda") == "fp32"
    # below the command line the option is named by its field (tests/test_error_fields.py)
    with pytest.raises(ConfigError, match=r"^precision bf16: .*\(use precision fp32"):
        devices.resolve_precision("bf16", "cuda")
    with pytest.raises(ConfigError, match="^precision must be auto, fp32 or bf16"):
        devices.resolve_precision("fp16", "cpu")


def test_train_precision_keeps_cuda_amp_and_fp32_on_the_cpu(monkeypatch):
    from rsctool.train import TrainOptions, run_hash, train_precision
    from rsctool.utils import params_hash

    monkeypatch.setattr(devices, "cpu_bf16_fast", lambda: True)
    assert train_precision(TrainOptions(), "cpu") == "fp32"
    assert train_precision(TrainOptions(precision="bf16"), "cpu") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert train_precision(TrainOptions(), "cuda") == "bf16"
    assert train_precision(TrainOptions(amp=False), "cuda") == "fp32"
    assert train_precision(TrainOptions(precision="fp32"), "cuda") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert train_precision(TrainOptions(), "cuda") == "fp16"
    # the default does not change the identity (params hash) of runs from before it:
    # run_hash leaves options at their default out, so precision=auto hashes as no field
    old = {k: v for k, v in asdict(TrainOptions(epochs=7)).items()
           if k not in ("run", "precision") and v != asdict(TrainOptions())[k]}
    assert run_hash(TrainOptions(epochs=7)) == params_hash(old) == params_hash({"epochs": 7})
    assert run_hash(TrainOptions(epochs=7, precision="bf16")) != params_hash(old)
    with pytest.raises(ConfigError, match="precision must be auto, fp32 or bf16"):
        TrainOptions(precision="half").resolve()


def test_inference_context_computes_in_bf16_on_the_cpu():
    lin = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with torch.no_grad(), devices.inference_precision("bf16", "cpu"):
        y = lin(x)
    assert y.dtype == torch.bfloat16
    assert lin.weight.dtype == torch.float32  # the model is not converted
    with torch.no_grad(), devices.inference_precision("fp32", "cpu"):
        assert lin(x).dtype == torch.float32
    torch.testing.assert_close(y.float(), lin(x), atol=0.05, rtol=0.05)


def test_default_batch_size_follows_backend_model_and_device():
    from types import SimpleNamespace as NS

    from rsctool.predict import default_batch_size

    ast = NS(model_config={"attention": "eager", "size": "base"})
    cnn = NS(model_config={"size": "small"})
    assert default_batch_size(NS(name="onnx", spec=ast, device="cpu")) == 1
    assert default_batch_size(NS(name="onnx", spec=ast, device="cuda")) == 16
    assert default_batch_size(NS(name="onnx", spec=cnn, device="cpu")) == 16
    assert default_batch_size(NS(name="torch", spec=ast, device="cpu", precision="bf16")) == 2
    assert default_batch_size(NS(name="torch", spec=ast, device="cpu", precision="fp32")) == 1
    assert default_batch_size(NS(name="torch", spec=ast, device="cuda", precision="bf16")) == 16
    assert default_batch_size(NS(name="torch", spec=cnn, device="cpu", precision="bf16")) == 16


# --------------------------------------------------------------------------- commands

@pytest.mark.parametrize("stage", [["predict", "x.wav"], ["eval"], ["train", "--max-steps",
                                                                      "1"]])
def test_a_bad_precision_is_refused(trained, tmp_path, stage):
    proj = copy_project(trained, tmp_path)
    r = invoke(proj, *stage, "--precision", "fp16")
    assert r.exit_code == 2, r.output
    assert "--precision must be auto, fp32 or bf16" in r.output


def test_predict_in_bf16_agrees_with_fp32(trained):
    data = trained.parent / "data"
    files = [str(data / f"{REC}.wav"), str(data / "104_1b1_Lr_mc_AKGC417L.wav")]
    docs = {}
    for p, batch in (("fp32", ["--batch-size", "3"]), ("bf16", [])):
        r = invoke(trained, "predict", "--format", "json", "--run", "cnn", "--backend",
                   "torch", "--precision", p, *batch, *files)
        assert r.exit_code == 0, r.output
        docs[p] = json.loads(r.stdout)
        assert docs[p]["model"]["precision"] == p
    # --batch-size overrides the default of the rule (16 for torch)
    assert docs["fp32"]["model"]["batch_size"] == 3
    assert docs["bf16"]["model"]["batch_size"] == 16
    a, b = docs["fp32"]["predictions"], docs["bf16"]["predictions"]
    assert len(a) == len(b) > 0
    pa = np.array([list(x["probabilities"].values()) for x in a])
    pb = np.array([list(x["probabilities"].values()) for x in b])
    assert np.abs(pa - pb).max() < 0.05
    assert np.mean([x["label"] == y["label"] for x, y in zip(a, b, strict=True)]) >= 0.8


def test_eval_in_bf16_records_its_precision_and_the_change(trained, tmp_path):
    proj = copy_project(trained, tmp_path)
    r = invoke(proj, "eval", "--run", "cnn", "--split", "val", "--json", "--no-plots",
               "--precision", "bf16")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["precision"] == "bf16"
    par = doc["precision_parity"]
    assert par["n"] == min(64, doc["n"]) > 0
    assert par["probs_max_abs"] < 0.05 and par["label_agreement"] >= 0.8
    stored = json.loads(Path(doc["files"]["metrics"]).read_text())
    assert stored["precision"] == "bf16" and stored["precision_parity"] == par
    r = invoke(proj, "eval", "--run", "cnn", "--split", "val", "--json", "--no-plots",
               "--precision", "fp32")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["skipped"] is False  # another precision is another result
    assert doc["precision"] == "fp32" and doc["precision_parity"] is None


def test_train_in_bf16_on_the_cpu_records_the_precision(project):
    from rsctool.train import TrainOptions
    from rsctool.train import run as train

    res = train(project, TrainOptions(model="cnn", size="tiny", clip_seconds=2.0,
                                      batch_size=8, max_steps=2, epochs=1,
                                      precision="bf16"), device="cpu")
    cfg_path = Path(res.dir) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["precision"] == "bf16" and cfg["options"]["precision"] == "bf16"


def _tiny(**kw):
    from rsctool.train import TrainOptions

    return TrainOptions(**{"model": "cnn", "size": "tiny", "clip_seconds": 2.0,
                           "batch_size": 8, "epochs": 1, "max_steps": 2, **kw})


def _config(result) -> dict:
    return json.loads((Path(result.dir) / "config.json").read_text())


def test_auto_stays_fp32_without_measuring_a_model_too_small_for_bf16(project, monkeypatch):
    from rsctool.train import run as train

    monkeypatch.setattr(devices, "cpu_bf16_fast", lambda: True)
    monkeypatch.setattr(devices, "bf16_speedup", lambda *a, **k: pytest.fail("measured"))
    logs: list[str] = []
    cfg = _config(train(project, _tiny(), device="cpu", log=logs.append))
    choice = cfg["precision_choice"]
    assert cfg["precision"] == "fp32" and choice["how"] == "small", choice
    assert 0 < choice["gflop"] < devices.CPU_BF16_MIN_GFLOP and choice["batch"] == 8
    assert any("precision auto: fp32" in m and "too little" in m for m in logs), logs
    # a CPU without bf16 units: the rule, nothing counted or said
    monkeypatch.setattr(devices, "cpu_bf16_fast", lambda: False)
    logs.clear()
    cfg = _config(train(project, _tiny(seed=1), device="cpu", log=logs.append))
    assert cfg["precision_choice"] == {"precision": "fp32", "device": "cpu", "how": "rule"}
    assert not any("precision" in m for m in logs), logs


def test_measuring_the_precision_changes_nothing_but_the_precision(project, monkeypatch):
    """The timed steps run on copies under a forked RNG: a run whose measurement chose
    fp32 is bit for bit the run trained with --precision fp32 (weights, BatchNorm
    statistics, losses)."""
    from rsctool.checkpoint import load_checkpoint
    from rsctool.train import run as train

    monkeypatch.setattr(devices, "cpu_bf16_fast", lambda: True)
    monkeypatch.setattr(devices, "CPU_BF16_MIN_GFLOP", 0.0)
    monkeypatch.setattr(devices, "CPU_BF16_MIN_SPEEDUP", float("inf"))
    steps: list[bool] = []
    real = devices.bf16_speedup
    monkeypatch.setattr(devices, "bf16_speedup",
                        lambda step, **k: real(lambda bf16: steps.append(bf16) or step(bf16), **k))
    auto = train(project, _tiny(run="auto"), device="cpu")
    fp32 = train(project, _tiny(run="fp32", precision="fp32"), device="cpu")
    choice = _config(auto)["precision_choice"]
    assert choice["how"] == "measured" and choice["precision"] == "fp32", choice
    assert choice["fp32_s"] > 0 and choice["bf16_s"] > 0 and choice["speedup"] > 0
    assert steps == [False, True] * 3  # warm-up, then two rounds taking turns
    a = load_checkpoint(Path(auto.dir) / "last.safetensors").model_state
    b = load_checkpoint(Path(fp32.dir) / "last.safetensors").model_state
    assert a.keys() == b.keys() and any("running_mean" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert [r["train_loss"] for r in auto.history] == [r["train_loss"] for r in fp32.history]


def test_auto_trains_in_bf16_where_it_measured_faster_and_keeps_it(project, monkeypatch):
    """bf16 where a training step measured faster; the measurement is reused by the next
    run of the same model, input and machine; a resumed (here: extended) run keeps the
    precision it trained in even where a new measurement would choose otherwise."""
    from rsctool.project import Project
    from rsctool.train import PRECISION_CACHE
    from rsctool.train import run as train

    monkeypatch.setattr(devices, "cpu_bf16_fast", lambda: True)
    monkeypatch.setattr(devices, "CPU_BF16_MIN_GFLOP", 0.0)
    speed = {"fp32_s": 0.2, "bf16_s": 0.1, "speedup": 2.0}
    calls: list[int] = []
    monkeypatch.setattr(devices, "bf16_speedup",
                        lambda step, **k: calls.append(1) or dict(speed))
    logs: list[str] = []
    first = train(project, _tiny(run="a"), device="cpu", log=logs.append)
    cfg = _config(first)
    assert cfg["precision"] == "bf16" and cfg["precision_choice"]["how"] == "measured"
    assert cfg["precision_choice"]["speedup"] == 2.0 and calls == [1]
    assert any("precision auto: bf16" in m and "2.00x" in m for m in logs), logs
    assert any("timing a training step of batch 8" in m for m in logs), logs  # the wait
    assert Project.load(project.path).section("runs")["a"]["precision"] == "bf16"
    cache = project.state_dir() / PRECISION_CACHE
    assert [v["precision"] for v in json.loads(cache.read_text()).values()] == ["bf16"]
    logs.clear()
    second = _config(train(project, _tiny(run="b"), device="cpu", log=logs.append))
    assert second["precision_choice"]["how"] == "cached" and calls == [1]
    assert not any("timing" in m for m in logs)
    assert any("measured before in this project" in m for m in logs), logs
    assert second["precision"] == "bf16"
    cache.unlink()
    speed.update(speedup=0.5, bf16_s=0.4)  # measured now, fp32 would win
    ext = train(project, _tiny(run="a", epochs=2, max_steps=4), device="cpu", extend=True)
    choice = _config(ext)["precision_choice"]
    assert _config(ext)["precision"] == "bf16" and calls == [1], choice
    assert choice["how"] == "resumed" and choice["chosen"] == "measured"
    assert choice["speedup"] == 2.0
    third = _config(train(project, _tiny(run="c"), device="cpu"))
    assert third["precision"] == "fp32" and calls == [1, 1]  # measured anew


def test_a_resume_keeps_the_precision_on_the_same_device_only(monkeypatch):
    from rsctool.distributed import Dist
    from rsctool.train import choose_precision

    def choose(resumed, **opts):
        logs: list[str] = []
        c = choose_precision(None, _tiny(**opts), None, None, None, Dist(device="cpu"),
                             logs.append, resumed)
        return c.precision, c.how, logs

    measured = {"precision": "bf16", "device": "cpu", "how": "measured", "speedup": 1.7}
    monkeypatch.setattr(devices, "cpu_bf16_fast", lambda: True)
    assert choose(measured)[:2] == ("bf16", "resumed")
    # a run from before precision_choice: its precision and start device
    assert choose({"precision": "fp32", "device": "cpu"})[:2] == ("fp32", "resumed")
    assert choose({"precision": "fp32", "device": "cpu"}, precision="bf16")[:2] == (
        "bf16", "asked")
    monkeypatch.setattr(devices, "cpu_bf16_fast", lambda: False)
    precision, how, logs = choose(measured)  # moved to a CPU without bf16 units
    assert (precision, how) == ("fp32", "rule")
    assert logs == ["the run trained in bf16, which this cpu has no units for: precision "
                    "auto chooses anew"]
    precision, how, logs = choose({"precision": "fp16", "device": "cuda"})
    assert (precision, how) == ("fp32", "rule")
    assert logs == ["the run trained in fp16 on cuda: precision auto chooses anew on cpu"]


def test_matrix_flops_counts_linear_and_convolution_work():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 6, 3))
    model.train()
    before = model[1].running_mean.clone()
    flops = devices.matrix_flops(model, lambda: model(torch.randn(2, 1, 5, 6)))
    assert flops == 2 * (2 * 4 * 5 * 6 * 9) + 2 * (2 * 3 * 120)
    assert model.training and torch.equal(model[1].running_mean, before)


def test_bf16_speedup_takes_turns_and_the_fastest_time(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(devices.time, "perf_counter", lambda: now[0])
    costs = {False: [5.0, 3.0, 2.0, 4.0], True: [9.0, 1.0, 1.5, 2.0]}
    order: list[bool] = []

    def step(bf16):
        order.append(bf16)
        now[0] += costs[bf16].pop(0)

    out = devices.bf16_speedup(step, slow_s=10.0)
    assert order == [False, True] * 3
    assert out == {"fp32_s": 2.0, "bf16_s": 1.0, "speedup": 2.0}
    order.clear()
    costs = {False: [5.0, 3.0], True: [9.0, 1.0]}
    assert devices.bf16_speedup(step, slow_s=2.0)["speedup"] == 3.0  # slow: one round
    assert order == [False, True] * 2
    order.clear()
    costs = {False: [30.0], True: [10.0]}
    assert devices.bf16_speedup(step, slow_s=2.0) == {  # very slow: the warm-ups count
        "fp32_s": 30.0, "bf16_s": 10.0, "speedup": 3.0}
    assert order == [False, True]


def test_an_int8_transformer_export_of_equal_accuracy_is_preferred_on_the_cpu(tmp_path):
    """docs/benchmarks.md: AST base end to end, int8 ONNX 12.9 s vs torch bf16 17.7 s vs
    torch fp32 38.8 s for 3 minutes; the int8 export is used where its measured accuracy
    equals fp32's, and only for transformers (int8 CNNs keep fp32 convolutions)."""
    from rsctool.predict import find_export, int8_first
    from rsctool.runs import export_name

    ok = {"transformer": True, "agreement": 1.0, "score_change": 0.0}
    assert int8_first(ok)
    assert not int8_first({**ok, "transformer": False})  # a cnn
    assert not int8_first({**ok, "agreement": 0.97})  # labels changed
    assert not int8_first({**ok, "score_change": -0.02})  # Score dropped
    assert int8_first({**ok, "score_change": None})  # no normal class: agreement decides
    assert not int8_first({"agreement": 1.0})  # an export from before the field

    records = {}
    for q in ("none", "int8"):
        (tmp_path / f"{q}.onnx").write_bytes(b"onnx")
        records[export_name("r", False, q)] = {"status": "done", "checkpoint": "best",
                                               "onnx": f"{q}.onnx",
                                               **(ok if q == "int8" else {})}

    class Fake:
        def get(self, section, name):
            return records.get(name)

        def abs(self, p):
            return tmp_path / p

    assert find_export(Fake(), "r", "best")[0].name == "int8.onnx"
    assert find_export(Fake(), "r", "best", cpu=False)[0].name == "none.onnx"  # a GPU
    records[export_name("r", False, "int8")]["agreement"] = 0.9
    assert find_export(Fake(), "r", "best")[0].name == "none.onnx"


def test_export_records_whether_the_model_is_a_transformer():
    from rsctool.export import _is_transformer

    assert _is_transformer("ast") and _is_transformer("tafilm") and _is_transformer("add")
    assert not _is_transformer("cnn") and not _is_transformer("nosuch")


@pytest.mark.parametrize("bf16_units", [True, False])
def test_auto_backend_takes_torch_for_a_transformer_on_a_cpu_with_bf16_units(
        monkeypatch, bf16_units):
    """docs/benchmarks.md ("AST base: the fused bf16 path"): torch's fused bf16 AST
    blocks, 154 ms per clip, beat the int8 export's 258 ms (3 minutes of audio 9.7 vs
    12.8 s); without bf16 units, or asked for fp32, the export stays first."""
    from rsctool.predict import torch_bf16_first
    from rsctool.runs import export_name

    monkeypatch.setattr(devices, "cpu_bf16_fast", lambda: bf16_units)
    records = {export_name("ast", False, "int8"): {"transformer": True},
               export_name("cnn", False, "none"): {"transformer": False},
               export_name("old", False, "none"): {}}

    class Fake:
        def get(self, section, name):
            assert section == "exports"
            return records.get(name)

    for precision in ("auto", "bf16"):
        assert torch_bf16_first(Fake(), "ast", precision) is bf16_units
        assert not torch_bf16_first(Fake(), "cnn", precision)
        assert not torch_bf16_first(Fake(), "old", precision)  # no transformer field
    assert not torch_bf16_first(Fake(), "ast", "fp32")
