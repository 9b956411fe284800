"""SimCLR (Chen et al., 2020, "A Simple Framework for Contrastive Learning of Visual Representations").

Two augmented views of each image pass through the backbone and a projection head
(Linear-BN-ReLU-Linear); NT-Xent pulls each view towards its twin and away from the
2N-2 other views in the batch. With augment.local_crops > 0 (multi-crop, Caron et al. 2020)
the small views join in and every other view of the same image counts as a positive.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.methods import Method, MethodConfig, encode_views, register_method
from selfsup.methods.heads import mlp
from selfsup.distributed import gather
from selfsup.methods.losses import multi_view_nt_xent, nt_xent


@dataclass
class SimCLRConfig(MethodConfig):
    name: str = "simclr"
    temperature: float = 0.1
    proj_hidden_dim: int = 512
    proj_dim: int = 128

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"method.temperature must be > 0, got {self.temperature}")


@register_method("simclr")
class SimCLR(Method):
    config_class = SimCLRConfig

    def __init__(self, backbone, cfg: SimCLRConfig, augment_cfg):
        super().__init__(backbone, cfg, augment_cfg)
        self.projector = mlp([backbone.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim])

    def loss(self, views: list[torch.Tensor]):
        # The projector's BN sees all views at once, as in the single-batch formulation of the paper.
        z = self.projector(torch.cat(encode_views(self.backbone, views))).view(len(views), views[0].shape[0], -1)
        z = torch.stack([gather(view) for view in z])      # negatives from every rank's batch
        if len(views) == 2:
            loss = nt_xent(z[0], z[1], self.cfg.temperature)
        else:
            loss = multi_view_nt_xent(z, self.cfg.temperature)
        return loss, {"loss": loss.detach()}
