"""The ICBHI AST papers' front end as named options (issue 18): SpecAugment shape and
fill, centre-cropped AudioSet position embeddings, one fade-out at the clip end; and
the AST recipes that set the papers' values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from transformers import ASTConfig, ASTModel

from rsctool import audio
from rsctool.data.dataset import spec_augment
from rsctool.errors import ConfigError
from rsctool.models import create_model
from rsctool.train import TrainOptions

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _masked(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return out != x


def test_spec_augment_papers_shape_two_masks_of_each_kind_filled_with_the_mean():
    # A ramp input (all values distinct, mean 0.5 per item): the masked cells are
    # exactly those that changed, and they hold the item's mean.
    b, t, f = 64, 400, 128
    x = torch.linspace(-1.0, 2.0, t * f).reshape(1, t, f).repeat(b, 1, 1)
    x = x + torch.arange(b, dtype=torch.float32)[:, None, None]
    out = spec_augment(x, n_masks=2, freq_width=48, time_width=160, fill="mean",
                       generator=torch.Generator().manual_seed(0))
    changed = _masked(out, x)
    for i in range(b):
        assert torch.allclose(out[i][changed[i]], x[i].mean().expand(int(changed[i].sum())))
    # whole masked mel bins / frames: a bin is masked in every frame, or a frame in every bin
    bins = changed.all(dim=1)            # (B, F)
    frames = changed.all(dim=2)          # (B, T)
    assert int(bins.sum(1).max()) <= 2 * 48 and int(frames.sum(1).max()) <= 2 * 160
    # wider than rsctool's old default (1 x 24 bins, 1 x 96 frames) for some items
    assert int(bins.sum(1).max()) > 24 and int(frames.sum(1).max()) > 96
    # two bands: some item has two separate runs of masked bins
    runs = [int((bins[i, 1:] & ~bins[i, :-1]).sum() + bins[i, 0]) for i in range(b)]
    assert max(runs) == 2
    # every change is inside a masked bin band or a masked frame span
    assert torch.equal(changed, bins[:, None, :] | frames[:, :, None])


def test_spec_augment_default_stays_one_zero_filled_mask_of_each_kind():
    b, t, f = 32, 200, 64
    x = torch.ones(b, t, f)
    out = spec_augment(x, generator=torch.Generator().manual_seed(0))
    changed = out != x
    assert torch.all(out[changed] == 0.0)
    bins, frames = changed.all(dim=1), changed.all(dim=2)
    assert int(bins.sum(1).max()) <= 12 and int(frames.sum(1).max()) <= 24
    with pytest.raises(ConfigError, match="specaug_fill"):
        spec_augment(x, fill="median")


def test_train_options_carry_the_specaugment_and_padding_settings():
    o = TrainOptions(specaug_masks=2, specaug_freq_width=48, specaug_time_width=160,
                     specaug_fill="mean", pad_mode="repeat-fadeout").resolve()
    from rsctool.data.dataset import clip_config

    assert clip_config(o).pad_mode == "repeat-fadeout"
    for bad, match in (({"specaug_fill": "median"}, "specaug_fill"),
                       ({"specaug_masks": -1}, "specaug_masks"),
                       ({"specaug_time_width": 1.5}, "specaug_time_width"),
                       ({"pad_mode": "mirror"}, "pad_mode")):
        with pytest.raises(ConfigError, match=match):
            TrainOptions(**bad).resolve()


def test_repeat_fadeout_pads_with_one_linear_fade_at_the_clip_end():
    sr = 16000
    wav = np.ones(3000, dtype=np.float32)
    out = audio.pad_or_crop(wav, 8000, sr, mode="repeat-fadeout")
    n = sr // 16                                   # 1000 samples, the papers' sr / 16
    # no fade at the start or at any join
    assert np.all(out[: 8000 - n] == 1.0)
    np.testing.assert_allclose(out[-n:], np.linspace(1.0, 0.0, n), atol=1e-6)
    # the default still fades every copy (in at 0, out before each join)
    rep = audio.pad_or_crop(wav, 8000, sr, mode="repeat")
    assert rep[0] < 0.05 and rep[2999] < 0.05 and rep[3000] < 0.05
    # a cycle longer than the clip is only cropped, not faded
    long = audio.pad_or_crop(np.ones(9000, np.float32), 8000, sr, mode="repeat-fadeout")
    assert np.all(long == 1.0)


def test_crop_pos_embed_keeps_the_centre_slice_of_a_bigger_pretrained_grid(tmp_path):
    # pretrained grid 4 x 13 (46 mel bins x 140 frames), target 3 x 9 (36 x 100): the public
    # AST code keeps frequency rows 4//2 - 3//2 = 1..3 and time columns 6//2.. = 2..10
    torch.manual_seed(0)
    cfg = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_length=140, num_mel_bins=46)
    src = ASTModel(cfg).eval()
    with torch.no_grad():
        src.embeddings.position_embeddings.normal_()
    src.save_pretrained(tmp_path)
    m = create_model("ast", size="tiny", input_tdim=100, input_fdim=36,
                     pretrained=str(tmp_path), pos_resize="crop")
    pos_src = src.embeddings.position_embeddings.detach()
    pos = m.backbone.embeddings.position_embeddings.detach()
    assert pos.shape == (1, 2 + 27, 32)
    assert torch.equal(pos[:, :2], pos_src[:, :2])
    grid = pos_src[0, 2:].reshape(4, 13, 32)
    assert torch.equal(pos[0, 2:].reshape(3, 9, 32), grid[1:4, 2:11])
    assert m.load_report["pos_embed"]["mode"] == "crop"


AST_RECIPES = ("seed-002-aft.toml",)
FRONT_END_RECIPES = ("seed-000-add-audioldm.toml", "seed-002-aft.toml", "seed-003-add.toml")


@pytest.mark.parametrize("recipe", FRONT_END_RECIPES)
def test_ast_recipes_set_the_papers_front_end(recipe):
    doc = tomllib.loads((EXAMPLES / recipe).read_text())["train"]
    o = TrainOptions(**doc).resolve()
    assert (o.specaug_masks, o.specaug_freq_width, o.specaug_time_width, o.specaug_fill) == (
        2, 48, 160, "mean")
    assert o.pad_mode == "repeat-fadeout"
    assert o.ma_beta == 0.5   # the same code's --ma_update --ma_beta 0.5
    if recipe in AST_RECIPES:
        assert o.model_cfg.get("pos_resize") == "crop"


def test_seed_002_recipe_follows_the_public_code():
    # Classification/scripts/icbhi_aft_1msteps_500_mixed.sh: --batch_size 32 --optimizer adam
    # --learning_rate 5e-5 --weight_decay 1e-6 --cosine (no --warm) --epochs 50
    # --desired_length 5 --ma_update --ma_beta 0.5 --alpha 0.2 --adversarial_ft
    doc = tomllib.loads((EXAMPLES / "seed-002-aft.toml").read_text())["train"]
    o = TrainOptions(**doc).resolve()
    assert (o.batch_size, o.lr, o.weight_decay, o.warmup_epochs, o.epochs) == (
        32, 5e-5, 1e-6, 0, 50)
    assert o.clip_seconds == 5.0 and o.ma_beta == 0.5
    assert o.adversarial and (o.adv_hidden, o.adv_loss_weight, o.adv_weight,
                              o.adv_schedule) == (0, 0.2, 1.0, "dann")
    from rsctool.data.dataset import clip_config

    assert clip_config(o).frames == 498   # the public code's 5 * 100 - 2
