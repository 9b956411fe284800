"""Frozen features: the backbone in eval mode, no augmentation, batched, L2-normalised by default."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from selfsup.precision import autocast


@torch.no_grad()
def extract_features(embed: Callable[[torch.Tensor], torch.Tensor], images_u8: torch.Tensor,
                     batch_size: int = 1024, device: str | torch.device = "cpu",
                     precision: str = "fp32", progress: bool = False, desc: str = "features",
                     normalize: bool = True) -> torch.Tensor:
    """embed: uint8 (B, C, H, W) -> (B, D) on `device`. Returns float32 (N, D) on the CPU, L2-normalised
    unless normalize=False."""
    device = torch.device(device)
    chunks = []
    starts = range(0, images_u8.shape[0], batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        batch = images_u8[start:start + batch_size].to(device, non_blocking=True)
        with autocast(device.type, precision):
            feats = embed(batch)
        feats = feats.float()
        chunks.append((F.normalize(feats, dim=1) if normalize else feats).cpu())
    return torch.cat(chunks)


def pixel_features(images_u8: torch.Tensor) -> torch.Tensor:
    """Raw pixels, mean-centred per image and L2-normalised: the no-learning baseline."""
    x = images_u8.flatten(1).float()
    return F.normalize(x - x.mean(1, keepdim=True), dim=1)
