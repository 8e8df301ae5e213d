"""Every registered model honours the model contract (rsctool/models/registry.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from rsctool.data.manifest import Cycle
from rsctool.errors import ConfigError
from rsctool.models import (
    MetadataEncoder,
    ModelTraits,
    create_model,
    list_models,
    model_sizes,
    model_traits,
)
from rsctool.models.registry import register_model, unregister_model

T, FB = 100, 32


def _encoder() -> MetadataEncoder:
    cycles = [Cycle(id=f"c{i}", audio="a.wav", start=0.0, end=1.0 + i, label="normal",
                    split="train", device=dev, site=site, sex=sex, age=age, bmi=bmi)
              for i, (dev, site, sex, age, bmi) in enumerate([
                  ("Meditron", "Al", "M", 70.0, 30.0), ("LittC2SE", "Tc", "F", 8.0, None),
                  ("AKGC417L", "Pr", None, None, 22.0)])]
    return MetadataEncoder.fit(cycles)


ENC = _encoder()
META_A = ENC.encode_values([
    {"device": "Meditron", "site": "Al", "sex": "M", "age": 70, "bmi": 30, "duration": 2.0},
    {"device": "LittC2SE", "site": "Tc", "sex": "F", "age": 8, "duration": 3.0}])
META_B = ENC.encode_values([
    {"device": "AKGC417L", "site": "Pr", "sex": "F", "age": 20, "bmi": 18, "duration": 1.0},
    {}])


def _build(name: str, **kw):
    torch.manual_seed(0)
    return create_model(name, size="tiny", num_classes=4, input_tdim=T, input_fdim=FB,
                        meta_spec=ENC.spec(), **kw)


def test_all_families_are_registered():
    assert {"ast", "grf", "film", "tafilm", "softfilm", "add", "cnn", "resnet"} <= \
        set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_model_contract(name):
    assert "tiny" in model_sizes(name)
    model = _build(name).train()
    x = torch.randn(2, T, FB)
    out = model(x, META_A)
    assert out["logits"].shape == (2, 4)
    assert out["embedding"].shape == (2, model.embed_dim)
    if "aux_logits" in out:
        assert out["aux_logits"].shape == (2, 4)
    if "reg_loss" in out:
        assert out["reg_loss"].dim() == 0
    loss = out["logits"].pow(2).mean() + out.get("reg_loss", 0.0)
    if "aux_logits" in out:
        loss = loss + out["aux_logits"].pow(2).mean()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"

    cfg = json.loads(json.dumps(model.config))         # JSON-safe and enough to rebuild
    assert cfg.pop("name") == name
    rebuilt = create_model(name, **cfg)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    assert isinstance(model.needs_metadata, bool)

    # One sign-SGD step (Adam-like: every parameter with a gradient moves) makes
    # zero-initialised conditioning layers non-zero.
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.05 * p.grad.sign()
    model.eval()
    with torch.no_grad():
        a, b = model(x, META_A)["logits"], model(x, META_B)["logits"]
    if model.needs_metadata:
        assert not torch.allclose(a, b, atol=1e-5), f"{name} ignores its metadata"
    else:
        assert torch.equal(a, b)
        assert torch.equal(model(x)["logits"].detach(), a)


@pytest.mark.parametrize("name", list_models())
def test_bad_size_and_key_are_config_errors(name):
    with pytest.raises(ConfigError, match="size"):
        create_model(name, size="no-such-size")
    with pytest.raises(ConfigError, match="no_such_key"):
        create_model(name, size="tiny", no_such_key=1)


def test_registry_errors():
    with pytest.raises(ConfigError,
                       match="unknown model 'nope'; known models: add, add-standalone, ast"):
        create_model("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_model("ast")(lambda **kw: None)
    assert model_sizes("ast") == ["tiny", "small", "base"]


# -- traits (registered with each builder) ------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_traits_agree_with_the_built_model(name):
    from rsctool.train import TrainOptions

    t = model_traits(name)
    assert isinstance(t, ModelTraits) and t.family and t.input == "fbank"
    assert list(t.sizes) == model_sizes(name) and "tiny" in t.sizes
    assert ("ranking" in t.tasks) == t.score_output
    assert {"multiclass", "multilabel", "binary"} <= t.tasks
    model = _build(name).eval()
    assert model.needs_metadata == t.metadata
    x = torch.randn(2, T, FB)
    if t.score_output:  # one ranking score per example
        with torch.no_grad():
            assert _build(name, output="score")(x, META_A)["logits"].shape == (2, 1)
    else:
        with pytest.raises(ConfigError, match="output"):
            _build(name, output="score")
    if t.pretrained:
        assert "pretrained" in model.config
    else:
        with pytest.raises(ConfigError, match="pretrained"):
            _build(name, pretrained="none")
    # the trainer's defaults come from the traits
    o = TrainOptions(model=name, epochs=50).resolve()
    assert o.window == t.window
    assert (o.lr, o.warmup_epochs) == ((3e-5, 10.0) if t.transformer else (1e-3, 1.0))
    if "ranking" in t.tasks:
        assert TrainOptions(model=name, task="ranking").resolve().model_cfg["output"] == "score"
    else:
        with pytest.raises(ConfigError, match="score output .cnn, resnet., got"):
            TrainOptions(model=name, task="ranking").resolve()


def test_the_existing_traits():
    """The defaults the name lists of train.py / eta.py gave before the traits (`add` is
    ADD-RSC: an ADD front end on the AudioSet AST, so Hanning fbanks and `--pretrained`)."""
    ast_backbone = {"ast", "grf", "film", "tafilm", "softfilm"}
    assert {n for n in list_models() if model_traits(n).family == "ast"} >= ast_backbone
    assert {n for n in ast_backbone | {"add", "add-standalone"} if model_traits(n).transformer} \
        == ast_backbone | {"add", "add-standalone"}
    assert {n for n in list_models() if model_traits(n).window == "hanning"} == \
        ast_backbone | {"add"}
    assert {n for n in list_models() if model_traits(n).pretrained} == ast_backbone | {"add"}
    assert {n for n in list_models() if model_traits(n).score_output} == {"cnn", "resnet"}
    assert {n for n in list_models() if model_traits(n).metadata} == \
        {"grf", "film", "tafilm", "softfilm"}
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        model_traits("nope")


class _TinyMLP(nn.Module):
    """Mean-pooled fbank -> linear: the smallest model the contract allows."""

    needs_metadata = False

    def __init__(self, num_classes: int, input_fdim: int, output: str, config: dict):
        super().__init__()
        self.embed_dim = input_fdim
        self.head = nn.Linear(input_fdim, 1 if output == "score" else num_classes)
        self.config = config

    def forward(self, x, meta=None):
        emb = x.mean(dim=1)
        return {"logits": self.head(emb), "embedding": emb}


@pytest.fixture
def mytest_model():
    """A throwaway model registered here only: no other module knows its name."""

    @register_model("mytest", sizes=("tiny", "base"),
                    traits=ModelTraits(family="mlp", window="hamming", score_output=True))
    def mytest(*, num_classes: int = 4, size: str = "base", input_tdim: int = 798,
               input_fdim: int = 128, meta_spec: dict | None = None,
               output: str = "logits") -> nn.Module:
        if size not in ("tiny", "base"):
            raise ConfigError(f"model 'mytest': unknown size {size!r}")
        return _TinyMLP(num_classes, input_fdim, output,
                        {"num_classes": num_classes, "size": size, "input_tdim": input_tdim,
                         "input_fdim": input_fdim, "meta_spec": meta_spec, "output": output})

    yield "mytest"
    unregister_model("mytest")


def test_a_new_model_is_one_decorated_builder(mytest_model, project):
    from rsctool import eta
    from rsctool.checkpoint import load_checkpoint
    from rsctool.train import TrainOptions, run

    assert "mytest" in list_models() and model_sizes("mytest") == ["tiny", "base"]
    assert model_traits("mytest").tasks >= {"multiclass", "ranking"}
    o = TrainOptions(model="mytest", epochs=5).resolve()
    assert (o.window, o.lr, o.warmup_epochs) == ("hamming", 1e-3, 1.0)
    assert TrainOptions(model="mytest", task="ranking").resolve().model_cfg["output"] == "score"
    assert eta.slow_on_cpu_hint("mytest", "base", "cpu") is None
    res = run(project, TrainOptions(model="mytest", size="tiny", epochs=1, clip_seconds=2.0,
                                    batch_size=32))
    rec = project.get("runs", res.run)
    assert rec["status"] == "done" and rec["model"] == "mytest"
    config = load_checkpoint(res.dir / "best.safetensors").state["config"]
    assert config["model"]["name"] == "mytest"
    assert config["clip"]["fbank"]["window"] == "hamming"


def test_unregister_model(mytest_model):
    unregister_model(mytest_model)
    assert mytest_model not in list_models()
    with pytest.raises(ConfigError, match="unknown model 'mytest'"):
        model_traits(mytest_model)
    register_model(mytest_model)(lambda **kw: None)  # the name is free again
    assert model_traits(mytest_model) == ModelTraits(family=mytest_model)


def test_a_new_model_file_needs_no_other_edit(tmp_path):
    """Dropping one file with a decorated builder into rsctool/models/ (of a copy of the
    package) makes the model known by name to the registry and to train's options."""
    import rsctool

    pkg = tmp_path / "rsctool"
    shutil.copytree(Path(rsctool.__file__).parent, pkg,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "models" / "mine.py").write_text(textwrap.dedent("""
        from torch import nn

        from rsctool.models.registry import ModelTraits, register_model


        @register_model("mine", sizes=("tiny",),
                        traits=ModelTraits(family="mlp", window="hamming"))
        def mine(*, num_classes=4, size="tiny", input_tdim=798, input_fdim=128,
                 meta_spec=None):
            return nn.Linear(input_fdim, num_classes)
        """))
    code = ("from rsctool.models import list_models, model_traits, create_model\n"
            "from rsctool.train import TrainOptions\n"
            "assert 'mine' in list_models(), list_models()\n"
            "assert model_traits('mine').family == 'mlp'\n"
            "assert TrainOptions(model='mine').resolve().window == 'hamming'\n"
            "assert isinstance(create_model('mine'), __import__('torch').nn.Linear)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", list_models())
def test_rebuilt_without_random_init_and_loaded_is_the_same_model(name):
    """`load_run` skips the random initialisation it overwrites (`skip_init`): the strict
    load must still give the very same function, and the initialisers come back."""
    from rsctool.runs import rebuild_model

    model = _build(name).eval()
    normal = torch.nn.init.normal_
    again = rebuild_model({"model": json.loads(json.dumps(model.config))}, skip_init=True)
    assert torch.nn.init.normal_ is normal
    again.load_state_dict(model.state_dict(), strict=True)
    again.eval()
    x = torch.randn(2, T, FB, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(again(x, META_A)["logits"], model(x, META_A)["logits"])
