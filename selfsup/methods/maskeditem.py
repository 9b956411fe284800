"""Masked-item prediction over user histories (BERT4Rec, Sun et al. 2019, "BERT4Rec: Sequential
Recommendation with Bidirectional Encoder Representations from Transformer"): the cloze task of
BERT with items for tokens.

Per training row, a share rho of the items (0.2, the paper's value for MovieLens; at least one) is
replaced by MASK; a bidirectional Transformer predicts each hidden item from both sides with a
softmax over the item set, from a head tied to the item embedding. Unlike BERT, every chosen item
becomes MASK (no random or kept items), as in the paper. To recommend, MASK is appended after the
user's newest item and its prediction scores every item (the paper's test-time input).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.methods import register_method
from selfsup.methods.mlm import MLM, MLMConfig
from selfsup.methods.nextitem import SEQUENCE_RECIPE, states_at
from selfsup.text.tokenizer import MASK, PAD


@dataclass
class MaskedItemConfig(MLMConfig):
    name: str = "maskeditem"
    mask_ratio: float = 0.2
    mask_token: float = 1.0
    random_token: float = 0.0


@register_method("maskeditem")
class MaskedItem(MLM):
    config_class = MaskedItemConfig
    modality = "interactions"
    language_model = False
    recommends = True
    backbone_choices = ("bert4rec",)
    causal_hint = "; for sasrec or gru4rec use method.name=nextitem"
    # BERT4Rec's MovieLens sizes: 2 layers, 2 heads, 64-dim, dropout 0.1.
    recipe = {**SEQUENCE_RECIPE, "backbone": {"name": "bert4rec", "dim": 64, "depth": 2, "heads": 2, "dropout": 0.1}}

    @torch.no_grad()
    def next_item_scores(self, histories: torch.Tensor) -> torch.Tensor:
        """histories (B, L) right padded -> scores (B, vocab_size) of the item at a MASK after the newest
        item (a full row drops its oldest item to make room within the backbone's max_length)."""
        histories = histories.long()
        lengths = (histories != PAD).sum(1)
        room = self.backbone.max_length
        if histories.shape[1] > room:
            raise ValueError(f"histories of {histories.shape[1]} items are longer than the backbone's max_length {room}")
        if histories.shape[1] == room:
            full = lengths >= room
            histories = torch.where(full[:, None], histories.roll(-1, 1), histories)[:, :room - 1]
            lengths = lengths.clamp(max=room - 1)
        ids = torch.cat([histories, torch.full_like(histories[:, :1], PAD)], 1)
        ids[torch.arange(len(ids), device=ids.device), lengths] = MASK
        return self.head(states_at(self.backbone.tokens(ids), lengths))
