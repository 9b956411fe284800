"""Masked language modelling (BERT, Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional
Transformers for Language Understanding"): hide some tokens, predict them from both sides.

Per sequence, 15% of the ordinary tokens (never PAD, BOS, EOS, MASK; at least one) are chosen; of
those 80% become MASK, 10% a random ordinary token, 10% stay as they are (so the encoder cannot tell
which tokens to fix). The loss is the cross-entropy at the chosen positions only, from a linear head
tied to the token embedding. Needs a bidirectional backbone (transformer).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.backbones.text import BIDIRECTIONAL_BACKBONES, language_model_head
from selfsup.methods import MethodConfig, register_method
from selfsup.methods.masking import IGNORE, lowest
from selfsup.methods.token_prediction import TokenPrediction, summed_cross_entropy
from selfsup.text.tokenizer import MASK, NUM_SPECIAL


@dataclass
class MLMConfig(MethodConfig):
    name: str = "mlm"
    mask_ratio: float = 0.15           # share of a sequence's ordinary tokens that are predicted
    mask_token: float = 0.8            # of those, the share replaced by MASK
    random_token: float = 0.1          # ... by a random ordinary token (the rest stay unchanged)

    def validate(self) -> None:
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"method.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.mask_token < 0 or self.random_token < 0 or self.mask_token + self.random_token > 1:
            raise ValueError(f"method.mask_token and method.random_token must be >= 0 with a sum <= 1, got "
                             f"{self.mask_token} and {self.random_token}")


def bert_mask(ids: torch.Tensor, vocab_size: int, gen: torch.Generator, mask_ratio: float = 0.15,
              mask_token: float = 0.8, random_token: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, L) int64 -> (corrupted ids (B, L), targets (B, L): the original id at chosen positions,
    IGNORE elsewhere). Row b has max(1, round(mask_ratio * n_b)) chosen positions, n_b its ordinary
    (id >= 4) tokens, drawn uniformly without replacement as in BERT's data preparation. All draws from gen.
    """
    eligible = ids >= NUM_SPECIAL
    # float64, so the rounding is Python's round(mask_ratio * n) exactly
    count = (eligible.sum(1).double() * mask_ratio).round().long().clamp_min(1)
    scores = torch.rand(ids.shape, generator=gen, device=ids.device).masked_fill(~eligible, 2.0)
    chosen = eligible & lowest(scores, count)

    action = torch.rand(ids.shape, generator=gen, device=ids.device)
    random_ids = torch.randint(NUM_SPECIAL, vocab_size, ids.shape, generator=gen, device=ids.device)
    corrupted = ids.masked_fill(chosen & (action < mask_token), MASK)
    use_random = chosen & (action >= mask_token) & (action < mask_token + random_token)
    corrupted = torch.where(use_random, random_ids, corrupted)
    return corrupted, ids.masked_fill(~chosen, IGNORE)


def most_chosen(rows: int, length: int, mask_ratio: float) -> int:
    """The most positions bert_mask chooses in `rows` sequences of `length` tokens (a row's count grows
    with its number of ordinary tokens, at most length)."""
    return rows * max(1, round(mask_ratio * length))


@register_method("mlm")
class MLM(TokenPrediction):
    config_class = MLMConfig
    spreads_embeddings = False      # a predictive task: see selfsup/evaluate/representation.py
    language_model = True
    backbone_choices = BIDIRECTIONAL_BACKBONES       # named when the backbone does not fit
    causal_hint = "; for gpt, lstm or gru use method.name=clm"
    recipe = {
        "backbone": {"name": "transformer"},
        # BERT / RoBERTa's AdamW (betas (0.9, 0.98), weight decay 0.01) at a small model's lr.
        "optim": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.98], "weight_decay": 0.01, "warmup_epochs": 0.2,
                  "grad_clip": 1.0},
    }

    def __init__(self, backbone, cfg: MLMConfig, augment_cfg=None):
        super().__init__(backbone, cfg, augment_cfg)
        if getattr(backbone, "causal", True):
            raise ValueError(f"mlm predicts hidden tokens from both sides, which needs a bidirectional backbone "
                             f"(backbone.name={' / '.join(self.backbone_choices)}), got a causal or non-text "
                             f"{type(backbone).__name__}{self.causal_hint}")
        self.head = language_model_head(backbone)

    def views(self, batch: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        """[corrupted ids (B, L), targets (B, L) with IGNORE where nothing is predicted]."""
        return list(bert_mask(batch.long(), self.backbone.vocab_size, gen, self.cfg.mask_ratio,
                              self.cfg.mask_token, self.cfg.random_token))

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> logits (B, L, vocab_size) of the token at each position."""
        return self.head(self.backbone.tokens(ids))

    def summed_loss(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the cross-entropies at the chosen positions, their number)."""
        corrupted, targets = views
        return summed_cross_entropy(self.head, self.backbone.tokens(corrupted), targets, targets != IGNORE,
                                    capacity=most_chosen(*corrupted.shape, self.cfg.mask_ratio))
