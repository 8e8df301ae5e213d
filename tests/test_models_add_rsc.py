"""ADD-RSC (`--model add`, seed 003): ADD front end + pretrained AST + auxiliary head + loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import rsctool.models  # noqa: F401  (registers every model)
from rsctool.cli import app
from rsctool.errors import ConfigError
from rsctool.losses import build_loss
from rsctool.models.add_rsc import (
    ADD_FRONT_DEFAULTS,
    ADD_FRONT_SIZES,
    ADDFrontEnd,
    ADDRSCClassifier,
    mel_resample_matrix,
)
from rsctool.models.ast import SIZES
from rsctool.models.registry import create_model, model_sizes

runner = CliRunner()
T, FD = 64, 32
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _tiny(**cfg):
    torch.manual_seed(0)
    return create_model("add", size="tiny", num_classes=4, input_tdim=T, input_fdim=FD, **cfg)


def _saved_tiny_ast(path: Path) -> dict[str, torch.Tensor]:
    """Save a random tiny transformers `ASTModel` with `save_pretrained`; its state dict."""
    from transformers import ASTConfig, ASTModel

    torch.manual_seed(123)
    cfg = ASTConfig(**SIZES["tiny"], patch_size=16, frequency_stride=10, time_stride=10,
                    max_length=T, num_mel_bins=FD)
    src = ASTModel(cfg)
    with torch.no_grad():  # HF zero-initialises these: make every tensor distinctive
        for p in src.parameters():
            p.add_(0.05 * torch.randn_like(p))
    src.save_pretrained(path)
    return {k: v.clone() for k, v in src.state_dict().items()}


def test_add_is_the_ast_based_add_rsc_and_the_standalone_keeps_its_name():
    model = _tiny()
    assert isinstance(model, ADDRSCClassifier)
    assert type(model.backbone).__name__ == "ASTBackbone"
    assert model_sizes("add") == ["tiny", "small", "base"]
    assert create_model("add-standalone", size="tiny", input_tdim=T,
                        input_fdim=FD).config["name"] == "add-standalone"


def test_pretrained_dir_loads_the_ast_backbone(tmp_path):
    src = _saved_tiny_ast(tmp_path / "ast")
    model = _tiny(pretrained=str(tmp_path / "ast"))
    state = model.backbone.state_dict()
    for key in ("embeddings.patch_embeddings.projection.weight",
                "embeddings.position_embeddings"):
        assert torch.equal(state[key], src[key]), key
    assert set(state) == set(src)  # every backbone tensor, the blocks' included
    assert all(torch.equal(state[k], src[k]) for k in src)
    # the front end and both heads are new; everything of the backbone came from DIR
    report = model.load_report
    assert report["source"] == str(tmp_path / "ast")
    assert all(k.startswith(("front.", "aux_head.", "head", "head_norm."))
               for k in report["missing"]), report["missing"]
    assert any(k.startswith("front.") for k in report["missing"])
    # `none` and a missing directory behave as for --model ast
    assert _tiny(pretrained="none").config["pretrained"] is None
    with pytest.raises(ConfigError, match="not found"):
        _tiny(pretrained=str(tmp_path / "nope"))


def test_paper_size_front_end_width_256_and_shapes():
    # Public code: DiffTransformerLayer(d_model=256, num_heads=8), AFNO1D(num_blocks=8).
    assert ADD_FRONT_SIZES["base"] == {"width": 256, "heads": 8, "aff_blocks": 8}
    front = ADDFrontEnd(n_frames=798, n_mels=128, **ADD_FRONT_SIZES["base"],
                        **ADD_FRONT_DEFAULTS).eval()
    assert front.attn.heads == 8 and front.attn.head_dim == 32
    assert front.attn.q_proj.weight.shape == (512, 256)  # q1 | q2 of width 32 per head
    assert front.attn.v_proj.weight.shape == (512, 256)  # values of width 64 per head
    assert front.ff.gate.weight.shape == (512, 256)      # SwiGLU hidden width 2 x 256
    assert front.aff.w1.shape == (2, 8, 32, 32)          # 8 blocks of 32 channels
    assert front.attn.lambda_init == pytest.approx(0.8 - 0.6 * math.exp(-0.3 * 6))
    with torch.no_grad():
        den, aux = front(torch.randn(2, 798, 128))
    assert den.shape == (2, 798, 128) and aux.shape == (2, 256)
    tiny = _tiny()
    assert tiny.front.width == ADD_FRONT_SIZES["tiny"]["width"] == 16
    assert tiny.aux_head.in_features == 16


@pytest.mark.parametrize("mode", ["mask", "afno"])
def test_aff_soft_shrinks_a_complex_mlp_of_the_time_spectrum(mode):
    torch.manual_seed(0)
    front = ADDFrontEnd(n_frames=20, n_mels=8, **{**ADD_FRONT_DEFAULTS, "aff_mode": mode,
                                                   "sparsity": 0.05},
                        width=8, heads=2, aff_blocks=2).double()
    aff = front.aff
    u = torch.randn(3, 20, 8, dtype=torch.float64)
    spec = torch.fft.rfft(u, dim=1, norm="ortho").reshape(3, 11, 2, 4)  # 2 blocks of 4
    w1 = torch.complex(aff.w1[0], aff.w1[1])
    b1 = torch.complex(aff.b1[0], aff.b1[1])
    w2 = torch.complex(aff.w2[0], aff.w2[1])
    b2 = torch.complex(aff.b2[0], aff.b2[1])
    h = torch.einsum("bkni,nio->bkno", spec, w1) + b1
    h = torch.complex(F.relu(h.real), F.relu(h.imag))
    m = torch.einsum("bkni,nio->bkno", h, w2) + b2
    m = torch.complex(F.softshrink(m.real, 0.05), F.softshrink(m.imag, 0.05))
    filtered = spec * m if mode == "mask" else m  # "afno": the public code's AFNO1D
    ref = torch.fft.irfft(filtered.reshape(3, 11, 8), n=20, dim=1, norm="ortho")
    with torch.no_grad():
        assert torch.allclose(aff(u), ref, atol=1e-6)  # DFT matrices built in float32
    assert not aff.b1.detach().any()  # AFNO1D's zero biases


def test_mel_resampling_to_the_width_is_undone_exactly():
    p = mel_resample_matrix(128, 256)
    assert p.shape == (128, 256)
    x = torch.randn(3, 10, 128)
    ref = F.interpolate(x.reshape(-1, 1, 128), size=256, mode="linear",
                        align_corners=False).reshape(3, 10, 256)
    assert torch.allclose(x @ p, ref, atol=1e-5)
    back = torch.linalg.pinv(p.double()).float()
    assert torch.allclose(x @ p @ back, x, atol=1e-4)


def test_aux_head_sits_on_the_add_output_and_the_ast_reads_the_denoised_spectrogram():
    model = _tiny().eval()
    x = torch.randn(2, T, FD)
    f = model.front
    with torch.no_grad():
        out = model(x)
        u = x @ f.to_width
        x1 = u + f.aff(u)
        y = x1 + f.attn(f.norm1(x1))
        z = y + f.ff(f.norm2(y))  # the ADD output (B, T, W)
        assert torch.allclose(out["aux_logits"], model.aux_head(z.mean(dim=1)), atol=1e-5)
        tokens = model.encode(z @ f.from_width)
        pooled = (tokens[:, 0] + tokens[:, 1]) / 2
        assert torch.allclose(out["logits"], model.head(model.head_norm(pooled)), atol=1e-5)
        # the front end is in front of the AST: changing it changes the main logits
        f.ff.down.bias.add_(1.0)
        assert not torch.allclose(model(x)["logits"], out["logits"], atol=1e-4)
    # the public code's choice: the head on the AFF output, frames 0 and 1
    alt = _tiny(aux_from="filter", aux_pool="first2").eval()
    with torch.no_grad():
        u = x @ alt.front.to_width
        x1 = u + alt.front.aff(u)
        assert torch.allclose(alt(x)["aux_logits"], alt.aux_head((x1[:, 0] + x1[:, 1]) / 2),
                              atol=1e-5)
    with pytest.raises(ConfigError, match="aux_pool"):
        _tiny(aux_pool="max")


def test_bias_denoising_loss_weights_by_hand():
    # One example, two classes: main logits (0, 0) -> CE = ln 2; aux logits (ln 3, 0) ->
    # softmax (3/4, 1/4); eps 0.2 -> smoothed target (0.9, 0.1).
    out = {"logits": torch.zeros(1, 2), "aux_logits": torch.tensor([[math.log(3.0), 0.0]])}
    y = torch.tensor([0])
    ce = math.log(2.0)
    aux = -(0.9 * math.log(0.75) + 0.1 * math.log(0.25))
    paper = build_loss("bias-denoising", num_classes=2, eps=0.2, norm="none")
    assert float(paper(out, y)) == pytest.approx(ce + aux, abs=1e-6)  # 1 x CE + 1 x aux
    code = build_loss("bias-denoising", num_classes=2, eps=0.2, norm="none",
                      main_weight=0.5, weight=0.5)
    assert float(code(out, y)) == pytest.approx(0.5 * ce + 0.5 * aux, abs=1e-6)
    # the public code's smoothing 0.2 over the C - 1 others is eps = 0.2 C / (C - 1)
    c, eps = 4, 0.2 * 4 / 3
    smoothed = F.one_hot(torch.tensor([2]), c) * (1 - eps) + eps / c
    assert smoothed[0, 2].item() == pytest.approx(0.8)
    assert smoothed[0, 0].item() == pytest.approx(0.2 / 3)
    with pytest.raises(ConfigError, match="main_weight"):
        build_loss("bias-denoising", num_classes=2, main_weight=-1.0)


def test_cli_trains_evaluates_and_exports_add(project):
    proj = str(project.path)
    r = runner.invoke(app, ["--project", proj, "-q", "train", "--config",
                            str(EXAMPLES / "seed-003-add.toml"), "--size", "tiny",
                            "--pretrained", "none", "--epochs", "1", "--max-steps", "2",
                            "--clip-seconds", "1", "--run", "addrsc", "--json"])
    assert r.exit_code == 0, r.output
    rec = project.__class__.load(project.path).get("runs", "addrsc")
    opts = json.loads((project.abs(rec["dir"]) / "config.json").read_text())["options"]
    assert opts["model"] == "add" and opts["loss"] == "bias-denoising"
    assert opts["window"] == "hanning"  # like the other AST-backbone models
    assert opts["loss_cfg"] == {"main_weight": 1.0, "weight": 1.0, "eps": 0.1, "norm": "l2"}
    assert (opts["lr"], opts["batch_size"], opts["weight_decay"]) == (5e-5, 8, 1e-6)
    assert opts["warmup_epochs"] == 0
    r = runner.invoke(app, ["--project", proj, "-q", "eval", "--run", "addrsc", "--json",
                            "--no-plots"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["--project", proj, "-q", "export", "--run", "addrsc", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["parity_max_abs"] < 1e-4, doc


def test_runs_of_the_old_standalone_add_still_rebuild():
    from rsctool.models.add import ADDNet
    from rsctool.runs import rebuild_model

    old = create_model("add-standalone", size="tiny", input_tdim=T, input_fdim=FD)
    cfg = {**json.loads(json.dumps(old.config)), "name": "add"}  # as recorded before
    model = rebuild_model({"model": cfg})
    assert isinstance(model, ADDNet)
    model.load_state_dict(old.state_dict())


def test_seed_000_recipe_trains_like_the_seed_003_baseline_but_for_the_synthetic_cycles():
    from rsctool.train import _load_config_file

    base = _load_config_file(EXAMPLES / "seed-003-add.toml")
    aug = _load_config_file(EXAMPLES / "seed-000-add-audioldm.toml")
    synth = {"synthetic", "synthetic_ratio", "max_synthetic_per_class"}
    assert {k: v for k, v in aug.items() if k not in synth} == base
    assert base["loss_cfg"] == {"main_weight": 1.0, "weight": 1.0, "eps": 0.1, "norm": "l2"}
