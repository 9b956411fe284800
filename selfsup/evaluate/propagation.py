"""Label propagation over the unlabelled training images, then a linear probe on what it labelled:
the semi-supervised protocol for when a few images have labels and the rest do not (Zhou et al.,
2004, "Learning with Local and Global Consistency"; as used on deep features by Iscen et al., 2019,
"Label Propagation for Deep Semi-supervised Learning").

1. A k-nearest-neighbour graph of every training image's frozen, L2-normalised feature:
   a_ij = max(cos(x_i, x_j), 0)^gamma for the k neighbours j of i, W = A + A^T,
   S = D^-1/2 W D^-1/2 with D the degrees.
2. Propagation: Z = (I - alpha S)^-1 Y, Y one-hot on the labelled images (each class's column
   divided by its number of labels), solved by conjugate gradients.
3. Each unlabelled image takes the class argmax_c Z_ic with weight 1 - H(z_i) / log C (z_i: the
   row of Z normalised to sum 1, so a confident pseudo-label counts more) divided by the number of
   images its class received (so a class the graph favours does not outvote the others); the
   labelled images keep their labels at confidence 1.
4. The linear probe of `selfsup.evaluate.linear` is fitted on every training image with these
   labels and weights; its weight decay is chosen on a validation split of the labelled images,
   whose labels the propagation for the sweep does not see. The test images are never in the graph.
"""
from __future__ import annotations

import math

import torch

from selfsup.evaluate.linear import WEIGHT_DECAYS, probe_with_chosen_weight_decay

NEIGHBOURS = 50          # Iscen et al.'s k, alpha and gamma
ALPHA = 0.99
GAMMA = 3.0


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
              alpha: float = ALPHA, max_iter: int = 50, tolerance: float = 1e-6) -> torch.Tensor:
    """graph S (N, N) from knn_graph; labelled (L,) node indices with labels (L,) -> Z (N, C), the
    solution of (I - alpha S) Z = Y by conjugate gradients (I - alpha S is symmetric positive definite
    for alpha < 1, since S's eigenvalues lie in [-1, 1])."""
    n = graph.shape[0]
    per_class = torch.bincount(labels, minlength=num_classes).clamp_min(1).float()
    y = torch.zeros(n, num_classes)
    y[labelled, labels] = 1.0 / per_class[labels]
    z = torch.zeros_like(y)
    residual = y.clone()
    direction = residual.clone()
    power = residual.square().sum(0)
    stop = tolerance ** 2 * power
    for _ in range(max_iter):
        applied = direction - alpha * (graph @ direction)
        step = power / (direction * applied).sum(0).clamp_min(1e-30)
        z += step * direction
        residual -= step * applied
        new_power = residual.square().sum(0)
        if bool((new_power <= stop).all()):
            break
        direction = residual + (new_power / power.clamp_min(1e-30)) * direction
        power = new_power
    return z


def pseudo_labels(z: torch.Tensor, labelled: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Z (N, C) -> (labels (N,), weights (N,)): each row's argmax, weighted by its confidence
    1 - entropy / log C (negative scores, where the solver undershoots, count as 0) over the number
    of images given the same class; the labelled nodes keep their own labels at confidence 1."""
    num_classes = z.shape[1]
    probs = z.clamp_min(0)
    probs = probs / probs.sum(1, keepdim=True).clamp_min(1e-12)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
    confidence = (1 - entropy / math.log(num_classes)).clamp(0, 1)
    chosen = z.argmax(1)
    chosen[labelled] = labels
    confidence[labelled] = 1.0
    class_size = torch.bincount(chosen, minlength=num_classes).float()
    return chosen, confidence / class_size[chosen]


def propagation_probe(all_feats: torch.Tensor, labelled: torch.Tensor, labels: torch.Tensor,
                      test_feats: torch.Tensor, test_labels: torch.Tensor, graph: torch.Tensor | None = None,
                      weight_decays=WEIGHT_DECAYS, val_fraction: float = 0.1, seed: int = 0) -> dict:
    """Top-1 on the test set of a linear probe fitted on every training image, labelled by propagation
    from the few labelled ones. all_feats (N, D): every training image's L2-normalised features;
    labelled (L,): indices of the labelled images; labels (L,): their classes; graph: knn_graph(all_feats),
    passed in so that several draws of labels share one graph."""
    graph = knn_graph(all_feats) if graph is None else graph
    num_classes = int(max(labels.max(), test_labels.max())) + 1
    latest = {}

    def training_rows(known: torch.Tensor):
        """Every training image but the held-out labelled ones, labelled from `known` (indices into labelled)."""
        nodes = labelled[known]
        z = propagate(graph, nodes, labels[known], num_classes)
        chosen, weights = pseudo_labels(z, nodes, labels[known])
        keep = torch.ones(len(all_feats), dtype=torch.bool)
        keep[labelled] = False
        keep[nodes] = True
        latest["labels"] = chosen
        return all_feats[keep], chosen[keep], weights[keep]

    result = probe_with_chosen_weight_decay(training_rows, all_feats[labelled], labels, test_feats, test_labels,
                                            weight_decays, val_fraction, seed)
    # The last propagation is the final fit's, from every labelled image.
    return {**result, "pseudo_labels": latest["labels"]}
