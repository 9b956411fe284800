"""Label propagation: the graph, the solve and the pseudo-label weights against their formulas,
and the probe on data where the unlabelled images are what tells the classes apart."""
import math

import pytest
import torch
import torch.nn.functional as F

import selfsup.evaluate.propagation as propagation
from selfsup.evaluate.linear import linear_probe
from selfsup.evaluate.propagation import knn_graph, propagate, propagation_probe, pseudo_labels
from selfsup.evaluate.splits import train_val_split


def sphere_points(n, dim=6, seed=0):
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def dense_graph(feats, k, gamma):
    """The graph written out from the formula: a_ij = max(cos, 0)^gamma for j among i's k nearest
    (not i itself), W = A + A^T, S = D^-1/2 W D^-1/2."""
    n = len(feats)
    a = torch.zeros(n, n)
    for i in range(n):
        sims = [(float(feats[i] @ feats[j]), j) for j in range(n) if j != i]
        for sim, j in sorted(sims, reverse=True)[:k]:
            a[i, j] = max(sim, 0.0) ** gamma
    w = a + a.T
    d = w.sum(1)
    return w / d.sqrt()[:, None] / d.sqrt()[None, :]


def test_knn_graph_matches_its_formula():
    feats = sphere_points(40)
    graph = knn_graph(feats, k=5, gamma=3.0, chunk=16)      # chunks that do not divide the rows
    torch.testing.assert_close(graph.to_dense(), dense_graph(feats, 5, 3.0), rtol=1e-5, atol=1e-6)


def test_propagation_solves_the_linear_system():
    feats = sphere_points(60)
    graph = knn_graph(feats, k=6)
    labelled = torch.tensor([0, 5, 9, 20, 31])
    labels = torch.tensor([0, 1, 1, 2, 0])
    y = torch.zeros(60, 3)
    y[labelled, labels] = torch.tensor([0.5, 0.5, 0.5, 1.0, 0.5])      # 1 / labels of its class
    expected = torch.linalg.solve(torch.eye(60) - 0.9 * graph.to_dense(), y)
    z = propagate(graph, labelled, labels, 3, alpha=0.9, max_iter=200, tolerance=1e-8)
    torch.testing.assert_close(z, expected, rtol=1e-4, atol=1e-5)


def test_pseudo_labels_weigh_confidence_and_class_size():
    z = torch.tensor([[0.9, 0.1, 0.0],      # labelled as class 2 whatever its scores say
                      [0.5, 0.5, 0.0],
                      [0.0, 0.0, 1.0],
                      [0.2, 0.6, 0.2],
                      [-0.1, 0.3, 0.0]])     # a negative score counts as 0: a sure class 1
    labels, weights = pseudo_labels(z, torch.tensor([0]), torch.tensor([2]))
    assert labels.tolist() == [2, 0, 2, 1, 1]

    def confidence(p):
        p = torch.tensor(p)
        return 1 - float(-(p[p > 0] * p[p > 0].log()).sum()) / math.log(3)
    unlabelled = [confidence([0.5, 0.5]) / 1, confidence([1.0]) / 2, confidence([0.2, 0.6, 0.2]) / 2,
                  confidence([1.0]) / 2]
    assert weights.tolist() == pytest.approx([1 / 2] + unlabelled, abs=1e-6)   # labelled: confidence 1


def strips(n, seed):
    """Two classes on long parallel strips, 2 apart, laid diagonally in the plane (class = which strip,
    `along` = the position along it), as points near one pole of a sphere, where cosine neighbours
    are euclidean neighbours: along a strip, neighbours share a class."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    along = torch.rand(n, generator=gen) * 8 - 4
    across = labels * 2.0 + 0.1 * torch.randn(n, generator=gen)
    plane = torch.stack([along - across, along + across], 1) / 2 ** 0.5
    return F.normalize(torch.cat([plane, torch.full((n, 1), 20.0)], 1), dim=1), labels, along


def test_propagation_probe_learns_from_the_unlabelled_images_where_the_few_labels_mislead():
    (x, y, along), (xt, yt, _) = strips(600, 0), strips(400, 1)
    # Class 0 labelled only at the strips' one end, class 1 only at the other: from these alone the
    # boundary runs across the strips, and the unlabelled images along the strips turn it.
    left = ((y == 0) & (along < -3)).nonzero().flatten()[:6]
    right = ((y == 1) & (along > 3)).nonzero().flatten()[:6]
    labelled = torch.cat([left, right]).sort().values
    few_labels_only = linear_probe(x[labelled], y[labelled], xt, yt, val_fraction=0.35)["top1"]
    result = propagation_probe(x, labelled, y[labelled], xt, yt, val_fraction=0.35)
    unlabelled = torch.ones(600, dtype=torch.bool)
    unlabelled[labelled] = False
    assert (result["pseudo_labels"][unlabelled] == y[unlabelled]).float().mean() > 0.97
    assert result["top1"] > 0.97 and few_labels_only < 0.6


def test_propagation_probe_on_random_labels_is_at_chance():
    x, xt = sphere_points(800, dim=8), sphere_points(2000, dim=8, seed=1)
    gen = torch.Generator().manual_seed(3)
    y, yt = torch.randint(0, 4, (800,), generator=gen), torch.randint(0, 4, (2000,), generator=gen)
    labelled = torch.arange(0, 800, 10)
    assert 0.18 < propagation_probe(x, labelled, y[labelled], xt, yt)["top1"] < 0.32


def test_the_weight_decay_sweep_propagates_without_the_validation_labels(monkeypatch):
    (x, y, _), (xt, yt, _) = strips(300, 0), strips(100, 1)
    labelled = torch.arange(0, 300, 5)
    seen = []
    real_propagate = propagation.propagate
    monkeypatch.setattr(propagation, "propagate",
                        lambda graph, nodes, *a, **k: seen.append(nodes.clone()) or real_propagate(graph, nodes, *a, **k))
    propagation_probe(x, labelled, y[labelled], xt, yt, seed=4)
    _, val = train_val_split(y[labelled], 0.1, 4)
    assert len(seen) == 2
    assert set(seen[0].tolist()) == set(labelled.tolist()) - set(labelled[val].tolist())
    assert torch.equal(seen[1], labelled)

