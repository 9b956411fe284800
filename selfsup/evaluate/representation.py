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

# What counts as collapse, per family of method. Methods whose loss spreads the embeddings out
# (contrastive, redundancy-reducing, clustering, self-distillation) reach a normalised std of 0.1-0.5
# and a RankMe in the tens within an epoch, so an embedding under 0.05 or on fewer than 2 effective
# dimensions means their anti-collapse mechanism failed. Predictive and generative methods (masked
# patches, rotations, puzzles, next or masked tokens) need not spread the features they are evaluated on
# (MAE and clm sat at 0.03-0.04 on a GPU, MAE's class token on under 2 effective dimensions in short
# runs): only an embedding close to a constant counts (docs/evaluation.md).
COLLAPSE_STD = {"spreads": 0.05, "predicts": 0.005}
COLLAPSE_RANK = {"spreads": 2.0, "predicts": 0.0}


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


def collapse_warning(metrics: dict[str, float], spreads: bool = True) -> str | None:
    """A sentence saying how the embedding collapsed, or None when it has not. spreads: whether the
    method's loss spreads the embeddings out (Method.spreads_embeddings), which sets the thresholds."""
    family = "spreads" if spreads else "predicts"
    if metrics["std"] < COLLAPSE_STD[family]:
        return (f"the embeddings have collapsed towards a single point (normalised std {metrics['std']:.3f}, "
                f"under {COLLAPSE_STD[family]} and not rising)")
    if metrics["rankme"] < COLLAPSE_RANK[family]:
        return f"the embeddings use only {metrics['rankme']:.1f} effective dimensions (RankMe)"
    return None


class CollapseWatch:
    """The collapse warning of a run: given only when the embedding looks collapsed at two online
    evaluations in a row and its spread did not grow between them. A real collapse persists; healthy
    runs contract and recover early in training (docs/evaluation.md has examples)."""

    def __init__(self, spreads: bool):
        self.spreads = spreads
        self.previous: dict[str, float] | None = None       # the last evaluation, when it looked collapsed

    def __call__(self, metrics: dict[str, float]) -> str | None:
        warning = collapse_warning(metrics, self.spreads)
        persistent = warning is not None and self.previous is not None and metrics["std"] <= self.previous["std"]
        self.previous = metrics if warning is not None else None
        return warning if persistent else None
