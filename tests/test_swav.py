"""SwAV: Sinkhorn-Knopp against a loop over its iterations and its marginals, the swapped-prediction
loss against a loop over views, frozen and re-normalised prototypes, the queue, exact resume, the
recipe, and a short run."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.config import ConfigError, load_config
from selfsup.data import load_images
from selfsup.methods import encode_views
from selfsup.methods.swav import SwAV, SwAVConfig, sinkhorn, swav_loss
from selfsup.run import load_run
from selfsup.build import build_method
from selfsup.train import pretrain

from resume import assert_bitwise_equal, straight_and_resumed
from training import knn_against_random_init

SMALL = ["method.name=swav", "backbone.width=0.125", "train.batch_size=32", "train.precision=fp32",
         "train.log_every=1", "optim.warmup_epochs=0", "eval.batch_size=256", "eval.online_every=0",
         "method.proj_hidden_dim=64", "method.proj_dim=32", "method.num_prototypes=20", "augment.local_crops=2"]


def small_config(*extra):
    return load_config(overrides=SMALL + list(extra))


def small_method(*extra) -> SwAV:
    method = build_method(small_config("augment.mean=[0.5]", "augment.std=[0.25]", *extra), in_channels=1)
    method.train()
    return method


def views_of(method, n=8, seed=0):
    batch = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return method.views(batch, torch.Generator().manual_seed(seed + 1))


def reference_sinkhorn(scores, eps, iterations):
    """SwAV's Algorithm 1 in loops over a (K, B) matrix, before its final rescaling by B."""
    b, k = len(scores), len(scores[0])
    q = [[math.exp(scores[i][j] / eps) for i in range(b)] for j in range(k)]          # (K, B)
    total = sum(map(sum, q))
    q = [[x / total for x in row] for row in q]
    for _ in range(iterations):
        for j in range(k):                                   # each prototype's row to 1/K
            row = sum(q[j])
            q[j] = [x / row / k for x in q[j]]
        for i in range(b):                                   # each sample's column to 1/B
            col = sum(q[j][i] for j in range(k))
            for j in range(k):
                q[j][i] = q[j][i] / col / b
    return torch.tensor([[q[j][i] for j in range(k)] for i in range(b)], dtype=torch.float64)   # (B, K)


def unit_scores(b, k, seed):
    """Cosines between random unit embeddings and unit prototypes, as SwAV scores are."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, 16, generator=g), dim=1) @ F.normalize(torch.randn(k, 16, generator=g), dim=1).T


@pytest.mark.parametrize("b,k,eps,iterations", [(2, 3, 0.05, 3), (6, 4, 0.05, 3), (5, 7, 0.1, 1), (8, 3, 0.5, 10)])
def test_sinkhorn_matches_loop_over_its_iterations(b, k, eps, iterations):
    scores = unit_scores(b, k, seed=b * k)
    codes = sinkhorn(scores, eps, iterations)
    assert codes.shape == (b, k)
    reference = reference_sinkhorn(scores.double().tolist(), eps, iterations)
    torch.testing.assert_close(codes.double() / b, reference, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(codes.sum(1), torch.ones(b), rtol=0, atol=1e-5)      # each code sums to 1


@pytest.mark.parametrize("b,k", [(16, 8), (12, 30), (64, 10)])
def test_sinkhorn_marginals_are_uniform(b, k):
    """Before the final rescaling by B: samples (rows) sum to 1/B exactly after every iteration, and
    prototypes (columns) to 1/K once the iterations have converged."""
    scores = unit_scores(b, k, seed=b + k)
    q = sinkhorn(scores, 0.05, 3) / b
    torch.testing.assert_close(q.sum(1), torch.full((b,), 1 / b), rtol=0, atol=1e-4 / b)
    converged = sinkhorn(scores, 0.05, 500).double() / b
    torch.testing.assert_close(converged.sum(1), torch.full((b,), 1 / b, dtype=torch.float64), rtol=0, atol=1e-4 / b)
    torch.testing.assert_close(converged.sum(0), torch.full((k,), 1 / k, dtype=torch.float64), rtol=0, atol=1e-4 / k)
    # the iterations are what makes the columns even: raw softmax codes are far from it
    raw = F.softmax(scores / 0.05, dim=1) / b
    assert (raw.sum(0) - 1 / k).abs().max() > 100 * (converged.sum(0) - 1 / k).abs().max()


def test_sinkhorn_is_finite_for_sharp_scores_and_ignores_a_global_shift():
    scores = unit_scores(8, 5, seed=0)
    torch.testing.assert_close(sinkhorn(scores, 0.05, 3), sinkhorn(scores + 3.0, 0.05, 3))
    far = torch.ones(8, 5)
    far[:, 0] = -1.0                 # a prototype far from every sample: exp(-2 / 0.01) is 0 in float32
    codes = sinkhorn(far, 0.01, 3)
    assert torch.isfinite(codes).all()
    torch.testing.assert_close(codes.sum(1), torch.ones(8))


def test_sinkhorn_has_no_gradient():
    scores = unit_scores(4, 3, seed=1).requires_grad_()
    assert not sinkhorn(scores).requires_grad


def reference_swav_loss(scores, codes, t):
    """The paper's swapped prediction with multi-crop, in loops: for each global view i and every
    other view j, -1/B sum_b sum_k q_i log softmax(z_j . c / t); averaged over j, then over i."""
    views, batch, k = scores.shape
    globals_ = codes.shape[0]
    total = 0.0
    for i in range(globals_):
        sub = 0.0
        for j in range(views):
            if j == i:
                continue
            for b in range(batch):
                logits = [float(scores[j, b, c]) / t for c in range(k)]
                top = max(logits)
                log_norm = top + math.log(sum(math.exp(x - top) for x in logits))
                sub += -sum(float(codes[i, b, c]) * (logits[c] - log_norm) for c in range(k)) / batch
        total += sub / (views - 1)
    return total / globals_


@pytest.mark.parametrize("views,batch,t", [(2, 2, 0.1), (4, 3, 0.1), (6, 5, 0.5), (3, 2, 1.0)])
def test_swav_loss_matches_loop_over_views(views, batch, t):
    torch.manual_seed(views + batch)
    scores = torch.randn(views, batch, 6).clamp(-1, 1)
    codes = torch.stack([sinkhorn(scores[i], 0.05, 3) for i in range(2)])
    got = swav_loss(scores, codes, t).item()
    assert got == pytest.approx(reference_swav_loss(scores, codes, t), rel=1e-5, abs=1e-6)


def test_swav_loss_two_views_is_the_symmetric_swap():
    torch.manual_seed(7)
    scores = torch.randn(2, 4, 5)
    codes = torch.softmax(torch.randn(2, 4, 5), dim=-1)
    log_p = F.log_softmax(scores / 0.1, dim=-1)
    expected = (-(codes[0] * log_p[1]).sum(1).mean() - (codes[1] * log_p[0]).sum(1).mean()) / 2
    torch.testing.assert_close(swav_loss(scores, codes, 0.1), expected)


def test_swav_loss_gradient_reaches_the_scores_not_the_codes():
    torch.manual_seed(8)
    scores = torch.randn(4, 3, 5, requires_grad=True)
    codes = torch.softmax(torch.randn(2, 3, 5), dim=-1).requires_grad_()
    swav_loss(scores, codes).backward()
    assert codes.grad is None
    assert scores.grad is not None and scores.grad.abs().sum() > 0


def test_prototypes_frozen_first_then_trained_and_kept_unit_norm():
    method = small_method("method.freeze_prototypes=0.1")
    assert torch.allclose(method.prototypes.weight.norm(dim=1), torch.ones(20))
    views = views_of(method)
    method.loss(views)[0].backward()
    assert method.prototypes.weight.grad is None
    assert all(p.grad is not None for p in method.projector.parameters())
    method.zero_grad(set_to_none=True)
    method.after_step(0.1)
    method.loss(views)[0].backward()
    assert method.prototypes.weight.grad is not None
    with torch.no_grad():
        method.prototypes.weight.sub_(method.prototypes.weight.grad * 100)     # an optimizer step
    assert not torch.allclose(method.prototypes.weight.norm(dim=1), torch.ones(20))
    method.after_step(0.2)
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(20))


def test_loss_of_the_method_is_swav_loss_on_its_own_codes():
    method = small_method("method.freeze_prototypes=0")
    views = views_of(method)
    loss, _ = method.loss(views)
    with torch.no_grad():
        z = F.normalize(method.projector(torch.cat(encode_views(method.backbone, views))), dim=1)
        scores = (z @ method.prototypes.weight.T).view(4, 8, -1)
        codes = torch.stack([sinkhorn(scores[i], 0.05, 3) for i in range(2)])
    torch.testing.assert_close(loss.detach(), swav_loss(scores, codes, 0.1), rtol=1e-5, atol=1e-6)


def test_queue_fills_from_its_start_with_the_global_views_and_feeds_the_codes_once_full():
    method = small_method("method.queue_size=16", "method.queue_start=0.5", "method.freeze_prototypes=0")
    views = views_of(method)
    method.loss(views)
    method.after_step(0.25)
    assert [q.filled for q in method.queues] == [0, 0]           # before queue_start nothing is kept
    method.after_step(0.5)
    z = []
    for seed in (0, 3):                                          # two batches of 8 fill the 16 rows
        method.loss(views_of(method, seed=seed))                 # kept for the queue in after_step
        with torch.no_grad():
            z.append(F.normalize(method.projector(torch.cat(encode_views(method.backbone, views_of(method, seed=seed)))),
                                 dim=1).view(4, 8, -1))
        method.after_step(0.6)
        if seed == 0:                     # half full: the codes are the batch's own, as the authors' code does
            assert [q.filled for q in method.queues] == [8, 8] and not method.queues[0].full
            half_full_loss, _ = method.loss(views_of(method, seed=5))
    assert [q.filled for q in method.queues] == [16, 16] and method.queues[0].full
    kept = [torch.cat([z[0][i], z[1][i]]) for i in range(2)]
    for i in range(2):
        torch.testing.assert_close(method.queues[i].contents(), kept[i], rtol=1e-5, atol=1e-6)
    # With the queue, Sinkhorn spreads the batch and the queue together over the prototypes:
    # the batch's codes are the last B rows of the codes of [queue; batch].
    other_views = views_of(method, seed=5)
    loss_with_queue, _ = method.loss(other_views)
    with torch.no_grad():
        w = method.prototypes.weight
        scores = (F.normalize(method.projector(torch.cat(encode_views(method.backbone, other_views))), dim=1)
                  @ w.T).view(4, 8, -1)
        codes = torch.stack([sinkhorn(torch.cat([kept[i] @ w.T, scores[i]]), 0.05, 3)[-8:] for i in range(2)])
        codes_without_queue = torch.stack([sinkhorn(scores[i], 0.05, 3) for i in range(2)])
    torch.testing.assert_close(loss_with_queue.detach(), swav_loss(scores, codes, 0.1), rtol=1e-5, atol=1e-6)
    assert abs(loss_with_queue.item() - swav_loss(scores, codes_without_queue, 0.1).item()) > 1e-3
    # The weights did not change in between (no optimizer here): half full, the queue was left out.
    torch.testing.assert_close(half_full_loss.detach(), swav_loss(scores, codes_without_queue, 0.1), rtol=1e-5,
                               atol=1e-6)


def test_config_has_the_recipe_and_user_settings_win():
    cfg = load_config(overrides=["method.name=swav"])
    assert isinstance(cfg.method, SwAVConfig)
    assert cfg.augment.local_crops == SwAV.recipe["augment"]["local_crops"] > 0
    assert (cfg.method.temperature, cfg.method.sinkhorn_epsilon, cfg.method.sinkhorn_iterations,
            cfg.method.queue_size) == (0.1, 0.05, 3, 0)
    assert load_config(overrides=["method.name=swav", "augment.local_crops=0"]).augment.local_crops == 0


@pytest.mark.parametrize("override", ["method.temperature=0", "method.sinkhorn_epsilon=-1",
                                      "method.sinkhorn_iterations=0", "method.num_prototypes=1",
                                      "method.queue_size=-5", "method.freeze_prototypes=2"])
def test_invalid_settings_are_config_errors(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(overrides=["method.name=swav", override])


def test_resume_gives_bitwise_the_state_of_an_unbroken_run(tiny_fashion, tmp_path, monkeypatch):
    """Prototypes, queues and the schedule position come back: 3 + 3 steps equal 6 steps."""
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    extra = ["train.steps=6", "train.batch_size=16", "method.queue_size=40", "method.queue_start=0.2",
             "method.freeze_prototypes=0.4", "train.checkpoint_every=3"]
    straight, resumed = straight_and_resumed(lambda: small_config(*extra), data, tmp_path, 3, monkeypatch)
    assert_bitwise_equal(straight, resumed)
    assert {"model.queues.0.items", "model.queues.1.count", "model.progress.value"} <= straight.keys()
    assert int(straight["model.queues.0.count"]) == 40       # pushes at steps 2-5 (progress >= 0.2): 64, capped


def test_short_training_lowers_the_loss_and_beats_random_init_on_knn(tiny_fashion, tmp_path):
    cfg = small_config("train.epochs=3", "optim.lr=1.0", f"data.data_dir={tiny_fashion}",
                       "augment.crop_scale=[0.6,1.0]", "augment.flip_p=0.0", "augment.local_crop_scale=[0.3,0.6]")
    result = pretrain(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert result.steps == len(rows) == 3 * (360 // 32)       # 3 epochs of the 360 training images
    first, last = sum(r["loss"] for r in rows[:4]) / 4, sum(r["loss"] for r in rows[-8:]) / 8
    assert last < first - 0.1, (first, last)
    report, _ = knn_against_random_init(load_run(tmp_path / "run"))
    assert report["knn_top1"] > report["knn_top1_random_init"], report


def test_loss_under_bf16_autocast_is_fp32_and_close_to_the_fp32_loss():
    method = small_method()
    views = views_of(method)
    with torch.no_grad():
        full, _ = method.loss(views)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half, _ = method.loss(views)
    assert half.dtype == torch.float32 and torch.isfinite(half)
    assert half.item() == pytest.approx(full.item(), rel=0.05)


def test_a_compiled_step_with_the_queue_is_one_graph_and_stops_compiling_once_the_queue_is_full():
    """The queue's pointer and count are host numbers; traced as constants, every push would compile the
    step's graph again (8 times, then torch gives up and runs eagerly), and read outside the graph they
    would break it. The step reads only whether the queue is full: one recompile when it fills."""
    from torch._dynamo.utils import counters
    from selfsup.train import Objective
    method = build_method(small_config("method.queue_size=48", "method.queue_start=0", "augment.local_crops=0",
                                       "augment.mean=[0.5]", "augment.std=[0.25]"), in_channels=1)
    method.train()
    # dynamo alone (no code generation); fullgraph: a graph break raises
    objective = torch.compile(Objective(method), backend="eager", fullgraph=True)
    torch._dynamo.reset()
    counters.clear()
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    graphs = []
    for step in range(14):                   # 8 rows a view each push: the queue is full after the 6th
        loss, _ = objective(method.views(images, torch.Generator().manual_seed(step)))
        loss.backward()
        method.after_step((step + 1) / 14)
        graphs.append(counters["stats"]["unique_graphs"])
    assert counters["frames"]["total"] == counters["frames"]["ok"]
    assert graphs[8:] == [graphs[8]] * 6 and graphs[-1] <= 12, graphs
    torch._dynamo.reset()
