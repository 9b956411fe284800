"""In-memory arrays as a source: numpy or torch, (N, H, W) or (N, C, H, W), uint8 or float."""
from __future__ import annotations

import numpy as np
import torch

from selfsup.data.imageset import ImageSet
from selfsup.errors import DataError


def from_array(images, labels=None, classes: list[str] | None = None, name: str = "array"):
    """Wrap an array of images as an ImageSet.

    Float arrays are taken to be in [0, 1] when their maximum is <= 1, else in [0, 255].
    Channels-last arrays (N, H, W, C) with C in (1, 3, 4) and H, W > 4 are transposed.
    """
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images.detach().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise DataError(f"images must be (N, H, W) or (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)
    if x.is_floating_point():
        if not torch.isfinite(x).all():
            raise DataError("images contain NaN or inf values; clean the array before training")
        scale = 255.0 if x.max() <= 1.0 else 1.0
        x = (x * scale).round().clamp(0, 255)
    elif x.dtype != torch.uint8 and (x.min() < 0 or x.max() > 255):
        raise DataError(f"integer images must lie in [0, 255], got values in [{x.min()}, {x.max()}]")
    x = x.to(torch.uint8).contiguous()
    y = None
    if labels is not None:
        y = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
        if classes is None:
            classes = [str(c) for c in range(int(y.max()) + 1)] if len(y) else []
    return ImageSet(x, y, classes or [], name)
