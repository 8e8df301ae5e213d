"""AST and the metadata-conditioned ASTs (grf, film, tafilm, softfilm).

Pretrained loading is tested with tiny randomly initialised transformers checkpoints
written by `save_pretrained`: the guard against a learned position embedding that is
silently never loaded.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import ASTConfig, ASTForAudioClassification, ASTModel

from rsctool.errors import ConfigError
from rsctool.models import create_model
from rsctool.models.ast import patch_grid, resize_pos_embed, set_attention
from rsctool.models.metadata import DEFAULT_META_SPEC, META_KEYS

T, FB = 100, 32          # tiny input: 100 frames x 32 mel bins -> 2 x 9 patches
CONDITIONED = ("grf", "film", "tafilm", "softfilm")
FILM_LIKE = ("film", "tafilm", "softfilm")


def tiny(name: str = "ast", **kw):
    kw = {"input_tdim": T, "input_fdim": FB, **kw}
    torch.manual_seed(0)
    return create_model(name, size="tiny", **kw).eval()


def meta_batch(b: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    spec = DEFAULT_META_SPEC
    mask = (torch.rand(b, 3, generator=g) > 0.3).float()
    return {"device": torch.randint(0, spec["n_devices"], (b,), generator=g),
            "site": torch.randint(0, spec["n_sites"], (b,), generator=g),
            "sex": torch.randint(0, 3, (b,), generator=g),
            "num": torch.randn(b, 3, generator=g) * mask, "num_mask": mask}


def x_batch(b: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, T, FB, generator=torch.Generator().manual_seed(seed))


def save_checkpoint(path, max_length: int = T, cls=ASTModel, hidden: int = 32,
                    seed: int = 0):
    """A tiny random AST saved with save_pretrained; returns the saved model."""
    torch.manual_seed(seed)
    cfg = ASTConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_length=max_length, num_mel_bins=FB, num_labels=5)
    m = cls(cfg).eval()
    backbone = m if cls is ASTModel else m.audio_spectrogram_transformer
    with torch.no_grad():  # HF zero-inits these: make them distinguishable from a fresh model
        for p in (backbone.embeddings.position_embeddings, backbone.embeddings.cls_token,
                  backbone.embeddings.distillation_token):
            p.normal_()
    m.save_pretrained(path)
    return backbone


def perturb(model, std: float = 0.5, seed: int = 0) -> None:
    """Make zero-initialised FiLM generators non-zero so metadata matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith(("backbone.", "head")):
                p.add_(torch.randn(p.shape, generator=g) * std)


# -- plain AST --------------------------------------------------------------------------

def test_ast_forward_shapes_and_config_rebuild():
    m = tiny()
    out = m(x_batch())
    assert out["logits"].shape == (3, 4) and out["embedding"].shape == (3, m.embed_dim)
    assert m.embed_dim == 32 and not m.needs_metadata
    cfg = json.loads(json.dumps(m.config))
    name = cfg.pop("name")
    rebuilt = create_model(name, **cfg).eval()
    rebuilt.load_state_dict(m.state_dict())
    assert torch.equal(rebuilt(x_batch())["logits"], out["logits"])


@pytest.mark.parametrize("name", ("ast", *CONDITIONED))
def test_sdpa_and_eager_attention_compute_the_same_function(name):
    m = tiny(name)
    assert m.config["attention"] == "sdpa"
    x = x_batch()
    meta = meta_batch() if name != "ast" else None
    if name in FILM_LIKE or name == "grf":
        perturb(m)  # conditioning active, not the identity it starts as
    fast = m(x, meta)["logits"]
    slow = set_attention(m, "eager")(x, meta)["logits"]
    assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()
    with pytest.raises(ConfigError):
        set_attention(m, "flash")
    with pytest.raises(ConfigError):
        create_model("ast", size="tiny", pretrained="none", input_tdim=T, input_fdim=FB,
                     attention="flash")


def test_ast_sizes_and_bad_config():
    small = create_model("ast", size="small", input_tdim=T, input_fdim=FB)
    assert small.embed_dim == 384 and len(small.layers) == 12
    assert create_model("ast", size="tiny").config["input_tdim"] == 798
    with pytest.raises(ConfigError, match="unknown size 'huge'"):
        create_model("ast", size="huge")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['film_layers'\]"):
        tiny(film_layers=[0])
    with pytest.raises(ConfigError, match="drop_path"):
        tiny(drop_path=1.5)
    with pytest.raises(ConfigError, match="input_tdim"):
        tiny(input_tdim=8)
    with pytest.raises(ConfigError, match=r"expects features \(B, 100 frames, 32 mel bins\)"):
        tiny()(torch.randn(2, 90, FB))


def test_base_defaults_to_audioset_checkpoint_and_none_disables_it():
    from rsctool.models.ast import DEFAULT_PRETRAINED, resolve_config

    kw = {"num_classes": 4, "input_tdim": 798, "input_fdim": 128}
    assert resolve_config("ast", size="base", cfg={}, **kw)["pretrained"] == \
        DEFAULT_PRETRAINED["base"] == "MIT/ast-finetuned-audioset-10-10-0.4593"
    assert resolve_config("ast", size="base", cfg={"pretrained": "none"}, **kw)["pretrained"] \
        is None
    assert resolve_config("ast", size="tiny", cfg={}, **kw)["pretrained"] is None


def test_drop_path_is_stochastic_in_training_only():
    m = tiny(drop_path=0.5)      # rates 0 and 0.5 for the two blocks
    x = x_batch(8)
    assert torch.equal(m(x)["logits"], m(x)["logits"])
    m.train()
    torch.manual_seed(0)
    runs = [m(x)["logits"] for _ in range(4)]
    assert not all(torch.equal(runs[0], r) for r in runs[1:])


# -- pretrained weights -------------------------------------------------------------------

def test_pretrained_same_grid_loads_every_backbone_tensor_bit_identically(tmp_path):
    src = save_checkpoint(tmp_path)
    m = tiny(pretrained=str(tmp_path))
    want = src.state_dict()
    got = m.backbone.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert torch.equal(m.backbone.embeddings.position_embeddings,
                       src.embeddings.position_embeddings)
    # Same computation as transformers' own forward with the saved weights.
    x = x_batch()
    assert torch.allclose(m.encode(x), src(x).last_hidden_state, atol=1e-5)
    r = m.load_report
    assert r["loaded"] == sorted(f"backbone.{k}" for k in want)
    assert r["missing"] == ["head.bias", "head.weight", "head_norm.bias", "head_norm.weight"]
    assert r["pos_embed"] == {"from": [2, 9], "to": [2, 9], "mode": "copy"}


def test_pretrained_other_grid_interpolates_position_embeddings(tmp_path):
    src = save_checkpoint(tmp_path, max_length=140)          # 2 x 13 patches
    m = tiny(pretrained=str(tmp_path))                      # 2 x 9 patches
    assert patch_grid(src.config) == (2, 13)
    pos_src = src.embeddings.position_embeddings.detach()
    pos = m.backbone.embeddings.position_embeddings.detach()
    assert pos.shape == (1, 2 + 18, 32)
    assert torch.equal(pos[:, :2], pos_src[:, :2])          # CLS + distillation kept
    grid = pos_src[0, 2:].reshape(2, 13, 32).permute(2, 0, 1)[None]
    expect = F.interpolate(grid, size=(2, 9), mode="bilinear", align_corners=False)
    assert torch.allclose(pos[0, 2:], expect[0].permute(1, 2, 0).reshape(18, 32), atol=1e-6)
    for k, v in src.state_dict().items():                   # everything else bit-identical
        if k != "embeddings.position_embeddings":
            assert torch.equal(m.backbone.state_dict()[k], v), k
    assert m.load_report["pos_embed"] == {"from": [2, 13], "to": [2, 9], "mode": "interpolate"}


def test_resize_pos_embed_keeps_axes_apart():
    # Embedding depends on the frequency row only: resizing time must keep it constant
    # along time and per row (a swapped f/t layout would mix the rows).
    f, t, d = 3, 10, 4
    rows = torch.arange(f, dtype=torch.float32)[:, None, None].expand(f, t, d)
    pos = torch.cat([torch.full((2, d), -1.0), rows.reshape(f * t, d)])[None]
    out = resize_pos_embed(pos, (f, t), (f, 6))
    assert torch.equal(out[0, :2], pos[0, :2])
    assert torch.allclose(out[0, 2:].reshape(f, 6, d), rows[:, :6])
    crop = resize_pos_embed(pos + torch.arange(2 + f * t)[None, :, None], (f, t), (f, 4), "crop")
    grid = (pos + torch.arange(2 + f * t)[None, :, None])[0, 2:].reshape(f, t, d)
    assert torch.equal(crop[0, 2:].reshape(f, 4, d), grid[:, 3:7])     # centre crop in time


def test_pretrained_classification_checkpoint_reports_unused_head(tmp_path):
    src = save_checkpoint(tmp_path, cls=ASTForAudioClassification)
    m = tiny(pretrained=str(tmp_path))
    assert torch.equal(m.backbone.embeddings.position_embeddings,
                       src.embeddings.position_embeddings)
    assert "classifier.dense.weight" in m.load_report["unused"]


def test_transformers4_key_layout_loads_completely(tmp_path):
    # The hub AudioSet AST was saved by transformers 4.x (encoder.layer.N.attention.
    # attention.query, intermediate.dense, ...); it must load with nothing left random.
    import re

    from safetensors.torch import load_file, save_file

    src = save_checkpoint(tmp_path, cls=ASTForAudioClassification, max_length=140)
    renames = [(r"attention\.q_proj\.", "attention.attention.query."),
               (r"attention\.k_proj\.", "attention.attention.key."),
               (r"attention\.v_proj\.", "attention.attention.value."),
               (r"attention\.o_proj\.", "attention.output.dense."),
               (r"mlp\.fc1\.", "intermediate.dense."), (r"mlp\.fc2\.", "output.dense."),
               (r"\.layers\.(\d+)\.", r".encoder.layer.\1.")]
    weights = tmp_path / "model.safetensors"
    state = {}
    for key, value in load_file(weights).items():
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        state[key] = value
    assert "audio_spectrogram_transformer.encoder.layer.1.attention.attention.query.weight" in state
    save_file(state, weights, metadata={"format": "pt"})
    m = tiny(pretrained=str(tmp_path))
    for k, v in src.state_dict().items():
        if k != "embeddings.position_embeddings":
            assert torch.equal(m.backbone.state_dict()[k], v), k
    assert torch.equal(m.backbone.embeddings.position_embeddings[:, :2],
                       src.embeddings.position_embeddings[:, :2])


def test_checkpoint_without_position_embeddings_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    save_checkpoint(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(weights)
    del state["embeddings.position_embeddings"]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="lacks 1 backbone weight.*position_embeddings"):
        tiny(pretrained=str(tmp_path))


def test_pretrained_errors(tmp_path):
    save_checkpoint(tmp_path / "wide", hidden=48)
    with pytest.raises(ConfigError, match="hidden_size=48, size 'tiny' needs 32"):
        tiny(pretrained=str(tmp_path / "wide"))
    with pytest.raises(ConfigError, match="directory .* not found"):
        tiny(pretrained=str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="rsctool-tests/no-such-ast.*HF_HUB_OFFLINE"):
        tiny(pretrained="rsctool-tests/no-such-ast")
    save_checkpoint(tmp_path / "torn")
    (tmp_path / "torn" / "model.safetensors").write_bytes(b"\x10\x00garbage")
    with pytest.raises(ConfigError, match="cannot load pretrained AST .*torn"):
        tiny(pretrained=str(tmp_path / "torn"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="cannot load pretrained AST .*empty"):
        tiny(pretrained=str(tmp_path / "empty"))


# -- conditioned models -------------------------------------------------------------------

@pytest.mark.parametrize("name", CONDITIONED)
def test_ast_state_dict_loads_into_conditioned_backbone(name):
    plain = tiny()
    cond = tiny(name)
    result = cond.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys
    assert not [k for k in result.missing_keys if k.startswith(("backbone.", "head"))]
    assert cond.needs_metadata and cond.config["meta_spec"] == DEFAULT_META_SPEC


@pytest.mark.parametrize("name", FILM_LIKE)
def test_film_family_equals_plain_ast_at_init(name):
    plain = tiny()
    cond = tiny(name)
    cond.load_state_dict(plain.state_dict(), strict=False)
    x = x_batch()
    ref = plain(x)["logits"]
    assert torch.allclose(cond(x, meta_batch())["logits"], ref, atol=1e-6)
    perturb(cond)
    assert not torch.allclose(cond(x, meta_batch())["logits"], ref, atol=1e-3)


def test_film_modulates_the_mlp_input_of_each_block():
    # gamma = 1 + g, beta = v on every block equals rescaling layernorm_after's affine
    # parameters: w' = (1 + g) w, b' = (1 + g) b + v. Pins where the hook acts.
    plain, film = tiny(), tiny("film")
    film.load_state_dict(plain.state_dict(), strict=False)
    g, v = torch.linspace(-0.5, 0.5, 32), torch.linspace(1.0, -1.0, 32)
    with torch.no_grad():
        film.generator.net[-1].bias.copy_(torch.stack([g, v]).repeat(2, 1).reshape(-1))
        for layer in plain.layers:
            ln = layer.layernorm_after
            ln.bias.copy_((1 + g) * ln.bias + v)
            ln.weight.mul_(1 + g)
    x = x_batch()
    assert torch.allclose(film(x, meta_batch())["logits"], plain(x)["logits"], atol=1e-5)


def test_tafilm_treats_special_and_patch_tokens_separately():
    film, ta = tiny("film"), tiny("tafilm")
    ta.load_state_dict(film.state_dict(), strict=False)
    bias = torch.randn(2 * 2 * 32) * 0.3
    with torch.no_grad():
        film.generator.net[-1].bias.copy_(bias)
        ta.generator_patch.net[-1].bias.copy_(bias)
    x, meta = x_batch(), meta_batch()
    assert not torch.allclose(ta(x, meta)["logits"], film(x, meta)["logits"], atol=1e-4)
    with torch.no_grad():
        ta.generator_cls.net[-1].bias.copy_(bias)
    assert torch.allclose(ta(x, meta)["logits"], film(x, meta)["logits"], atol=1e-5)


def test_film_layers_select_hooked_blocks():
    m = tiny("film", film_layers=[-1])
    assert m.film_layers == [1] and m.config["film_layers"] == [1]
    assert [len(layer.layernorm_after._forward_hooks) for layer in m.layers] == [0, 1]
    assert len(tiny("film").layers[0].layernorm_after._forward_hooks) == 1   # None: all
    for bad in ([2], [0, 0], [], "all"):
        with pytest.raises(ConfigError, match="film_layers"):
            tiny("film", film_layers=bad)


def test_grf_gate_starts_almost_closed():
    plain, grf = tiny(), tiny("grf")
    grf.load_state_dict(plain.state_dict(), strict=False)
    assert torch.sigmoid(grf.gate.bias).max().item() == pytest.approx(1 / (1 + math.exp(4)))
    x, meta = x_batch(), meta_batch()
    diff = (grf(x, meta)["embedding"] - plain(x)["embedding"]).abs().max().item()
    assert 0 < diff < 0.1
    layered = tiny("grf", grf_layer=0)
    assert len(layered.layers[0]._forward_hooks) == 1
    with pytest.raises(ConfigError, match="grf_layer"):
        tiny("grf", grf_layer=5)


def test_softfilm_tau_schedule_masks_and_regulariser():
    m = tiny("softfilm", overlap_weight=0.5, coverage_weight=0.25)
    for p, tau in ((0.0, 1.0), (0.5, 0.6), (1.0, 0.2), (2.0, 0.2)):
        m.set_progress(p)
        assert float(m.tau) == pytest.approx(tau)
    assert "tau" in m.state_dict()        # resumed/evaluated checkpoints keep their tau
    # Hard, disjoint masks covering 30 of 32 dims: no overlap; 2 dims uncovered.
    logits = torch.full((3, 32), -50.0)
    logits[0, :10], logits[1, 10:20], logits[2, 20:30] = 50.0, 50.0, 50.0
    with torch.no_grad():
        m.mask_logits.copy_(logits)
    out = m(x_batch(), meta_batch())
    assert out["reg_loss"].item() == pytest.approx(0.25 * 2 / 32, abs=1e-6)
    stats = m.mask_stats()
    json.dumps(stats)
    assert stats["allocated"] == {"device": 10, "site": 10, "demographics": 10}
    assert stats["uncovered"] == 2 and set(stats["overlap"].values()) == {0.0}
    # Fully overlapping masks: overlap term is 1 per pair.
    with torch.no_grad():
        m.mask_logits.fill_(50.0)
    assert m(x_batch(), meta_batch())["reg_loss"].item() == pytest.approx(0.5, abs=1e-6)
    assert m.mask_stats()["overlap"]["device-site"] == 1.0


def test_softfilm_factor_only_moves_its_masked_dims():
    # Only the device factor is unmasked (dims 0..7) and non-zero: changing the site
    # must not change anything, changing the device must.
    m = tiny("softfilm")
    logits = torch.full((3, 32), -50.0)
    logits[0, :8] = 50.0
    with torch.no_grad():
        m.mask_logits.copy_(logits)
        m.factor_generator["device"].net[-1].weight.normal_()
        m.factor_generator["site"].net[-1].weight.normal_()
    x, meta = x_batch(), meta_batch()
    other_site = {**meta, "site": (meta["site"] + 1) % 8}
    other_device = {**meta, "device": (meta["device"] + 1) % 5}
    ref = m(x, meta)["logits"]
    assert torch.allclose(m(x, other_site)["logits"], ref, atol=1e-6)
    assert not torch.allclose(m(x, other_device)["logits"], ref, atol=1e-4)


def test_conditioned_models_need_a_complete_metadata_batch():
    m = tiny("film")
    with pytest.raises(ConfigError, match="conditions on metadata"):
        m(x_batch())
    meta = meta_batch()
    del meta["num_mask"]
    with pytest.raises(ConfigError, match=r"lacks \['num_mask'\]"):
        m(x_batch(), meta)
    with pytest.raises(ConfigError, match="n_devices"):
        tiny("film", meta_spec={"n_devices": 0, "n_sites": 2, "n_num": 3})


def test_deepcopy_keeps_hooks_on_the_copy():
    m = tiny("tafilm")
    perturb(m)
    x, meta = x_batch(), meta_batch()
    before = m(x, meta)["logits"]
    clone = copy.deepcopy(m)
    with torch.no_grad():
        for p in m.generator_patch.parameters():
            p.zero_()
    assert not torch.allclose(m(x, meta)["logits"], before, atol=1e-4)
    assert torch.allclose(clone(x, meta)["logits"], before, atol=1e-6)


def test_pretrained_ast_loads_into_film(tmp_path):
    src = save_checkpoint(tmp_path)
    m = tiny("film", pretrained=str(tmp_path))
    assert torch.equal(m.backbone.embeddings.position_embeddings,
                       src.embeddings.position_embeddings)
    assert any(k.startswith("generator.") for k in m.load_report["missing"])
    x = x_batch()
    assert torch.allclose(m.encode(x), src(x).last_hidden_state, atol=1e-5)


class _Flat(torch.nn.Module):
    """The metadata dict as separate graph inputs, logits as the one output.

    Build it in eval mode: export restores the wrapper's mode, train by default, onto `model`.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, device, site, sex, num, num_mask):
        meta = {"device": device, "site": site, "sex": sex, "num": num, "num_mask": num_mask}
        return self.model(x, meta)["logits"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # the TorchScript exporter, on purpose
def test_film_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = tiny("film")
    perturb(m)      # metadata must matter, or a constant-folded metadata path would pass
    x, meta = x_batch(2), meta_batch(2)
    path = tmp_path / "film.onnx"
    names = ["x", *META_KEYS]
    torch.onnx.export(_Flat(m).eval(), (x, *[meta[k] for k in META_KEYS]), str(path), dynamo=False,
                      opset_version=17, input_names=names, output_names=["logits"],
                      dynamic_axes={n: {0: "batch"} for n in [*names, "logits"]})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == names
    for b, seed in ((2, 5), (4, 6)):          # other values and batch size than traced
        x, meta = x_batch(b, seed), meta_batch(b, seed)
        feed = {"x": x.numpy(), **{k: meta[k].numpy() for k in META_KEYS}}
        got = sess.run(None, feed)[0]
        with torch.no_grad():
            want = m(x, meta)["logits"].numpy()
        assert np.abs(got - want).max() < 1e-4
