"""The order samples are trained in: each epoch a permutation seeded by (seed, epoch), cut into the
ranks' shares. The in-memory batches and the streamed ones both read it, so they train alike."""
from __future__ import annotations

import torch


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's share of the epoch's permutation of n samples, seeded by (seed, epoch)."""
    gen = torch.Generator().manual_seed(seed * 7919 + epoch)
    return torch.randperm(n, generator=gen)[rank::world_size]
