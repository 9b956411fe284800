"""Few-label subsets: how many labels a protocol may use, drawn class-balanced from the labelled
training split with a seed (the test split is never touched), and the validation split or
cross-validation folds that hyperparameters are chosen on."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

# Validation draws are seeded apart from the label draws, so that the same seed gives unrelated permutations.
VALIDATION_SEED_OFFSET = 104729


@dataclass(frozen=True)
class LabelBudget:
    """'1%' (a fraction of the training labels), '100/class' (per class) or '600' (in all)."""
    text: str
    fraction: float = 0.0
    per_class: int = 0
    total: int = 0

    def count(self, available: int, num_classes: int) -> int:
        if self.fraction:
            n = round(self.fraction * available)
        elif self.per_class:
            n = self.per_class * num_classes
        else:
            n = self.total
        return min(available, max(n, num_classes))


def parse_label_budget(text: str) -> LabelBudget:
    """'1%', '10%', '100%', '100/class', '600' or 'all' -> LabelBudget (ValueError says what is allowed)."""
    text = str(text).strip()
    if text == "all":
        return LabelBudget("100%", fraction=1.0)
    try:
        if text.endswith("%"):
            fraction = float(text[:-1]) / 100
            if 0 < fraction <= 1:
                return LabelBudget(text, fraction=fraction)
        elif match := re.fullmatch(r"(\d+)/class", text):
            if int(match[1]) > 0:
                return LabelBudget(text, per_class=int(match[1]))
        elif int(text) > 0:
            return LabelBudget(text, total=int(text))
    except ValueError:
        pass
    raise ValueError(f"label budget {text!r}: give a percentage (1%, 10%, 100%), a count per class (100/class) "
                     "or a total count (600)")


def balanced_subset(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Indices of `count` samples, as equal a number from each class as the classes allow
    (a class with too few samples gives all it has and the rest is shared out), drawn with `seed`.
    The same (labels, count, seed) always gives the same indices, in increasing order."""
    pools = _shuffled_classes(labels, torch.Generator().manual_seed(seed))
    take = [0] * len(pools)
    remaining = min(count, len(labels))
    while remaining > 0:                 # rounds of equal shares for the classes that have samples left
        open_classes = [i for i, pool in enumerate(pools) if take[i] < len(pool)]
        share = max(1, remaining // len(open_classes))
        for i in open_classes:
            extra = min(share, len(pools[i]) - take[i], remaining)
            take[i] += extra
            remaining -= extra
            if remaining == 0:
                break
    return torch.cat([pool[:n] for pool, n in zip(pools, take)]).sort().values


def train_val_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced (train, validation) indices of a labelled set: about val_fraction of each
    class, at least one per class with two or more samples, for choosing hyperparameters."""
    train, val = [], []
    for pool in _shuffled_classes(labels, torch.Generator().manual_seed(seed + VALIDATION_SEED_OFFSET)):
        n_val = min(len(pool) - 1, max(1, math.floor(val_fraction * len(pool))))
        val.append(pool[:n_val])
        train.append(pool[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def class_balanced_folds(labels: torch.Tensor, folds: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cross-validation splits of a labelled set: (train, validation) index pairs whose validation
    parts partition the set, each holding about 1/folds of every class (folds with nothing to
    validate on, in a set smaller than `folds`, are left out)."""
    fold_of = torch.empty(len(labels), dtype=torch.long)
    dealt = 0                            # deal each class on from where the last one stopped: sizes differ by <= 1
    for pool in _shuffled_classes(labels, torch.Generator().manual_seed(seed + VALIDATION_SEED_OFFSET)):
        fold_of[pool] = (torch.arange(len(pool)) + dealt) % folds
        dealt += len(pool)
    everything = torch.arange(len(labels))
    return [(everything[fold_of != k], everything[fold_of == k]) for k in range(folds) if bool((fold_of == k).any())]


def _shuffled_classes(labels: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
    """The indices of each class, classes in increasing order, each shuffled with `gen`."""
    return [pool[torch.randperm(len(pool), generator=gen)]
            for pool in ((labels == c).nonzero().flatten() for c in labels.unique())]
