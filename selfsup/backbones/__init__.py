"""Backbones built by name: ``build_backbone("resnet18", width=0.5, stem="cifar", in_channels=1)``.

Every backbone maps a batch of samples -- images (B, C, H, W), token ids (B, L), table rows
(B, F) -- to pooled features (B, feature_dim) and exposes ``feature_dim``; a method puts its
heads on top.
"""
from __future__ import annotations

# Importing each backbone module fills the registry.
from selfsup.backbones import audio, external, resnet, seq2seq, tabular, text, vit  # noqa: F401
from selfsup.backbones.registry import (backbone_names, backbone_parameters, build_backbone,
                                        build_backbone_from_config, is_backbone, register_backbone,
                                        register_backbone_family)

__all__ = ["backbone_names", "backbone_parameters", "build_backbone", "build_backbone_from_config",
           "is_backbone", "register_backbone", "register_backbone_family"]
