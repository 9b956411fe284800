"""COLA (Saeed, Grangier and Zeghidour 2021, "Contrastive Learning of General-Purpose Audio
Representations"): two segments of one clip are a positive pair, the other clips' segments of the
batch its negatives.

Each segment's encoding goes through a dense layer, layer normalisation and tanh (g, 512 units), and
the similarity of an anchor x to a candidate x' is bilinear, s(x, x') = g(x)^T W g(x'), with W learned.
The loss is the cross-entropy of picking each anchor's own positive among every positive of the batch:

    L = -1/N sum_i log( exp s(x_i, x'_i) / sum_j exp s(x_i, x'_j) )

(no temperature: W sets the scale). The segments are random crops of `audio.crop_seconds` with no
other augmentation, as in the paper; Adam at lr 1e-4 without weight decay. The paper cuts segments
of 960 ms from ten-second clips; the clips here last one second, so the two segments of 600 ms
overlap by at least 200 ms.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.distributed import gather
from selfsup.methods import Method, MethodConfig, encode_views, register_method


@dataclass
class COLAConfig(MethodConfig):
    name: str = "cola"
    proj_dim: int = 512

    def validate(self) -> None:
        if self.proj_dim < 1:
            raise ValueError(f"method.proj_dim must be >= 1, got {self.proj_dim}")


def cola_loss(anchors: torch.Tensor, positives: torch.Tensor, bilinear: torch.Tensor) -> torch.Tensor:
    """anchors, positives (N, D): g of each clip's two segments, row i a pair; bilinear W (D, D).
    The mean over anchors of the cross-entropy of s(x_i, x'_j) = anchors_i^T W positives_j over j."""
    with torch.autocast(anchors.device.type, enabled=False):
        logits = anchors.float() @ bilinear.float() @ positives.float().T
        return F.cross_entropy(logits, torch.arange(len(anchors), device=anchors.device))


@register_method("cola")
class COLA(Method):
    config_class = COLAConfig
    modality = "audio"
    recipe = {
        "optim": {"name": "adamw", "lr": 1e-4, "weight_decay": 0.0},
        "audio": {"crop_seconds": 0.6, "gain_db": 0.0, "noise_p": 0.0, "mix_p": 0.0, "crop_scale": [1.0, 1.0],
                  "freq_masks": 0, "time_masks": 0},
    }

    def __init__(self, backbone, cfg: COLAConfig, augment_cfg):
        super().__init__(backbone, cfg, augment_cfg)
        self.projector = nn.Sequential(nn.Linear(backbone.feature_dim, cfg.proj_dim), nn.LayerNorm(cfg.proj_dim),
                                       nn.Tanh())
        self.bilinear = nn.Parameter(torch.empty(cfg.proj_dim, cfg.proj_dim))
        nn.init.xavier_uniform_(self.bilinear)

    def loss(self, views: list[torch.Tensor]):
        anchors, positives = (gather(self.projector(f)) for f in encode_views(self.backbone, views))
        loss = cola_loss(anchors, positives, self.bilinear)
        return loss, {"loss": loss.detach()}
