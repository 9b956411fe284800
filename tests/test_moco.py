"""MoCo v2 and v3: the losses against loops over the papers' formulas, no gradient into the key
encoders, the EMA and queue updates by hand, the recipes, exact resume, and short runs that learn."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones import backbone_names
from selfsup.checkpoint import list_checkpoints, load_checkpoint
from selfsup.config import ConfigError, load_config
from selfsup.data import load_images
from selfsup.methods.moco2 import MoCo2, MoCo2Config, moco_loss, split_batch
from selfsup.methods.moco3 import MoCo3, moco3_loss
from selfsup.methods.momentum import cosine_momentum
from selfsup.optim import build_optimizer
from selfsup.run import knn_report, labelled_eval_sets, load_run
from selfsup.build import build_method
from selfsup.train import pretrain

from resume import assert_bitwise_equal, straight_and_resumed
from training import dot, some_views, unit

# train.threads=1: on a CPU shared with other processes two OpenMP threads per process can run 10x slower.
SMALL = ["backbone.width=0.125", "train.batch_size=32", "train.precision=fp32", "train.log_every=1",
         "optim.warmup_epochs=0", "eval.batch_size=256", "train.threads=1"]
HEADS = {"moco2": ["method.proj_hidden_dim=64", "method.proj_dim=32", "method.queue_size=96"],
         "moco3": ["method.proj_hidden_dim=64", "method.pred_hidden_dim=64", "method.proj_dim=32"]}


def small(name, *extra):
    vit = any(e.startswith("backbone.name=vit") for e in extra)
    base = [o for o in SMALL if not (vit and o.startswith("backbone.width"))]      # a ViT has no width
    return load_config(overrides=[f"method.name={name}"] + base + HEADS[name] + list(extra))


def built(name, *extra):
    cfg = small(name, *extra)
    cfg.augment.mean, cfg.augment.std = [0.3], [0.3]
    return build_method(cfg, 1)




def loop_queue_nce(q, k, queue, t):
    """MoCo eq. 1 literally: -log exp(q.k+/t) / (exp(q.k+/t) + sum over the queue's K keys exp(q.k-/t))."""
    total = 0.0
    negatives = [unit(r) for r in queue.tolist()]
    for qi, ki in zip(q.tolist(), k.tolist()):
        qi, ki = unit(qi), unit(ki)
        pos = math.exp(dot(qi, ki) / t)
        total += -math.log(pos / (pos + sum(math.exp(dot(qi, n) / t) for n in negatives)))
    return total / len(q)


def loop_ctr(q, k, t):
    """MoCo v3's ctr(q, k) literally: 2t * mean_i -log exp(q_i.k_i/t) / sum_j exp(q_i.k_j/t)."""
    qs, ks = [unit(r) for r in q.tolist()], [unit(r) for r in k.tolist()]
    total = 0.0
    for i, qi in enumerate(qs):
        total += -math.log(math.exp(dot(qi, ks[i]) / t) / sum(math.exp(dot(qi, kj) / t) for kj in ks))
    return 2 * t * total / len(qs)


# ----------------------------------------------------------------------------- losses

@pytest.mark.parametrize("n,k,t", [(2, 3, 0.2), (5, 16, 0.07), (3, 1, 1.0)])
def test_moco_loss_matches_loop_reference(n, k, t):
    torch.manual_seed(n + k)
    q1, k2, queue = torch.randn(n, 6) * 2, torch.randn(n, 6), torch.randn(k, 6)
    assert moco_loss(q1, k2, queue, t).item() == pytest.approx(loop_queue_nce(q1, k2, queue, t), rel=1e-5)


@pytest.mark.parametrize("n,t", [(2, 0.2), (4, 0.5)])
def test_symmetric_moco_loss_averages_both_terms(n, t):
    torch.manual_seed(n)
    q1, q2, k1, k2, queue = torch.randn(n, 5), torch.randn(n, 5), torch.randn(n, 5), torch.randn(n, 5), torch.randn(7, 5)
    expected = (loop_queue_nce(q1, k2, queue, t) + loop_queue_nce(q2, k1, queue, t)) / 2
    assert moco_loss(q1, k2, queue, t, q2, k1).item() == pytest.approx(expected, rel=1e-5)
    # each term matters: the symmetric loss differs from either one alone
    assert abs(moco_loss(q1, k2, queue, t, q2, k1).item() - moco_loss(q1, k2, queue, t).item()) > 1e-4


@pytest.mark.parametrize("n,t", [(2, 0.2), (2, 1.0), (6, 0.1)])
def test_moco3_loss_matches_loop_reference(n, t):
    torch.manual_seed(10 * n)
    q1, q2, k1, k2 = (torch.randn(n, 6) * s for s in (1.0, 2.0, 0.5, 3.0))
    expected = loop_ctr(q1, k2, t) + loop_ctr(q2, k1, t)
    assert moco3_loss(q1, q2, k1, k2, t).item() == pytest.approx(expected, rel=1e-5)
    swapped_keys = loop_ctr(q1, k1, t) + loop_ctr(q2, k2, t)      # the views must be crossed
    assert abs(moco3_loss(q1, q2, k1, k2, t).item() - swapped_keys) > 1e-4


# ----------------------------------------------------------------------------- stop-gradient and updates

@pytest.mark.parametrize("name,key_modules", [("moco2", ("key_backbone", "key_projector")),
                                              ("moco3", ("momentum_backbone", "momentum_projector"))])
def test_no_gradient_reaches_the_key_encoder_and_it_is_not_optimized(name, key_modules):
    torch.manual_seed(0)
    method = built(name)
    loss, _ = method.loss(some_views(method))
    loss.backward()
    optimized = {id(p) for group in build_optimizer(method, small(name).optim).param_groups for p in group["params"]}
    for module in key_modules:
        for p in getattr(method, module).parameters():
            assert not p.requires_grad and p.grad is None
            assert id(p) not in optimized
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.backbone.parameters())
    if name == "moco2":
        assert not method.queue.items.requires_grad


def test_moco2_after_step_moves_the_key_encoder_by_ema_and_enqueues_view_2_keys():
    torch.manual_seed(1)
    method = built("moco2", "method.momentum=0.9", "method.shuffle_bn_splits=1")     # whole-batch BN: by hand
    views = some_views(method, n=8)
    # what the key encoder gives for view 2, computed by hand before the step changes anything
    with torch.no_grad():
        expected_keys = F.normalize(method.key_projector(method.key_backbone(views[1])), dim=1)
    queue_before = method.queue.items.clone()
    loss, _ = method.loss(views)
    loss.backward()
    keys_before = [p.detach().clone() for p in method.key_backbone.parameters()]
    with torch.no_grad():                                  # stands in for an optimizer step
        for p in method.backbone.parameters():
            p.add_(torch.randn_like(p))
    method.after_step(0.5)
    for old, target, online in zip(keys_before, method.key_backbone.parameters(), method.backbone.parameters()):
        torch.testing.assert_close(target, 0.9 * old + 0.1 * online)
    assert method.queue.filled == 8 and int(method.queue.pointer) == 8
    torch.testing.assert_close(method.queue.items[:8], expected_keys, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(method.queue.items[8:], queue_before[8:])
    method.after_step(0.6)                                 # no loss in between: nothing more is enqueued
    assert method.queue.filled == 8


def test_moco2_loss_crosses_the_views_and_uses_the_key_encoder():
    """The method's loss is the formula on queries from the online encoder and keys from the key
    encoder, view 1's query against view 2's key and vice versa. (Train-mode BN over each view's whole
    batch: one sub-batch, so Shuffle-BN changes nothing here.)"""
    torch.manual_seed(5)
    method = built("moco2", "method.shuffle_bn_splits=1")
    views = some_views(method)
    with torch.no_grad():
        for p in method.key_projector.parameters():            # key encoder != query encoder
            p.add_(0.1 * torch.randn_like(p))
        q1, q2 = (method.projector(method.backbone(v)) for v in views[:2])
        k1, k2 = (method.key_projector(method.key_backbone(v)) for v in views[:2])
    queue, t = method.queue.items, method.cfg.temperature
    loss, _ = method.loss(views)
    expected = (loop_queue_nce(q1, k2, queue, t) + loop_queue_nce(q2, k1, queue, t)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    uncrossed = (loop_queue_nce(q1, k1, queue, t) + loop_queue_nce(q2, k2, queue, t)) / 2
    assert abs(expected - uncrossed) > 1e-3


def sub_batch_members(outputs: torch.Tensor) -> list[frozenset]:
    """For outputs of a batch norm (no affine) over one-hot rows e_i: which rows shared row i's
    sub-batch. (e_i - mean) / std is negative exactly at the coordinates of the other members."""
    return [frozenset(torch.nonzero(row < -1e-6).flatten().tolist()) | {i} for i, row in enumerate(outputs)]


def test_shuffle_bn_normalises_a_key_with_other_images_than_its_query():
    """MoCo sec. 3.3 on one process: queries are normalised over sub-batches in their order, keys over
    sub-batches cut from a shuffled order and put back. Read through a batch norm of one-hot rows, no
    key's sub-batch is its query's; without the shuffle every one is."""
    norm = nn.BatchNorm1d(16, affine=False)
    rows = torch.eye(16)
    order = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    queries = sub_batch_members(split_batch(norm, rows, 4))
    keys = sub_batch_members(split_batch(norm, rows, 4, order))
    unshuffled = sub_batch_members(split_batch(norm, rows, 4, torch.arange(16)))
    assert all(len(q) == 4 for q in queries) and queries == [frozenset(range(i // 4 * 4, i // 4 * 4 + 4))
                                                             for i in range(16)]
    assert keys != queries and sum(k == q for k, q in zip(keys, queries)) <= 2
    assert unshuffled == queries
    for i, members in enumerate(keys):                       # each key's sub-batch: four rows dealt out by `order`
        position = order.tolist().index(i)
        assert members == frozenset(order[position // 4 * 4:position // 4 * 4 + 4].tolist())


def test_moco2_draws_its_shuffle_from_the_step_generator_and_its_key_encoder_uses_it(monkeypatch):
    method = built("moco2")
    first, second = some_views(method, seed=0), some_views(method, seed=0)
    assert torch.equal(first[-1], second[-1]) and sorted(first[-1].tolist()) == list(range(8))
    assert not torch.equal(first[-1], some_views(method, seed=1)[-1])
    seen = []
    real = method.key_backbone.forward
    monkeypatch.setattr(method.key_backbone, "forward", lambda x: seen.append(x.clone()) or real(x))
    method.loss(first)
    splits = method.cfg.shuffle_bn_splits
    shuffled_view_1 = torch.cat(seen[:splits])
    assert torch.equal(shuffled_view_1, first[0][first[-1]])    # the keys of view 1, dealt out in the drawn order


def test_moco2_uses_the_queue_as_negatives():
    torch.manual_seed(2)
    method = built("moco2", "method.symmetric=false")
    views = some_views(method)
    method.eval()                                          # BN from running stats: the same output twice
    first, _ = method.loss(views)
    method.queue.items.copy_(F.normalize(torch.randn_like(method.queue.items), dim=1))
    second, _ = method.loss(views)
    assert abs(first.item() - second.item()) > 1e-4


def test_moco3_after_step_uses_the_cosine_momentum():
    torch.manual_seed(3)
    method = built("moco3", "method.momentum=0.9")
    loss, _ = method.loss(some_views(method))
    loss.backward()
    before = [p.detach().clone() for p in method.momentum_projector.parameters()]
    with torch.no_grad():
        for p in method.projector.parameters():
            p.add_(torch.randn_like(p))
    method.after_step(0.25)
    m = cosine_momentum(0.9, 0.25)
    assert 0.9 < m < 1.0
    for old, target, online in zip(before, method.momentum_projector.parameters(), method.projector.parameters()):
        torch.testing.assert_close(target, m * old + (1 - m) * online)
    kept = [p.detach().clone() for p in method.momentum_projector.parameters()]
    method.after_step(1.0)                                 # momentum 1 at the end: the target stays put
    for old, target in zip(kept, method.momentum_projector.parameters()):
        torch.testing.assert_close(target, old)


def test_moco3_loss_crosses_the_views_and_uses_the_momentum_encoder():
    torch.manual_seed(6)
    method = built("moco3")
    views = some_views(method)
    with torch.no_grad():
        for p in method.momentum_projector.parameters():
            p.add_(0.1 * torch.randn_like(p))
        # each view through the networks on its own (batch norm per view, as the paper's code)
        q1, q2 = (method.predictor(method.projector(method.backbone(v))) for v in views)
        k1, k2 = (method.momentum_projector(method.momentum_backbone(v)) for v in views)
    loss, _ = method.loss(views)
    expected = loop_ctr(q1, k2, 0.2) + loop_ctr(q2, k1, 0.2)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert abs(expected - (loop_ctr(q1, k1, 0.2) + loop_ctr(q2, k2, 0.2))) > 1e-3


def test_moco3_heads_follow_the_paper():
    method = built("moco3")
    kinds = [type(m).__name__ for m in method.projector]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert not method.projector[-1].affine
    assert [type(m).__name__ for m in method.predictor] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert not hasattr(method, "queue")


# ----------------------------------------------------------------------------- config and recipe

@pytest.mark.parametrize("name,cls,temperature", [("moco2", MoCo2, 0.1), ("moco3", MoCo3, 0.2)])
def test_load_config_gives_the_method_with_its_recipe(name, cls, temperature):
    cfg = load_config(overrides=[f"method.name={name}"])
    assert type(cfg.method) is cls.config_class and cfg.method.name == name
    assert cfg.method.temperature == temperature and cfg.method.momentum == 0.99
    assert load_config(overrides=[f"method.name={name}", "train.epochs=1"]).train.epochs == 1   # the user wins


@pytest.mark.parametrize("name", ["moco2", "moco3"])
def test_config_file_is_the_default_recipe_written_out(name):
    path = Path(__file__).parents[1] / "configs" / f"{name}-fashion-mnist.yaml"
    assert load_config(path).to_dict() == load_config(overrides=[f"method.name={name}"]).to_dict()


def test_moco2_defaults():
    cfg = MoCo2Config()
    assert (cfg.queue_size, cfg.proj_hidden_dim, cfg.proj_dim, cfg.symmetric) == (4096, 2048, 128, True)


@pytest.mark.parametrize("name,override,message", [
    ("moco2", "method.temperature=0", "temperature"),
    ("moco2", "method.momentum=1.0", "momentum"),
    ("moco2", "method.queue_size=0", "queue_size"),
    ("moco3", "method.momentum=1.5", "momentum"),
    ("moco3", "method.pred_hidden_dim=0", "pred_hidden_dim"),
])
def test_bad_settings_are_clear_errors(name, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[f"method.name={name}", override])


@pytest.mark.parametrize("name", ["moco2", "moco3"])
def test_multi_crop_is_refused_with_a_clear_message(name):
    with pytest.raises(ValueError, match="local_crops=0"):
        built(name, "augment.local_crops=2")


# ----------------------------------------------------------------------------- training

def _model_tensors(run_dir):
    tensors, _ = load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


@pytest.mark.parametrize("name", ["moco2", "moco3"])
def test_resume_restores_key_encoder_and_queue_exactly(name, tiny_fashion, tmp_path, monkeypatch):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    make = lambda: small(name, "train.steps=4", "train.checkpoint_every=2")  # noqa: E731
    straight, resumed = straight_and_resumed(make, data, tmp_path, 2, monkeypatch)
    assert_bitwise_equal(straight, resumed)
    assert any("key_" in k or "momentum_" in k for k in straight)
    if name == "moco2":
        assert int(resumed["model.queue.count"]) == 96     # 4 steps x 32 keys filled the 96-slot queue
        assert int(resumed["model.queue.pointer"]) == 128 % 96


@pytest.mark.parametrize("name", ["moco2", "moco3"])
def test_short_training_lowers_the_loss_and_beats_random_init_on_knn(name, tiny_fashion, tmp_path):
    # MoCo v2 with its paper-sized head; until its queue of 96 holds real keys (3 steps of 32) its
    # negatives are random vectors, so its loss is compared from step 4 on.
    heads = ["method.queue_size=96"] if name == "moco2" else HEADS[name]
    cfg = load_config(overrides=[f"method.name={name}"] + SMALL + heads + [
        "train.epochs=4", "optim.lr=1.0", f"data.data_dir={tiny_fashion}", "augment.crop_scale=[0.6,1.0]",
        "augment.flip_p=0.0"])
    pretrain(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 4 * (360 // 32)        # 4 epochs of the 360 training images (40 validate)
    assert sum(losses[-5:]) / 5 < sum(losses[3:8]) / 5, losses
    run = load_run(tmp_path / "run")
    train, test = labelled_eval_sets(run.config)
    report = knn_report(run, train, test, k=20, progress=False)
    assert report["knn_top1"] > report["knn_top1_random_init"], report


@pytest.mark.skipif("vit_tiny" not in backbone_names(), reason="the ViT backbone is not registered")
def test_moco3_trains_a_vit(tiny_fashion, tmp_path):
    cfg = small("moco3", "backbone.name=vit_tiny", "train.steps=4", "optim.name=adamw", "optim.lr=1e-3",
                "optim.weight_decay=0.1", f"data.data_dir={tiny_fashion}", "train.batch_size=8")
    pretrain(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    method = run.method
    # the random patch projection stays frozen and identical in both encoders; the rest trained
    assert not any(p.requires_grad for p in method.backbone.patch_embed.parameters())
    torch.testing.assert_close(method.backbone.patch_embed.weight, method.momentum_backbone.patch_embed.weight)
    fresh = built("moco3", "backbone.name=vit_tiny")
    torch.testing.assert_close(method.backbone.patch_embed.weight, fresh.backbone.patch_embed.weight)
    assert not torch.equal(next(method.backbone.blocks.parameters()), next(fresh.backbone.blocks.parameters()))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
