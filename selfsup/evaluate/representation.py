"""Label-free measures of an embedding: they need no labels, so they work on any data set and
can watch a run for collapse while it trains.

- RankMe (Garrido et al., 2023): exp of the entropy of the normalised singular values of the
  (N, D) embedding matrix; the effective number of dimensions used, from 1 to min(N, D).
- Alignment and uniformity (Wang & Isola, 2020) of L2-normalised embeddings:
  alignment = E ||f(x) - f(x+)||^alpha over positive pairs (lower: views agree);
  uniformity = log E exp(-t ||f(x) - f(y)||^2) over all pairs (lower: spread on the sphere).
- Per-dimension std of L2-normalised embeddings (Chen & He, 2021): about 1/sqrt(D) when they
  spread out, 0 when they collapse to a point; reported times sqrt(D), so 1 is healthy.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Below these, an embedding has collapsed (to a point, or onto a handful of directions).
COLLAPSE_STD = 0.05
COLLAPSE_RANK = 2.0


def rankme(embeddings: torch.Tensor, eps: float = 1e-7) -> float:
    """embeddings (N, D) -> effective rank exp(-sum p_k log p_k), p = singular values / their sum."""
    s = torch.linalg.svdvals(embeddings.double())
    p = s / s.sum() + eps
    return math.exp(-(p * p.log()).sum().item())


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> float:
    """z1, z2 (N, D) L2-normalised embeddings of the two views of N samples -> E ||z1 - z2||^alpha."""
    return (z1 - z2).norm(dim=1).pow(alpha).mean().item()


def uniformity(z: torch.Tensor, t: float = 2.0) -> float:
    """z (N, D) L2-normalised -> log of the mean over pairs i < j of exp(-t ||z_i - z_j||^2)."""
    return torch.pdist(z.double()).pow(2).mul(-t).exp().mean().log().item()


def normalised_std(embeddings: torch.Tensor) -> float:
    """Mean over dimensions of the std of the L2-normalised embeddings, times sqrt(D)."""
    z = F.normalize(embeddings.double(), dim=1)
    return (z.std(0).mean() * math.sqrt(z.shape[1])).item()


def representation_metrics(embeddings: torch.Tensor, view1: torch.Tensor | None = None,
                           view2: torch.Tensor | None = None) -> dict[str, float]:
    """RankMe, normalised std and uniformity of (N, D) embeddings; alignment too when the
    embeddings of two augmented views of the same samples are given."""
    z = F.normalize(embeddings.float(), dim=1)
    out = {"rankme": rankme(embeddings), "std": normalised_std(embeddings), "uniformity": uniformity(z)}
    if view1 is not None and view2 is not None:
        out["alignment"] = alignment(F.normalize(view1.float(), dim=1), F.normalize(view2.float(), dim=1))
    return out


def collapse_warning(metrics: dict[str, float]) -> str | None:
    """A sentence saying how the embedding collapsed, or None when it has not."""
    if metrics["std"] < COLLAPSE_STD:
        return (f"the embeddings have collapsed towards a single point (normalised std {metrics['std']:.3f}, "
                f"healthy is about 1)")
    if metrics["rankme"] < COLLAPSE_RANK:
        return f"the embeddings use only {metrics['rankme']:.1f} effective dimensions (RankMe)"
    return None
