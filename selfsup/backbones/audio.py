"""Encoders for sound: BYOL-A's convolutional encoder over log-mel spectrograms (`audio_cnn`), the audio
spectrogram transformer (`ast`), and wav2vec 2.0's waveform encoder with a Transformer on top (`wav2vec2`).

`audio_cnn` (Niizumi et al. 2021, section 4.1): three blocks of a 3x3 convolution (64 channels), batch
norm, ReLU and a 2x2 max-pool; then, at every remaining time step, the 64 channels of all n_mels / 8
frequency rows flattened into one vector and passed through two dense layers (dim units, ReLU, dropout
between them); finally the maximum plus the mean over time.

Why not the ResNet with global pooling: averaging over frequency throws away *which* bands hold the
energy, the very thing that tells words apart. On spoken-words a randomly initialised ResNet-18's
pooled features gave 12% kNN accuracy, and the same maps pooled over time only, with the frequency rows
kept apart, 73% (docs/audio.md). This encoder keeps the frequency axis until its dense layers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones.registry import register_backbone
from selfsup.backbones.vit import Block, VisionTransformer

PAPER_CHANNELS = 64                    # at width 1.0
BLOCKS = 3


class AudioCNN(nn.Module):
    """(B, in_channels, n_mels, frames) -> (B, dim): max + mean over time of per-frame dense features."""

    def __init__(self, n_mels: int = 64, dim: int = 2048, dropout: float = 0.3, width: float = 1.0,
                 in_channels: int = 1):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        conv_channels = max(1, round(PAPER_CHANNELS * width))
        rows = n_mels // 2**BLOCKS
        if rows < 1:
            raise ValueError(f"the audio CNN pools the frequency axis by {2**BLOCKS}: it needs at least "
                             f"{2**BLOCKS} mel bins, got {n_mels}")
        blocks, channels = [], in_channels
        for _ in range(BLOCKS):
            blocks += [nn.Conv2d(channels, conv_channels, 3, padding=1), nn.BatchNorm2d(conv_channels),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = conv_channels
        self.features = nn.Sequential(*blocks)
        self.frames = nn.Sequential(nn.Linear(conv_channels * rows, dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                    nn.Linear(dim, dim), nn.ReLU(inplace=True))
        self.feature_dim = dim
        self.arch = dict(n_mels=n_mels, dim=dim, dropout=dropout, width=width, in_channels=in_channels)

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, frames / 8, dim): the dense features of each time step, before pooling over time."""
        maps = self.features(x)                               # (B, C, rows, T)
        return self.frames(maps.permute(0, 3, 1, 2).flatten(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = self.frame_features(x)
        return frames.amax(1) + frames.mean(1)

    def stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each convolutional block's output (B, 64, H_i, W_i): what the map probe reads."""
        maps = []
        for i in range(0, len(self.features), 4):
            x = self.features[i:i + 4](x)
            maps.append(x)
        return maps


@register_backbone("audio_cnn")
def audio_cnn(image_size: int = 64, dim: int = 2048, dropout: float = 0.3, width: float = 1.0,
              in_channels: int = 1) -> AudioCNN:
    """image_size is the spectrogram's height: its number of mel bins; width scales the paper's 64 channels."""
    return AudioCNN(n_mels=image_size, dim=dim, dropout=dropout, width=width, in_channels=in_channels)


# wav2vec 2.0 (Baevski et al. 2020, section 2 and appendix): seven temporal convolutions, (kernel, stride)
# each, 512 channels at full width: a frame every 320 samples (20 ms at 16 kHz) seeing 400 samples (25 ms).
FEATURE_LAYERS = ((10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2))
PAPER_FEATURE_CHANNELS = 512
# The paper's relative positions come from a grouped convolution of kernel 128 (2.56 s) over the frames; the
# clips here last a second or a few, so the kernel spans 31 frames (0.62 s).
POSITION_KERNEL = 31
POSITION_GROUPS = 16
# Backbones that read the waveform itself (float samples), not log-mel spectrograms.
WAVEFORM_BACKBONES = ("wav2vec2",)


class WaveformEncoder(nn.Module):
    """(B, samples) -> (B, dim): wav2vec 2.0's encoder, the Transformer's frames averaged over time.

    conv_features: the convolutional feature encoder (GroupNorm after the first layer, GELU after each);
    feature_norm: the layer norm of its output, which the quantiser of `wav2vec2` also reads;
    contextualize: the projection to dim, the learned mask embedding at masked frames, the convolutional
    relative position embedding and pre-norm Transformer blocks (the paper's large model's order).
    """

    def __init__(self, dim: int = 128, depth: int = 2, heads: int = 4, width: float = 1.0, dropout: float = 0.1):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        channels = max(1, round(PAPER_FEATURE_CHANNELS * width))
        layers, previous = [], 1
        for i, (kernel, stride) in enumerate(FEATURE_LAYERS):
            conv = nn.Conv1d(previous, channels, kernel, stride, bias=False)
            # He initialisation, as the authors' code does: PyTorch's default shrinks the signal about
            # threefold a layer, so seven layers left features of about 1e-3 that the layer norm's epsilon
            # swamped, and neither pretraining nor CTC learned from them.
            nn.init.kaiming_normal_(conv.weight)
            layers.append(conv)
            if i == 0:
                layers.append(nn.GroupNorm(channels, channels))      # each channel normalised over time
            layers.append(nn.GELU())
            previous = channels
        self.conv = nn.Sequential(*layers)
        self.feature_norm = nn.LayerNorm(channels)
        self.project = nn.Linear(channels, dim)
        self.dropout = nn.Dropout(dropout)
        self.mask_embedding = nn.Parameter(torch.empty(dim).uniform_())
        self.position = nn.Sequential(nn.Conv1d(dim, dim, POSITION_KERNEL, padding=POSITION_KERNEL // 2,
                                                groups=_groups(dim)), nn.GELU())
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.feature_channels = channels
        self.feature_dim = dim
        self.arch = dict(dim=dim, depth=depth, heads=heads, width=width, dropout=dropout)

    @staticmethod
    def frames(samples: int) -> int:
        """How many frames the feature encoder makes of `samples` samples."""
        for kernel, stride in FEATURE_LAYERS:
            samples = (samples - kernel) // stride + 1
        return samples

    def conv_features(self, waves: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, frames, channels), before the layer norm."""
        if waves.shape[-1] < 400:
            raise ValueError(f"the waveform encoder needs clips of at least 400 samples, got {waves.shape[-1]}")
        return self.conv(waves[:, None]).transpose(1, 2)

    def contextualize(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Layer-normed features (B, T, channels) -> (B, T, dim); frames where mask (B, T) is True are
        replaced by the mask embedding before the Transformer."""
        x = self.dropout(self.project(latents))
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_embedding.to(x.dtype), x)
        x = x + self.position(x.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(self.dropout(x))
        return self.norm(x)

    def frame_features(self, waves: torch.Tensor) -> torch.Tensor:
        """(B, frames, dim): one vector every 20 ms (what a CTC head reads)."""
        return self.contextualize(self.feature_norm(self.conv_features(waves)))

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return self.frame_features(waves).mean(1)


def _groups(dim: int) -> int:
    return POSITION_GROUPS if dim % POSITION_GROUPS == 0 else 1


@register_backbone("wav2vec2")
def wav2vec2(dim: int = 128, depth: int = 2, heads: int = 4, width: float = 1.0,
             dropout: float = 0.1) -> WaveformEncoder:
    """width scales the paper's 512 feature-encoder channels; dim, depth and heads size the Transformer."""
    return WaveformEncoder(dim=dim, depth=depth, heads=heads, width=width, dropout=dropout)


class AudioSpectrogramTransformer(VisionTransformer):
    """The audio spectrogram transformer (Gong et al. 2021, "AST"), in the form its self-supervised
    successors train (SSAST, Gong et al. 2022; Audio-MAE, Huang et al. 2022): the ViT over square,
    non-overlapping patches of a (B, 1, n_mels, frames) log-mel spectrogram, fixed 2-D sin-cos
    positions (so any clip length encodes), and the mean of the patch tokens as the clip's embedding.
    Frames are padded at the end with zeros (the normalised mel mean) to a multiple of the patch side,
    so a crop or clip of any length encodes; fewer than a patch of frames is padded, so no patch is
    padding alone. AST's own overlapping patches (stride 10) and ImageNet initialisation are left out:
    the patch count grows fourfold with overlap, and there is no ImageNet here."""

    def fit(self, x: torch.Tensor) -> torch.Tensor:
        """x padded along time to a multiple of the patch side."""
        extra = -x.shape[-1] % self.patch_size
        return F.pad(x, (0, extra)) if extra else x

    def embed_tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        return super().embed_tokens(self.fit(x), keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x)[:, 1:].mean(1)


@register_backbone("ast")
def ast(dim: int = 192, depth: int = 12, heads: int = 3, patch_size: int = 8, in_channels: int = 1,
        image_size: int = 64) -> AudioSpectrogramTransformer:
    """backbone.dim, depth and heads size the Transformer and backbone.patch_size is a patch's side in mel
    bins and frames (the config's defaults, 128 / 2 / 4 and 4, make a small one; `audiomae`'s recipe takes
    ViT-Tiny's 192 / 12 / 3 with 8 x 8 patches); image_size is audio.n_mels, which the side must divide."""
    if image_size % patch_size:
        raise ValueError(f"audio.n_mels {image_size} must be a multiple of backbone.patch_size {patch_size} "
                         "(the spectrogram transformer's patches are square)")
    return AudioSpectrogramTransformer(dim, depth, heads, patch_size=patch_size, in_channels=in_channels,
                                       image_size=image_size)
