"""What the two token-prediction tasks (clm, mlm) share: the loss is the mean cross-entropy over the
predicted tokens (each task's `summed_loss` says which), logged with its perplexity, and the
embedding for evaluation is the backbone's pooled sentence vector."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from selfsup.methods import Method
from selfsup.methods.masking import at_chosen, ignoring_unreal


def summed_cross_entropy(head: Callable[[torch.Tensor], torch.Tensor], states: torch.Tensor, targets: torch.Tensor,
                         predicted: torch.Tensor, capacity: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the sum of the cross-entropies of head(states) against targets at the predicted positions, their
    number): states (B, L, D), targets and predicted (B, L). The head, the costly vocabulary projection,
    runs on the predicted rows alone (at most `capacity` of them under torch.compile: at_chosen)."""
    (states, targets), real = at_chosen(predicted, states, targets, capacity=capacity)
    logits = head(states)
    with torch.autocast(logits.device.type, enabled=False):
        total = F.cross_entropy(logits.float(), ignoring_unreal(targets, real), reduction="sum")
    return total, predicted.sum() if real is None else real.sum()


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
