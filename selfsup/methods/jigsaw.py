"""Jigsaw puzzles (Noroozi & Favaro, 2016, "Unsupervised Learning of Visual Representations by
Solving Jigsaw Puzzles").

Each view is cut into a grid of tiles (3x3), which are shuffled by one permutation from a fixed
set; the shared backbone encodes every tile on its own, the features are concatenated in the
shuffled order, and an MLP names the permutation (cross-entropy). The set is chosen once, greedily
for large Hamming distances (as in the paper), from a seeded pool, so it is the same in every
build. Each tile is cut at a random offset inside its cell, leaving gaps, so that the puzzle cannot
be solved by matching edges, and each tile's mean and standard deviation are normalised on their own,
so that it cannot be solved from brightness and contrast either (the paper's sec. 3.2 on shortcuts).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from selfsup.methods import Method, MethodConfig, register_method
from selfsup.methods.heads import mlp
from selfsup.methods.losses import pretext_cross_entropy
from selfsup.methods.masking import crop_flip_view

_PERMUTATION_SEED = 0     # the set is part of the task's definition: never drawn from the run's seed
_POOL_SIZE = 20000        # random candidates when the tiles have too many permutations to list


@dataclass
class JigsawConfig(MethodConfig):
    name: str = "jigsaw"
    grid: int = 3                      # grid x grid tiles
    # The paper uses 1000 permutations on ImageNet; a small data set learns a smaller set faster.
    num_permutations: int = 100
    tile_jitter: int = 1               # pixels each tile may shift inside its cell (the paper: 64 px tiles, 75 px cells)
    head_hidden_dim: int = 1024

    def validate(self) -> None:
        if self.grid < 2:
            raise ValueError(f"method.grid must be >= 2, got {self.grid}")
        most = math.factorial(self.grid ** 2)
        if not 2 <= self.num_permutations <= min(most, _POOL_SIZE):
            raise ValueError(f"method.num_permutations must lie in [2, {min(most, _POOL_SIZE)}] for a "
                             f"{self.grid}x{self.grid} grid, got {self.num_permutations}")
        if self.tile_jitter < 0 or self.head_hidden_dim < 1:
            raise ValueError(f"method.tile_jitter must be >= 0 and method.head_hidden_dim >= 1, "
                             f"got {self.tile_jitter} and {self.head_hidden_dim}")


def permutation_set(num_tiles: int, size: int, seed: int = _PERMUTATION_SEED) -> torch.Tensor:
    """(size, num_tiles) distinct permutations, chosen greedily: each next one maximises its minimum
    Hamming distance to those already chosen, from all permutations when there are at most
    _POOL_SIZE of them, else from a seeded random pool. The paper's algorithm 1 maximises the sum
    of distances instead, which lets two chosen permutations differ by one swap (for 100 of 9
    tiles: minimum distance 2, against 6 here, at about the same mean distance)."""
    rng = np.random.default_rng(seed)
    if math.factorial(num_tiles) <= _POOL_SIZE:
        pool = np.array(list(itertools.permutations(range(num_tiles))))
    else:
        pool = np.unique(np.argsort(rng.random((_POOL_SIZE, num_tiles)), axis=1), axis=0)
    if size > len(pool):
        raise ValueError(f"cannot choose {size} distinct permutations from {len(pool)}")
    chosen = [int(rng.integers(len(pool)))]
    min_distance = (pool != pool[chosen[0]]).sum(1)
    for _ in range(size - 1):
        chosen.append(int(min_distance.argmax()))
        min_distance = np.minimum(min_distance, (pool != pool[chosen[-1]]).sum(1))
    return torch.from_numpy(pool[chosen]).long()


def cut_tiles(images: torch.Tensor, grid: int, tile: int, offsets: torch.Tensor, jitter: int) -> torch.Tensor:
    """(B, C, S, S) -> (B, grid*grid, C, tile, tile), row-major; tile t of sample b starts offsets[b, t]
    = (dy, dx) pixels into its cell of side S // grid, each offset in [0, jitter]. (The bound is checked
    from `jitter`, not from the offsets: reading them back would wait for the device every step.)"""
    b, c, s, _ = images.shape
    cell = s // grid
    if tile + jitter > cell:
        raise ValueError(f"tiles of {tile} px shifted by up to {jitter} px do not fit cells of {cell} px")
    origin = torch.arange(grid, device=images.device) * cell
    top = origin.repeat_interleave(grid)[None] + offsets[..., 0]                 # (B, T)
    left = origin.repeat(grid)[None] + offsets[..., 1]
    span = torch.arange(tile, device=images.device)
    rows = (top[..., None] + span)[..., :, None]                                  # (B, T, tile, 1)
    cols = (left[..., None] + span)[..., None, :]                                 # (B, T, 1, tile)
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    return images[batch, :, rows, cols].permute(0, 1, 4, 2, 3)                  # (B, T, tile, tile, C) -> (B, T, C, ...)


def normalize_tiles(tiles: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B, T, C, t, t) -> each tile minus its mean, over its standard deviation (over C, t, t): a tile's
    place in the image can then not be read off how bright or how contrasty it is."""
    mean = tiles.mean(dim=(2, 3, 4), keepdim=True)
    std = tiles.std(dim=(2, 3, 4), keepdim=True)
    return (tiles - mean) / (std + eps)


def shuffle_tiles(tiles: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """tiles (B, T, ...), perms (B, T): position i of sample b shows tile perms[b, i]."""
    index = perms.view(*perms.shape, *([1] * (tiles.dim() - 2))).expand_as(tiles)
    return torch.gather(tiles, 1, index)


def unshuffle_tiles(shuffled: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """The inverse of shuffle_tiles: back to grid order."""
    return shuffle_tiles(shuffled, perms.argsort(dim=1))


@register_method("jigsaw")
class Jigsaw(Method):
    config_class = JigsawConfig
    spreads_embeddings = False      # a predictive task: see selfsup/evaluate/representation.py
    recipe = {
        # Whole 28 px images give 3x3 cells of 9 px: the tiles (8 px) are as small as is useful.
        "augment": {"size": 28},
    }

    def __init__(self, backbone, cfg: JigsawConfig, augment_cfg):
        super().__init__(backbone, cfg, augment_cfg)
        self.register_buffer("permutations", permutation_set(cfg.grid ** 2, cfg.num_permutations))
        self.classifier = mlp([cfg.grid ** 2 * backbone.feature_dim, cfg.head_hidden_dim, cfg.num_permutations])

    def views(self, batch_u8: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        """[shuffled tiles (B * T, C, t, t), sample by sample, permutation indices (B,)]."""
        x = crop_flip_view(batch_u8, self.augment_cfg, gen)
        b, grid, jitter = x.shape[0], self.cfg.grid, self.cfg.tile_jitter
        tile = x.shape[-1] // grid - jitter
        if tile < 1:
            raise ValueError(f"{x.shape[-1]} px views leave no room for {grid}x{grid} tiles with "
                             f"tile_jitter={jitter}; use a larger augment.size")
        offsets = torch.randint(0, jitter + 1, (b, grid * grid, 2), generator=gen, device=x.device)
        labels = torch.randint(0, self.cfg.num_permutations, (b,), generator=gen, device=x.device)
        tiles = shuffle_tiles(normalize_tiles(cut_tiles(x, grid, tile, offsets, jitter)), self.permutations[labels])
        return [self._layout(tiles.flatten(0, 1)), labels]

    def loss(self, views: list[torch.Tensor]):
        tiles, labels = views
        features = self.backbone(tiles).view(labels.shape[0], -1)       # (B, T * F), in shuffled order
        logits = self.classifier(features)
        loss = pretext_cross_entropy(logits, labels)
        accuracy = (logits.detach().argmax(1) == labels).float().mean()
        return loss, {"loss": loss.detach(), "accuracy": accuracy}
