"""CL4SRec (Xie et al. 2022, "Contrastive Learning for Sequential Recommendation"): next-item
prediction plus a contrastive task on two augmented copies of each user history.

    loss = next-item cross-entropy (as nextitem) + lambda * InfoNCE(s_a, s_b)

Each copy applies one of three augmentations, drawn per sequence with equal chance (sec. 3.2):
crop (a random contiguous run of floor(eta * n) items, at least one), mask (floor(gamma * n)
items become MASK) and reorder (a random run of floor(beta * n) items is shuffled). The sequence
representation s is the encoder's state at its newest item; InfoNCE is NT-Xent over the 2B copies
with the dot product as similarity (eq. 5) at temperature tau. eta = 0.6, gamma = 0.3, beta = 0.6
follow the paper's worked examples; lambda = 0.1 as in its experiments.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.methods import register_method
from selfsup.methods.losses import nt_xent
from selfsup.methods.masking import lowest
from selfsup.methods.nextitem import NextItem, NextItemConfig, last_positions, states_at
from selfsup.text.tokenizer import MASK, PAD


@dataclass
class CL4SRecConfig(NextItemConfig):
    name: str = "cl4srec"
    crop: float = 0.6              # eta: share of the items a crop keeps
    mask: float = 0.3              # gamma: share of the items masked
    reorder: float = 0.6           # beta: share of the items in the shuffled run
    weight: float = 0.1            # lambda: weight of the contrastive loss
    temperature: float = 1.0       # tau

    def validate(self) -> None:
        for key in ("crop", "mask", "reorder"):
            if not 0 < getattr(self, key) <= 1:
                raise ValueError(f"method.{key} must be in (0, 1], got {getattr(self, key)}")
        if self.weight < 0 or self.temperature <= 0:
            raise ValueError(f"method.weight must be >= 0 and method.temperature > 0, got {self.weight} and "
                             f"{self.temperature}")


def item_crop(ids: torch.Tensor, share: float, gen: torch.Generator) -> torch.Tensor:
    """ids (B, L) right padded -> each row's contiguous run of max(1, floor(share * n)) items from a
    uniform start, moved to the front and right padded."""
    lengths = (ids != PAD).sum(1)
    keep = (lengths.double() * share).floor().long().clamp_min(1)
    start = (torch.rand(len(ids), generator=gen, device=ids.device) * (lengths - keep + 1)).floor().long()
    positions = torch.arange(ids.shape[1], device=ids.device)
    taken = ids.gather(1, (start[:, None] + positions).clamp(max=ids.shape[1] - 1))
    return taken.masked_fill(positions >= keep[:, None], PAD)


def item_mask(ids: torch.Tensor, share: float, gen: torch.Generator) -> torch.Tensor:
    """floor(share * n) of each row's items, uniformly without replacement, become MASK."""
    real = ids != PAD
    count = (real.sum(1).double() * share).floor().long()
    scores = torch.rand(ids.shape, generator=gen, device=ids.device).masked_fill(~real, 2.0)
    return ids.masked_fill(real & lowest(scores, count), MASK)


def item_reorder(ids: torch.Tensor, share: float, gen: torch.Generator) -> torch.Tensor:
    """A random contiguous run of floor(share * n) items of each row is shuffled; the rest stays."""
    lengths = (ids != PAD).sum(1)
    run = (lengths.double() * share).floor().long()
    start = (torch.rand(len(ids), generator=gen, device=ids.device) * (lengths - run + 1)).floor().long()
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids).double()
    inside = (positions >= start[:, None]) & (positions < (start + run)[:, None])
    # Sort keys: a position outside the run keeps its own index; one inside draws a key within
    # (start - 0.5, start + run - 0.5), so the run is permuted among its own places only.
    drawn = start[:, None] - 0.5 + torch.rand(ids.shape, generator=gen, device=ids.device, dtype=torch.float64) * run[:, None]
    order = torch.where(inside, drawn, positions).argsort(1)
    return ids.gather(1, order)


def augment_sequences(ids: torch.Tensor, cfg: CL4SRecConfig, gen: torch.Generator) -> torch.Tensor:
    """One of crop, mask and reorder per row, drawn uniformly."""
    choice = torch.randint(0, 3, (len(ids), 1), generator=gen, device=ids.device)
    cropped, masked, reordered = (item_crop(ids, cfg.crop, gen), item_mask(ids, cfg.mask, gen),
                                  item_reorder(ids, cfg.reorder, gen))
    return torch.where(choice == 0, cropped, torch.where(choice == 1, masked, reordered))


@register_method("cl4srec")
class CL4SRec(NextItem):
    config_class = CL4SRecConfig

    def views(self, batch: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        """[the rows (B, L), two augmented copies (B, L)]."""
        ids = batch.long()
        return [ids, augment_sequences(ids, self.cfg, gen), augment_sequences(ids, self.cfg, gen)]

    def representation(self, ids: torch.Tensor) -> torch.Tensor:
        return states_at(self.backbone.tokens(ids), last_positions(ids))

    def loss(self, views: list[torch.Tensor]):
        total, count = self.summed_loss(views[:1])
        next_item = total / count.clamp_min(1)
        contrastive = nt_xent(self.representation(views[1]), self.representation(views[2]), self.cfg.temperature,
                              normalize=False)
        loss = next_item + self.cfg.weight * contrastive
        return loss, {"loss": loss.detach(), "next_item": next_item.detach(), "contrastive": contrastive.detach(),
                      "perplexity": next_item.detach().exp()}
