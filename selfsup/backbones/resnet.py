"""ResNet-18/34/50 (He et al., 2016) with a small-image stem and a width multiplier."""
from __future__ import annotations

import torch
from torch import nn

from selfsup.backbones.registry import register_backbone


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


class ResNet(nn.Module):
    """A ResNet trunk with global average pooling; ``forward`` returns (B, feature_dim).

    stem="cifar": one 3x3 conv, stride 1, no max-pool (keeps 28-32 px images large enough);
    stem="imagenet": 7x7 conv, stride 2, then a 3x3 max-pool.
    """

    def __init__(self, block, layers: list[int], width: float = 1.0, stem: str = "cifar", in_channels: int = 3):
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"unknown stem {stem!r}; choose 'cifar' (small images) or 'imagenet'")
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        planes = [max(1, round(64 * width * 2**i)) for i in range(4)]
        self.arch = dict(width=width, stem=stem, in_channels=in_channels)
        if stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, planes[0], 3, 1, 1, bias=False), nn.BatchNorm2d(planes[0]), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, planes[0], 7, 2, 3, bias=False), nn.BatchNorm2d(planes[0]), nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1))
        stages, in_planes = [], planes[0]
        for i, (p, n) in enumerate(zip(planes, layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(in_planes, p, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = p * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.feature_dim = in_planes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual branch: each block starts as identity (Goyal et al.).
        for m in self.modules():
            last_bn = getattr(m, "bn3", None) or getattr(m, "bn2", None)
            if isinstance(m, (BasicBlock, Bottleneck)) and last_bn is not None:
                nn.init.zeros_(last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's output (B, C_i, H_i, W_i), first to last: the unpooled features that a probe
        of intermediate layers reads (selfsup.evaluate.features.map_features)."""
        maps, x = [], self.stem(x)
        for stage in self.layers:
            x = stage(x)
            maps.append(x)
        return maps


def _factory(block, layers):
    def build(width: float = 1.0, stem: str = "cifar", in_channels: int = 3) -> ResNet:
        return ResNet(block, layers, width=width, stem=stem, in_channels=in_channels)
    return build


register_backbone("resnet18")(_factory(BasicBlock, [2, 2, 2, 2]))
register_backbone("resnet34")(_factory(BasicBlock, [3, 4, 6, 3]))
register_backbone("resnet50")(_factory(Bottleneck, [3, 4, 6, 3]))
