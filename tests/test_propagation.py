"""Label propagation: the graph and the solve against their formulas, and the classifier on data
where the unlabelled images are what tells the classes apart."""
import torch
import torch.nn.functional as F

from selfsup.evaluate.knn import knn_accuracy
from selfsup.evaluate.propagation import (choose_by_cross_validation, knn_graph, propagate, propagate_many,
                                         propagated_labels, propagation_knn)


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
    torch.testing.assert_close(z.float(), expected, rtol=1e-4, atol=1e-5)


def test_several_labellings_solved_together_each_solve_their_own_system():
    """Cross-validation solves every fold's labels in one conjugate-gradient run: each fold's Z must be
    the direct solution for that fold's labels alone, whatever the other folds hold."""
    feats = sphere_points(60)
    graph = knn_graph(feats, k=6)
    seedings = [(torch.tensor([0, 5, 9]), torch.tensor([0, 1, 1])), (torch.tensor([20, 31, 40, 41]),
                                                                     torch.tensor([2, 0, 2, 2]))]
    for (labelled, labels), z in zip(seedings, propagate_many(graph, seedings, 3, alpha=0.9, max_iter=200,
                                                                tolerance=1e-8)):
        y = torch.zeros(60, 3)
        y[labelled, labels] = 1.0 / torch.bincount(labels, minlength=3).clamp_min(1)[labels].float()
        torch.testing.assert_close(z.float(), torch.linalg.solve(torch.eye(60) - 0.9 * graph.to_dense(), y),
                                   rtol=1e-4, atol=1e-5)


def test_labelled_images_keep_their_labels_and_the_rest_take_the_argmax():
    feats = sphere_points(30)
    graph = knn_graph(feats, k=4)
    labelled, labels = torch.tensor([2, 7, 11]), torch.tensor([1, 0, 1])
    chosen = propagated_labels(graph, labelled, labels, 3)
    expected = propagate(graph, labelled, labels, 3).argmax(1)
    expected[labelled] = labels
    assert torch.equal(chosen, expected) and chosen[labelled].tolist() == [1, 0, 1]
    assert 2 not in chosen.tolist()                     # a class nobody labelled is never given


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


def test_propagation_learns_from_the_unlabelled_images_where_the_few_labels_mislead():
    (x, y, along), (xt, yt, _) = strips(600, 0), strips(400, 1)
    # Class 0 labelled only at the strips' one end, class 1 only at the other: the nearest labelled
    # image of a point far along a strip is often across the gap; the strip itself leads to its class.
    left = ((y == 0) & (along < -3)).nonzero().flatten()[:6]
    right = ((y == 1) & (along > 3)).nonzero().flatten()[:6]
    labelled = torch.cat([left, right]).sort().values
    few_labels_only = knn_accuracy(x[labelled], y[labelled], xt, yt, k=10)
    result = propagation_knn(x, labelled, y[labelled], xt, yt)
    unlabelled = torch.ones(600, dtype=torch.bool)
    unlabelled[labelled] = False
    assert (result["propagated_labels"][unlabelled] == y[unlabelled]).float().mean() > 0.97
    assert result["top1"] > 0.97 and few_labels_only < 0.8


def test_propagation_on_random_labels_is_at_chance():
    x, xt = sphere_points(800, dim=8), sphere_points(2000, dim=8, seed=1)
    gen = torch.Generator().manual_seed(3)
    y, yt = torch.randint(0, 4, (800,), generator=gen), torch.randint(0, 4, (2000,), generator=gen)
    labelled = torch.arange(0, 800, 10)
    assert 0.18 < propagation_knn(x, labelled, y[labelled], xt, yt)["top1"] < 0.32


def test_cross_validation_inside_the_labels_finds_structure_and_not_noise():
    """The choice reads only the labelled images' labels: on the strips, where the graph carries the
    classes, its folds score near 1; with the same labels shuffled they score near chance."""
    x, y, along = strips(600, 0)
    labelled = torch.arange(0, 600, 9)                 # both classes (they alternate), 67 labels
    graphs = {}
    graph_of = lambda k: graphs.setdefault(k, knn_graph(x, k))     # noqa: E731
    grid = {"graph_neighbours": (5, 20), "alpha": (0.5, 0.99), "k": (5, 50)}
    best, trials = choose_by_cross_validation(x, graph_of, labelled, y[labelled], grid=grid, folds=5)
    assert len(trials) == 8 and {t["graph_neighbours"] for t in trials} == {5, 20}
    assert best == {k: max(trials, key=lambda t: t["cv_top1"])[k] for k in ("graph_neighbours", "alpha", "k")}
    assert max(t["cv_top1"] for t in trials) > 0.95
    noise = y[labelled][torch.randperm(len(labelled), generator=torch.Generator().manual_seed(0))]
    _, noisy = choose_by_cross_validation(x, graph_of, labelled, noise, grid=grid, folds=5)
    assert max(t["cv_top1"] for t in noisy) < 0.75
