"""Online monitoring during pretraining, cheap enough to run every epoch: kNN top-1 of the current
backbone on a small held-out labelled split (when the data has labels), and the label-free
measures (RankMe, normalised std, alignment, uniformity) on a fixed sample of images, so a run
shows whether it is learning, warns when its embeddings collapse, and can keep its best checkpoint."""
from __future__ import annotations

import torch

from selfsup.augment import augment
from selfsup.data import ImageSet
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.knn import knn_accuracy
from selfsup.evaluate.representation import representation_metrics

VIEW_SEED = 20231


class OnlineMonitor:
    def __init__(self, sample: torch.Tensor, labelled: tuple[ImageSet, ImageSet] | None, k: int,
                 temperature: float, batch_size: int, device: torch.device, precision: str):
        """sample: uint8 images for the label-free measures; labelled: (train, test) for kNN, or None."""
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
                feats = [self._features(method.embed, s.images) for s in (train, test)]
                record["online_knn_top1"] = knn_accuracy(feats[0], train.labels, feats[1], test.labels, self.k,
                                                         self.temperature)
        finally:
            method.train(was_training)
        return record

    def _features(self, embed, images: torch.Tensor) -> torch.Tensor:
        return extract_features(embed, images, self.batch_size, self.device, self.precision)

    def _label_free(self, method) -> dict[str, float]:
        # Two views from the run's own crop-and-colour recipe, with a fixed seed so every
        # evaluation of a run compares the same pairs.
        gen = torch.Generator(device=self.device).manual_seed(VIEW_SEED)

        def view_features(images_u8):
            return method.backbone(method._layout(augment(images_u8, method.augment_cfg, gen)))

        plain = self._features(method.embed, self.sample)
        view1, view2 = (self._features(view_features, self.sample) for _ in range(2))
        return {k: round(v, 5) for k, v in representation_metrics(plain, view1, view2).items()}
