"""Pretext-task losses as plain functions: shapes in the docstring, the formula in one line."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020, eq. 1). z1, z2: (N, D), row i of each is a positive pair.

    l(i, j) = -log exp(sim(z_i, z_j)/t) / sum_{k != i} exp(sim(z_i, z_k)/t) over the 2N
    embeddings, averaged over all 2N anchors: each anchor has 1 positive and 2N-2 negatives.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent expects two (N, D) tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    with torch.autocast(z1.device.type, enabled=False):     # logits near 1/t need fp32 resolution
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        logits = z @ z.T / temperature
        logits.fill_diagonal_(float("-inf"))
        positives = torch.arange(2 * n, device=z.device).roll(n)  # i <-> i + n
        return F.cross_entropy(logits, positives)
