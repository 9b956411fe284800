"""Rotation prediction (Gidaris et al., 2018, "Unsupervised Representation Learning by Predicting
Image Rotations").

Each image is turned by 0, 90, 180 and 270 degrees; a classifier on the backbone's features
predicts which, with cross-entropy. To name the rotation the network must find the object and
its canonical orientation. The paper feeds all four rotations of every image in the same batch
(better than one random rotation per image); `all_rotations=false` draws one per image instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.methods import Method, MethodConfig, register_method
from selfsup.methods.heads import mlp
from selfsup.methods.losses import pretext_cross_entropy
from selfsup.methods.masking import crop_flip_view

NUM_ROTATIONS = 4


@dataclass
class RotationConfig(MethodConfig):
    name: str = "rotation"
    all_rotations: bool = True         # all four rotations of each image per batch (paper); else one drawn per image
    # The paper classifies with the network's last conv blocks; on pooled features a hidden layer
    # plays that part and leaves the backbone's output less specific to the pretext task. 0 = linear.
    head_hidden_dim: int = 512

    def validate(self) -> None:
        if self.head_hidden_dim < 0:
            raise ValueError(f"method.head_hidden_dim must be >= 0 (0 = a linear classifier), "
                             f"got {self.head_hidden_dim}")


def rotate(images: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """(B, C, S, S), (B,) ints in 0..3 -> each image turned counter-clockwise by 90 * k degrees."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotation needs square images, got {images.shape[-2]}x{images.shape[-1]}")
    turned = torch.stack([images.rot90(k, dims=(2, 3)) for k in range(NUM_ROTATIONS)])     # (4, B, C, S, S)
    return turned[quarter_turns, torch.arange(images.shape[0], device=images.device)]


def all_quarter_turns(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, S, S) -> (4B, C, S, S) holding every image turned by 0, 90, 180 and 270 degrees (in
    that order, B at a time), and the (4B,) quarter turns each row was given."""
    turns = torch.arange(NUM_ROTATIONS, device=images.device).repeat_interleave(images.shape[0])
    return torch.cat([images.rot90(k, dims=(2, 3)) for k in range(NUM_ROTATIONS)]), turns


@register_method("rotation")
class Rotation(Method):
    config_class = RotationConfig
    spreads_embeddings = False      # a predictive task: see selfsup/evaluate/representation.py

    def __init__(self, backbone, cfg: RotationConfig, augment_cfg):
        super().__init__(backbone, cfg, augment_cfg)
        dims = [backbone.feature_dim] + ([cfg.head_hidden_dim] if cfg.head_hidden_dim else []) + [NUM_ROTATIONS]
        self.classifier = mlp(dims)

    def views(self, batch_u8: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        """[rotated images (M, C, S, S), their quarter turns (M,)]: M = 4B with all_rotations, else B."""
        x = crop_flip_view(batch_u8, self.augment_cfg, gen)
        if self.cfg.all_rotations:
            x, turns = all_quarter_turns(x)
        else:
            turns = torch.randint(0, NUM_ROTATIONS, (x.shape[0],), generator=gen, device=x.device)
            x = rotate(x, turns)
        return [self._layout(x), turns]

    def loss(self, views: list[torch.Tensor]):
        images, turns = views
        logits = self.classifier(self.backbone(images))
        loss = pretext_cross_entropy(logits, turns)
        accuracy = (logits.detach().argmax(1) == turns).float().mean()
        return loss, {"loss": loss.detach(), "accuracy": accuracy}
