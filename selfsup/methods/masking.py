"""Shared pieces of the predictive methods: random patch masking (MAE), patchify / unpatchify, and
the geometry-only view (random resized crop + flip, no colour changes) that MAE, rotation and jigsaw
train on. Every random draw comes from the step's generator, so a resumed run masks the same patches.
"""
from __future__ import annotations

import dataclasses

import torch

from selfsup.augment import AugmentConfig, augment


def num_masked(num_patches: int, ratio: float) -> int:
    """round(N * ratio) patches are hidden in every sample; at least one stays visible."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must lie in [0, 1), got {ratio}")
    return min(int(round(num_patches * ratio)), num_patches - 1)


def random_masking(batch: int, num_patches: int, ratio: float, gen: torch.Generator,
                   device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hide round(N * ratio) of the N patches of each sample, independently per sample.

    Returns keep (B, N - n_masked) long: the visible patches' indices, ascending;
    mask (B, N) bool: True where hidden; restore (B, N) long: the order that puts
    cat([visible, hidden]) tokens back in grid order (MAE's ids_restore).
    """
    n_mask = num_masked(num_patches, ratio)
    noise = torch.rand(batch, num_patches, generator=gen, device=device)
    hidden_first = noise.argsort(dim=1)[:, :n_mask]
    mask = torch.zeros(batch, num_patches, dtype=torch.bool, device=device)
    mask.scatter_(1, hidden_first, True)
    # A stable sort of the mask lists visible patches first, each group in grid order.
    shuffle = mask.to(torch.uint8).argsort(dim=1, stable=True)
    keep = shuffle[:, :num_patches - n_mask]
    return keep, mask, shuffle.argsort(dim=1)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), patches in row-major grid order, pixels in (row, col, channel) order."""
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {p}")
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, height: int, width: int, channels: int) -> torch.Tensor:
    """The inverse of patchify: (B, N, p*p*C) -> (B, C, H, W)."""
    b, p = patches.shape[0], patch_size
    x = patches.reshape(b, height // p, width // p, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, height, width)


def crop_flip_view(batch_u8: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """One normalised view with the config's random resized crop and flip but no colour jitter,
    grayscale, blur or solarization: the predictive pretext tasks need no invariance to those."""
    geometric = dataclasses.replace(cfg, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
    return augment(batch_u8, geometric, gen)
