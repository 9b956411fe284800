"""VICReg (Bardes, Ponce & LeCun, 2022, "VICReg: Variance-Invariance-Covariance Regularization
for Self-Supervised Learning").

Both views go through one encoder (backbone + 3-layer expander). Three terms shape the
expanded embeddings: invariance (the two views' embeddings agree, MSE), variance (every
dimension keeps a standard deviation of at least gamma over the batch, in each branch) and
covariance (the dimensions of each branch are decorrelated). The variance term alone rules
out collapse, with no negatives, momentum encoder or stop-gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from selfsup.augment import ASYMMETRIC_VIEWS
from selfsup.distributed import gather
from selfsup.methods import Method, MethodConfig, embed_views, register_method
from selfsup.methods.heads import mlp


@dataclass
class VICRegConfig(MethodConfig):
    name: str = "vicreg"
    proj_dim: int = 2048              # expander hidden and output width; the paper's 8192 is 4x slower on a CPU
    invariance_weight: float = 25.0   # lambda
    variance_weight: float = 25.0     # mu
    covariance_weight: float = 1.0    # nu
    gamma: float = 1.0                # target standard deviation per dimension
    eps: float = 1e-4

    def validate(self) -> None:
        if self.proj_dim < 2:
            raise ValueError(f"method.proj_dim must be >= 2, got {self.proj_dim}")
        for key in ("invariance_weight", "variance_weight", "covariance_weight", "gamma"):
            if getattr(self, key) < 0:
                raise ValueError(f"method.{key} must be >= 0, got {getattr(self, key)}")
        if self.eps <= 0:
            raise ValueError(f"method.eps must be > 0, got {self.eps}")


def variance_term(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """v(Z) (eq. 1). z: (N >= 2, D). v = mean_j relu(gamma - sqrt(Var(z_:j) + eps)), unbiased variance."""
    return F.relu(gamma - torch.sqrt(z.var(dim=0) + eps)).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """c(Z) (eq. 4). z: (N >= 2, D). c = sum_{i != j} Cov(Z)_ij^2 / D, Cov with 1 / (N - 1)."""
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = z.T @ z / (n - 1)
    return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / d


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, gamma: float = 1.0,
                 eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three unweighted terms of eq. 6. z1, z2: (N >= 2, D) embeddings of views 1 and 2.

    invariance = mean_{i,k} (z1_ik - z2_ik)^2; variance = [v(Z1) + v(Z2)] / 2; covariance = c(Z1) + c(Z2).
    Eq. 6 sums the two branches' variance terms; the authors' released code, with which the 25 / 25 / 1
    weights were tuned, averages them (and takes the MSE over all entries), so this follows the code.
    """
    if z1.shape != z2.shape or z1.dim() != 2 or z1.shape[0] < 2:
        raise ValueError(f"vicreg expects two (N >= 2, D) tensors of one shape, "
                         f"got {tuple(z1.shape)} and {tuple(z2.shape)}")
    with torch.autocast(z1.device.type, enabled=False):      # sums of D^2 squares need fp32
        z1, z2 = z1.float(), z2.float()
        invariance = F.mse_loss(z1, z2)
        variance = (variance_term(z1, gamma, eps) + variance_term(z2, gamma, eps)) / 2
        covariance = covariance_term(z1) + covariance_term(z2)
    return invariance, variance, covariance


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, invariance_weight: float = 25.0, variance_weight: float = 25.0,
                covariance_weight: float = 1.0, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg loss (eq. 6). z1, z2: (N >= 2, D).

    L = lambda * invariance + mu * [v(Z1) + v(Z2)] / 2 + nu * [c(Z1) + c(Z2)]  (see vicreg_terms).
    """
    invariance, variance, covariance = vicreg_terms(z1, z2, gamma, eps)
    return invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance


@register_method("vicreg")
class VICReg(Method):
    other_modalities = ("audio",)     # its views come from the data (sound: selfsup/audio/views.py)
    config_class = VICRegConfig
    batch_norm_per_view = True
    recipe = {
        "optim": {"weight_decay": 1e-6},       # the paper's LARS weight decay
        "augment": {"views": ASYMMETRIC_VIEWS},
    }

    def __init__(self, backbone, cfg: VICRegConfig, augment_cfg):
        super().__init__(backbone, cfg, augment_cfg)
        if augment_cfg.local_crops:
            raise ValueError("vicreg compares exactly two views; set augment.local_crops=0")
        self.expander = mlp([backbone.feature_dim, cfg.proj_dim, cfg.proj_dim, cfg.proj_dim])

    def loss(self, views: list[torch.Tensor]):
        cfg = self.cfg
        z1, z2 = embed_views(self.backbone, self.expander, views, self.batch_norm_per_view).chunk(2)
        invariance, variance, covariance = vicreg_terms(gather(z1), gather(z2), cfg.gamma, cfg.eps)
        loss = (cfg.invariance_weight * invariance + cfg.variance_weight * variance
                + cfg.covariance_weight * covariance)
        return loss, {"loss": loss.detach(), "invariance": invariance.detach(), "variance": variance.detach(),
                      "covariance": covariance.detach()}
