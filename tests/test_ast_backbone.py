"""The plain-PyTorch AST backbone: the same function and state dict as transformers'
`ASTModel`, no transformers import to build it, and the fused bf16 inference path."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from test_models_ast import meta_batch

from rsctool import devices
from rsctool.models import ast_backbone, create_model
from rsctool.models.ast_backbone import Layer, pack_for_inference, rename_legacy, unpack
from rsctool.models.registry import models_with

T, FB = 100, 32  # 2 x 9 patches + 2 tokens = 20 tokens per clip
#: every model built on the AST backbone (the stand-alone ADD network has its own blocks)
TRANSFORMERS = [n for n in models_with(lambda t: t.transformer) if n != "add-standalone"]


def tiny(name: str):
    torch.manual_seed(0)
    m = create_model(name, size="tiny", input_tdim=T, input_fdim=FB).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero-initialised conditioning and tokens: make them matter
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return m


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_backbone_is_transformers_ast_with_the_same_weights(attention):
    from transformers import ASTConfig, ASTModel

    torch.manual_seed(0)
    cfg = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_length=T, num_mel_bins=FB)
    cfg._attn_implementation = attention
    src = ASTModel(cfg).eval()
    with torch.no_grad():
        for p in src.parameters():
            p.normal_(0, 0.3)
    m = create_model("ast", size="tiny", input_tdim=T, input_fdim=FB,
                     attention=attention).eval()
    assert set(m.backbone.state_dict()) == set(src.state_dict())
    m.backbone.load_state_dict(src.state_dict(), strict=True)
    x = torch.randn(3, T, FB)
    with torch.no_grad():
        want = src(x).last_hidden_state
        assert torch.allclose(m.encode(x), want, atol=1e-5)
        # a state dict in transformers 4.x names loads into the same weights
        legacy = {_to_legacy(k): v for k, v in src.state_dict().items()}
        assert any(k.startswith("encoder.layer.0.attention.attention.query") for k in legacy)
        fresh = create_model("ast", size="tiny", input_tdim=T, input_fdim=FB,
                             attention=attention).eval()
        fresh.backbone.load_state_dict(legacy, strict=True)
        assert torch.equal(fresh.encode(x), m.encode(x))


def _to_legacy(key: str) -> str:
    """transformers 5 AST key -> its 4.x name (inverse of `rename_legacy`)."""
    k = key.replace("layers.", "encoder.layer.")
    for new, old in (("attention.q_proj.", "attention.attention.query."),
                     ("attention.k_proj.", "attention.attention.key."),
                     ("attention.v_proj.", "attention.attention.value."),
                     ("attention.o_proj.", "attention.output.dense."),
                     ("mlp.fc1.", "intermediate.dense."), ("mlp.fc2.", "output.dense.")):
        k = k.replace(new, old)
    assert rename_legacy(k) == key
    return k


def test_building_an_ast_model_does_not_import_transformers():
    code = ("import sys; from rsctool.models import create_model; "
            "m = create_model('tafilm', size='tiny', input_tdim=100, input_fdim=32); "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False", out.stderr


def _run(m, x, meta, precision):
    with torch.no_grad(), devices.inference_precision(precision, "cpu"):
        return m(x, meta)["logits"].float()


@pytest.mark.parametrize("name", TRANSFORMERS)
@pytest.mark.parametrize("batch", [3, 60])  # 60 clips = 1,200 rows: both weight layouts
def test_fused_bf16_path_computes_the_model_in_bf16(name, batch, monkeypatch):
    m = tiny(name)
    x = torch.randn(batch, T, FB, generator=torch.Generator().manual_seed(2))
    meta = meta_batch(batch) if m.needs_metadata else None
    fp32 = _run(m, x, meta, "fp32")
    plain_bf16 = _run(m, x, meta, "bf16")
    calls = []
    real = ast_backbone._Packed.forward
    monkeypatch.setattr(ast_backbone._Packed, "forward",
                        lambda self, layer, h, queries=None: calls.append(1)
                        or real(self, layer, h, queries))
    with torch.no_grad(), devices.inference_precision("bf16", "cpu", m):
        assert all(layer.packed is not None for layer in m.modules() if isinstance(layer, Layer))
        fused = m(x, meta)["logits"].float()
        if m.needs_metadata:  # conditioning hooks still act inside the fused blocks
            other = m(x, meta_batch(batch, seed=5))["logits"].float()
            assert (other - fused).abs().max() > 1e-2
    n_layers = sum(isinstance(layer, Layer) for layer in m.modules())
    assert len(calls) == n_layers * (2 if m.needs_metadata else 1)
    # bf16 rounding only: as close to fp32 as autocast's own bf16 is
    p32, pf, pb = (torch.softmax(v, -1) for v in (fp32, fused, plain_bf16))
    assert (pf - p32).abs().max() <= max(3 * (pb - p32).abs().max().item(), 2e-2)
    top2 = p32.topk(2, -1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.05  # labels agree where fp32 is not a near-tie
    assert torch.equal(pf.argmax(-1)[clear], p32.argmax(-1)[clear])
    # unpacked afterwards: fp32 again bit for bit, and no weight copies kept
    assert all(layer.packed is None for layer in m.modules() if isinstance(layer, Layer))
    assert torch.equal(_run(m, x, meta, "fp32"), fp32)


def test_fused_path_without_onednn_and_only_in_bf16_inference(monkeypatch):
    monkeypatch.setattr(ast_backbone, "_mkldnn_ok", lambda dtype: False)
    m = tiny("ast")
    x = torch.randn(4, T, FB)
    want = _run(m, x, None, "bf16")
    layers = pack_for_inference(m)
    assert len(layers) == 2 and not layers[0].packed.mkldnn
    assert pack_for_inference(m) == []  # packed once
    fused = _run(m, x, None, "bf16")
    assert (torch.softmax(fused, -1) - torch.softmax(want, -1)).abs().max() < 2e-2
    calls = []
    monkeypatch.setattr(ast_backbone._Packed, "forward",
                        lambda self, layer, h, queries=None: calls.append(1))
    # fp32, gradient-enabled and training calls run the module's own weights
    _run(m, x, None, "fp32")
    with devices.inference_precision("bf16", "cpu"):
        assert m(x)["logits"].requires_grad
    m.train()
    with torch.no_grad(), devices.inference_precision("bf16", "cpu"):
        m(x)
    assert calls == []
    unpack(layers)
    assert all(layer.packed is None for layer in layers)


def test_batches_of_a_fused_model_run_two_clips_per_call():
    from rsctool.inference import call_size, forward_in_calls

    m = tiny("tafilm")
    x, meta = torch.randn(5, T, FB), meta_batch(5)
    assert call_size(m, "cpu") is None
    layers = pack_for_inference(m)
    assert call_size(m, "cpu") == ast_backbone.FUSED_CPU_BATCH == 2
    assert call_size(m, "cuda") is None
    seen = []
    m.register_forward_pre_hook(lambda mod, args: seen.append(len(args[0])))
    with torch.no_grad(), devices.inference_precision("bf16", "cpu"):
        out = forward_in_calls(m, x, meta, 2)
        whole = m(x, meta)
    assert seen == [2, 2, 1, 5]
    assert {"logits", "embedding"} <= set(out) and out["logits"].shape == (5, 4)
    assert all(v.shape[0] == 5 for v in out.values())  # no per-call scalars
    # clips are independent in eval mode: the same numbers as one call of five
    assert torch.allclose(out["logits"].float(), whole["logits"].float(), atol=0.05)
    unpack(layers)


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_last_block_on_the_pooled_tokens_only_is_the_same_function(name):
    """`encode(x, first=2)` (what `forward` runs) gives the first two tokens of the whole
    sequence, with the conditioning hooks acting, and the same gradients."""
    m = tiny(name)
    x = torch.randn(3, T, FB, generator=torch.Generator().manual_seed(2))
    meta = meta_batch(3) if m.needs_metadata else None

    def enc(first=None):
        if m.needs_metadata:  # the state the hooks read, as `forward` sets it
            m._state = m.condition(meta)
        try:
            return m.encode(m.front(x)[0] if hasattr(m, "front") else x, first)
        finally:
            m._state = None

    whole, part = enc(), enc(first=2)
    assert part.shape == (3, 2, whole.shape[-1]) and whole.shape[1] == 20
    assert torch.allclose(part, whole[:, :2], atol=1e-5), (part - whole[:, :2]).abs().max()
    grads = []
    for first in (None, 2):
        m.zero_grad()
        enc(first)[:, :2].pow(2).sum().backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters()
                      if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-5, rtol=1e-4), k
    # the fused bf16 blocks take the same path
    with torch.no_grad(), devices.inference_precision("bf16", "cpu", m):
        fused_whole, fused_part = enc().float(), enc(first=2).float()
    assert torch.allclose(fused_part, fused_whole[:, :2], atol=5e-2)
