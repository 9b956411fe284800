"""Weighted kNN on L2-normalised features (Wu et al., 2018, "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination"): each of the k most cosine-similar training samples
votes for its class with weight exp(similarity / temperature)."""
from __future__ import annotations

import torch


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                k: int = 200, temperature: float = 0.1, num_classes: int | None = None,
                chunk: int = 1024, bank_chunk: int = 65536) -> torch.Tensor:
    """train_feats (N, D), test_feats (M, D), both L2-normalised; train_labels (N,) -> predictions (M,).

    score(c) = sum over the top-k neighbours j of exp(cos(x, x_j) / T) * [y_j == c].

    Runs on test_feats' device, `chunk` test rows against `bank_chunk` training rows at a time (the bank
    may stay on the CPU and be any size: a chunk's k best are merged into the running k best), so its
    memory is at most chunk x (bank_chunk + k) similarities.
    """
    if train_feats.shape[0] != train_labels.shape[0]:
        raise ValueError(f"{train_feats.shape[0]} training features for {train_labels.shape[0]} labels")
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, train_feats.shape[0])
    device = test_feats.device
    predictions = []
    for start in range(0, test_feats.shape[0], chunk):
        top_sims, top_labels = _nearest(test_feats[start:start + chunk], train_feats, train_labels, k, bank_chunk)
        # Shifting by the row's best similarity leaves the vote ranking unchanged and keeps exp finite.
        weights = ((top_sims - top_sims[:, :1]) / temperature).exp()
        votes = torch.zeros(top_sims.shape[0], num_classes, dtype=weights.dtype, device=device)
        votes.scatter_add_(1, top_labels, weights)
        predictions.append(votes.argmax(1))
    return torch.cat(predictions)


def _nearest(queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, k: int,
             bank_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, labels), each (m, k), of each query's k most similar bank rows, best first."""
    best_sims = best_labels = None
    for start in range(0, bank.shape[0], bank_chunk):
        part = bank[start:start + bank_chunk].to(queries.device)
        sims, idx = (queries @ part.T).topk(min(k, part.shape[0]), dim=1)
        labels = bank_labels[start:start + bank_chunk].to(queries.device)[idx]
        if best_sims is not None:
            sims, labels = torch.cat([best_sims, sims], 1), torch.cat([best_labels, labels], 1)
            sims, order = sims.topk(min(k, sims.shape[1]), dim=1)
            labels = labels.gather(1, order)
        best_sims, best_labels = sims, labels
    return best_sims, best_labels


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, k: int = 200,
                 temperature: float = 0.1) -> float:
    """Top-1 accuracy in [0, 1] of weighted kNN."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    pred = knn_predict(train_feats, train_labels, test_feats, k, temperature, num_classes)
    return (pred == test_labels).float().mean().item()
