"""Projection / prediction heads shared by the methods."""
from __future__ import annotations

from torch import nn


def mlp(dims: list[int], batch_norm: bool = True, last_batch_norm: bool = False) -> nn.Sequential:
    """Linear(-BN)-ReLU blocks between dims[0] ... dims[-1]; the last layer is a bare Linear
    (followed by an affine-free BN when last_batch_norm, as in SimSiam/Barlow heads).

    mlp([512, 512, 128]) is SimCLR's head: Linear-BN-ReLU-Linear.
    """
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least an input and an output size, got {dims}")
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(d_in, d_out, bias=not (batch_norm and not last)))
        if not last:
            if batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(nn.ReLU(inplace=True))
        elif last_batch_norm:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)
