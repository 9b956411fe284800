"""Online monitoring during pretraining: kNN top-1 of the current backbone on a small held-out
labelled split, cheap enough to run every epoch, so a run shows whether it is learning (and the
trainer can keep the best checkpoint)."""
from __future__ import annotations

import torch

from selfsup.data import ImageSet
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.knn import knn_accuracy


class OnlineKNN:
    def __init__(self, train: ImageSet, test: ImageSet, k: int, temperature: float, batch_size: int,
                 device: torch.device, precision: str):
        if train.labels is None or test.labels is None:
            raise ValueError("online kNN needs labelled train and test sets")
        self.train, self.test = train, test
        self.k, self.temperature, self.batch_size = k, temperature, batch_size
        self.device, self.precision = device, precision

    def __call__(self, method) -> float:
        """kNN top-1 in [0, 1]; the method is put in eval mode for the features and back afterwards."""
        was_training = method.training
        method.eval()
        try:
            feats = [extract_features(method.embed, s.images, self.batch_size, self.device, self.precision)
                     for s in (self.train, self.test)]
        finally:
            method.train(was_training)
        return knn_accuracy(feats[0], self.train.labels, feats[1], self.test.labels, self.k, self.temperature)
