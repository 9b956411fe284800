"""The backbone registry: each backbone module registers its factory under a name."""
from __future__ import annotations

import inspect
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


def backbone_parameters(name: str) -> list[str]:
    """What the backbone's factory takes: its config fields, and the inputs the data decides."""
    return list(inspect.signature(_REGISTRY[name]).parameters)


def build_backbone(name: str, **kwargs) -> nn.Module:
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(backbone_names())}")
    return _REGISTRY[name](**kwargs)


def build_backbone_from_config(cfg, in_channels: int = 3, image_size: int = 32, **data_inputs) -> nn.Module:
    """The backbone a config's `backbone` section names, given the fields its factory takes (a ResNet
    takes width and stem, a ViT patch_size and pos_embed, a text transformer dim, depth and heads);
    image_size is the training view size; data_inputs are what the data decides for text and tables
    (vocab_size, max_length; numeric_features, cardinalities)."""
    if cfg.name not in _REGISTRY:
        raise ValueError(f"unknown backbone {cfg.name!r}; choose one of: {', '.join(backbone_names())}")
    factory = _REGISTRY[cfg.name]
    offered = {**{k: v for k, v in vars(cfg).items() if k != "name"}, "in_channels": in_channels,
               "image_size": image_size, **data_inputs}
    accepted = inspect.signature(factory).parameters
    return factory(**{k: v for k, v in offered.items() if k in accepted})
