"""SimSiam: the loss against a loop over eq. 2 of Chen & He (2021), the stop-gradient, the head
layout, the recipe, and a short training run that learns."""
import json
import math

import pytest
import torch
from torch import nn

from selfsup.config import ConfigError, load_config
from selfsup.methods.simsiam import SimSiam, SimSiamConfig, simsiam_loss
from selfsup.optim import lr_factor
from selfsup.build import build_method
from selfsup.train import pretrain, step_generator

from training import knn_against_random_init, spread_of_projections, train_tiny

SMALL = ["method.name=simsiam", "backbone.width=0.125", "train.batch_size=32", "train.precision=fp32",
         "train.log_every=1", "optim.warmup_epochs=0", "eval.batch_size=256", "method.proj_dim=64",
         "method.pred_hidden_dim=16"]


def reference_simsiam(p1, p2, z1, z2):
    """Eq. 2 literally: L = D(p1, z2)/2 + D(p2, z1)/2, D(p, z) = -(p/|p|) . (z/|z|), averaged over samples."""
    def d(p, z):
        return -sum(x * y for x, y in zip(p, z)) / (math.sqrt(sum(x * x for x in p)) * math.sqrt(sum(y * y for y in z)))
    rows = list(zip(p1.tolist(), p2.tolist(), z1.tolist(), z2.tolist()))
    return sum(d(a, d2) / 2 + d(b, c) / 2 for a, b, c, d2 in rows) / len(rows)


@pytest.mark.parametrize("n", [2, 6])
def test_simsiam_loss_matches_loop_reference(n):
    torch.manual_seed(n)
    p1, p2, z1, z2 = (torch.randn(n, 5) * s for s in (1.0, 2.0, 0.3, 4.0))
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(reference_simsiam(p1, p2, z1, z2), rel=1e-5, abs=1e-6)


def test_simsiam_loss_bounds_and_both_terms():
    torch.manual_seed(1)
    p1, p2, z1, z2 = (torch.randn(4, 6) for _ in range(4))
    assert simsiam_loss(z2, z1, z1, z2).item() == pytest.approx(-1.0, abs=1e-6)      # perfect predictions
    assert simsiam_loss(-z2, -z1, z1, z2).item() == pytest.approx(1.0, abs=1e-6)
    other_term = -torch.nn.functional.cosine_similarity(p2, z1, dim=1).mean() / 2
    torch.testing.assert_close(simsiam_loss(2 * z2, p2, z1, z2), other_term - 0.5)
    torch.testing.assert_close(simsiam_loss(p2, p1, z2, z1), simsiam_loss(p1, p2, z1, z2))


def test_simsiam_loss_runs_in_fp32_under_bf16_autocast():
    torch.manual_seed(3)
    p1, p2, z1, z2 = (torch.randn(8, 16).bfloat16() for _ in range(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = simsiam_loss(p1, p2, z1, z2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, simsiam_loss(p1.float(), p2.float(), z1.float(), z2.float()))


def test_stop_gradient_no_gradient_through_the_projections_as_targets():
    torch.manual_seed(2)
    p1, p2, z1, z2 = (torch.randn(3, 4, requires_grad=True) for _ in range(4))
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0
    # In the method z and p share the graph (p = h(z)): z's gradient must be exactly the one through
    # the predictor, as if the loss's z-terms were constants.
    z = torch.randn(6, 4, requires_grad=True)
    h = nn.Linear(4, 4)
    p = h(z)
    (grad,) = torch.autograd.grad(simsiam_loss(*p.chunk(2), *z.chunk(2)), z)
    zc = z.detach().clone().requires_grad_(True)
    pc = h(zc)
    (through_predictor,) = torch.autograd.grad(simsiam_loss(*pc.chunk(2), *z.detach().chunk(2)), zc)
    torch.testing.assert_close(grad, through_predictor)


def test_heads_layout():
    cfg = load_config(overrides=SMALL)
    cfg.augment.mean, cfg.augment.std = [0.3], [0.3]
    method = build_method(cfg, 1)
    assert [type(m) for m in method.projector] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear, nn.BatchNorm1d]
    assert not method.projector[-1].affine                      # BN on the output, no affine (paper's code)
    assert [type(m) for m in method.predictor] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (method.predictor[0].in_features, method.predictor[0].out_features) == (64, 16)
    assert method.predictor[3].out_features == 64
    assert not any(name.startswith("target") for name in method.state_dict())      # no momentum encoder
    method.train()
    batch = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    loss, logs = method.loss(method.views(batch, step_generator(0, 0, 0, torch.device("cpu"))))
    assert -1.0 <= loss.item() <= 1.0 and 0.0 < float(logs["z_std"]) <= 1.0
    loss.backward()
    assert all(p.grad is not None for p in method.predictor.parameters())
    assert method.backbone.parameters().__next__().grad is not None


def test_load_config_gives_simsiam_with_its_recipe():
    cfg = load_config(overrides=["method.name=simsiam"])
    assert isinstance(cfg.method, SimSiamConfig)
    assert (cfg.method.proj_dim, cfg.method.pred_hidden_dim) == (2048, 512)
    assert cfg.optim.name == "lars" and cfg.optim.weight_decay == 1e-4
    assert load_config(overrides=["method.name=simsiam", "optim.lr=0.01"]).optim.lr == 0.01      # the user wins
    with pytest.raises(ConfigError, match="pred_hidden_dim"):
        load_config(overrides=["method.name=simsiam", "method.pred_hidden_dim=0"])


def test_short_training_lowers_the_loss_and_beats_random_init_on_knn(one_thread, tiny_fashion, tmp_path):
    run, losses = train_tiny(tiny_fashion, tmp_path / "run", SMALL)
    assert len(losses) == 4 * (360 // 32)        # 4 epochs of the 360 training images (40 validate)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses
    report, test = knn_against_random_init(run)
    assert report["knn_top1"] > report["knn_top1_random_init"], report
    # on this easy data kNN stays high even when the head collapses (see test_barlow_vicreg.py), so check that too
    assert spread_of_projections(run, test) > 0.3


def test_predictor_lr_stays_constant_while_the_rest_decays(one_thread, tiny_fashion, tmp_path):
    """The paper's fixed predictor lr (sec. 4.2): read back from the last checkpoint's optimizer groups."""
    def last_lrs(run_dir, *extra):
        cfg = load_config(overrides=SMALL + ["train.steps=6", "train.threads=1", f"data.data_dir={tiny_fashion}",
                                              "optim.lr=0.5", *extra])
        method = build_method(cfg, 1)
        pretrain(cfg, run_dir, progress=False)
        meta = json.loads(sorted((run_dir / "checkpoints").glob("step-*.json"))[-1].read_text())
        return method, [(g["constant_lr"], g["lr"], len(g["params"])) for g in meta["optimizer"]["param_groups"]]

    method, groups = last_lrs(tmp_path / "fixed")
    decayed = 0.5 * lr_factor(5, 6, 0)
    assert decayed < 0.1
    predictor_tensors = len(list(method.predictor.parameters()))
    assert [(fixed, pytest.approx(lr)) for fixed, lr, _ in groups] == [(False, decayed), (False, decayed),
                                                                       (True, 0.5), (True, 0.5)]
    assert groups[2][2] + groups[3][2] == predictor_tensors
    _, groups = last_lrs(tmp_path / "scheduled", "method.fix_predictor_lr=false")
    assert [(fixed, pytest.approx(lr)) for fixed, lr, _ in groups] == [(False, decayed), (False, decayed)]
