"""Online monitoring during pretraining, cheap enough to run every epoch: kNN top-1 of the current
backbone on a small held-out labelled split (when the data has labels), and the label-free
measures (RankMe, normalised std, alignment, uniformity) on a fixed sample of images, so a run
shows whether it is learning, warns when its embeddings collapse, and can keep its best checkpoint."""
from __future__ import annotations

import torch

from selfsup.evaluate.features import extract_features
from selfsup.evaluate.knn import knn_accuracy
from selfsup.evaluate.representation import representation_metrics

VIEW_SEED = 20231


class OnlineMonitor:
    def __init__(self, sample: torch.Tensor, labelled: tuple | None, k: int,
                 temperature: float, batch_size: int, device: torch.device, precision: str):
        """sample: samples (images, token ids, table rows) for the label-free measures; labelled:
        (train, test) data sets for kNN, or None."""
        if labelled is not None and (labelled[0].labels is None or labelled[1].labels is None):
            raise ValueError("online kNN needs labelled train and test sets")
        self.sample, self.labelled = sample, labelled
        self.k, self.temperature, self.batch_size = k, temperature, batch_size
        self.device, self.precision = device, precision

    def __call__(self, method) -> dict[str, float]:
        """{'online_knn_top1' (with labels), 'rankme', 'std', 'uniformity', 'alignment'}; the method is
        put in eval mode for the features and back afterwards."""
        was_training = method.training
        method.eval()
        try:
            record = self._label_free(method)
            if self.labelled is not None:
                train, test = self.labelled
                feats = [self._features(method.embed, s.samples) for s in (train, test)]
                record["online_knn_top1"] = knn_accuracy(feats[0], train.labels, feats[1], test.labels, self.k,
                                                         self.temperature)
        finally:
            method.train(was_training)
        return record

    def _features(self, embed, images: torch.Tensor) -> torch.Tensor:
        return extract_features(embed, images, self.batch_size, self.device, self.precision)

    def _label_free(self, method) -> dict[str, float]:
        from selfsup.modalities import MODALITIES
        plain = self._features(method.embed, self.sample)
        make_view = MODALITIES[method.modality].monitor_views(method)
        views = (None, None)
        if make_view is not None:
            # Two views from the run's own augmentation recipe, with a fixed seed so every
            # evaluation of a run compares the same pairs (alignment needs views; text and tables have none).
            gen = torch.Generator(device=self.device).manual_seed(VIEW_SEED)
            views = [self._features(lambda batch: method.evaluated_backbone(make_view(batch, gen)), self.sample)
                     for _ in range(2)]
        return {k: round(v, 5) for k, v in representation_metrics(plain, *views).items()}
