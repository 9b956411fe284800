"""SimSiam (Chen & He, 2021, "Exploring Simple Siamese Representation Learning").

Both views go through one encoder (backbone + 3-layer projector with BN on its output); a
bottleneck predictor maps one view's projection to the other's, which is held fixed
(stop-gradient). No negatives and no momentum encoder: the stop-gradient alone keeps the
embeddings from collapsing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods import Method, MethodConfig, embed_views, register_method
from selfsup.methods.heads import mlp


@dataclass
class SimSiamConfig(MethodConfig):
    name: str = "simsiam"
    proj_dim: int = 2048              # also the projector's hidden width, as in the paper
    pred_hidden_dim: int = 512        # the bottleneck: proj_dim / 4
    # The paper (sec. 4.2) keeps the predictor's lr constant while the rest decays: the predictor
    # must keep adapting to the latest representations.
    fix_predictor_lr: bool = True

    def validate(self) -> None:
        for key in ("proj_dim", "pred_hidden_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"method.{key} must be >= 1, got {getattr(self, key)}")


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """SimSiam's symmetrised loss (eq. 2). p1, p2: (N, D) predictions of views 1 and 2;
    z1, z2: (N, D) projections of views 1 and 2, detached here (the paper's stop-gradient).

    L = D(p1, z2) / 2 + D(p2, z1) / 2 with D(p, z) = -mean_i cos(p_i, stopgrad(z_i)), in [-1, 1].
    """
    if not p1.shape == p2.shape == z1.shape == z2.shape or p1.dim() != 2:
        raise ValueError("simsiam_loss expects four (N, D) tensors of one shape, got "
                         f"{[tuple(t.shape) for t in (p1, p2, z1, z2)]}")
    with torch.autocast(p1.device.type, enabled=False):
        def d(p, z):
            return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()
        return d(p1, z2) / 2 + d(p2, z1) / 2


@register_method("simsiam")
class SimSiam(Method):
    other_modalities = ("audio",)     # its views come from the data (sound: selfsup/audio/views.py)
    config_class = SimSiamConfig
    batch_norm_per_view = True
    recipe = {
        # The paper's weight decay with this library's LARS at lr 8 (SimCLR's default) instead of the
        # paper's SGD at lr 0.05 x batch/256 (optim.name=sgd optim.lr=0.05): LARS learns faster in the
        # short runs this library defaults to (docs/methods.md).
        "optim": {"weight_decay": 1e-4},
    }

    def __init__(self, backbone, cfg: SimSiamConfig, augment_cfg):
        super().__init__(backbone, cfg, augment_cfg)
        if augment_cfg.local_crops:
            raise ValueError("simsiam compares exactly two views; set augment.local_crops=0")
        self.projector = mlp([backbone.feature_dim, cfg.proj_dim, cfg.proj_dim, cfg.proj_dim], last_batch_norm=True)
        self.predictor = mlp([cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim])

    def constant_lr_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.predictor.parameters()) if self.cfg.fix_predictor_lr else []

    def loss(self, views: list[torch.Tensor]):
        z = embed_views(self.backbone, self.projector, views, self.batch_norm_per_view)
        z1, z2 = z.chunk(2)
        p1, p2 = embed_views(self.predictor, nn.Identity(), [z1, z2], self.batch_norm_per_view).chunk(2)
        loss = simsiam_loss(p1, p2, z1, z2)
        # The paper's collapse check (sec. 4.1): per-dimension std of the normalised projections,
        # ~1/sqrt(dim) when healthy, 0 when collapsed.
        z_std = F.normalize(z1.detach().float(), dim=1).std(dim=0).mean()
        return loss, {"loss": loss.detach(), "z_std": z_std}
