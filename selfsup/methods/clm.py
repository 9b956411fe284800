"""Causal language modelling (the generative pretext task of GPT, Radford et al. 2018): predict every
token from the tokens before it.

A causal backbone (gpt, lstm, gru) gives states (B, L, dim); a linear head tied to the token embedding
turns them into logits; the loss is the cross-entropy of logits[:, :-1] against tokens[:, 1:], PAD
targets ignored. perplexity = exp(loss). After pretraining, `selfsup.text.generate` samples from it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.backbones.text import CAUSAL_BACKBONES, language_model_head
from selfsup.methods import MethodConfig, register_method
from selfsup.methods.token_prediction import TokenPrediction, summed_cross_entropy
from selfsup.text.tokenizer import PAD


@dataclass
class CLMConfig(MethodConfig):
    name: str = "clm"

    def validate(self) -> None:
        """Nothing to check: the task has no settings of its own."""


@register_method("clm")
class CLM(TokenPrediction):
    config_class = CLMConfig
    spreads_embeddings = False      # a predictive task: see selfsup/evaluate/representation.py
    language_model = True
    generates = True
    packs_text = True        # a language model learns from the running text, not from document-sized rows
    backbone_choices = CAUSAL_BACKBONES       # named when the backbone does not fit
    recipe = {
        "backbone": {"name": "gpt"},
        # nanoGPT's small-model settings (lr 1e-3, betas (0.9, 0.99), weight decay 0.1, clip 1).
        "optim": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 0.1, "warmup_epochs": 0.2,
                  "grad_clip": 1.0},
    }

    def __init__(self, backbone, cfg: CLMConfig, augment_cfg=None):
        super().__init__(backbone, cfg, augment_cfg)
        if not getattr(backbone, "causal", False):
            raise ValueError(f"clm predicts the next token, which needs a causal backbone "
                             f"(backbone.name={' / '.join(self.backbone_choices)}), got {type(backbone).__name__}")
        self.head = language_model_head(backbone)

    def views(self, batch: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        """No corruption: the batch itself, (B, L) token ids."""
        return [batch.long()]

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> next-token logits (B, L, vocab_size): row i predicts token i + 1."""
        return self.head(self.backbone.tokens(ids))

    def summed_loss(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the next-token cross-entropies over non-PAD targets, their number)."""
        ids = views[0]
        targets = ids[:, 1:]
        return summed_cross_entropy(self.head, self.backbone.tokens(ids)[:, :-1], targets, targets != PAD)
