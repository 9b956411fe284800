"""SimCLR (Chen et al., 2020, "A Simple Framework for Contrastive Learning of Visual Representations").

Two augmented views of each image pass through the backbone and a projection head
(Linear-BN-ReLU-Linear); NT-Xent pulls each view towards its twin and away from the
2N-2 other views in the batch. With augment.local_crops > 0 (multi-crop, Caron et al. 2020)
the small views join in and every other view of the same image counts as a positive.

With method.rotation_weight > 0 it is E-SimCLR (Dangovski et al., 2022, "Equivariant Contrastive
Learning"): a third, smaller view of each image is turned by all four quarter turns and a head on
the backbone's features predicts the turn; L = NT-Xent + rotation_weight * cross-entropy. The
contrastive term makes features invariant to crops and colour, the rotation term keeps them
sensitive to orientation, which the paper found complementary (lambda 0.4, views at half size).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from selfsup.augment import augment
from selfsup.methods import ImageInputs, Method, MethodConfig, encode_views, register_method
from selfsup.methods.heads import mlp
from selfsup.distributed import gather
from selfsup.methods.losses import multi_view_nt_xent, nt_xent, pretext_cross_entropy
from selfsup.methods.rotation import NUM_ROTATIONS, all_quarter_turns


@dataclass
class SimCLRConfig(MethodConfig):
    name: str = "simclr"
    temperature: float = 0.1
    decoupled: bool = False            # DCL (Yeh et al. 2022): the positive leaves the NT-Xent denominator
    proj_hidden_dim: int = 512
    proj_dim: int = 128
    rotation_weight: float = 0.0       # E-SimCLR's lambda (paper 0.4); 0 = plain SimCLR
    rotation_size: int = 0             # side of the rotation views in px; 0 = half the contrastive views'
    rotation_hidden_dim: int = 512

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"method.temperature must be > 0, got {self.temperature}")
        if self.rotation_weight < 0:
            raise ValueError(f"method.rotation_weight must be >= 0 (0 turns rotation prediction off), "
                             f"got {self.rotation_weight}")
        if self.rotation_size < 0:
            raise ValueError(f"method.rotation_size must be >= 0 (0 = half the view size), got {self.rotation_size}")


@register_method("simclr")
class SimCLR(Method):
    other_modalities = ("audio",)     # its views come from the data (sound: selfsup/audio/views.py)
    config_class = SimCLRConfig
    recipe = {
        # Brightness and contrast far stronger than the 0.4 that the shared view recipe keeps for MoCo
        # v2 and BYOL: views whose intensities no longer match make the encoder match them by shape
        # (docs/results.md, "Colour jitter strength"). Grey images measure only these two, so
        # saturation and hue keep SimCLR's colour distortion at strength 1.25 (0.8s, 0.2s): a hue
        # range of 0.5 would turn every colour into any other.
        "augment": {"brightness": 2.0, "contrast": 2.0, "saturation": 1.0, "hue": 0.25},
    }

    def __init__(self, backbone, cfg: SimCLRConfig, augment_cfg):
        super().__init__(backbone, cfg, augment_cfg)
        self.projector = mlp([backbone.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim])
        if cfg.rotation_weight:
            self.rotation_head = mlp([backbone.feature_dim, cfg.rotation_hidden_dim, NUM_ROTATIONS])

    def views(self, batch_u8: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        """The contrastive views; with rotation prediction, then [turned small views (4B, ...), turns (4B,)]."""
        views = super().views(batch_u8, gen)
        if not self.cfg.rotation_weight:
            return views
        if not isinstance(self.inputs, ImageInputs):
            raise ValueError("method.rotation_weight (rotation prediction) needs images; set it to 0 for this data")
        size = self.cfg.rotation_size or max(1, views[0].shape[-1] // 2)
        small = augment(batch_u8, dataclasses.replace(self.augment_cfg, size=size), gen)
        turned, turns = all_quarter_turns(small)
        return views + [self._layout(turned), turns]

    def loss(self, views: list[torch.Tensor]):
        if not self.cfg.rotation_weight:
            loss = self.contrastive_loss(views)
            return loss, {"loss": loss.detach()}
        *views, turned, turns = views
        contrastive = self.contrastive_loss(views)
        logits = self.rotation_head(self.backbone(turned))
        rotation = pretext_cross_entropy(logits, turns)
        loss = contrastive + self.cfg.rotation_weight * rotation
        return loss, {"loss": loss.detach(), "contrastive_loss": contrastive.detach(),
                      "rotation_loss": rotation.detach(),
                      "rotation_accuracy": (logits.detach().argmax(1) == turns).float().mean()}

    def contrastive_loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        # The projector's BN sees all views at once, as in the single-batch formulation of the paper.
        z = self.projector(torch.cat(encode_views(self.backbone, views))).view(len(views), views[0].shape[0], -1)
        z = torch.stack([gather(view) for view in z])      # negatives from every rank's batch
        if len(views) == 2:
            return nt_xent(z[0], z[1], self.cfg.temperature, self.cfg.decoupled)
        return multi_view_nt_xent(z, self.cfg.temperature, self.cfg.decoupled)
