"""BYOL: the loss against a loop over eq. 2 of Grill et al. (2020), no gradient into the target,
the target's momentum update, the recipe, and a short training run that learns."""
import math

import pytest
import torch
from torch import nn

from selfsup.config import ConfigError, load_config
from selfsup.data import load_images
from selfsup.methods.byol import BYOL, BYOLConfig, byol_loss
from selfsup.methods.momentum import cosine_momentum
from selfsup.optim import build_optimizer
from selfsup.build import build_method
from selfsup.train import step_generator

from resume import assert_bitwise_equal, straight_and_resumed
from training import knn_against_random_init, spread_of_projections, train_tiny

SMALL = ["method.name=byol", "backbone.width=0.125", "train.batch_size=32", "train.precision=fp32",
         "train.log_every=1", "optim.warmup_epochs=0", "eval.batch_size=256", "method.proj_hidden_dim=64",
         "method.pred_hidden_dim=64", "method.proj_dim=32"]


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def reference_byol(p1, p2, z1, z2):
    """Eq. 2 literally: per sample, ||p1/|p1| - z2/|z2|||^2 + ||p2/|p2| - z1/|z1|||^2, averaged over samples."""
    total = 0.0
    for a, b, c, d in zip(p1.tolist(), p2.tolist(), z1.tolist(), z2.tolist()):
        for p, z in ((a, d), (b, c)):
            pn, zn = math.sqrt(sum(x * x for x in p)), math.sqrt(sum(x * x for x in z))
            total += sum((x / pn - y / zn) ** 2 for x, y in zip(p, z))
    return total / len(p1)


@pytest.mark.parametrize("n", [2, 7])
def test_byol_loss_matches_loop_reference(n):
    torch.manual_seed(n)
    p1, p2, z1, z2 = (torch.randn(n, 5) * s for s in (1.0, 3.0, 0.5, 2.0))
    assert byol_loss(p1, p2, z1, z2).item() == pytest.approx(reference_byol(p1, p2, z1, z2), rel=1e-5, abs=1e-6)


def test_byol_loss_has_both_symmetric_terms():
    torch.manual_seed(1)
    p1, p2, z1, z2 = (torch.randn(4, 6) for _ in range(4))
    one_way = (2 - 2 * torch.nn.functional.cosine_similarity(p2, z1, dim=1)).mean()
    # p1 predicting z2 perfectly leaves only the other order's term, and the other way round
    torch.testing.assert_close(byol_loss(3 * z2, p2, z1, z2), one_way)
    torch.testing.assert_close(byol_loss(p2, p1, z2, z1), byol_loss(p1, p2, z1, z2))
    assert byol_loss(z2, z1, z1, z2).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(-z2, -z1, z1, z2).item() == pytest.approx(8.0, abs=1e-5)       # 2 - 2cos = 4, twice


def test_byol_loss_sends_no_gradient_to_the_targets():
    torch.manual_seed(2)
    p1, p2, z1, z2 = (torch.randn(3, 4, requires_grad=True) for _ in range(4))
    byol_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0


def test_byol_loss_shape_check():
    with pytest.raises(ValueError):
        byol_loss(torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 2))


def test_byol_loss_runs_in_fp32_under_bf16_autocast():
    torch.manual_seed(3)
    p1, p2, z1, z2 = (torch.randn(8, 16).bfloat16() for _ in range(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = byol_loss(p1, p2, z1, z2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, byol_loss(p1.float(), p2.float(), z1.float(), z2.float()))


def small_byol():
    cfg = load_config(overrides=SMALL)
    cfg.augment.mean, cfg.augment.std = [0.3], [0.3]
    return build_method(cfg, 1), cfg


def test_heads_and_target_layout():
    method, _ = small_byol()
    assert [type(m) for m in method.projector] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert [type(m) for m in method.predictor] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert method.predictor[0].in_features == method.predictor[3].out_features == 32
    keys = method.state_dict().keys()     # the checkpoint holds the target, so a resume restores it
    assert any(k.startswith("target_backbone.") for k in keys)
    assert any(k.startswith("target_projector.") for k in keys)
    for online, target in ((method.backbone, method.target_backbone), (method.projector, method.target_projector)):
        for (name, p), q in zip(online.named_parameters(), target.parameters()):
            assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), name


def test_no_gradient_reaches_the_target_and_it_is_not_optimized():
    method, cfg = small_byol()
    method.train()
    batch = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    loss, logs = method.loss(method.views(batch, step_generator(0, 0, 0, torch.device("cpu"))))
    loss.backward()
    for name, p in list(method.target_backbone.named_parameters()) + list(method.target_projector.named_parameters()):
        assert not p.requires_grad and p.grad is None, name
    for module in (method.backbone, method.projector, method.predictor):
        assert all(p.grad is not None for p in module.parameters())
    optimized = {id(p) for group in build_optimizer(method, cfg.optim).param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in method.target_backbone.parameters()}
    assert not optimized & {id(p) for p in method.target_projector.parameters()}


def test_after_step_moves_the_target_by_the_cosine_momentum():
    method, _ = small_byol()
    with torch.no_grad():
        for p in list(method.backbone.parameters()) + list(method.projector.parameters()):
            p.add_(torch.randn_like(p))
    old = {k: v.clone() for k, v in method.state_dict().items()}
    method.after_step(0.25)
    m = cosine_momentum(0.99, 0.25)
    assert 0.99 < m < 1
    params = dict(method.named_parameters())
    for prefix in ("backbone.", "projector."):
        for name, p in params.items():
            if name.startswith(prefix):
                target = params["target_" + name]
                torch.testing.assert_close(target, m * old["target_" + name] + (1 - m) * p.detach(), rtol=0, atol=1e-6)
    frozen = {k: v.clone() for k, v in method.state_dict().items()}
    method.after_step(1.0)                                          # momentum 1 at the end: no move
    for k, v in method.state_dict().items():
        if k.startswith("target_") and "num_batches_tracked" not in k and "running" not in k:
            assert torch.equal(v, frozen[k]), k


def test_resume_restores_the_target_exactly(tiny_fashion, tmp_path, monkeypatch):
    """The target lives in the checkpoint and its momentum is a function of progress alone, so a run
    killed after step 3 and resumed ends with bitwise the weights (target included) of an unbroken one."""
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    small = SMALL + ["train.steps=6", "train.checkpoint_every=3"]
    straight, resumed = straight_and_resumed(lambda: load_config(overrides=small), data, tmp_path, 3, monkeypatch)
    assert_bitwise_equal(straight, resumed)
    assert any(k.startswith("model.target_backbone.") for k in straight)


def test_load_config_gives_byol_with_its_recipe():
    cfg = load_config(overrides=["method.name=byol"])
    assert isinstance(cfg.method, BYOLConfig)
    assert (cfg.method.proj_hidden_dim, cfg.method.proj_dim, cfg.method.pred_hidden_dim) == (4096, 256, 4096)
    assert (cfg.method.base_momentum, cfg.method.final_momentum) == (0.99, 1.0)
    assert cfg.optim.name == "lars" and cfg.optim.weight_decay == 1.5e-6
    assert load_config(overrides=["method.name=byol", "train.epochs=1"]).train.epochs == 1   # the user wins
    with pytest.raises(ConfigError, match="base_momentum"):
        load_config(overrides=["method.name=byol", "method.base_momentum=1.5"])
    with pytest.raises(ConfigError, match="proj_dim"):
        load_config(overrides=["method.name=byol", "method.proj_dim=0"])


def test_multi_crop_is_refused_with_a_clear_message():
    cfg = load_config(overrides=SMALL + ["augment.local_crops=2"])
    with pytest.raises(ValueError, match="local_crops=0"):
        build_method(cfg, 1)


def test_short_training_lowers_the_loss_and_beats_random_init_on_knn(one_thread, tiny_fashion, tmp_path):
    run, losses = train_tiny(tiny_fashion, tmp_path / "run", SMALL)
    assert len(losses) == 4 * (360 // 32)        # 4 epochs of the 360 training images (40 validate)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses
    report, test = knn_against_random_init(run)
    assert report["knn_top1"] > report["knn_top1_random_init"], report
    # on this easy data kNN stays high even when the head collapses (see test_barlow_vicreg.py), so check that too
    assert spread_of_projections(run, test) > 0.3
