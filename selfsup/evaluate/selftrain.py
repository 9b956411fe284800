"""Self-training through label propagation (Iscen et al., 2019, "Label Propagation for Deep
Semi-supervised Learning", one round): what the pretrained encoder, the few labels and the
unlabelled training images give together.

1. Fine-tune the pretrained encoder on the labelled images (the `finetune` protocol).
2. Spread the labels over a neighbour graph of every training image's features from that
   fine-tuned encoder (`selfsup.evaluate.propagation`).
3. Fine-tune the pretrained encoder again, on every training image with the label it received
   (the labelled ones keep their own), for twice the steps: it now has a hundred times the images.

The test images are in neither the graph nor any fit.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.evaluate.finetune import FinetuneSettings, accuracy, backbone_features, train_classifier
from selfsup.evaluate.propagation import ALPHA, NEIGHBOURS, knn_graph, propagated_labels


def selftrain(backbone: nn.Module, train, labelled: torch.Tensor, test, settings: FinetuneSettings,
              prepare: Callable, seed: int = 0, device: str | torch.device = "cpu", precision: str = "fp32",
              progress: bool = False, neighbours: int = NEIGHBOURS, alpha: float = ALPHA) -> dict:
    """train: every training image (labels of `labelled` only are read); labelled: indices of the few
    labelled ones; neighbours, alpha: the propagation graph's (fixed in advance: Iscen et al.'s). Returns
    the final top-1 on `test`, the first fine-tune's top-1, and the labels the second fine-tune trained on."""
    device = torch.device(device)
    few = train.select(labelled)
    num_classes = int(max(few.labels.max(), test.labels.max())) + 1
    first, _ = train_classifier(backbone, few, num_classes, settings, prepare, seed, device, precision, progress,
                                desc=f"self-training seed {seed}: fine-tune on the labels")
    feats = F.normalize(backbone_features(first, train.samples, device, precision), dim=1)
    spread = propagated_labels(knn_graph(feats, neighbours), labelled, few.labels, num_classes, alpha)
    second, loss = train_classifier(backbone, replace(train, labels=spread), num_classes,
                                    replace(settings, steps=2 * settings.steps, epochs=0), prepare, seed, device, precision,
                                    progress, desc=f"self-training seed {seed}: fine-tune on the propagated labels")
    return {"top1": accuracy(second, test, device, precision),
            "first_top1": accuracy(first, test, device, precision),
            "propagated_labels": spread, "final_train_loss": loss}
