"""Label propagation over the unlabelled training images, then kNN on what it labelled: the
semi-supervised protocol for when a few images have labels and the rest do not (Zhou et al.,
2004, "Learning with Local and Global Consistency"; as used on deep features by Iscen et al., 2019,
"Label Propagation for Deep Semi-supervised Learning").

1. A k-nearest-neighbour graph of every training image's frozen, L2-normalised feature:
   a_ij = max(cos(x_i, x_j), 0)^gamma for the k neighbours j of i, W = A + A^T,
   S = D^-1/2 W D^-1/2 with D the degrees.
2. Propagation: Z = (I - alpha S)^-1 Y, Y one-hot on the labelled images (each class's column
   divided by its number of labels), solved by conjugate gradients. Each unlabelled image takes
   the class argmax_c Z_ic; the labelled ones keep their own.
3. A test image is classified by weighted kNN over all training images with these labels. The
   test images are never in the graph, so the classifier is the same for any new image.

Its settings come one of two ways, both of which a user with few labels has (docs/evaluation.md):
fixed in advance (Iscen et al.'s graph, k = 50, alpha = 0.99, gamma = 3, and the kNN protocol's
200 voters), or chosen per draw by cross-validation inside the labelled images: each fold's labels
are hidden, spread from the others, and the fold's images are classified by the kNN vote over the
rest (choose_by_cross_validation).
"""
from __future__ import annotations

import itertools

import torch

from selfsup.evaluate.knn import knn_accuracy, knn_predict
from selfsup.evaluate.splits import class_balanced_folds

NEIGHBOURS = 50                  # Iscen et al. 2019's graph
ALPHA = 0.99
GAMMA = 3.0
VOTERS = 200                     # the kNN classifier's k over the propagated labels: the kNN protocol's
# What cross-validation inside the labels chooses from, and into how many folds it cuts them.
GRID = {"graph_neighbours": (10, 50), "alpha": (0.9, 0.99), "k": (10, 50, 200)}
FOLDS = 5


@torch.no_grad()
def knn_graph(feats: torch.Tensor, k: int = NEIGHBOURS, gamma: float = GAMMA, chunk: int = 1024) -> torch.Tensor:
    """feats (N, D), L2-normalised -> S (N, N) sparse COO: the symmetric, degree-normalised affinity
    D^-1/2 (A + A^T) D^-1/2 of the k-nearest-neighbour graph, a_ij = max(cos, 0)^gamma."""
    n = feats.shape[0]
    k = min(k, n - 1)
    if k < 1:
        raise ValueError(f"a neighbour graph needs at least 2 images, got {n}")
    rows, cols, values = [], [], []
    for start in range(0, n, chunk):
        sims = feats[start:start + chunk] @ feats.T                                  # (m, N)
        sims[torch.arange(sims.shape[0]), torch.arange(start, start + sims.shape[0])] = -2.0  # not its own neighbour
        top_sims, top_idx = sims.topk(k, dim=1)
        rows.append(torch.arange(start, start + sims.shape[0]).repeat_interleave(k))
        cols.append(top_idx.flatten())
        values.append(top_sims.clamp_min(0).pow(gamma).flatten())
    rows, cols, values = torch.cat(rows), torch.cat(cols), torch.cat(values)
    # W = A + A^T: the sparse sum of the graph and its transpose (coalesce adds the duplicate pairs).
    w = torch.sparse_coo_tensor(torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])]),
                                torch.cat([values, values]), (n, n), check_invariants=False).coalesce()
    degree = torch.zeros(n).index_add_(0, w.indices()[0], w.values())
    scale = degree.clamp_min(1e-12).rsqrt()
    i, j = w.indices()
    return torch.sparse_coo_tensor(w.indices(), scale[i] * w.values() * scale[j], (n, n), is_coalesced=True,
                                   check_invariants=False)


@torch.no_grad()
def propagate(graph: torch.Tensor, labelled: torch.Tensor, labels: torch.Tensor, num_classes: int,
              alpha: float = ALPHA, max_iter: int = 1000, tolerance: float = 1e-12) -> torch.Tensor:
    """graph S (N, N) from knn_graph; labelled (L,) node indices with labels (L,) -> Z (N, C), the
    solution of (I - alpha S) Z = Y by conjugate gradients (I - alpha S is symmetric positive definite
    for alpha < 1, since S's eigenvalues lie in [-1, 1]).

    Z decays by about alpha at each hop from a labelled node, and each iteration reaches one hop
    further: the solve runs in float64 to a tight tolerance so that images many hops from any label
    still get their (tiny) scores instead of a row of zeros."""
    return propagate_many(graph, [(labelled, labels)], num_classes, alpha, max_iter, tolerance)[0]


@torch.no_grad()
def propagate_many(graph: torch.Tensor, seedings: list[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                   alpha: float = ALPHA, max_iter: int = 1000, tolerance: float = 1e-12) -> list[torch.Tensor]:
    """propagate() for several (labelled, labels) pairs on one graph, solved together: each column of
    the right-hand side is its own conjugate-gradient problem, so stacking the pairs' columns gives every
    pair's Z at once, with one sparse product per iteration for all of them (cross-validation's folds)."""
    n = graph.shape[0]
    graph = graph.double()
    y = torch.zeros(n, len(seedings) * num_classes, dtype=torch.float64)
    for i, (labelled, labels) in enumerate(seedings):
        per_class = torch.bincount(labels, minlength=num_classes).clamp_min(1).double()
        y[labelled, i * num_classes + labels] = 1.0 / per_class[labels]
    z = torch.zeros_like(y)
    residual = y.clone()
    direction = residual.clone()
    power = residual.square().sum(0)
    stop = tolerance ** 2 * power
    for _ in range(max_iter):
        applied = direction - alpha * (graph @ direction)
        step = power / (direction * applied).sum(0).clamp_min(1e-300)
        z += step * direction
        residual -= step * applied
        new_power = residual.square().sum(0)
        if bool((new_power <= stop).all()):
            break
        direction = residual + (new_power / power.clamp_min(1e-300)) * direction
        power = new_power
    return list(z.split(num_classes, dim=1))


def propagated_labels(graph: torch.Tensor, labelled: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      alpha: float = ALPHA) -> torch.Tensor:
    """(N,) classes of every node: the propagation's argmax, and their own for the labelled nodes."""
    return _classes(propagate(graph, labelled, labels, num_classes, alpha), labelled, labels)


def _classes(scores: torch.Tensor, labelled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    chosen = scores.argmax(1)
    chosen[labelled] = labels
    return chosen


def propagation_knn(all_feats: torch.Tensor, labelled: torch.Tensor, labels: torch.Tensor,
                    test_feats: torch.Tensor, test_labels: torch.Tensor, graph: torch.Tensor | None = None,
                    alpha: float = ALPHA, k: int = VOTERS, temperature: float = 0.1) -> dict:
    """Top-1 on the test set of weighted kNN over every training image, labelled by propagation from
    the few labelled ones, and those labels. all_feats (N, D): every training image's L2-normalised
    features; labelled (L,): indices of the labelled images; labels (L,): their classes; graph:
    knn_graph(all_feats), passed in so that several draws of labels share one graph."""
    graph = knn_graph(all_feats) if graph is None else graph
    num_classes = int(max(labels.max(), test_labels.max())) + 1
    chosen = propagated_labels(graph, labelled, labels, num_classes, alpha)
    return {"top1": knn_accuracy(all_feats, chosen, test_feats, test_labels, k, temperature),
            "propagated_labels": chosen}


def choose_by_cross_validation(feats: torch.Tensor, graph_of, labelled: torch.Tensor, labels: torch.Tensor,
                               temperature: float = 0.1, grid: dict = GRID, folds: int = FOLDS,
                               seed: int = 0) -> tuple[dict, list[dict]]:
    """The (graph_neighbours, alpha, k) of `grid` that classifies the labelled images best when each
    fold's labels are hidden: spread from the other folds, then the fold's images take the kNN vote of
    every training image outside the fold. Uses the labels of `labelled` only. feats (N, D): every
    training image's L2-normalised features; graph_of(neighbours) -> knn_graph (cached by the caller).
    Returns the best setting and every trial with its cross-validated accuracy."""
    num_classes = int(labels.max()) + 1
    splits = class_balanced_folds(labels, folds, seed)
    correct = {setting: 0 for setting in itertools.product(grid["graph_neighbours"], grid["alpha"], grid["k"])}
    for neighbours, alpha in itertools.product(grid["graph_neighbours"], grid["alpha"]):
        scores = propagate_many(graph_of(neighbours), [(labelled[train_part], labels[train_part])
                                                       for train_part, _ in splits], num_classes, alpha)
        for (train_part, held), fold_scores in zip(splits, scores):
            spread = _classes(fold_scores, labelled[train_part], labels[train_part])
            voters = torch.ones(len(feats), dtype=torch.bool)
            voters[labelled[held]] = False           # a hidden image does not vote on itself
            for k in grid["k"]:
                predicted = knn_predict(feats[voters], spread[voters], feats[labelled[held]], min(k, int(voters.sum())),
                                        temperature, num_classes)
                correct[(neighbours, alpha, k)] += int((predicted == labels[held]).sum())
    trials = [{"graph_neighbours": n, "alpha": a, "k": k, "cv_top1": round(hits / len(labelled), 5)}
              for (n, a, k), hits in correct.items()]
    best = max(trials, key=lambda trial: trial["cv_top1"])
    return {key: best[key] for key in ("graph_neighbours", "alpha", "k")}, trials
