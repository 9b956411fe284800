"""SimCLR with the E-SSL rotation term (E-SimCLR, Dangovski et al. 2022): the extra views, the loss
against NT-Xent plus a loop cross-entropy, plain SimCLR untouched at weight 0, and a short run."""
import math

import pytest
import torch

from selfsup.augment import AugmentConfig
from selfsup.backbones import build_backbone
from selfsup.config import ConfigError, load_config
from selfsup.methods.losses import nt_xent
from selfsup.methods.simclr import SimCLR, SimCLRConfig
from training import knn_against_random_init, train_tiny

AUG = AugmentConfig(size=20, mean=[0.5], std=[0.25])


def method(**cfg):
    torch.manual_seed(0)
    return SimCLR(build_backbone("resnet18", width=0.125, in_channels=1), SimCLRConfig(**cfg), AUG)


def batch(n=6, seed=0):
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def loop_cross_entropy(logits, labels):
    total = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        total += math.log(sum(math.exp(v) for v in row)) - row[y]
    return total / len(labels)


def test_plain_simclr_has_two_views_and_no_rotation_head():
    plain = method()
    views = plain.views(batch(), torch.Generator().manual_seed(1))
    assert [tuple(v.shape) for v in views] == [(6, 1, 20, 20)] * 2
    assert not hasattr(plain, "rotation_head")
    assert set(plain.loss(views)[1]) == {"loss"}


def test_simclr_takes_its_stronger_colour_jitter_and_the_user_still_wins():
    shared = AugmentConfig()
    simclr = load_config(overrides=["method.name=simclr"]).augment
    for key, value in SimCLR.recipe["augment"].items():
        assert getattr(simclr, key) == value > getattr(shared, key)
    assert load_config(overrides=["method.name=moco2"]).augment.brightness == shared.brightness
    assert load_config(overrides=["method.name=simclr", "augment.brightness=0.3"]).augment.brightness == 0.3


def test_rotation_views_are_every_quarter_turn_of_one_small_view_at_half_size():
    views = method(rotation_weight=0.4).views(batch(), torch.Generator().manual_seed(1))
    assert len(views) == 4
    turned, turns = views[2], views[3]
    assert turned.shape == (24, 1, 10, 10)
    assert turns.tolist() == [0] * 6 + [1] * 6 + [2] * 6 + [3] * 6
    upright = turned[:6]
    for k in range(1, 4):
        assert torch.equal(turned[6 * k:6 * (k + 1)], upright.rot90(k, dims=(2, 3)))
    sized = method(rotation_weight=0.4, rotation_size=14).views(batch(), torch.Generator().manual_seed(1))
    assert sized[2].shape == (24, 1, 14, 14)


def test_loss_is_nt_xent_plus_weighted_rotation_cross_entropy():
    m = method(rotation_weight=0.4, temperature=0.2)
    views = m.views(batch(), torch.Generator().manual_seed(2))
    loss, logs = m.loss(views)
    # The same modules in train mode give the same batch statistics, so recomputing is exact.
    features = m.backbone(torch.cat(views[:2]))
    z1, z2 = m.projector(features).chunk(2)
    contrastive = nt_xent(z1, z2, 0.2).item()
    rotation = loop_cross_entropy(m.rotation_head(m.backbone(views[2])), views[3])
    assert logs["contrastive_loss"].item() == pytest.approx(contrastive, rel=1e-5)
    assert logs["rotation_loss"].item() == pytest.approx(rotation, rel=1e-5)
    assert loss.item() == pytest.approx(contrastive + 0.4 * rotation, rel=1e-5)
    loss.backward()
    assert m.rotation_head[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("override,message", [("method.rotation_weight=-1", "rotation_weight"),
                                              ("method.rotation_size=-2", "rotation_size")])
def test_bad_rotation_settings_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_short_e_simclr_run_lowers_the_loss_and_beats_random_init_on_knn(one_thread, tiny_fashion, tmp_path):
    run, losses = train_tiny(tiny_fashion, tmp_path / "run", ["method.rotation_weight=0.4", "backbone.width=0.125",
                                                              "train.batch_size=32", "train.precision=fp32",
                                                              "train.log_every=1", "optim.warmup_epochs=0",
                                                              "eval.online_every=0"])
    assert losses[-1] < losses[0]
    report, _ = knn_against_random_init(run)
    assert report["knn_top1"] > report["knn_top1_random_init"], report
