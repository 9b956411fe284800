"""Audio-MAE (Huang et al. 2022, "Masked Autoencoders that Listen"): masked spectrogram modelling.

MAE's encoder, decoder and loss (selfsup/methods/mae.py) on log-mel spectrograms: the audio
spectrogram transformer (selfsup/backbones/audio.py) encodes a random 20% of each clip's patches, the
decoder puts mask tokens in the other places and predicts every patch's normalised log-mel values,
and the loss is the mean squared error on the hidden patches. As in the paper: unstructured (random)
masking at a ratio of 0.8, its best for pretraining; the whole clip's spectrogram, normalised per mel
bin, with no other augmentation; each patch normalised by its own mean and variance as the target;
AdamW with betas (0.9, 0.95) and weight decay 1e-4. The paper's decoder attends within local windows
(its Swin-style layers); a global one, which the paper reports within 0.5 mAP of it, is used here, 2
blocks 128 wide for 104 patches instead of 16 blocks 512 wide for 512.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.methods import register_method
from selfsup.methods.mae import MAE, MAEConfig
from selfsup.methods.masking import random_masking


@dataclass
class AudioMAEConfig(MAEConfig):
    name: str = "audiomae"
    mask_ratio: float = 0.8


@register_method("audiomae")
class AudioMAE(MAE):
    config_class = AudioMAEConfig
    modality = "audio"
    recipe = {
        "backbone": {"name": "ast", "dim": 192, "depth": 12, "heads": 3, "patch_size": 8},
        "optim": {"name": "adamw", "lr": 5e-4, "betas": [0.9, 0.95], "weight_decay": 1e-4, "warmup_epochs": 1.0},
        # The whole clip, as the paper reads its 10-second clips: no crop, gain, mixing or masks of the views.
        "audio": {"crop_seconds": 0.0, "gain_db": 0.0, "mix_p": 0.0, "crop_scale": [1.0, 1.0],
                  "freq_masks": 0, "time_masks": 0},
    }

    def __init__(self, backbone, cfg: AudioMAEConfig, augment_cfg):
        if not hasattr(backbone, "fit"):
            raise ValueError("audiomae needs the audio spectrogram transformer (backbone.name=ast)")
        super().__init__(backbone, cfg, augment_cfg)

    def views(self, batch: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        """[log-mel (B, 1, n_mels, frames padded to whole patches), keep (B, n_visible), mask (B, N)],
        the mask drawn from the step's generator."""
        x = self.backbone.fit(self.inputs.views(batch, gen, 1)[0])
        grid_h, grid_w = self.backbone.grid_size(*x.shape[-2:])
        keep, mask, _ = random_masking(x.shape[0], grid_h * grid_w, self.cfg.mask_ratio, gen, x.device)
        return [self._layout(x), keep, mask]
