"""VIME, self-supervised part (Yoon et al., 2020, "VIME: Extending the Success of Self- and
Semi-supervised Learning to Tabular Domain").

Each cell is masked with probability p_m; a masked cell takes the value of the same column in
another row (each column shuffled across the batch: a draw from its empirical marginal). From the
encoded corrupted row, a mask estimator predicts which cells were replaced (binary cross-entropy)
and a feature estimator reconstructs the original row (squared error on numeric columns,
cross-entropy over each categorical column's codes). As in the paper and its code:
loss = mask loss + alpha * reconstruction loss, alpha = 2 (the code's loss_weights
{'mask': 1, 'feature': alpha} with alpha 2.0). The estimators are single linear layers, as there.
embed = backbone(row).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from selfsup.methods import Method, MethodConfig, register_method
from selfsup.methods.heads import mlp
from selfsup.tabular.table import categorical_codes


@dataclass
class VIMEConfig(MethodConfig):
    name: str = "vime"
    mask_prob: float = 0.3     # p_m: the chance that a cell is replaced (paper's code: 0.3)
    alpha: float = 2.0         # weight of the reconstruction loss (paper's code: 2.0)

    def validate(self) -> None:
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"method.mask_prob must lie in (0, 1), got {self.mask_prob}")
        if self.alpha < 0:
            raise ValueError(f"method.alpha must be >= 0, got {self.alpha}")


def vime_corrupt(x: torch.Tensor, mask_prob: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, F) -> (corrupted (B, F), mask (B, F) bool): m ~ Bernoulli(mask_prob) per cell and
    corrupted = m * x_bar + (1 - m) * x, x_bar being every column permuted on its own across the batch."""
    mask = torch.rand(x.shape, generator=gen, device=x.device) < mask_prob
    column_orders = torch.rand(x.shape, generator=gen, device=x.device).argsort(dim=0)
    return torch.where(mask, x.gather(0, column_orders), x), mask


def mask_loss(logits: torch.Tensor, replaced: torch.Tensor) -> torch.Tensor:
    """logits, replaced (B, F) -> L = mean over cells of BCE(sigmoid(logit), replaced)."""
    with torch.autocast(logits.device.type, enabled=False):
        return F.binary_cross_entropy_with_logits(logits.float(), replaced.float())


def reconstruction_loss(pred: torch.Tensor, x: torch.Tensor, numeric_features: int,
                        cardinalities: list[int]) -> torch.Tensor:
    """The feature estimator's loss, the mean over the F cells of each row and over the batch.

    pred (B, numeric_features + sum(cardinalities)): the numeric predictions, then each categorical
    column's logits over its codes; x (B, F) the uncorrupted rows.
    L = 1/(B F) sum_b [ sum_{numeric j} (pred_bj - x_bj)^2 + sum_{categorical j} -log softmax(logits_bj)[code_bj] ].
    """
    with torch.autocast(pred.device.type, enabled=False):
        pred, x = pred.float(), x.float()
        numeric = pred[:, :numeric_features] - x[:, :numeric_features]
        total = numeric.square().sum()
        codes = categorical_codes(x, numeric_features, cardinalities)
        logits = pred[:, numeric_features:].split(list(cardinalities), dim=1)
        for j, column_logits in enumerate(logits):
            total = total + F.cross_entropy(column_logits, codes[:, j], reduction="sum")
        return total / x.numel()


@register_method("vime")
class VIME(Method):
    config_class = VIMEConfig
    spreads_embeddings = False      # a predictive task: see selfsup/evaluate/representation.py
    modality = "tabular"
    recipe = {
        "backbone": {"name": "tabular_mlp"},
        # The paper's code uses RMSprop at its default 1e-3 and batch 128; AdamW at 1e-3 with a short warm-up.
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-5, "warmup_epochs": 1.0},
        # Tables are small: 50 passes over LetterRecognition's 16,000 rows take about a minute on
        # 2 CPU cores (docs/text-and-tables.md), where a time budget would give hundreds.
        "train": {"batch_size": 128, "epochs": 50},
    }

    def __init__(self, backbone, cfg: VIMEConfig, augment_cfg=None):
        super().__init__(backbone, cfg, augment_cfg)
        if not hasattr(backbone, "cardinalities"):
            raise ValueError("VIME reconstructs table columns: it needs a tabular backbone (tabular_mlp)")
        self.numeric_features = backbone.numeric_features
        self.cardinalities = list(backbone.cardinalities)
        features = self.numeric_features + len(self.cardinalities)
        self.mask_estimator = mlp([backbone.feature_dim, features])
        self.feature_estimator = mlp([backbone.feature_dim, self.numeric_features + sum(self.cardinalities)])

    def views(self, batch: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        """rows (B, F) -> [corrupted rows, the rows]."""
        x = batch.float()
        return [vime_corrupt(x, self.cfg.mask_prob, gen)[0], x]

    def loss(self, views: list[torch.Tensor]):
        corrupted, original = views
        h = self.backbone(corrupted)
        # The mask target marks the cells that changed, as the paper's code does (m_new = x != x_tilde):
        # a cell that drew its own value back cannot be told apart, and is not asked for.
        masked = mask_loss(self.mask_estimator(h), corrupted != original)
        reconstructed = reconstruction_loss(self.feature_estimator(h), original, self.numeric_features,
                                            self.cardinalities)
        loss = masked + self.cfg.alpha * reconstructed
        return loss, {"loss": loss.detach(), "mask_loss": masked.detach(),
                      "reconstruction_loss": reconstructed.detach()}

    @torch.no_grad()
    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        return self.backbone(batch.float())
