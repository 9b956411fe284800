"""Next-item prediction over user histories (SASRec, Kang and McAuley 2018, "Self-Attentive Sequential
Recommendation"; GRU4Rec, Hidasi et al. 2016): the generative task of recommendation, causal language
modelling with items for tokens.

Each training row is a window of one user's items in time order; position i predicts item i + 1
with a softmax over the whole item set (cross-entropy, as in the full-softmax SASRec of Klenitskiy and
Vasilev 2023, rather than the original's one sampled negative), from a head tied to the item
embedding. To recommend, the state at the user's last item scores every item.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.methods import MethodConfig, register_method
from selfsup.methods.clm import CLM
from selfsup.text.tokenizer import PAD

# SASRec's sizes for MovieLens (2 blocks, 64-dim; the paper's 50 rounded to a multiple of the heads),
# its Adam lr 1e-3 and batch 128, dropout 0.2.
SEQUENCE_RECIPE = {
    "backbone": {"name": "sasrec", "dim": 64, "depth": 2, "heads": 2, "dropout": 0.2},
    "optim": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.98], "weight_decay": 0.0, "warmup_epochs": 1.0,
              "grad_clip": 1.0},
    "train": {"batch_size": 128},
}


def last_positions(histories: torch.Tensor) -> torch.Tensor:
    """histories (B, L), right padded -> (B,) the index of each row's newest item."""
    return ((histories != PAD).sum(1) - 1).clamp_min(0)


def states_at(states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """states (B, L, D), positions (B,) -> (B, D)."""
    return states[torch.arange(len(positions), device=states.device), positions]


@dataclass
class NextItemConfig(MethodConfig):
    name: str = "nextitem"

    def validate(self) -> None:
        """Nothing to check: the task has no settings of its own."""


@register_method("nextitem")
class NextItem(CLM):
    config_class = NextItemConfig
    modality = "interactions"
    language_model = False        # item histories: ranking metrics measure it, not perplexity on text
    generates = False
    packs_text = False
    recommends = True
    backbone_choices = ("sasrec", "gru4rec")
    recipe = SEQUENCE_RECIPE

    @torch.no_grad()
    def next_item_scores(self, histories: torch.Tensor) -> torch.Tensor:
        """histories (B, L) item tokens, right padded -> scores (B, vocab_size) of every token as the next item."""
        histories = histories.long()
        return self.head(states_at(self.backbone.tokens(histories), last_positions(histories)))
