"""Every registered model honours the model contract (rsctool/models/registry.py)."""

from __future__ import annotations

import json

import pytest
import torch

from rsctool.data.manifest import Cycle
from rsctool.errors import ConfigError
from rsctool.models import MetadataEncoder, create_model, list_models, model_sizes
from rsctool.models.registry import register_model

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
