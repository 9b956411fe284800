"""Barlow Twins and VICReg: each loss against a loop over the paper's formula (Zbontar et al. 2021,
eq. 1; Bardes et al. 2022, eqs. 1-6), the heads, the recipes, and short training runs that learn."""
import math

import pytest
import torch
from torch import nn

from selfsup.checkpoint import latest_checkpoint, load_checkpoint
from selfsup.config import ConfigError, load_config
from selfsup.data import load_images
from selfsup.methods.barlow import BarlowTwins, BarlowTwinsConfig, barlow_twins_loss
from selfsup.methods.vicreg import VICReg, VICRegConfig, vicreg_loss, vicreg_terms
from selfsup.optim import build_optimizer
from selfsup.run import labelled_eval_sets
from selfsup.build import build_method
from selfsup.train import pretrain, step_generator

from training import knn_against_random_init, spread_of_projections, train_tiny

SMALL = ["backbone.width=0.125", "train.batch_size=32", "train.precision=fp32", "train.log_every=1",
         "optim.warmup_epochs=0", "eval.batch_size=256", "method.proj_dim=64"]


def columns(z):
    """(N, D) tensor -> D lists of N floats."""
    return [list(col) for col in zip(*z.tolist())]


def mean(xs):
    return sum(xs) / len(xs)


# ----------------------------------------------------------------------------- Barlow Twins

def reference_barlow(z1, z2, lambd, eps=1e-5):
    """Eq. 1 literally: standardise each dimension over the batch (biased variance + eps, as BatchNorm),
    C_ij = sum_b z1n_bi z2n_bj / N, L = sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2."""
    def standardise(col):
        m = mean(col)
        s = math.sqrt(mean([(x - m) ** 2 for x in col]) + eps)
        return [(x - m) / s for x in col]
    a, b = [standardise(c) for c in columns(z1)], [standardise(c) for c in columns(z2)]
    n, d = z1.shape
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][k] * b[j][k] for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c ** 2
    return loss


@pytest.mark.parametrize("n,d,lambd", [(2, 3, 5e-3), (5, 4, 5e-3), (9, 6, 0.5), (7, 3, 0.0)])
def test_barlow_loss_matches_loop_reference(n, d, lambd):
    torch.manual_seed(n * d)
    z1, z2 = torch.randn(n, d) * 3 + 1, torch.randn(n, d) * 0.5 - 2
    assert barlow_twins_loss(z1, z2, lambd).item() == pytest.approx(reference_barlow(z1, z2, lambd), rel=1e-4, abs=1e-5)


def test_barlow_loss_is_zero_for_identical_decorrelated_views_and_scale_free():
    z = torch.tensor([[1., 1.], [-1., 1.], [1., -1.], [-1., -1.]]) * 3 + 5     # uncorrelated dims, std 3
    assert barlow_twins_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-8)
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    # scale-free up to eps = 1e-5 next to the variances (so not for variances near eps)
    torch.testing.assert_close(barlow_twins_loss(z1, z2), barlow_twins_loss(10 * z1 + 3, 3 * z2), atol=1e-4, rtol=1e-4)
    # symmetric in the views: C becomes C^T
    torch.testing.assert_close(barlow_twins_loss(z1, z2), barlow_twins_loss(z2, z1))


def test_barlow_off_diagonal_weight():
    """Two copies of one dimension: C = all ones, so the loss is lambd * (D^2 - D) exactly."""
    col = torch.tensor([[1.], [2.], [4.], [-3.]])
    z = torch.cat([col, col, col], dim=1)
    assert barlow_twins_loss(z, z, 0.1).item() == pytest.approx(0.1 * 6, rel=1e-4)


def test_barlow_gradient_reaches_both_views_and_shapes_are_checked():
    z1, z2 = torch.randn(5, 3, requires_grad=True), torch.randn(5, 3, requires_grad=True)
    barlow_twins_loss(z1, z2).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        barlow_twins_loss(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="N >= 2"):
        barlow_twins_loss(torch.randn(1, 3), torch.randn(1, 3))


def test_barlow_config_recipe_and_head():
    cfg = load_config(overrides=["method.name=barlow"])
    assert isinstance(cfg.method, BarlowTwinsConfig)
    assert (cfg.method.proj_dim, cfg.method.lambd, cfg.method.bias_lr_scale) == (2048, 5e-3, 0.024)
    assert cfg.optim.name == "lars" and cfg.optim.weight_decay == 1.5e-6
    assert load_config(overrides=["method.name=barlow", "method.lambd=0.001"]).method.lambd == 0.001
    with pytest.raises(ConfigError, match="lambd"):
        load_config(overrides=["method.name=barlow", "method.lambd=-1"])
    small = load_config(overrides=SMALL + ["method.name=barlow"])
    small.augment.mean, small.augment.std = [0.3], [0.3]
    method = build_method(small, 1)
    assert [type(m) for m in method.projector] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear]
    assert method.projector[-1].out_features == 64
    method.train()
    batch = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    loss, logs = method.loss(method.views(batch, step_generator(0, 0, 0, torch.device("cpu"))))
    assert loss.item() == float(logs["loss"]) > 1.0          # the paper's loss, unscaled


def test_barlow_biases_and_norms_take_the_authors_share_of_the_learning_rate(tiny_fashion, tmp_path):
    """As the authors' code (biases and norm parameters at 0.0048 / 0.2 of the weights' rate), not by
    scaling the loss, which would also shrink the gradient against LARS's weight decay."""
    small = load_config(overrides=SMALL + ["method.name=barlow"])
    small.augment.mean, small.augment.std = [0.3], [0.3]
    optimizer = build_optimizer(build_method(small, 1), small.optim)
    assert [(g["decay"], g["lr_scale"]) for g in optimizer.param_groups] == [(True, 1.0), (False, 0.024)]
    simclr = load_config(overrides=SMALL + ["method.name=simclr"])
    simclr.augment.mean, simclr.augment.std = [0.3], [0.3]
    assert [g["lr_scale"] for g in build_optimizer(build_method(simclr, 1), simclr.optim).param_groups] == [1.0, 1.0]
    sgd = load_config(overrides=SMALL + ["method.name=barlow", "optim.name=sgd"])     # a LARS setting
    sgd.augment.mean, sgd.augment.std = [0.3], [0.3]
    assert [g["lr_scale"] for g in build_optimizer(build_method(sgd, 1), sgd.optim).param_groups] == [1.0, 1.0]
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion)).subset(64)
    settings = SMALL + ["method.name=barlow", "optim.warmup_epochs=0", "optim.schedule=constant", "eval.online_every=0"]
    run = pretrain(load_config(overrides=settings + ["train.steps=2"]), tmp_path / "run", data=data, progress=False)

    def rates():
        _, meta = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
        return [g["lr"] for g in meta["optimizer"]["param_groups"]]
    assert run.steps == 2 and rates() == [pytest.approx(small.optim.lr), pytest.approx(0.024 * small.optim.lr)]
    # A scale given with --resume takes effect (the restored groups would otherwise keep the saved one).
    pretrain(load_config(overrides=settings + ["train.steps=3", "method.bias_lr_scale=0.5"]), tmp_path / "run",
             data=data, resume=True, progress=False)
    assert rates() == [pytest.approx(small.optim.lr), pytest.approx(0.5 * small.optim.lr)]


# ----------------------------------------------------------------------------- VICReg

def reference_vicreg(z1, z2, lam, mu, nu, gamma=1.0, eps=1e-4):
    """Eqs. 1-6 as the authors' released code computes them: the invariance is the mean over all N x D
    entries, and the two branches' variance terms are averaged (eq. 6 sums them)."""
    n, d = z1.shape
    invariance = sum((a - b) ** 2 for r1, r2 in zip(z1.tolist(), z2.tolist()) for a, b in zip(r1, r2)) / (n * d)

    def variance(z):
        total = 0.0
        for col in columns(z):
            m = mean(col)
            var = sum((x - m) ** 2 for x in col) / (n - 1)
            total += max(0.0, gamma - math.sqrt(var + eps))
        return total / d

    def covariance(z):
        cols = columns(z)
        means = [mean(c) for c in cols]
        total = 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    cov = sum((cols[i][k] - means[i]) * (cols[j][k] - means[j]) for k in range(n)) / (n - 1)
                    total += cov ** 2
        return total / d

    terms = invariance, (variance(z1) + variance(z2)) / 2, covariance(z1) + covariance(z2)
    return lam * terms[0] + mu * terms[1] + nu * terms[2], terms


@pytest.mark.parametrize("n,d,scale", [(2, 3, 0.5), (6, 4, 0.3), (8, 5, 2.0)])
@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 0.0, 3.0)])
def test_vicreg_matches_loop_reference(n, d, scale, weights):
    torch.manual_seed(n + d)
    z1, z2 = torch.randn(n, d) * scale, torch.randn(n, d) * scale + 0.5
    expected, expected_terms = reference_vicreg(z1, z2, *weights)
    assert vicreg_loss(z1, z2, *weights).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    for got, want in zip(vicreg_terms(z1, z2), expected_terms):
        assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_vicreg_loss_weights_the_average_of_the_two_variance_terms_as_the_released_code():
    """25 * MSE + 12.5 * (v1 + v2) + (c1 + c2) on two fixed (16, 32) tensors, each term written out
    with torch ops: summing v1 + v2 at weight 25 (eq. 6 read literally) doubles the variance term's
    weight against the one the 25 / 25 / 1 weights were tuned with."""
    gen = torch.Generator().manual_seed(7)
    z1 = torch.randn(16, 32, generator=gen) * 0.3
    z2 = z1 + 0.2 * torch.randn(16, 32, generator=gen)

    def v(z):
        return torch.clamp(1 - torch.sqrt(z.var(dim=0) + 1e-4), min=0).mean()

    def c(z):
        centred = z - z.mean(dim=0)
        cov = centred.T @ centred / 15
        return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / 32
    expected = 25 * ((z1 - z2) ** 2).mean() + 12.5 * (v(z1) + v(z2)) + (c(z1) + c(z2))
    assert v(z1) > 0.1 and v(z2) > 0.1                       # the variance term is far from zero here
    assert vicreg_loss(z1, z2).item() == pytest.approx(expected.item(), rel=1e-6)


def test_vicreg_terms_edge_cases():
    constant = torch.ones(4, 3)
    inv, var, cov = vicreg_terms(constant, constant)
    assert inv.item() == 0.0 and cov.item() == 0.0
    # collapse: both branches at gamma - sqrt(eps), averaged
    assert var.item() == pytest.approx(1 - math.sqrt(1e-4), rel=1e-6)
    z = torch.tensor([[1., 1.], [-1., 1.], [1., -1.], [-1., -1.]]) * 2         # std > gamma, uncorrelated
    inv, var, cov = vicreg_terms(z, z + 0.5, gamma=1.0)
    assert inv.item() == pytest.approx(0.25) and var.item() == 0.0 and cov.item() == pytest.approx(0.0, abs=1e-10)
    assert vicreg_terms(z, z, gamma=10.0)[1].item() > 0                          # a larger gamma wants more spread


def test_vicreg_gradient_and_shapes():
    z1, z2 = torch.randn(5, 3, requires_grad=True), torch.randn(5, 3, requires_grad=True)
    vicreg_loss(z1, z2).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="N >= 2"):
        vicreg_loss(torch.randn(1, 3), torch.randn(1, 3))


@pytest.mark.parametrize("loss", [barlow_twins_loss, vicreg_loss])
def test_losses_run_in_fp32_under_bf16_autocast(loss):
    torch.manual_seed(3)
    z1, z2 = torch.randn(16, 32).bfloat16(), torch.randn(16, 32).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(z1, z2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, loss(z1.float(), z2.float()))


def test_vicreg_config_recipe_head_and_logged_terms():
    cfg = load_config(overrides=["method.name=vicreg"])
    assert isinstance(cfg.method, VICRegConfig)
    m = cfg.method
    assert (m.proj_dim, m.invariance_weight, m.variance_weight, m.covariance_weight, m.gamma, m.eps) == \
        (2048, 25.0, 25.0, 1.0, 1.0, 1e-4)
    assert cfg.optim.name == "lars" and cfg.optim.weight_decay == 1e-6
    with pytest.raises(ConfigError, match="eps"):
        load_config(overrides=["method.name=vicreg", "method.eps=0"])
    small = load_config(overrides=SMALL + ["method.name=vicreg"])
    small.augment.mean, small.augment.std = [0.3], [0.3]
    method = build_method(small, 1)
    assert [type(x) for x in method.expander] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear]
    method.train()
    batch = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    loss, logs = method.loss(method.views(batch, step_generator(0, 0, 0, torch.device("cpu"))))
    assert set(logs) == {"loss", "invariance", "variance", "covariance"}
    assert loss.item() == pytest.approx(25 * float(logs["invariance"]) + 25 * float(logs["variance"])
                                        + float(logs["covariance"]), rel=1e-5)


# ----------------------------------------------------------------------------- training

@pytest.mark.parametrize("name", ["barlow", "vicreg"])
def test_short_training_lowers_the_loss_and_beats_random_init_on_knn(one_thread, name, tiny_fashion, tmp_path):
    run, losses = train_tiny(tiny_fashion, tmp_path / "run", SMALL + [f"method.name={name}"])
    assert len(losses) == 4 * (360 // 32)        # 4 epochs of the 360 training images (40 validate)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses
    report, test = knn_against_random_init(run)
    assert report["knn_top1"] > report["knn_top1_random_init"], report
    # on this easy data kNN stays high even when the head collapses (see the next test), so check that too
    assert spread_of_projections(run, test, "expander" if name == "vicreg" else "projector") > 0.3


def test_vicreg_collapses_without_its_variance_and_covariance_terms(one_thread, tiny_fashion, tmp_path):
    """The paper's point (and what makes the spread check above able to fail): invariance alone collapses."""
    run, losses = train_tiny(tiny_fashion, tmp_path / "run", SMALL + ["method.name=vicreg", "method.variance_weight=0",
                                                                   "method.covariance_weight=0"])
    assert losses[-1] < 1e-3
    assert spread_of_projections(run, labelled_eval_sets(run.config)[1], "expander") < 0.05
