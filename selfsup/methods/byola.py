"""BYOL for audio (Niizumi et al. 2021, "BYOL for Audio: Self-Supervised Learning for General-Purpose
Audio Representation").

BYOL's networks, target and loss (selfsup/methods/byol.py), trained on two views of one segment of
each clip: both views start from the same `audio.seconds` of sound (crop_seconds 0: the whole clip), and
each is mixed with another clip's mel power (log-mixup-exp, a share from U(0, 0.4)) and randomly
resized-cropped on the spectrogram, which stands in for pitch shift and time stretch. BYOL-A has no
SpecAugment masks. Its optimiser is Adam at lr 3e-4 without weight decay; the view code is
selfsup/audio/views.py.

The paper's random resized crop draws the frequency and time scales independently in [0.6, 1.5]
on a canvas up to 1.5 times the spectrogram (zero-padded); here the crop is an area of 0.6-1.0 of
the spectrogram with aspect 3/4-4/3, inside it.
"""
from __future__ import annotations

from dataclasses import dataclass

from selfsup.methods import register_method
from selfsup.methods.byol import BYOL, BYOLConfig


@dataclass
class BYOLAConfig(BYOLConfig):
    name: str = "byola"


@register_method("byola")
class BYOLA(BYOL):
    config_class = BYOLAConfig
    modality = "audio"
    other_modalities = ()
    # The encoder is the paper's own (selfsup/backbones/audio.py), the default backbone for sound.
    recipe = {
        "optim": {"name": "adamw", "lr": 3e-4, "weight_decay": 0.0},
        "audio": {"crop_seconds": 0.0, "mix_p": 1.0, "mix_ratio": 0.4, "crop_scale": [0.6, 1.0],
                  "freq_masks": 0, "time_masks": 0},
    }
