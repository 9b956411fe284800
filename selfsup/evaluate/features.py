"""Frozen features: the backbone in eval mode, no augmentation, batched, L2-normalised by default.

Two sorts: `pooled`, the backbone's output (a ResNet's globally averaged last stage: the usual
protocol), and the map layouts (`MAP_LAYOUTS`), unpooled stage outputs joined (`map_features`):
`map` reads the two stages before the last.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from selfsup.errors import DataError
from selfsup.precision import autocast


def in_batches(samples, batch_size: int):
    """Consecutive batches of `samples`: slices of a tensor, or what a streamed set's `batches` decodes
    (selfsup.data.stream.StreamedSamples), so that no more than a batch of its images is ever decoded."""
    if hasattr(samples, "batches"):
        yield from samples.batches(batch_size)
    else:
        for start in range(0, samples.shape[0], batch_size):
            yield samples[start:start + batch_size]


@torch.no_grad()
def feature_batches(embed: Callable[[torch.Tensor], torch.Tensor], images_u8, batch_size: int = 1024,
                    device: str | torch.device = "cpu", precision: str = "fp32", progress: bool = False,
                    desc: str = "features", normalize: bool = True):
    """embed: uint8 (B, C, H, W) -> (B, D) on `device`. Yields float32 (B, D) CPU batches of the features
    of `images_u8` (a tensor or streamed samples) in order, L2-normalised unless normalize=False."""
    device = torch.device(device)
    batches = math.ceil(images_u8.shape[0] / batch_size)
    for batch in tqdm(in_batches(images_u8, batch_size), total=batches, desc=desc, disable=not progress, leave=False):
        with autocast(device.type, precision):
            feats = embed(batch.to(device, non_blocking=True))
        feats = feats.float()
        yield (F.normalize(feats, dim=1) if normalize else feats).cpu()


def extract_features(embed: Callable[[torch.Tensor], torch.Tensor], images_u8, batch_size: int = 1024,
                     device: str | torch.device = "cpu", precision: str = "fp32", progress: bool = False,
                     desc: str = "features", normalize: bool = True) -> torch.Tensor:
    """float32 (N, D) on the CPU: every batch of feature_batches."""
    return joined(feature_batches(embed, images_u8, batch_size, device, precision, progress, desc, normalize),
                  images_u8.shape[0])


def joined(batches, rows: int) -> torch.Tensor:
    """The feature batches of `rows` samples as one tensor (a clear error for none, not torch.cat's)."""
    if not rows:
        raise DataError("no samples to embed: the data set is empty")
    return torch.cat(list(batches))


# Streamed images may be any size: the raw-pixel baseline reads theirs at most this side, so that its
# features of 1 M images stay near 3 GB (768 float32 numbers an image in colour).
STREAMED_PIXEL_SIDE = 16


def pixel_features(images_u8) -> torch.Tensor:
    """Raw pixels, mean-centred per image and L2-normalised: the no-learning baseline. Streamed images
    are read batch by batch at most STREAMED_PIXEL_SIDE px."""
    if hasattr(images_u8, "batches"):
        side = min(STREAMED_PIXEL_SIDE, images_u8.shape[-1])
        return torch.cat([_centred_pixels(F.interpolate(batch.float(), size=(side, side), mode="area"))
                          for batch in images_u8.batches(1024)])
    return _centred_pixels(images_u8)


def _centred_pixels(images: torch.Tensor) -> torch.Tensor:
    x = images.flatten(1).float()
    return F.normalize(x - x.mean(1, keepdim=True), dim=1)


# A map layout names the stages the map probe joins, each kept spatial up to MAP_GRID x MAP_GRID cells:
# global pooling averages away where an object's parts are, and the middle stages keep more of that
# layout than the last one. 'map' (the two stages before the last) won a screen on the hidden labels of
# unlabelled training images (docs/evaluation.md); `--features auto` weighs it against the last two stages
# and all four by cross-validation inside each draw's labels, which a few-label user can do. The grid caps
# the size for large images (a 224 px ResNet-50 would otherwise give 200,000 numbers an image from one stage).
MAP_LAYOUTS = {"map": (-3, -2), "map-late": (-2, -1), "map-all": (-4, -3, -2, -1)}
MAP_GRID = 7
FEATURE_KINDS = ("pooled", *MAP_LAYOUTS)
# The probes on every map layout, their class probabilities averaged: a probe of its own and `--features
# auto`'s fifth candidate.
AVERAGED_MAPS = "maps-averaged"
# What the linear probe's --features takes: one kind, the averaged map probes, or 'auto' (the best of them all
# by cross-validation inside the labels).
PROBE_FEATURES = (*FEATURE_KINDS, AVERAGED_MAPS, "auto")


def check_kind(kind: str) -> None:
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown features {kind!r}; choose one of: {', '.join(FEATURE_KINDS)}")


def kinds_read(features: str) -> tuple[str, ...]:
    """The feature kinds a linear probe given `features` (one of PROBE_FEATURES) reads."""
    if features == "auto":
        return FEATURE_KINDS
    if features == AVERAGED_MAPS:
        return tuple(MAP_LAYOUTS)
    check_kind(features)
    return (features,)


def map_features(maps: list[torch.Tensor], stages: tuple[int, ...] = MAP_LAYOUTS["map"],
                 grid: int = MAP_GRID) -> torch.Tensor:
    """Stage outputs (from Method.embed_maps) -> (B, sum of C * g * g): each map of `stages` average-pooled
    to at most grid x grid cells (g = min(grid, its side)), flattened and L2-normalised on its own, so
    that each stage weighs the same in every image whatever its scale; concatenated."""
    parts = []
    for stage in stages:
        chosen = maps[stage]
        cells = (min(grid, chosen.shape[-2]), min(grid, chosen.shape[-1]))
        parts.append(F.normalize(F.adaptive_avg_pool2d(chosen, cells).flatten(1), dim=1))
    return torch.cat(parts, 1)
