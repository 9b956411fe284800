"""Shared pieces of the predictive methods: random patch masking (MAE), patchify / unpatchify, the
geometry-only view (random resized crop + flip, no colour changes) that MAE, rotation and jigsaw
train on, and the picking of the masked positions a loss is computed at (at_chosen). Every random
draw comes from the step's generator, so a resumed run masks the same patches.
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


def lowest(scores: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """bool (B, L), True at the count[b] lowest scores of each row b of scores (B, L): exactly that many,
    a tie going to the earlier position (a threshold at the count-th lowest score would take every score
    tied with it, and float32 draws do tie)."""
    return scores.argsort(dim=1, stable=True).argsort(dim=1) < count[:, None]


IGNORE = -100        # the target of a position that is not predicted (torch's cross_entropy ignore_index)


def at_chosen(chosen: torch.Tensor, *tensors: torch.Tensor,
              capacity: int | None = None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Each tensor (shaped like chosen, plus trailing dimensions) at chosen's True positions, in
    row-major order, and which of the rows picked are real (None: all of them).

    Eagerly, exactly those rows: their number is data, read back from the device, which a step can
    afford there. Under torch.compile that read would split the graph (and rule out CUDA graphs), so a
    fixed `capacity` of rows is picked instead (every position when None): the rows after the chosen
    ones repeat the first position and are marked not real, and a loss must ignore them
    (ignoring_unreal). Should more positions be chosen than the capacity holds, the last are dropped."""
    if not torch.compiler.is_compiling():
        return [tensor[chosen] for tensor in tensors], None
    flat = chosen.flatten()
    rows = [tensor.flatten(0, chosen.dim() - 1) for tensor in tensors]
    if capacity is None or capacity >= flat.numel():
        return rows, flat
    picked = torch.nonzero_static(flat, size=capacity, fill_value=0).squeeze(1)
    return [row[picked] for row in rows], torch.arange(capacity, device=flat.device) < flat.sum()


def ignoring_unreal(targets: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """Class targets of the rows at_chosen picked, IGNORE where a row is not real."""
    return targets if real is None else targets.masked_fill(~real, IGNORE)


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
