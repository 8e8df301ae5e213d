"""Seed 001 (MCAT) as its paper and public code define it (docs/fidelity.md (seed-001)):
the MLP head, the SoftFiLM thirds initialisation, GRF's scalar gate, the metadata field
list with median imputation, and the recipe's multilabel objective with pos_weight x 1.5.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rsctool.data.manifest import Cycle
from rsctool.errors import ConfigError
from rsctool.losses import build_loss, sensitivity_pos_weight
from rsctool.metadata_np import encode_metadata
from rsctool.models import create_model
from rsctool.models.metadata import MetadataEncoder

ROOT = Path(__file__).resolve().parents[1]
T, FB = 100, 32
PAPER_FIELDS = ["device", "site", "age", "bmi", "duration"]
PAPER_SPEC = {"n_devices": 5, "n_sites": 8, "n_num": 3, "fields": PAPER_FIELDS,
              "num_mask": False}


def tiny(name: str = "ast", **kw):
    torch.manual_seed(0)
    return create_model(name, size="tiny", input_tdim=T, input_fdim=FB, pretrained=None,
                        **kw).eval()


def cycle(i: int, split: str, **kw) -> Cycle:
    base = {"id": f"c{i}", "audio": f"r{i}.wav", "start": 0.0, "end": 2.0, "label": "normal",
            "split": split, "patient": f"p{i}", "device": "Meditron", "site": "Tc",
            "sex": "M", "age": None, "bmi": None}
    base.update(kw)
    return Cycle(**base)


# -- head -------------------------------------------------------------------------------

def test_mcat_head_is_layernorm_dropout_linear64_relu_dropout_linear():
    m = tiny("ast", num_classes=2, head="mcat")
    kinds = [type(x) for x in m.head]
    assert kinds == [nn.LayerNorm, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert isinstance(m.head_norm, nn.Identity)
    d = m.embed_dim
    assert (m.head[2].in_features, m.head[2].out_features) == (d, 64)
    assert (m.head[5].in_features, m.head[5].out_features) == (64, 2)
    assert m.head[1].p == m.head[4].p == 0.4
    out = m(torch.randn(2, T, FB))
    assert out["logits"].shape == (2, 2)
    # the conditioned models take the same head; the default stays LayerNorm -> Linear
    assert isinstance(tiny("film", head="mcat").head, nn.Sequential)
    assert isinstance(tiny("ast").head, nn.Linear)
    with pytest.raises(ConfigError, match="head must be one of"):
        tiny("ast", head="mlp")


# -- SoftFiLM / GRF initialisation ------------------------------------------------------

def test_softfilm_masks_start_as_the_thirds_partition():
    m = tiny("softfilm", mask_init_scale=2.0)
    d = m.embed_dim
    third = d // 3
    want = torch.full((3, d), -2.0)
    want[0, :third], want[1, third:2 * third], want[2, 2 * third:] = 2.0, 2.0, 2.0
    assert torch.equal(m.mask_logits.detach(), want)
    stats = m.mask_stats()
    assert set(stats["overlap"].values()) == {0.0} and stats["uncovered"] == 0
    assert stats["allocated"] == {"device": third, "site": third, "demographics": d - 2 * third}
    # the former random draw stays an option
    r = tiny("softfilm", mask_init="random")
    assert not torch.equal(r.mask_logits.detach(), want)
    with pytest.raises(ConfigError, match="mask_init"):
        tiny("softfilm", mask_init="halves")


def test_grf_scalar_gate_starts_at_one_half_and_adds_half_the_projection():
    plain = tiny("ast")
    grf = tiny("grf", gate="scalar")
    assert isinstance(grf.gate_alpha, nn.Parameter) and grf.gate_alpha.item() == 0.5
    assert not hasattr(grf, "gate")
    grf.load_state_dict(plain.state_dict(), strict=False)
    g = torch.Generator().manual_seed(0)
    meta = {"device": torch.tensor([1, 2]), "site": torch.tensor([3, 4]),
            "sex": torch.tensor([1, 2]), "num": torch.randn(2, 3, generator=g),
            "num_mask": torch.ones(2, 3)}
    x = torch.randn(2, T, FB, generator=g)
    m = grf.proj(grf.meta_embed(meta))
    got = grf(x, meta)["embedding"]
    assert torch.allclose(got, plain(x)["embedding"] + 0.5 * m, atol=1e-5)
    assert tiny("grf", gate="scalar", gate_init=0.25).gate_alpha.item() == 0.25
    with pytest.raises(ConfigError, match="gate must be one of"):
        tiny("grf", gate="matrix")


# -- metadata ---------------------------------------------------------------------------

def test_paper_field_list_drops_sex_and_the_masks_from_the_model():
    m = tiny("film", meta_spec=PAPER_SPEC)
    assert "sex" not in m.meta_embed.embeds and set(m.meta_embed.embeds) == {"device", "site"}
    # 8 + 8 embedding dims + 3 numbers without presence masks
    assert m.meta_embed.mlp[0].in_features == 8 + 8 + 3
    full = tiny("film")
    assert full.meta_embed.mlp[0].in_features == 8 + 8 + 4 + 6
    meta = {"device": torch.tensor([1]), "site": torch.tensor([2]), "sex": torch.tensor([1]),
            "num": torch.zeros(1, 3), "num_mask": torch.ones(1, 3)}
    with torch.no_grad():
        m.generator.net[-1].weight.normal_()
    x = torch.randn(1, T, FB)
    ref = m(x, meta)["logits"]
    assert torch.equal(m(x, {**meta, "sex": torch.tensor([2])})["logits"], ref)
    # softfilm's demographics factor is age, BMI and duration alone
    s = tiny("softfilm", meta_spec={**PAPER_SPEC, "fields": ["device", "age"]})
    assert s.factors == ("device", "demographics") and s.mask_logits.shape[0] == 2
    one = tiny("softfilm", meta_spec={**PAPER_SPEC, "fields": ["site"]})
    assert one.factors == ("site",)
    assert torch.isfinite(one(x, meta)["reg_loss"]) and one.mask_stats()["overlap"] == {}


def test_encoder_field_list_and_median_imputation_use_the_train_split_only():
    cycles = [cycle(0, "train", age=10.0, bmi=None), cycle(1, "train", age=20.0, bmi=30.0),
              cycle(2, "train", age=60.0, bmi=None, sex="F"),
              cycle(3, "test", age=1000.0, bmi=1000.0)]
    enc = MetadataEncoder.fit(cycles, fields=PAPER_FIELDS, impute="median")
    assert enc.median == [20.0, 30.0, 2.0]          # age, bmi, duration medians of train
    assert enc.spec()["fields"] == PAPER_FIELDS and enc.spec()["num_mask"] is False
    batch = enc.encode([cycle(9, "val", age=None, bmi=None, sex="F")])
    assert batch["sex"].tolist() == [0]              # sex is not in the list
    z_age = (20.0 - enc.mean[0]) / enc.std[0]
    assert batch["num"][0, 0].item() == pytest.approx(z_age, rel=1e-6)
    assert batch["num"][0, 1].item() == pytest.approx(0.0, abs=1e-6)   # one bmi: mean 30
    assert batch["num_mask"].tolist() == [[1.0, 1.0, 1.0]]
    # the state travels: from_dict and the torch-free encoder give the same batch
    d = enc.to_dict()
    assert d["median"] == [20.0, 30.0, 2.0] and d["fields"] == PAPER_FIELDS
    assert d["version"] == 2   # a reader of version 1 refuses it instead of misencoding
    assert MetadataEncoder.from_dict(d) == enc
    rec = [{"device": "Meditron", "site": "Tc", "sex": "M", "age": None, "bmi": 25.0}]
    np_batch = encode_metadata(rec, d)
    for k, v in enc.encode_values(rec).items():
        assert np.array_equal(np_batch[k], v.numpy()), k
    # the default encoder is unchanged: sex kept, missing = 0 with mask 0
    plain = MetadataEncoder.fit(cycles)
    b = plain.encode([cycle(9, "val", age=None, sex="F")])
    assert b["sex"].tolist() == [2] and b["num_mask"][0, 0].item() == 0.0
    assert "fields" not in plain.to_dict() and "fields" not in plain.spec()
    with pytest.raises(ConfigError, match="unknown"):
        MetadataEncoder.fit(cycles, fields=["device", "height"])


# -- the recipe and its objective -------------------------------------------------------

def test_seed001_recipe_resolves_to_multilabel_bce_with_pos_weight_times_1_5():
    from rsctool.train import TrainOptions, _load_config_file

    path = ROOT / "examples" / "seed-001-paper.toml"
    opts = TrainOptions(**_load_config_file(path)).resolve()
    assert opts.task == "multilabel" and opts.loss == "bce"
    assert opts.sensitivity_bias == 1.5
    assert opts.metadata == PAPER_FIELDS and opts.metadata_impute == "median"
    assert opts.model_cfg["head"] == "mcat" and opts.model_cfg["head_dropout"] == 0.4
    # crackle 1 of 4, wheeze 2 of 4 -> pos_weight (3/1, 2/2) x 1.5
    flags = torch.tensor([[1, 0], [0, 1], [0, 1], [0, 0]])
    pw = sensitivity_pos_weight(flags, opts.sensitivity_bias)
    assert pw == pytest.approx([4.5, 1.5])
    loss = build_loss(opts.loss, num_classes=2, task="multilabel", pos_weight=pw)
    x = torch.zeros(4, 2)
    # BCE at logit 0 is log 2 per term; positive terms weigh pos_weight
    want = math.log(2) * (4.5 * 1 + 3 + 1.5 * 2 + 2) / 8
    assert loss({"logits": x}, flags.float()).item() == pytest.approx(want, rel=1e-6)
    # the 2-class runs of the recipe keep the bias; the 4-class CE task refuses it
    assert TrainOptions(**{**_load_config_file(path), "task": "binary"}).resolve(
    ).sensitivity_bias == 1.5
    with pytest.raises(ConfigError, match="sensitivity_bias"):
        TrainOptions(**{**_load_config_file(path), "task": "multiclass"}).resolve()
    assert TrainOptions(task="multilabel").resolve().sensitivity_bias == 1.0
    # options recorded by older runs (1.0 for every task) still resolve
    assert TrainOptions(sensitivity_bias=1.0).resolve().sensitivity_bias is None
    assert TrainOptions(task="binary").resolve().sensitivity_bias is None


# -- the field list and the medians travel: train -> checkpoint -> ONNX -> predict ------

def test_export_and_predict_honour_a_non_default_field_list_and_medians(tmp_path):
    import json
    import statistics

    from typer.testing import CliRunner

    from rsctool.analyze import AnalyzeOptions
    from rsctool.analyze import run as analyze
    from rsctool.checkpoint import load_checkpoint
    from rsctool.cli import app
    from rsctool.data.demo import make_demo_dataset
    from rsctool.datasets import load_dataset_cycles
    from rsctool.onnx_runtime import OnnxModel
    from rsctool.project import Project
    from rsctool.runs import checkpoint_path
    from rsctool.train import TrainOptions
    from rsctool.train import run as train

    make_demo_dataset(tmp_path / "data", patients=4, seed=0)
    pf = tmp_path / "rsctool.toml"
    project = Project.load(pf)
    analyze(project, AnalyzeOptions(data_dir=tmp_path / "data", name="demo",
                                    val_fraction=0.25, plots=False))
    train(project, TrainOptions(
        model="film", run="mcat", task="multilabel", sensitivity_bias=1.5,
        metadata=["device", "site", "age", "bmi", "duration"], metadata_impute="median",
        model_cfg={"head": "mcat"}, size="tiny", clip_seconds=2.0, num_mel_bins=64,
        batch_size=32, epochs=1, max_steps=1, lr=1e-3), device="cpu")
    project = Project.load(pf)
    best = checkpoint_path(project, "mcat", project.get("runs", "mcat"), "best")
    config = load_checkpoint(best).state["config"]
    enc = config["metadata_encoder"]
    assert enc["fields"] == PAPER_FIELDS and enc["impute"] == "median"
    train_cycles = [c for c in load_dataset_cycles(
        project, project.get("datasets", "demo")) if c.split == "train"]
    ages = [c.age for c in train_cycles if c.age is not None]
    assert enc["median"][0] == pytest.approx(statistics.median(ages))
    assert config["model"]["meta_spec"]["fields"] == PAPER_FIELDS
    assert config["model"]["head"] == "mcat"

    runner = CliRunner()
    r = runner.invoke(app, ["--project", str(pf), "-q", "export", "--json", "--run", "mcat"],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["parity_max_abs"] < 1e-4
    assert OnnxModel(tmp_path / doc["onnx"]).spec.metadata_encoder == enc

    wav = str(next((tmp_path / "data").rglob("*.wav")))

    def probs(*meta: str, backend: str = "onnx") -> np.ndarray:
        args = ["--project", str(pf), "-q", "predict", "--format", "json", wav, "--run",
                "mcat", "--backend", backend, "--precision", "fp32",  # torch: auto may be bf16
                *(("--meta", *meta) if meta else ())]
        r = runner.invoke(app, args, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return np.array([list(p["probabilities"].values())
                         for p in json.loads(r.stdout)["predictions"]])

    ref = probs("sex=M", "age=30")
    assert np.abs(ref - probs("sex=M", "age=30", backend="torch")).max() < 1e-4
    # sex is not in the list: it cannot change a prediction
    assert np.array_equal(ref, probs("sex=F", "age=30"))
    # a missing age is the train median
    median_age = f"age={enc['median'][0]!r}"
    assert np.abs(probs("sex=M", median_age) - probs("sex=M", "age=")).max() < 1e-6


def test_binary_task_weights_the_abnormal_class_by_the_sensitivity_bias(project):
    from rsctool.train import TrainOptions, build_parts

    base = {"model": "cnn", "size": "tiny", "clip_seconds": 2.0, "task": "binary"}
    parts = build_parts(project, TrainOptions(**base, sensitivity_bias=1.5).resolve(), "cpu")
    y = parts.data.train_set.targets
    abnormal = int((y == parts.data.classes.index("abnormal")).sum())
    want = [1.0, (len(y) - abnormal) / abnormal * 1.5]
    assert parts.optim.loss_fn.class_weights.tolist() == pytest.approx(want)
    # without the option the 2-class CE stays unweighted
    plain = build_parts(project, TrainOptions(**base).resolve(), "cpu")
    assert plain.optim.loss_fn.class_weights is None


@pytest.mark.parametrize(("sets", "needle"), (
    (["metadata=device,height"], "metadata: unknown field(s) ['height']"),
    (["metadata_impute=mean"], "metadata_impute must be mask or median"),
    (["sensitivity_bias=1.5"], "sensitivity_bias weights the positive outputs"),
))
def test_bad_metadata_and_bias_options_exit_2_in_one_line(project, sets, needle):
    from typer.testing import CliRunner

    from rsctool.cli import app

    before = project.path.read_bytes()
    args = ["--project", str(project.path), "train", "--model", "cnn", "--size", "tiny"]
    for s in sets:
        args += ["--set", s]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert project.path.read_bytes() == before
