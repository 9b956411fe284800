"""Frozen features: the backbone in eval mode, no augmentation, batched, L2-normalised by default.

Two kinds: `pooled`, the backbone's output (a ResNet's globally averaged last stage: the usual
protocol), and `map`, the unpooled outputs of its two stages before the last (`map_features`).
"""
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


FEATURE_KINDS = ("pooled", "map")
# The map probe reads the two stages before the last, each kept spatial up to MAP_GRID x MAP_GRID cells:
# global pooling averages away where an object's parts are, and the middle stages keep more of that
# layout than the last one (docs/evaluation.md). The grid caps the size for large images (a 224 px
# ResNet-50 would otherwise give 200,000 numbers an image from one stage).
MAP_STAGES = (-3, -2)
MAP_GRID = 7


def check_kind(kind: str) -> None:
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown features {kind!r}; choose one of: {', '.join(FEATURE_KINDS)}")


def map_features(maps: list[torch.Tensor], grid: int = MAP_GRID) -> torch.Tensor:
    """Stage outputs (from Method.embed_maps) -> (B, sum of C * g * g): each MAP_STAGES map average-pooled
    to at most grid x grid cells (g = min(grid, its side)), flattened and L2-normalised on its own, so
    that each stage weighs the same in every image whatever its scale; concatenated."""
    parts = []
    for stage in MAP_STAGES:
        chosen = maps[stage]
        cells = (min(grid, chosen.shape[-2]), min(grid, chosen.shape[-1]))
        parts.append(F.normalize(F.adaptive_avg_pool2d(chosen, cells).flatten(1), dim=1))
    return torch.cat(parts, 1)
