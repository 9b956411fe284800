"""Backbones built by name: ``build_backbone("resnet18", width=0.5, stem="cifar", in_channels=1)``.

Every backbone maps images (B, C, H, W) to pooled features (B, feature_dim) and
exposes ``feature_dim``; a method puts its heads on top.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str):
    def add(factory):
        _REGISTRY[name] = factory
        return factory
    return add


def backbone_names() -> list[str]:
    return sorted(_REGISTRY)


def build_backbone(name: str, **kwargs) -> nn.Module:
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(backbone_names())}")
    return _REGISTRY[name](**kwargs)


from selfsup.backbones import resnet  # noqa: E402,F401  (fills the registry)
