"""Linear probe: multinomial logistic regression on frozen features.

The features are standardised with the training mean and std, and the classifier is fitted
full-batch with L-BFGS (no learning rate to tune; 60k x 512 features fit in seconds on a CPU).
The L2 weight decay is chosen from a small sweep on a validation split carved from the training
labels, then the classifier is refitted on all training labels with it; the test set is only
scored once, at the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from selfsup.evaluate.splits import train_val_split

WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class LinearClassifier:
    weight: torch.Tensor          # (D, K)
    bias: torch.Tensor            # (K,)
    mean: torch.Tensor            # (D,) feature standardisation
    std: torch.Tensor

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return ((feats - self.mean) / self.std) @ self.weight + self.bias

    def predict(self, feats: torch.Tensor) -> torch.Tensor:
        return self.logits(feats).argmax(1)

    def accuracy(self, feats: torch.Tensor, labels: torch.Tensor) -> float:
        return (self.predict(feats) == labels).float().mean().item()


def fit_logistic_regression(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float,
                            max_iter: int = 200, sample_weight: torch.Tensor | None = None) -> LinearClassifier:
    """Minimise mean cross-entropy + weight_decay / 2 * ||W||^2 over (W, b) with L-BFGS; with
    sample_weight (N,), the cross-entropy is the weighted mean sum_i w_i ce_i / sum_i w_i."""
    feats = feats.float()
    mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)
    x = (feats - mean) / std
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")
    share = None if sample_weight is None else sample_weight.float() / sample_weight.float().sum()

    def closure():
        optimizer.zero_grad()
        if share is None:
            data_loss = F.cross_entropy(x @ weight + bias, labels)
        else:
            data_loss = (share * F.cross_entropy(x @ weight + bias, labels, reduction="none")).sum()
        loss = data_loss + weight_decay / 2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return LinearClassifier(weight.detach(), bias.detach(), mean, std)


# The rows a probe fits when it knows the labels of some training images: (features, labels, weights or None).
TrainingRows = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, weight_decays=WEIGHT_DECAYS, val_fraction: float = 0.1,
                 seed: int = 0, augmented: torch.Tensor | None = None) -> dict:
    """Top-1 of a linear probe, the weight decay chosen on a validation split of the training
    labels, and each candidate's validation accuracy. augmented: (A, N, D) features of A augmented
    copies of the N training images, added to the training rows of their own images only (the
    validation split sees clean features of images the fit never saw in any form)."""
    def training_rows(known):
        if augmented is None:
            return train_feats[known], train_labels[known], None
        return (torch.cat([train_feats[known], augmented[:, known].flatten(0, 1)]),
                train_labels[known].repeat(augmented.shape[0] + 1), None)
    return probe_with_chosen_weight_decay(training_rows, train_feats, train_labels, test_feats, test_labels,
                                          weight_decays, val_fraction, seed)


def probe_with_chosen_weight_decay(training_rows: TrainingRows, train_feats: torch.Tensor,
                                   train_labels: torch.Tensor, test_feats: torch.Tensor,
                                   test_labels: torch.Tensor, weight_decays=WEIGHT_DECAYS,
                                   val_fraction: float = 0.1, seed: int = 0) -> dict:
    """Fit on training_rows(fit part) for each weight decay, score each on the held-out validation
    part of the labelled (train_feats, train_labels), refit on training_rows(all of them) with the
    best, and score the test set once."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    fit_idx, val_idx = train_val_split(train_labels, val_fraction, seed)
    sweep_rows = training_rows(fit_idx)
    val_scores, val_losses = {}, {}
    for wd in weight_decays:
        classifier = fit_logistic_regression(*sweep_rows[:2], num_classes, wd, sample_weight=sweep_rows[2])
        val_scores[wd] = classifier.accuracy(train_feats[val_idx], train_labels[val_idx])
        val_losses[wd] = F.cross_entropy(classifier.logits(train_feats[val_idx].float()), train_labels[val_idx]).item()
    # A small validation split often ties on accuracy; its cross-entropy then decides.
    best_wd = max(weight_decays, key=lambda wd: (val_scores[wd], -val_losses[wd]))
    feats, labels, weights = training_rows(torch.arange(len(train_labels)))
    classifier = fit_logistic_regression(feats, labels, num_classes, best_wd, sample_weight=weights)
    return {"top1": classifier.accuracy(test_feats, test_labels), "weight_decay": best_wd,
            "val_top1": {str(wd): score for wd, score in val_scores.items()}, "val_size": len(val_idx)}
