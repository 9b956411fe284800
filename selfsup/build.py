"""What a config builds: the method with fresh weights, and the data pretraining draws from."""
from __future__ import annotations

from pathlib import Path

import torch

from selfsup.backbones import build_backbone_from_config
from selfsup.config import Config
from selfsup.errors import ConfigError, DataError
from selfsup.methods import Method, method_class
from selfsup.modalities import modality_of


def build_method(cfg: Config, in_channels: int | None = None, seed: int | None = None) -> Method:
    """The method with freshly initialised weights; the same config and seed give the same weights.
    The backbone's data-decided inputs (channels, vocabulary, columns) come from the resolved config;
    in_channels overrides the image channel count; seed, when given, replaces train.seed."""
    torch.manual_seed(cfg.train.seed if seed is None else seed)
    inputs = modality_of(cfg).backbone_inputs(cfg)
    if in_channels is not None:
        inputs["in_channels"] = in_channels
    try:
        backbone = build_backbone_from_config(cfg.backbone, **inputs)
        method = method_class(cfg.method.name)(backbone, cfg.method, cfg.augment)
    except ValueError as e:            # e.g. a next-token task on a bidirectional backbone
        raise ConfigError(f"{cfg.method.name} with backbone {cfg.backbone.name}: {e}") from e
    modality_inputs = modality_of(cfg).method_inputs(cfg)
    if modality_inputs is not None:
        method.inputs = modality_inputs
    return method


def fresh_method(cfg: Config, seed: int) -> Method:
    """The method with new weights drawn from `seed` (a from-scratch baseline's), the caller's random state
    left as it was."""
    with torch.random.fork_rng():
        return build_method(cfg, seed=seed)


def load_training_data(cfg: Config, run_dir: Path | None = None):
    """The samples pretraining draws from; text and tables reuse the tokenizer / normalisation saved
    in run_dir (a resumed run) instead of fitting new ones."""
    return modality_of(cfg).training_data(cfg, run_dir)


def complete_config(cfg: Config, data) -> None:
    """Fill the values the data decides (image size and normalisation, vocabulary size, table
    columns), so config.yaml holds them resolved and evaluation reads data exactly as training did."""
    modality_of(cfg).complete_config(cfg, data)
    if cfg.train.batch_size > len(data):
        raise DataError(f"train.batch_size={cfg.train.batch_size} is larger than the data set ({len(data)} samples); "
                        f"lower it, e.g. train.batch_size={max(2, len(data) // 4)}")
