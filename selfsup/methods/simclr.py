"""SimCLR (Chen et al., 2020, "A Simple Framework for Contrastive Learning of Visual Representations").

Two augmented views of each image pass through the backbone and a projection head
(Linear-BN-ReLU-Linear); NT-Xent pulls each view towards its twin and away from the
2N-2 other views in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.methods import Method, MethodConfig, register_method
from selfsup.methods.heads import mlp
from selfsup.methods.losses import nt_xent


@dataclass
class SimCLRConfig(MethodConfig):
    name: str = "simclr"
    temperature: float = 0.2
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
        b = views[0].shape[0]
        z = self.projector(self.backbone(torch.cat(views)))   # one pass: BN sees both views
        loss = nt_xent(z[:b], z[b:], self.cfg.temperature)
        return loss, {"loss": loss.item()}
