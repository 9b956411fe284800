"""SCARF (Bahri et al., 2022, "SCARF: Self-Supervised Contrastive Learning using Random Feature
Corruption").

Each row's view replaces a random fixed-size subset of its features (corruption_rate of them) by
draws from each feature's empirical marginal. The anchor is the row itself; both pass the encoder
and a pre-train head (a ReLU MLP, hidden width 256 as in the paper), and InfoNCE pulls each anchor
towards its own corrupted view and away from the other rows' corrupted views. embed = backbone(row).

The defaults depart from the paper's corruption 0.6 and temperature 1: on LetterRecognition with 1%
of the labels (20 label draws), 0.3 and 0.1 fine-tune 1.2 points better than the paper's settings,
and their frozen features beat the raw columns (docs/text-and-tables.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.distributed import gather
from selfsup.methods import Method, MethodConfig, register_method
from selfsup.methods.heads import mlp
from selfsup.methods.losses import info_nce


@dataclass
class SCARFConfig(MethodConfig):
    name: str = "scarf"
    corruption_rate: float = 0.3       # the share of each row's features replaced (paper: 0.6)
    temperature: float = 0.1           # InfoNCE temperature (paper: 1.0)
    proj_hidden_dim: int = 256
    proj_dim: int = 128

    def validate(self) -> None:
        if not 0 < self.corruption_rate < 1:
            raise ValueError(f"method.corruption_rate must lie in (0, 1), got {self.corruption_rate}")
        if self.temperature <= 0:
            raise ValueError(f"method.temperature must be > 0, got {self.temperature}")
        if self.proj_hidden_dim < 1 or self.proj_dim < 1:
            raise ValueError(f"method.proj_hidden_dim and method.proj_dim must be >= 1, got "
                             f"{self.proj_hidden_dim} and {self.proj_dim}")


def corrupted_count(num_features: int, rate: float) -> int:
    """Features corrupted per row: rate * F rounded half up."""
    return int(rate * num_features + 0.5)


def scarf_corrupt(x: torch.Tensor, rate: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, F), B >= 2 -> (corrupted (B, F), replaced (B, F) bool).

    Every row gets exactly corrupted_count(F, rate) features, a uniformly random subset; each replaced
    cell takes the same column's value in a uniformly random other row of the batch. The batch stands in
    for the training set's marginal (the paper samples the whole training set): a draw from a random
    batch is a draw from the training rows, and the batch is on the device.
    """
    b, f = x.shape
    if b < 2:
        raise ValueError(f"SCARF corruption draws values from other rows and needs a batch of >= 2 rows, got {b}")
    keys = torch.rand(b, f, generator=gen, device=x.device)
    chosen = keys.argsort(dim=1)[:, :corrupted_count(f, rate)]       # the features with the smallest keys
    replaced = torch.zeros(b, f, dtype=torch.bool, device=x.device).scatter_(1, chosen, True)
    shift = torch.randint(1, b, (b, f), generator=gen, device=x.device)  # 1..B-1 rows on: never the row itself
    donors = (torch.arange(b, device=x.device)[:, None] + shift) % b
    return torch.where(replaced, x.gather(0, donors), x), replaced


@register_method("scarf")
class SCARF(Method):
    config_class = SCARFConfig
    modality = "tabular"
    recipe = {
        "backbone": {"name": "tabular_mlp"},
        # The paper trains with Adam at 1e-3 and batch 128; a short warm-up keeps the first steps of
        # the BatchNorm encoder calm.
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-5, "warmup_epochs": 1.0},
        # Tables are small: 50 passes over LetterRecognition's 16,000 rows take about a minute on
        # 2 CPU cores (docs/text-and-tables.md), where a time budget would give hundreds.
        "train": {"batch_size": 128, "epochs": 50},
    }

    def __init__(self, backbone, cfg: SCARFConfig, augment_cfg=None):
        super().__init__(backbone, cfg, augment_cfg)
        self.projector = mlp([backbone.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim])

    def views(self, batch: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        """rows (B, F) -> [the rows (anchors), their corrupted copies]."""
        x = batch.float()
        return [x, scarf_corrupt(x, self.cfg.corruption_rate, gen)[0]]

    def loss(self, views: list[torch.Tensor]):
        # One pass for both views, so the encoder's BatchNorm sees them together.
        anchor, corrupted = self.projector(self.backbone(torch.cat(views))).chunk(2)
        # The other rows' corrupted views, from every rank, are the negatives.
        loss = info_nce(gather(anchor), gather(corrupted), temperature=self.cfg.temperature)
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        return self.backbone(batch.float())
