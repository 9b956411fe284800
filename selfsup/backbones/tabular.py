"""An MLP over embedded table columns, for rows encoded by `selfsup.tabular` (numeric columns
standardised, then categorical codes stored as floats).

Each feature becomes a small vector before the MLP (as in Gorishniy et al., 2021, "Revisiting Deep
Learning Models for Tabular Data"): a numeric value x_j -> x_j * w_j + b_j, a categorical code c ->
row c of that column's embedding table. The vectors are concatenated and pass `depth` hidden blocks
Linear-Norm-ReLU(-Dropout) of width `dim`. The default norm is BatchNorm: the concatenated input
mixes scaled numbers and embedding rows of different sizes, and it keeps every hidden unit at unit
scale so AdamW at 1e-3 trains stably (the same blocks as the projection heads). `norm="layer"`
normalises each row on its own and `norm="none"` gives the plain ReLU MLP of the SCARF paper, for
pretext tasks where a row's statistics should not depend on the other rows of its batch. Dropout,
the config's `backbone.dropout`, regularises small tables (set it to 0 for none).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from selfsup.backbones.registry import register_backbone
from selfsup.tabular.table import categorical_codes


class FeatureEmbedding(nn.Module):
    """(B, numeric_features + len(cardinalities)) rows -> (B, F, embed_dim), one vector per feature."""

    def __init__(self, numeric_features: int, cardinalities: list[int], embed_dim: int):
        super().__init__()
        self.numeric_features = numeric_features
        self.cardinalities = list(cardinalities)
        bound = 1 / math.sqrt(embed_dim)
        self.weight = nn.Parameter(torch.empty(numeric_features, embed_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(numeric_features, embed_dim).uniform_(-bound, bound))
        # One table holds every column's rows, column j's from offset j on: one lookup for all columns.
        self.table = nn.Embedding(max(1, sum(self.cardinalities)), embed_dim)
        nn.init.uniform_(self.table.weight, -bound, bound)
        offsets = torch.tensor([0, *self.cardinalities[:-1]], dtype=torch.int64).cumsum(0)[:len(self.cardinalities)]
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("limits", torch.tensor(self.cardinalities, dtype=torch.int64), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        numeric = x[:, :self.numeric_features, None] * self.weight + self.bias           # (B, numeric, d)
        categorical = self.table(categorical_codes(x, self.numeric_features, self.limits) + self.offsets)
        return torch.cat([numeric, categorical], dim=1)


NORMS = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm, "none": None}


class TabularMLP(nn.Module):
    """Rows (B, F) float, categorical columns holding integer codes -> (B, dim)."""

    def __init__(self, numeric_features: int, cardinalities: list[int], dim: int = 128, depth: int = 2,
                 dropout: float = 0.1, embed_dim: int = 8, norm: str = "batch"):
        super().__init__()
        cardinalities = [int(c) for c in cardinalities]
        if numeric_features < 0 or any(c < 1 for c in cardinalities) or numeric_features + len(cardinalities) == 0:
            raise ValueError(f"a tabular backbone needs >= 1 feature and cardinalities >= 1, got "
                             f"{numeric_features} numeric features and cardinalities {cardinalities}")
        if dim < 1 or depth < 1 or not 0 <= dropout < 1 or embed_dim < 1:
            raise ValueError(f"tabular_mlp needs dim >= 1, depth >= 1, 0 <= dropout < 1 and embed_dim >= 1, got "
                             f"dim={dim}, depth={depth}, dropout={dropout}, embed_dim={embed_dim}")
        if norm not in NORMS:
            raise ValueError(f"tabular_mlp norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.numeric_features = numeric_features
        self.cardinalities = cardinalities
        self.num_features = numeric_features + len(cardinalities)
        self.feature_dim = dim
        self.embedding = FeatureEmbedding(numeric_features, cardinalities, embed_dim)
        layers: list[nn.Module] = []
        width = self.num_features * embed_dim
        for _ in range(depth):
            norm_layer = NORMS[norm]
            layers.append(nn.Linear(width, dim, bias=norm_layer is None))     # a norm's shift makes a bias redundant
            if norm_layer is not None:
                layers.append(norm_layer(dim))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = dim
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"tabular_mlp expects rows (B, {self.num_features}), got {tuple(x.shape)}")
        return self.mlp(self.embedding(x).flatten(1))


@register_backbone("tabular_mlp")
def tabular_mlp(numeric_features: int, cardinalities: list[int] = (), dim: int = 128, depth: int = 2,
                dropout: float = 0.1, embed_dim: int = 8, norm: str = "batch") -> TabularMLP:
    return TabularMLP(numeric_features, list(cardinalities), dim, depth, dropout, embed_dim, norm)
