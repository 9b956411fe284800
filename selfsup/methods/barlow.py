"""Barlow Twins (Zbontar et al., 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction").

Both views go through one encoder (backbone + 3-layer projector). The cross-correlation
matrix of the two views' batch-standardised embeddings is pushed towards the identity:
ones on the diagonal make the views agree, zeros off it decorrelate the dimensions, which
keeps the embeddings from collapsing without negatives or a momentum encoder.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.augment import ASYMMETRIC_VIEWS
from selfsup.distributed import gather
from selfsup.methods import Method, MethodConfig, embed_views, register_method
from selfsup.methods.heads import mlp


@dataclass
class BarlowTwinsConfig(MethodConfig):
    name: str = "barlow"
    proj_dim: int = 2048              # hidden and output width; the paper's 8192 is 4x slower on a CPU
    lambd: float = 5e-3               # off-diagonal weight (paper; its later note suggests 1 / proj_dim)
    # The learning rate of the biases and norm parameters, which LARS steps without its trust ratio,
    # as a share of the weights': the authors' code gives them 0.0048 against 0.2 (0.024), since the
    # loss, a sum over thousands of entries, has large gradients. (Scaling the loss down instead, as
    # an earlier release did, also shrinks the gradient against the weight decay LARS adds before its
    # trust ratio: by 0.005, a weight decay 200 times the paper's.)
    bias_lr_scale: float = 0.024

    def validate(self) -> None:
        if self.proj_dim < 1:
            raise ValueError(f"method.proj_dim must be >= 1, got {self.proj_dim}")
        if self.lambd < 0:
            raise ValueError(f"method.lambd must be >= 0, got {self.lambd}")
        if self.bias_lr_scale <= 0:
            raise ValueError(f"method.bias_lr_scale must be > 0, got {self.bias_lr_scale}")


def standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(N, D) -> each dimension with mean 0 and std 1 over the batch (biased variance, as BatchNorm)."""
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3) -> torch.Tensor:
    """Barlow Twins loss (eq. 1). z1, z2: (N, D) embeddings of views 1 and 2, N >= 2.

    C = standardize(z1)^T standardize(z2) / N;  L = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2.
    """
    if z1.shape != z2.shape or z1.dim() != 2 or z1.shape[0] < 2:
        raise ValueError(f"barlow_twins_loss expects two (N >= 2, D) tensors of one shape, "
                         f"got {tuple(z1.shape)} and {tuple(z2.shape)}")
    with torch.autocast(z1.device.type, enabled=False):      # sums of D^2 squares need fp32
        c = standardize(z1.float()).T @ standardize(z2.float()) / z1.shape[0]
        on_diag = (1 - c.diagonal()).pow(2).sum()
        off_diag = c.pow(2).sum() - c.diagonal().pow(2).sum()
        return on_diag + lambd * off_diag


@register_method("barlow")
class BarlowTwins(Method):
    other_modalities = ("audio",)     # its views come from the data (sound: selfsup/audio/views.py)
    config_class = BarlowTwinsConfig
    batch_norm_per_view = True
    recipe = {
        "optim": {"weight_decay": 1.5e-6},     # the paper's LARS weight decay
        "augment": {"views": ASYMMETRIC_VIEWS},
    }

    def __init__(self, backbone, cfg: BarlowTwinsConfig, augment_cfg):
        super().__init__(backbone, cfg, augment_cfg)
        if augment_cfg.local_crops:
            raise ValueError("barlow compares exactly two views; set augment.local_crops=0")
        self.projector = mlp([backbone.feature_dim, cfg.proj_dim, cfg.proj_dim, cfg.proj_dim])

    @property
    def bias_lr_scale(self) -> float:
        return self.cfg.bias_lr_scale

    def loss(self, views: list[torch.Tensor]):
        z1, z2 = embed_views(self.backbone, self.projector, views, self.batch_norm_per_view).chunk(2)
        loss = barlow_twins_loss(gather(z1), gather(z2), self.cfg.lambd)     # statistics of the global batch
        return loss, {"loss": loss.detach()}
