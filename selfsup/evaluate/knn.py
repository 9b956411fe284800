"""Weighted kNN on L2-normalised features (Wu et al., 2018, "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination"): each of the k most cosine-similar training samples
votes for its class with weight exp(similarity / temperature)."""
from __future__ import annotations

import torch


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                k: int = 200, temperature: float = 0.1, num_classes: int | None = None,
                chunk: int = 1024) -> torch.Tensor:
    """train_feats (N, D), test_feats (M, D), both L2-normalised; train_labels (N,) -> predictions (M,).

    score(c) = sum over the top-k neighbours j of exp(cos(x, x_j) / T) * [y_j == c].
    """
    if train_feats.shape[0] != train_labels.shape[0]:
        raise ValueError(f"{train_feats.shape[0]} training features for {train_labels.shape[0]} labels")
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, train_feats.shape[0])
    predictions = []
    for start in range(0, test_feats.shape[0], chunk):
        sims = test_feats[start:start + chunk] @ train_feats.T                  # (m, N)
        top_sims, top_idx = sims.topk(k, dim=1)
        # Shifting by the row's best similarity leaves the vote ranking unchanged and keeps exp finite.
        weights = ((top_sims - top_sims[:, :1]) / temperature).exp()
        votes = torch.zeros(sims.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        predictions.append(votes.argmax(1))
    return torch.cat(predictions)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, k: int = 200,
                 temperature: float = 0.1) -> float:
    """Top-1 accuracy in [0, 1] of weighted kNN."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    pred = knn_predict(train_feats, train_labels, test_feats, k, temperature, num_classes)
    return (pred == test_labels).float().mean().item()
