"""Adversarial fine-tuning: gradient reversal into the embedding, the discriminator's
own learning, statistics and the lambda schedule (the training run is in test_synth)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rsctool.adversarial import AdversarialObjective, embedding_dim
from rsctool.errors import ConfigError
from rsctool.models import create_model
from rsctool.train import TrainOptions


def test_reversal_flips_and_scales_gradients_into_the_embedding():
    torch.manual_seed(0)
    adv = AdversarialObjective(8, weight=0.3, hidden=16, dropout=0.0, schedule="constant",
                               loss_weight=1.0)
    emb = torch.randn(6, 8, requires_grad=True)
    domain = torch.tensor([0, 1, 0, 1, 1, 0])
    adv({"embedding": emb, "logits": torch.zeros(6, 4)}, domain).backward()
    reversed_grad = emb.grad.clone()
    head_grads = [p.grad.clone() for p in adv.head.parameters()]
    # the same loss without the reversal layer
    emb.grad = None
    adv.zero_grad()
    F.cross_entropy(adv.head(emb), domain).backward()
    assert torch.allclose(reversed_grad, -0.3 * emb.grad, atol=1e-7)
    assert reversed_grad.abs().sum() > 0
    # the discriminator itself gets the plain gradient: it learns to tell domains apart
    for g, p in zip(head_grads, adv.head.parameters(), strict=True):
        assert torch.allclose(g, p.grad, atol=1e-7)


def test_zero_weight_blocks_the_encoder_but_trains_the_discriminator():
    adv = AdversarialObjective(4, weight=0.0, hidden=0, schedule="constant")
    emb = torch.randn(5, 4, requires_grad=True)
    adv(emb, torch.tensor([0, 0, 1, 1, 1])).backward()
    assert torch.count_nonzero(emb.grad) == 0
    assert adv.head[-1].weight.grad.abs().sum() > 0


def test_dann_schedule_ramps_lambda():
    adv = AdversarialObjective(4, weight=0.5, schedule="dann")
    assert adv.coefficient(0.0) == 0.0
    assert adv.coefficient(1.0) == pytest.approx(0.5, abs=1e-4)
    assert 0 < adv.coefficient(0.1) < adv.coefficient(0.3) < 0.5
    assert AdversarialObjective(4, weight=0.5, schedule="constant").coefficient(0.0) == 0.5
    with pytest.raises(ConfigError, match="^adv_schedule must be one of"):
        AdversarialObjective(4, schedule="cosine")
    with pytest.raises(ConfigError, match="^adv_weight must be >= 0"):
        AdversarialObjective(4, weight=-1)


def test_epoch_statistics():
    adv = AdversarialObjective(2, hidden=0)
    with torch.no_grad():
        adv.head[-1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        adv.head[-1].bias.zero_()
        adv.head[0].weight.fill_(1.0)
        adv.head[0].bias.zero_()
    # LayerNorm of (a, b) is (+1, -1) or (-1, +1): domain = argmax
    emb = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])
    adv(emb, torch.tensor([0, 1, 1, 0]))
    stats = adv.epoch_stats()
    assert stats["disc_accuracy"] == pytest.approx(0.75)
    assert stats["disc_balanced_accuracy"] == pytest.approx(0.75)  # (2/2 + 1/2) / 2
    assert stats["disc_loss"] > 0
    assert adv.epoch_stats() == {"disc_accuracy": None, "disc_balanced_accuracy": None,
                                 "disc_loss": None}


@pytest.mark.parametrize("name", ["cnn", "ast", "add"])
def test_embedding_width_of_registered_models(name):
    model = create_model(name, size="tiny", num_classes=4, input_tdim=64, input_fdim=32)
    out = model(torch.randn(2, 64, 32))
    assert out["embedding"].shape[1] == embedding_dim(model)


def test_models_without_an_embedding_width_are_refused():
    with pytest.raises(ConfigError, match="embedding width"):
        embedding_dim(nn.Sequential(nn.Linear(3, 2)))


def test_defaults_are_seed_002_public_code_layernorm_linear_weight_0_2_dann():
    # kaen2891/adversarial_fine-tuning...: domain_mlp_head = LayerNorm(768) + Linear(768, 2),
    # loss = class_loss + 0.2 * meta_loss, ReverseLayerF with lambda = 2 / (1 + e^-10p) - 1
    adv = AdversarialObjective(768)
    assert [type(m) for m in adv.head] == [nn.LayerNorm, nn.Linear]
    assert (adv.head[1].in_features, adv.head[1].out_features) == (768, 2)
    assert adv.schedule == "dann" and adv.loss_weight == 0.2
    for p, want in ((0.0, 0.0), (0.1, 0.46211716), (0.25, 0.84828364), (0.5, 0.98661429),
                    (1.0, 0.99990920)):
        assert adv.coefficient(p) == pytest.approx(want, abs=1e-6)
    # the returned loss is 0.2 x the domain cross-entropy; the encoder gets -0.2 lambda x
    torch.manual_seed(0)
    emb = torch.randn(6, 768, requires_grad=True)
    domain = torch.tensor([0, 1, 0, 1, 1, 0])
    loss = adv(emb, domain, progress=0.25)
    loss.backward()
    ce = F.cross_entropy(adv.head(emb.detach()), domain)
    assert float(loss.detach()) == pytest.approx(0.2 * float(ce.detach()), rel=1e-5)
    plain = emb.detach().clone().requires_grad_(True)
    F.cross_entropy(adv.head(plain), domain).backward()
    assert torch.allclose(emb.grad, -0.2 * 0.84828364 * plain.grad, atol=1e-6)
    assert adv.epoch_stats()["disc_loss"] == pytest.approx(float(ce.detach()), rel=1e-5)


def test_train_options_default_to_the_seed_002_discriminator():
    from rsctool.train import TrainOptions

    o = TrainOptions()
    assert (o.adv_weight, o.adv_hidden, o.adv_schedule, o.adv_loss_weight) == (
        1.0, 0, "dann", 0.2)
    with pytest.raises(ConfigError, match="adv_loss_weight"):
        TrainOptions(model="cnn", synthetic=["s"], adv_loss_weight=-1).resolve()
    with pytest.raises(ConfigError, match="ma_beta"):
        TrainOptions(model="cnn", ma_beta=1.0).resolve()


def test_weight_averaging_halves_each_step_like_ma_beta_0_5(project, monkeypatch):
    # seed 002's public code (--ma_update --ma_beta 0.5): after every optimizer step the
    # weights become 0.5 x the weights before it + 0.5 x those after it
    import rsctool.models as models
    from rsctool.checkpoint import load_checkpoint
    from rsctool.train import run

    created = []
    orig = models.create_model

    def recording(*a, **kw):
        m = orig(*a, **kw)
        created.append({k: v.detach().clone() for k, v in m.named_parameters()})
        return m

    monkeypatch.setattr(models, "create_model", recording)
    fast = {"model": "cnn", "size": "tiny", "clip_seconds": 1.0, "batch_size": 8,
            "lr": 1e-2, "epochs": 1, "max_steps": 1, "deterministic": True}
    plain = run(project, TrainOptions(run="plain", **fast))
    avg = run(project, TrainOptions(run="avg", ma_beta=0.5, **fast))
    init = created[0]
    for k, v in created[1].items():
        assert torch.equal(v, init[k]), k  # same start
    a = load_checkpoint(plain.dir / "last.safetensors").model_state
    b = load_checkpoint(avg.dir / "last.safetensors").model_state
    moved = 0
    for k, w0 in init.items():
        assert torch.allclose(b[k], 0.5 * (w0 + a[k]), atol=1e-6), k
        moved += int(not torch.equal(a[k], w0))
    assert moved > 0
