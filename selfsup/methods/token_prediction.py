"""What the two token-prediction tasks (clm, mlm) share: the loss is the mean cross-entropy over the
predicted tokens (each task's `summed_loss` says which), logged with its perplexity, and the
embedding for evaluation is the backbone's pooled sentence vector."""
from __future__ import annotations

import torch

from selfsup.methods import Method


class TokenPrediction(Method):
    modality = "text"

    def summed_loss(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the cross-entropies of the predicted tokens, their number): summed, so perplexity over
        many batches weighs every token once."""
        raise NotImplementedError

    def loss(self, views: list[torch.Tensor]):
        total, count = self.summed_loss(views)
        loss = total / count.clamp_min(1)
        return loss, {"loss": loss.detach(), "perplexity": loss.detach().exp()}

    @torch.no_grad()
    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        return self.backbone(batch)
