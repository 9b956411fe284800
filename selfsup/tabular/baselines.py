"""The no-learning baseline for tables: the raw columns, as a linear probe would see them."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.tabular.table import TableSet, categorical_codes


def raw_features(table: TableSet) -> torch.Tensor:
    """float32 (N, numeric_features + sum(cardinalities)): the standardised numeric columns, then each
    categorical column one-hot over its codes (code 0, missing / unknown, has its own slot)."""
    codes = categorical_codes(table.values, table.numeric_features, table.cardinalities)
    one_hot = [F.one_hot(codes[:, j], size).float() for j, size in enumerate(table.cardinalities)]
    return torch.cat([table.values[:, :table.numeric_features], *one_hot], dim=1)
