"""Linear probe: multinomial logistic regression on frozen features.

The features are standardised with the mean and std of the unlabelled pool the labelled rows were
drawn from when it is given (every training image: with 600 labels and thousands of map features the
labelled rows' own spread is a noisy scale), else with the labelled rows', and the classifier is fitted
full-batch with L-BFGS (no learning rate to tune; 60k x 512 features fit in seconds on a CPU).
The L2 weight decay is chosen from a sweep on the training labels alone -- by 5-fold cross-validation
when they are few, else on one validation split carved from them -- then the classifier is refitted
on all training labels with it; the test set is only scored once, at the end.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from selfsup.evaluate.splits import class_balanced_folds, train_val_split

WEIGHT_DECAYS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
# Below this many labels the weight decay is chosen by cross-validation: a 10% split of 600 labels is
# 60 images, too few to rank the candidates (docs/evaluation.md).
CROSS_VALIDATE_BELOW = 5000
FOLDS = 5


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


def feature_scale(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std (the std floored at 1e-6) that standardise the probe's input."""
    feats = feats.float()
    mean = feats.mean(0)
    # A single row (a fold of a two-label cross-validation) has no spread to scale by: it is only centred.
    std = feats.std(0).clamp_min(1e-6) if len(feats) > 1 else torch.ones_like(mean)
    return mean, std


def fit_logistic_regression(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float,
                            max_iter: int = 200,
                            scale: tuple[torch.Tensor, torch.Tensor] | None = None) -> LinearClassifier:
    """Minimise mean cross-entropy + weight_decay / 2 * ||W||^2 over (W, b) with L-BFGS, on the features
    standardised with `scale` (mean, std), by default feature_scale(feats)."""
    feats = feats.float()
    mean, std = scale if scale is not None else feature_scale(feats)
    x = (feats - mean) / std
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, labels) + weight_decay / 2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return LinearClassifier(weight.detach(), bias.detach(), mean, std)


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, weight_decays=WEIGHT_DECAYS, val_fraction: float = 0.1,
                 seed: int = 0, augmented: torch.Tensor | None = None,
                 scale: tuple[torch.Tensor, torch.Tensor] | None = None, probabilities: bool = False) -> dict:
    """Top-1 of a linear probe, the weight decay chosen on the training labels (5-fold
    cross-validation under CROSS_VALIDATE_BELOW labels, else one split of val_fraction), and each
    candidate's validation accuracy. augmented: (A, N, D) features of A augmented copies of the N
    training images, added to the training rows of their own images only (a validation fold sees
    clean features of images its fit never saw in any form). scale: the (mean, std) every fit is
    standardised with, instead of its own rows': feature_scale of the pool the labelled rows were drawn
    from (never the test set), which needs no labels."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    if len(train_labels) < 2:
        raise ValueError(f"the linear probe needs at least 2 labelled training samples to choose its weight "
                         f"decay on, got {len(train_labels)}; give a larger --labels budget")
    if len(train_labels) < CROSS_VALIDATE_BELOW:
        splits = class_balanced_folds(train_labels, FOLDS, seed)
    else:
        splits = [train_val_split(train_labels, val_fraction, seed)]

    def with_copies(idx):
        if augmented is None:
            return train_feats[idx], train_labels[idx]
        return (torch.cat([train_feats[idx], augmented[:, idx].flatten(0, 1)]),
                train_labels[idx].repeat(augmented.shape[0] + 1))
    held_out = torch.cat([val_idx for _, val_idx in splits])
    val_scores, val_losses, held_out_logits = {}, {}, {}
    for wd in weight_decays:
        logits = torch.cat([fit_logistic_regression(*with_copies(fit_idx), num_classes, wd, scale=scale)
                            .logits(train_feats[val_idx].float()) for fit_idx, val_idx in splits])
        val_scores[wd] = (logits.argmax(1) == train_labels[held_out]).float().mean().item()
        val_losses[wd] = F.cross_entropy(logits, train_labels[held_out]).item()
        held_out_logits[wd] = logits
    # A small validation set often ties on accuracy; its cross-entropy then decides.
    best_wd = max(weight_decays, key=lambda wd: (val_scores[wd], -val_losses[wd]))
    classifier = fit_logistic_regression(*with_copies(torch.arange(len(train_labels))), num_classes, best_wd,
                                         scale=scale)
    test_logits = classifier.logits(test_feats.float())
    result = {"top1": (test_logits.argmax(1) == test_labels).float().mean().item(), "weight_decay": best_wd,
              "val_top1": {str(wd): score for wd, score in val_scores.items()}, "val_size": len(held_out),
              "folds": len(splits)}
    if probabilities:
        result |= {"held_out": held_out, "held_out_probabilities": held_out_logits[best_wd].softmax(1),
                   "test_probabilities": test_logits.softmax(1)}
    return result
