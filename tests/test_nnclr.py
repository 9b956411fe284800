"""NNCLR: the loss against a loop over the paper's formula, the nearest-neighbour lookup against
brute force, no gradient through the support set, its update, the recipe, exact resume, and a
short run that learns."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from selfsup.config import ConfigError, load_config
from selfsup.data import load_images
from selfsup.methods.nnclr import NNCLR, NNCLRConfig, nearest_neighbours, nnclr_loss
from selfsup.build import build_method

from resume import assert_bitwise_equal, straight_and_resumed
from training import dot, knn_against_random_init, some_views, train_tiny, unit

# train.threads=1: on a CPU shared with other processes two OpenMP threads per process can run 10x slower.
SMALL = ["method.name=nnclr", "backbone.width=0.125", "train.batch_size=32", "train.precision=fp32",
         "train.log_every=1", "optim.warmup_epochs=0", "eval.batch_size=256", "train.threads=1",
         "method.proj_hidden_dim=64", "method.pred_hidden_dim=64", "method.proj_dim=32", "method.queue_size=96"]


def built(*extra):
    cfg = load_config(overrides=SMALL + list(extra))
    cfg.augment.mean, cfg.augment.std = [0.3], [0.3]
    return build_method(cfg, 1)




def loop_l(nn, p, t):
    """The paper's eq. (NNCLR loss), literally: -1/N sum_i log exp(NN_i.p_i/t) / sum_k exp(NN_i.p_k/t)."""
    nns, ps = [unit(r) for r in nn.tolist()], [unit(r) for r in p.tolist()]
    total = 0.0
    for i, a in enumerate(nns):
        total += -math.log(math.exp(dot(a, ps[i]) / t) / sum(math.exp(dot(a, pk) / t) for pk in ps))
    return total / len(nns)


def loop_nearest(z, support, filled):
    out = []
    for row in z.tolist():
        row = unit(row)
        if filled == 0:
            out.append(row)
            continue
        sims = [dot(row, unit(s)) for s in support.tolist()[:filled]]
        out.append(unit(support.tolist()[max(range(filled), key=sims.__getitem__)]))
    return torch.tensor(out)


# ----------------------------------------------------------------------------- loss and lookup

@pytest.mark.parametrize("n,t", [(2, 0.1), (2, 1.0), (5, 0.1), (6, 0.5)])
def test_nnclr_loss_matches_loop_reference(n, t):
    torch.manual_seed(n + int(10 * t))
    nn1, nn2, p1, p2 = (torch.randn(n, 6) * s for s in (1.0, 2.0, 0.5, 3.0))
    expected = (loop_l(nn1, p2, t) + loop_l(nn2, p1, t)) / 2
    assert nnclr_loss(nn1, nn2, p1, p2, t).item() == pytest.approx(expected, rel=1e-5)
    crossed_wrong = (loop_l(nn1, p1, t) + loop_l(nn2, p2, t)) / 2      # the views must be crossed
    assert abs(nnclr_loss(nn1, nn2, p1, p2, t).item() - crossed_wrong) > 1e-4


@pytest.mark.parametrize("filled", [0, 1, 4, 9])
def test_nearest_neighbours_matches_brute_force(filled):
    torch.manual_seed(filled)
    z, support = torch.randn(5, 4), torch.randn(9, 4) * 3
    got = nearest_neighbours(z, support, torch.tensor(filled))
    torch.testing.assert_close(got, loop_nearest(z, support, filled), atol=1e-6, rtol=1e-6)


def test_nearest_neighbours_ignores_unfilled_rows():
    z = torch.tensor([[1.0, 0.0]])
    support = torch.tensor([[0.0, 1.0], [1.0, 0.01]])        # the better match is in an unfilled slot
    torch.testing.assert_close(nearest_neighbours(z, support, 1), torch.tensor([[0.0, 1.0]]))
    torch.testing.assert_close(nearest_neighbours(z, support, 2), F.normalize(support[1:], dim=1))


def test_neighbours_carry_no_gradient_to_the_projection():
    torch.manual_seed(1)
    z = torch.randn(4, 6, requires_grad=True)
    for filled in (0, 3):
        nn = nearest_neighbours(z, torch.randn(5, 6), filled)
        assert not nn.requires_grad and nn.grad_fn is None


# ----------------------------------------------------------------------------- the method

def test_gradient_flows_through_the_predictions_only_and_the_support_set_stays_detached():
    torch.manual_seed(2)
    method = built()
    method.support.push(F.normalize(torch.randn(20, 32), dim=1))
    loss, logs = method.loss(some_views(method))
    loss.backward()
    assert not method.support.items.requires_grad and method.support.items.grad is None
    for module in (method.backbone, method.projector, method.predictor):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert 0.0 <= float(logs["nn_agreement"]) <= 1.0


def test_loss_uses_the_support_set_neighbours():
    """The loss equals the formula on neighbours looked up by hand, and changes with the support set.
    (Train-mode BN: batch statistics, the same for the same batch.)"""
    torch.manual_seed(3)
    method = built()
    method.support.push(F.normalize(torch.randn(50, 32), dim=1))
    views = some_views(method)
    loss, _ = method.loss(views)
    with torch.no_grad():
        z = method.projector(method.backbone(torch.cat(views)))
        p1, p2 = method.predictor(z).chunk(2)
        support = method.support.contents()
        nn1, nn2 = (loop_nearest(zz, support, support.shape[0]) for zz in z.chunk(2))
    expected = (loop_l(nn1, p2, 0.1) + loop_l(nn2, p1, 0.1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    method.support.push(F.normalize(torch.randn(96, 32), dim=1))
    assert abs(method.loss(views)[0].item() - loss.item()) > 1e-4


def test_after_step_pushes_view_1_projections_once():
    torch.manual_seed(4)
    method = built()
    views = some_views(method, n=8)
    with torch.no_grad():
        expected = F.normalize(method.projector(method.backbone(torch.cat(views)))[:8], dim=1)
    loss, _ = method.loss(views)
    loss.backward()
    assert method.support.filled == 0                  # nothing changes inside loss()
    method.after_step(0.1)
    assert method.support.filled == 8
    torch.testing.assert_close(method.support.contents(), expected, atol=1e-5, rtol=1e-5)
    method.after_step(0.2)
    assert method.support.filled == 8


def test_heads_follow_the_paper():
    method = built()
    kinds = [type(m).__name__ for m in method.projector]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert [type(m).__name__ for m in method.predictor] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert method.support.size == 96 and method.support.items.shape[1] == 32


# ----------------------------------------------------------------------------- config and recipe

def test_load_config_gives_nnclr_with_its_recipe():
    cfg = load_config(overrides=["method.name=nnclr"])
    assert type(cfg.method) is NNCLRConfig
    assert (cfg.method.temperature, cfg.method.queue_size) == (0.1, 8192)
    assert load_config(overrides=["method.name=nnclr", "train.epochs=1"]).train.epochs == 1


def test_config_file_is_the_default_recipe_written_out():
    path = Path(__file__).parents[1] / "configs" / "nnclr-fashion-mnist.yaml"
    assert load_config(path).to_dict() == load_config(overrides=["method.name=nnclr"]).to_dict()


@pytest.mark.parametrize("override,message", [("method.temperature=0", "temperature"),
                                              ("method.queue_size=0", "queue_size"),
                                              ("method.proj_dim=0", "proj_dim")])
def test_bad_settings_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=["method.name=nnclr", override])


def test_multi_crop_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="local_crops=0"):
        built("augment.local_crops=2")


# ----------------------------------------------------------------------------- training

def test_resume_restores_the_support_set_exactly(tiny_fashion, tmp_path, monkeypatch):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    make = lambda: load_config(overrides=SMALL + ["train.steps=4", "train.checkpoint_every=2"])  # noqa: E731
    straight, resumed = straight_and_resumed(make, data, tmp_path, 2, monkeypatch)
    assert_bitwise_equal(straight, resumed)
    assert int(resumed["model.support.count"]) == 96 and int(resumed["model.support.pointer"]) == 128 % 96


def test_short_training_lowers_the_loss_and_beats_random_init_on_knn(tiny_fashion, tmp_path):
    run, losses = train_tiny(tiny_fashion, tmp_path / "run", SMALL)
    assert len(losses) == 4 * (360 // 32)        # 4 epochs of the 360 training images (40 validate)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses
    report, _ = knn_against_random_init(run)
    assert report["knn_top1"] > report["knn_top1_random_init"], report
