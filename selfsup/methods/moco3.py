"""MoCo v3 (Chen, Xie, He, 2021, "An Empirical Study of Training Self-Supervised Vision Transformers").

The online network (backbone, 3-layer projector, 2-layer predictor) embeds each view as a query;
a momentum encoder (backbone + projector, an EMA of the online ones with momentum rising from
`momentum` to 1 on a cosine) embeds them as keys. Each query must pick its own image's key among
the batch's keys of the other view (no queue); the loss is symmetric over the two views.
Works with ResNet and ViT backbones; for a ViT the paper keeps the random patch projection frozen
(method.freeze_patch_embed) and uses AdamW (optim.name=adamw, optim.lr=1.5e-4 per 256 images,
optim.weight_decay=0.1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.distributed import gather
from selfsup.methods import Method, MethodConfig, embed_views, register_method
from selfsup.methods.heads import mlp
from selfsup.methods.losses import info_nce
from selfsup.methods.momentum import cosine_momentum, ema_update, momentum_copy


@dataclass
class MoCo3Config(MethodConfig):
    name: str = "moco3"
    temperature: float = 0.2
    momentum: float = 0.99             # base of the cosine schedule to 1 (the paper's ResNet setting)
    # The paper's 4096-wide hidden layers cost as much as the default backbone itself at 20 px;
    # 1024 keeps the heads a small share of a CPU step.
    proj_hidden_dim: int = 1024
    pred_hidden_dim: int = 1024
    proj_dim: int = 256
    # ViT only (sec. 4.2): a patch projection kept at its random init stabilises training.
    # Backbones without a `patch_embed` (ResNets) ignore it.
    freeze_patch_embed: bool = True

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"method.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"method.momentum must be in [0, 1], got {self.momentum}")
        for key in ("proj_hidden_dim", "pred_hidden_dim", "proj_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"method.{key} must be >= 1, got {getattr(self, key)}")


def moco3_loss(q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor,
               temperature: float) -> torch.Tensor:
    """MoCo v3's symmetric contrastive loss. q1, q2: (N, D) queries of views 1 and 2; k1, k2: (N, D) their keys.

    ctr(q, k) = 2t * CE(q k^T / t, identity) over the N in-batch keys; L = ctr(q1, k2) + ctr(q2, k1).
    """
    return 2 * temperature * (info_nce(q1, k2, None, temperature) + info_nce(q2, k1, None, temperature))


@register_method("moco3")
class MoCo3(Method):
    other_modalities = ("audio",)     # its views come from the data (sound: selfsup/audio/views.py)
    config_class = MoCo3Config
    batch_norm_per_view = True

    def __init__(self, backbone, cfg: MoCo3Config, augment_cfg):
        super().__init__(backbone, cfg, augment_cfg)
        if augment_cfg.local_crops:
            raise ValueError(f"{cfg.name} compares exactly two views; set augment.local_crops=0")
        if cfg.freeze_patch_embed and isinstance(getattr(backbone, "patch_embed", None), nn.Module):
            backbone.patch_embed.requires_grad_(False)
        # The paper's heads: BN on every hidden layer, and an affine-free BN after the projector's output.
        self.projector = mlp([backbone.feature_dim, cfg.proj_hidden_dim, cfg.proj_hidden_dim, cfg.proj_dim],
                             last_batch_norm=True)
        self.predictor = mlp([cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim])
        self.momentum_backbone = momentum_copy(backbone)
        self.momentum_projector = momentum_copy(self.projector)

    def loss(self, views: list[torch.Tensor]):
        per_view = self.batch_norm_per_view
        q1, q2 = embed_views(self.backbone, lambda f: self.predictor(self.projector(f)), views, per_view).chunk(2)
        with torch.no_grad():
            k1, k2 = embed_views(self.momentum_backbone, self.momentum_projector, views, per_view).chunk(2)
        # Keys of every rank's batch are the negatives; the queries too, so each rank computes the global loss.
        loss = moco3_loss(gather(q1), gather(q2), gather(k1), gather(k2), self.cfg.temperature)
        return loss, {"loss": loss.detach()}

    def after_step(self, progress: float) -> None:
        ema_update(nn.ModuleList([self.momentum_backbone, self.momentum_projector]),
                   nn.ModuleList([self.backbone, self.projector]), cosine_momentum(self.cfg.momentum, progress))
