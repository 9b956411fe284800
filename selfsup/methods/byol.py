"""BYOL (Grill et al., 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning").

An online network (backbone, projector, predictor) learns to predict, from one view, the
projection a target network gives the other view. The target is a slowly moving average of
the online backbone and projector (momentum from `base_momentum` to 1 on a cosine schedule)
and gets no gradient: there are no negatives, and the predictor plus the slow target keep
the embeddings from collapsing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from selfsup.augment import ASYMMETRIC_VIEWS
from selfsup.methods import Method, MethodConfig, embed_views, register_method
from selfsup.methods.heads import mlp
from selfsup.methods.momentum import cosine_momentum, ema_update, momentum_copy


@dataclass
class BYOLConfig(MethodConfig):
    name: str = "byol"
    proj_hidden_dim: int = 4096
    proj_dim: int = 256
    pred_hidden_dim: int = 4096
    # The paper's 0.996 is for 300k steps; a default run here has ~1000, and a target that
    # trails the online network by ~1/(1 - m) = 100 steps instead of 250 keeps up with it.
    base_momentum: float = 0.99
    final_momentum: float = 1.0

    def validate(self) -> None:
        for key in ("proj_hidden_dim", "proj_dim", "pred_hidden_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"method.{key} must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.base_momentum <= self.final_momentum <= 1.0:
            raise ValueError("method.base_momentum and method.final_momentum must satisfy "
                             f"0 <= base <= final <= 1, got {self.base_momentum} and {self.final_momentum}")


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """BYOL's symmetrised loss (eq. 2). p1, p2: (N, D) online predictions of views 1 and 2;
    z1, z2: (N, D) target projections of views 1 and 2 (detached: no gradient reaches them).

    L = mean_i [ (2 - 2 cos(p1_i, z2_i)) + (2 - 2 cos(p2_i, z1_i)) ], in [0, 8].
    """
    if not p1.shape == p2.shape == z1.shape == z2.shape or p1.dim() != 2:
        raise ValueError("byol_loss expects four (N, D) tensors of one shape, got "
                         f"{[tuple(t.shape) for t in (p1, p2, z1, z2)]}")
    with torch.autocast(p1.device.type, enabled=False):
        def normalized_mse(p, z):
            return 2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=1)
        return (normalized_mse(p1, z2) + normalized_mse(p2, z1)).mean()


@register_method("byol")
class BYOL(Method):
    other_modalities = ("audio",)     # its views come from the data (sound: selfsup/audio/views.py)
    config_class = BYOLConfig
    batch_norm_per_view = True
    recipe = {
        "optim": {"weight_decay": 1.5e-6},       # the paper's LARS weight decay
        "augment": {"views": ASYMMETRIC_VIEWS},
    }

    def __init__(self, backbone, cfg: BYOLConfig, augment_cfg):
        super().__init__(backbone, cfg, augment_cfg)
        if augment_cfg.local_crops:
            raise ValueError("byol compares exactly two views; set augment.local_crops=0")
        self.projector = mlp([backbone.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim])
        self.predictor = mlp([cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim])
        self.target_backbone = momentum_copy(backbone)
        self.target_projector = momentum_copy(self.projector)

    def loss(self, views: list[torch.Tensor]):
        per_view = self.batch_norm_per_view
        p1, p2 = embed_views(self.backbone, lambda f: self.predictor(self.projector(f)), views, per_view).chunk(2)
        with torch.no_grad():
            z1, z2 = embed_views(self.target_backbone, self.target_projector, views, per_view).chunk(2)
        loss = byol_loss(p1, p2, z1, z2)
        return loss, {"loss": loss.detach()}

    def after_step(self, progress: float) -> None:
        # A function of progress alone, so a resumed run moves the target exactly as an unbroken one.
        momentum = cosine_momentum(self.cfg.base_momentum, progress, self.cfg.final_momentum)
        ema_update(self.target_backbone, self.backbone, momentum)
        ema_update(self.target_projector, self.projector, momentum)
