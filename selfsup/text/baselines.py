"""Features that need no pretraining, the floor a learned text encoder has to beat."""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import torch

WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def bag_of_words(train_texts: Sequence[str], test_texts: Sequence[str], max_features: int = 20000
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """TF-IDF bag of words: (train (N, F), test (M, F)) float32, every row L2-normalised (all-zero rows
    stay zero), F <= max_features.

    Words are lower-cased \\w+ runs. The vocabulary is the max_features words found in the most
    training documents (ties broken alphabetically); test texts never add words. A cell is
    log(1 + count) * idf with the smoothed idf = log((1 + N) / (1 + df)) + 1 of the training texts.
    Dense: (N + M) * F * 4 bytes, so lower max_features for large sets.
    """
    if max_features < 1:
        raise ValueError(f"max_features must be >= 1, got {max_features}")
    train_counts = [Counter(_words(t)) for t in train_texts]
    document_frequency = Counter(word for counts in train_counts for word in counts)
    if not document_frequency:
        raise ValueError("the training texts contain no words, so a bag of words has no features")
    ranked = sorted(document_frequency.items(), key=lambda item: (-item[1], item[0]))[:max_features]
    column = {word: j for j, (word, _) in enumerate(ranked)}
    n = len(train_counts)
    idf = torch.tensor([math.log((1 + n) / (1 + df)) + 1 for _, df in ranked], dtype=torch.float32)

    def matrix(all_counts: list[Counter]) -> torch.Tensor:
        out = torch.zeros(len(all_counts), len(column))
        for i, counts in enumerate(all_counts):
            cells = [(column[w], c) for w, c in counts.items() if w in column]
            if cells:
                cols, values = zip(*cells)
                out[i, list(cols)] = torch.tensor(values, dtype=torch.float32).log1p()
        return torch.nn.functional.normalize(out * idf, dim=1)

    return matrix(train_counts), matrix([Counter(_words(t)) for t in test_texts])
