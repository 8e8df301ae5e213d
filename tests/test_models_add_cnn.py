"""ADD (ADD-RSC and stand-alone), CNN and ResNet: build, shapes, gradients, blocks, ONNX."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rsctool.models.add  # noqa: F401  (registers "add-standalone")
import rsctool.models.add_rsc  # noqa: F401  (registers "add")
import rsctool.models.cnn  # noqa: F401  (registers "cnn", "resnet")
from rsctool.errors import ConfigError, DataError
from rsctool.models.add import (
    AdaptiveFrequencyFilter,
    DifferentialAttention,
    differential_attention,
    lambda_init_fn,
    real_dft_matrices,
    soft_shrink,
)
from rsctool.models.registry import create_model, list_models, model_sizes

MODELS = ("add", "add-standalone", "cnn", "resnet")
T, FD = 64, 32  # small inputs keep the tests fast; one test uses the full 798 x 128


def _model(name: str, **cfg):
    torch.manual_seed(0)
    return create_model(name, size="tiny", input_tdim=T, input_fdim=FD, **cfg)


def test_registered_with_sizes():
    assert set(MODELS) <= set(list_models())
    for name in MODELS:
        assert model_sizes(name) == ["tiny", "small", "base"]


@pytest.mark.parametrize("name", MODELS)
def test_tiny_builds_forward_backward(name):
    model = _model(name, num_classes=3)
    x = torch.randn(2, T, FD)
    out = model(x)
    assert out["logits"].shape == (2, 3)
    assert out["embedding"].shape == (2, model.embed_dim)
    assert model.needs_metadata is False
    loss = out["logits"].sum() + out.get("aux_logits", torch.zeros(())).sum()
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in params)
    assert sum(float(p.grad.abs().sum()) for p in params) > 0
    # meta is accepted and ignored
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x)["logits"], model(x, meta={"device": torch.zeros(2)})
                              ["logits"])


@pytest.mark.parametrize("name", MODELS)
def test_config_is_json_and_rebuilds_the_same_network(name):
    model = _model(name, dropout=0.1).eval()
    cfg = json.loads(json.dumps(model.config))
    assert cfg["name"] == name and cfg["size"] == "tiny" and cfg["dropout"] == 0.1
    rest = {k: v for k, v in cfg.items() if k != "name"}
    clone = create_model(name, **rest).eval()
    clone.load_state_dict(model.state_dict())  # same parameter names and shapes
    x = torch.randn(3, T, FD)
    with torch.no_grad():
        assert torch.allclose(model(x)["logits"], clone(x)["logits"], atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_bad_size_and_key_are_config_errors(name):
    with pytest.raises(ConfigError, match="unknown size 'huge'"):
        create_model(name, size="huge")
    with pytest.raises(ConfigError, match="unknown config key"):
        create_model(name, size="tiny", bogus=1)
    with pytest.raises(ConfigError, match="dropout"):
        create_model(name, size="tiny", dropout=1.5)


@pytest.mark.parametrize("name", ("cnn", "resnet"))
def test_score_output_for_ranking(name):
    model = _model(name, output="score")
    out = model(torch.randn(4, T, FD))
    assert out["logits"].shape == (4, 1)
    with pytest.raises(ConfigError, match="output"):
        create_model(name, size="tiny", output="probs")


def test_cnn_accepts_other_lengths_but_rejects_too_small_inputs():
    model = _model("cnn")
    assert model(torch.randn(1, 200, FD))["logits"].shape == (1, 4)
    with pytest.raises(DataError, match="smaller than the minimum"):
        model(torch.randn(1, 3, FD))
    with pytest.raises(ConfigError, match="at least"):
        create_model("resnet", size="base", input_tdim=16, input_fdim=16)


def test_add_rejects_wrong_input_shape_and_bad_head_split():
    model = _model("add-standalone")
    with pytest.raises(DataError, match=r"expected features \(B, 64, 32\)"):
        model(torch.randn(1, 70, FD))
    with pytest.raises(ConfigError, match="2 \\* num_heads"):
        create_model("add-standalone", size="tiny", embed_dim=30, num_heads=2, aff_blocks=1)
    with pytest.raises(ConfigError, match="smaller than one"):
        create_model("add-standalone", size="tiny", input_tdim=8)


def test_add_full_size_token_grid():
    model = create_model("add-standalone", size="tiny")  # defaults: 798 frames x 128 bins
    assert (model.f_dim, model.t_dim, model.num_patches) == (12, 79, 948)
    assert model.pos_embed.shape == (1, 949, 32)
    with torch.no_grad():
        out = model(torch.randn(1, 798, 128))
    assert out["logits"].shape == out["aux_logits"].shape == (1, 4)


# ---------------------------------------------------------------- ADD building blocks

def test_soft_shrink():
    x = torch.tensor([-2.0, -0.5, -0.1, 0.0, 0.1, 0.5, 2.0])
    assert soft_shrink(x, 0.5).tolist() == [-1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 1.5]
    y = torch.randn(100)
    assert torch.equal(soft_shrink(y, 0.3), F.softshrink(y, 0.3))


@pytest.mark.parametrize("n", [7, 8, 79])
def test_real_dft_matches_torch_fft(n):
    x = torch.randn(2, 3, n, 5, dtype=torch.float64)
    fc, fs, ic, is_ = real_dft_matrices(n, torch.float64)
    spec = torch.fft.rfft(x, dim=-2, norm="ortho")
    assert torch.allclose(fc @ x, spec.real, atol=1e-10)
    assert torch.allclose(fs @ x, spec.imag, atol=1e-10)
    z = torch.randn(2, 3, n // 2 + 1, 5, dtype=torch.float64)
    w = torch.randn(2, 3, n // 2 + 1, 5, dtype=torch.float64)
    ref = torch.fft.irfft(torch.complex(z, w), n=n, dim=-2, norm="ortho")
    assert torch.allclose(ic @ z + is_ @ w, ref, atol=1e-10)
    assert torch.allclose(ic @ (fc @ x) + is_ @ (fs @ x), x, atol=1e-10)  # round trip


def test_aff_equals_complex_fft_reference_and_learns():
    torch.manual_seed(0)
    aff = AdaptiveFrequencyFilter(dim=8, n_time=10, num_blocks=2, sparsity=0.005)
    x = torch.randn(2, 3, 10, 8)
    out = aff(x)
    # Reference with torch.fft and complex arithmetic.
    spec = torch.fft.rfft(x, dim=2, norm="ortho")
    mr, mi = aff.mask(spec.real, spec.imag)
    ref = torch.fft.irfft(spec * torch.complex(mr, mi), n=10, dim=2, norm="ortho")
    assert torch.allclose(out, ref, atol=1e-5)
    assert 0 < float((mr == 0).float().mean()) < 1  # soft-shrink makes the mask sparse
    out.pow(2).sum().backward()
    assert aff.w1.grad.abs().sum() > 0 and aff.w2.grad.abs().sum() > 0
    # A threshold above every mask value zeroes the whole filter.
    aff.sparsity = 1e6
    assert torch.count_nonzero(aff(x)) == 0


def test_lambda_init_formula():
    assert lambda_init_fn(1) == pytest.approx(0.2)
    assert lambda_init_fn(2) == pytest.approx(0.8 - 0.6 * math.exp(-0.3))
    assert lambda_init_fn(12) == pytest.approx(0.8 - 0.6 * math.exp(-3.3))
    model = _model("add-standalone")
    assert [b.attn.lambda_init for b in model.blocks] == \
        pytest.approx([0.2, 0.8 - 0.6 * math.exp(-0.3)])
    with pytest.raises(ValueError):
        lambda_init_fn(0)


def test_differential_attention_with_lambda_zero_is_standard_attention():
    torch.manual_seed(0)
    q1, k1, q2, k2 = (torch.randn(2, 3, 7, 4) for _ in range(4))
    v = torch.randn(2, 3, 7, 8)
    std = F.scaled_dot_product_attention(q1, k1, v)
    assert torch.allclose(differential_attention(q1, k1, q2, k2, v, 0.0), std, atol=1e-6)
    # lambda = 1 with identical maps cancels everything.
    assert torch.allclose(differential_attention(q1, k1, q1, k1, v, 1.0),
                          torch.zeros_like(std), atol=1e-6)
    lam = 0.3
    a2 = torch.softmax(q2 @ k2.transpose(-2, -1) / 2.0, dim=-1)
    assert torch.allclose(differential_attention(q1, k1, q2, k2, v, lam),
                          std - lam * a2 @ v, atol=1e-6)


def test_differential_attention_module_reduces_to_standard_attention():
    torch.manual_seed(0)
    dim, heads = 16, 2
    attn = DifferentialAttention(dim, heads, layer=3).eval()
    d = attn.head_dim
    # lambda = exp(0) - exp(lq2 . lk2) + lambda_init = 0 when lq2 . lk2 = log(1 + lambda_init)
    with torch.no_grad():
        attn.lambda_q1.zero_()
        attn.lambda_k1.zero_()
        c = math.sqrt(math.log(1.0 + attn.lambda_init))
        attn.lambda_q2.copy_(F.one_hot(torch.tensor(0), d) * c)
        attn.lambda_k2.copy_(F.one_hot(torch.tensor(0), d) * c)
    assert attn.lambda_full().item() == pytest.approx(0.0, abs=1e-6)
    x = torch.randn(2, 5, dim)
    b, n = 2, 5
    q = attn.q_proj(x).reshape(b, n, heads, 2, d)[:, :, :, 0].transpose(1, 2)
    k = attn.k_proj(x).reshape(b, n, heads, 2, d)[:, :, :, 0].transpose(1, 2)
    v = attn.v_proj(x).reshape(b, n, heads, 2 * d).transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k, v)  # standard attention of the first maps
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * (1 - attn.lambda_init)
    expected = attn.out_proj(o.transpose(1, 2).reshape(b, n, dim))
    with torch.no_grad():
        assert torch.allclose(attn(x), expected, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_models_learn_a_separable_toy_task(name):
    # Class 1 has a loud band in the upper mel bins; ten Adam steps must separate it.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, T, FD, generator=g) * 0.5
    y = torch.tensor([0, 1] * 4)
    x[y == 1, :, 20:28] += 2.0
    model = _model(name, num_classes=2, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = F.cross_entropy(model(x)["logits"], y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


# ------------------------------------------------------------------------------ ONNX

class _Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["logits"]


@pytest.mark.parametrize("name", MODELS)
def test_onnx_export_parity(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _model(name).eval()
    wrapper = _Logits(model).eval()
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
        torch.onnx.export(wrapper, (torch.randn(2, T, FD),), str(path), dynamo=False,
                          opset_version=17, input_names=["features"], output_names=["logits"],
                          dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, T, FD)  # another batch size than at export
    with torch.no_grad():
        ref = wrapper(x).numpy()
    got = sess.run(None, {"features": x.numpy()})[0]
    assert got.shape == ref.shape
    assert float(np.abs(got - ref).max()) < 1e-4
