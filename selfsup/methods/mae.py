"""MAE (He et al., 2022, "Masked Autoencoders Are Scalable Vision Learners").

A ViT encoder sees only a random 25% of each image's patches; a small transformer decoder gets the
encoded visible tokens back in place, a shared learned mask token everywhere else and its own fixed
sin-cos position embeddings, and predicts the pixels of every patch. The loss is the mean squared
error on the hidden patches only, against each patch's pixels normalised by the patch's own mean
and variance. Views are a random resized crop and flip: no colour augmentation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.backbones.vit import Block, sincos_pos_embed
from selfsup.methods import Method, MethodConfig, register_method
from selfsup.methods.masking import crop_flip_view, patchify, random_masking


@dataclass
class MAEConfig(MethodConfig):
    name: str = "mae"
    mask_ratio: float = 0.75
    # The paper's decoder is 512 wide and 8 deep for 196 patches of 224 px images; 28 px images
    # have 49 (or 25) patches of 16 pixels, so a much smaller decoder suffices and keeps MAE cheap.
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True         # target: each patch normalised by its own mean and variance

    def validate(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"method.mask_ratio must lie in [0, 1), got {self.mask_ratio}")
        if self.decoder_depth < 0:
            raise ValueError(f"method.decoder_depth must be >= 0, got {self.decoder_depth}")
        if self.decoder_dim < 4 or self.decoder_dim % 4:
            raise ValueError(f"method.decoder_dim must be a positive multiple of 4 (sin-cos position "
                             f"embeddings), got {self.decoder_dim}")
        if self.decoder_heads < 1 or self.decoder_dim % self.decoder_heads:
            raise ValueError(f"method.decoder_dim ({self.decoder_dim}) must be divisible by "
                             f"method.decoder_heads ({self.decoder_heads})")


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True,
             eps: float = 1e-6) -> torch.Tensor:
    """MAE's reconstruction loss. pred, target: (B, N, P) pixels per patch; mask: (B, N) bool, True = hidden.

    L = sum_{hidden (b, n)} mean_P (pred - t)^2 / #hidden, t = (x - mean_P x) / sqrt(var_P x + eps) when norm_pix
    (var with Bessel's correction, as in the MAE code), else t = x.
    """
    if pred.shape != target.shape or pred.dim() != 3 or mask.shape != pred.shape[:2]:
        raise ValueError(f"mae_loss expects pred and target (B, N, P) and mask (B, N), got {tuple(pred.shape)}, "
                         f"{tuple(target.shape)} and {tuple(mask.shape)}")
    with torch.autocast(pred.device.type, enabled=False):
        pred, target = pred.float(), target.float()
        if norm_pix:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + eps).sqrt()
        per_patch = (pred - target).square().mean(-1)
        weight = mask.to(per_patch.dtype)
        return (per_patch * weight).sum() / weight.sum().clamp_min(1.0)


@register_method("mae")
class MAE(Method):
    config_class = MAEConfig
    spreads_embeddings = False      # a predictive task: see selfsup/evaluate/representation.py
    recipe = {
        "backbone": {"name": "vit_tiny"},
        # The paper's crops (scale 0.2-1) on the whole 28 px image: the encoder sees 12 of 49 patches,
        # so full-size views cost less than SimCLR's two 20 px views.
        "augment": {"size": 28, "crop_scale": [0.2, 1.0]},
        # AdamW with betas (0.9, 0.95) and weight decay 0.05 as in the paper. Its lr, 1.5e-4 * batch / 256,
        # is for 800 epochs; a 1-epoch screen on 10k images gave the same loss and kNN at 5e-4 and 1.5e-3.
        "optim": {"name": "adamw", "lr": 5e-4, "betas": [0.9, 0.95], "weight_decay": 0.05, "warmup_epochs": 1.0},
    }

    def __init__(self, backbone, cfg: MAEConfig, augment_cfg):
        super().__init__(backbone, cfg, augment_cfg)
        if not hasattr(backbone, "forward_tokens"):
            raise ValueError("MAE needs a ViT backbone that can encode a subset of patches "
                             "(backbone.name=vit_tiny or vit_small)")
        self.patch_size = backbone.patch_size
        self.channels = backbone.arch["in_channels"]
        self.decoder_embed = nn.Linear(backbone.feature_dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder = nn.Sequential(*[Block(cfg.decoder_dim, cfg.decoder_heads) for _ in range(cfg.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, self.patch_size ** 2 * self.channels)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    def views(self, batch_u8: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        """[image (B, C, H, W), keep (B, n_visible) long, mask (B, N) bool]: the mask is drawn here, from
        the step's generator, so a resumed run hides the same patches."""
        x = crop_flip_view(batch_u8, self.augment_cfg, gen)
        grid_h, grid_w = self.backbone.grid_size(*x.shape[-2:])
        keep, mask, _ = random_masking(x.shape[0], grid_h * grid_w, self.cfg.mask_ratio, gen, x.device)
        return [self._layout(x), keep, mask]

    def decoder_pos_embed(self, grid_h: int, grid_w: int, device) -> torch.Tensor:
        key = (grid_h, grid_w, device)
        if key not in self._pos_cache:
            table = torch.cat([torch.zeros(1, self.cfg.decoder_dim), sincos_pos_embed(self.cfg.decoder_dim, grid_h, grid_w)])
            self._pos_cache[key] = table[None].to(device)
        return self._pos_cache[key]

    def reconstruct(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Predicted pixels (B, N, p*p*C) of every patch, from the patches listed in keep only."""
        latent = self.decoder_embed(self.backbone.forward_tokens(x, keep))            # (B, 1 + n_keep, Dd)
        cls, visible = latent[:, :1], latent[:, 1:]
        grid_h, grid_w = self.backbone.grid_size(*x.shape[-2:])
        b, n, d = x.shape[0], grid_h * grid_w, latent.shape[-1]
        tokens = self.mask_token.to(visible.dtype).expand(b, n, d)
        tokens = tokens.scatter(1, keep[..., None].expand(-1, -1, d), visible)       # visible back in place
        tokens = torch.cat([cls, tokens], dim=1) + self.decoder_pos_embed(grid_h, grid_w, x.device)
        return self.decoder_pred(self.decoder_norm(self.decoder(tokens)))[:, 1:]

    def loss(self, views: list[torch.Tensor]):
        x, keep, mask = views
        pred = self.reconstruct(x, keep)
        loss = mae_loss(pred, patchify(x.float(), self.patch_size), mask, self.cfg.norm_pix_loss)
        return loss, {"loss": loss.detach()}
