"""The backbone registry: each backbone module registers its factory under a name, and a family of
backbones from another library (timm, Hugging Face) under a prefix: `timm:resnet50` is the timm
family's factory given "resnet50"."""
from __future__ import annotations

import functools
import inspect
from typing import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_FAMILIES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str):
    def add(factory):
        _REGISTRY[name] = factory
        return factory
    return add


def register_backbone_family(prefix: str):
    """Names `prefix:<what>` build `factory(<what>, ...)`."""
    def add(factory):
        _FAMILIES[prefix] = factory
        return factory
    return add


def backbone_names() -> list[str]:
    """The registered names, then each family's pattern (`timm:<model>`)."""
    return sorted(_REGISTRY) + [f"{prefix}:<{next(iter(inspect.signature(factory).parameters))}>"
                                for prefix, factory in sorted(_FAMILIES.items())]


def _factory(name: str) -> Callable[..., nn.Module]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    prefix, colon, what = name.partition(":")
    if colon and what and prefix in _FAMILIES:
        return functools.partial(_FAMILIES[prefix], what)
    raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(backbone_names())}")


def is_backbone(name: str) -> bool:
    try:
        _factory(name)
        return True
    except ValueError:
        return False


def backbone_parameters(name: str) -> list[str]:
    """What the backbone's factory takes: its config fields, and the inputs the data decides."""
    return list(inspect.signature(_factory(name)).parameters)


def build_backbone(name: str, **kwargs) -> nn.Module:
    return _factory(name)(**kwargs)


def build_backbone_from_config(cfg, in_channels: int = 3, image_size: int = 32, **data_inputs) -> nn.Module:
    """The backbone a config's `backbone` section names, given the fields its factory takes (a ResNet
    takes width and stem, a ViT patch_size and pos_embed, a text transformer dim, depth and heads);
    image_size is the training view size; data_inputs are what the data decides for text and tables
    (vocab_size, max_length; numeric_features, cardinalities)."""
    factory = _factory(cfg.name)
    offered = {**{k: v for k, v in vars(cfg).items() if k != "name"}, "in_channels": in_channels,
               "image_size": image_size, **data_inputs}
    accepted = inspect.signature(factory).parameters
    return factory(**{k: v for k, v in offered.items() if k in accepted})
