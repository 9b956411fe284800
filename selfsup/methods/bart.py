"""BART (Lewis et al. 2020, "BART: Denoising Sequence-to-Sequence Pre-training for Natural Language
Generation, Translation, and Comprehension"): an encoder-decoder reconstructs a document from a
corrupted copy. The corruption is the paper's best pair (its section 5): sentence permutation, then
text infilling.

- Sentence permutation: the document is cut into sentences after full stops (any token that ends
  in '.', '!' or '?', listed in method.sentence_end_ids from the run's tokenizer) and the sentences
  are shuffled.
- Text infilling: spans whose lengths are drawn from Poisson(lambda = 3) are each replaced by a
  single MASK token, until mask_ratio (30%) of the document's tokens are hidden; a span of length 0
  inserts a MASK. The spans never overlap, each sits at one of the gaps between the kept tokens
  drawn at random, and the last span is cut so that exactly round(mask_ratio * n) tokens go.

The target is the original document (in its order) followed by EOS; the loss is the cross-entropy
of every target token, the decoder reading the target shifted right (teacher forcing).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from selfsup.methods import MethodConfig, register_method
from selfsup.methods.denoising import Denoising, compact, document_tokens, spans_mask, with_eos
from selfsup.text.tokenizer import MASK, PAD


@dataclass
class BARTConfig(MethodConfig):
    name: str = "bart"
    mask_ratio: float = 0.3            # share of a document's tokens hidden by text infilling
    poisson_lambda: float = 3.0        # mean span length
    permute_sentences: bool = True
    # Tokens that end a sentence; filled from the run's tokenizer when empty (selfsup.text.sentence_end_ids).
    sentence_end_ids: list[int] = field(default_factory=list)

    def validate(self) -> None:
        if not 0 <= self.mask_ratio < 1:
            raise ValueError(f"method.mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.poisson_lambda <= 0:
            raise ValueError(f"method.poisson_lambda must be > 0, got {self.poisson_lambda}")


def permute_sentences(tokens: torch.Tensor, counts: torch.Tensor, is_end: torch.Tensor,
                      gen: torch.Generator) -> torch.Tensor:
    """tokens (B, L) left-aligned with counts (B,) real ones; is_end (B, L) True at sentence-final tokens
    -> the same tokens with each row's sentences in a random order (every order equally likely)."""
    length = tokens.shape[1]
    real = torch.arange(length, device=tokens.device)[None, :] < counts[:, None]
    sentence = torch.cumsum(F.pad(is_end[:, :-1].long(), (1, 0)), dim=1)
    keys = torch.rand(tokens.shape, generator=gen, device=tokens.device).gather(1, sentence)
    # Stable: the tokens of one sentence (one key) keep their order; PAD stays behind.
    order = keys.masked_fill(~real, 2.0).argsort(dim=1, stable=True)
    return tokens.gather(1, order)


def text_infilling(tokens: torch.Tensor, counts: torch.Tensor, mask_ratio: float, poisson_lambda: float,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B, L) left-aligned with counts (B,) real ones -> (noised (B, L + 1), their counts (B,)):
    round(mask_ratio * n) tokens hidden in Poisson-length spans, each span one MASK (see the module
    docstring)."""
    b, length = tokens.shape
    device = tokens.device
    hidden = (counts.double() * mask_ratio).round().long()
    kept = counts - hidden
    lengths = torch.poisson(torch.full((b, length), poisson_lambda, device=device), generator=gen).long()
    before = torch.cumsum(lengths, dim=1) - lengths                  # tokens hidden by the earlier spans
    spans = (before < hidden[:, None]).sum(1).minimum(kept + 1)      # one span per gap at most
    index = torch.arange(length, device=device)[None, :]
    last = before.gather(1, (spans - 1).clamp_min(0)[:, None])
    lengths = torch.where(index < spans[:, None] - 1, lengths,
                          torch.where(index == spans[:, None] - 1, hidden[:, None] - last, 0))
    # The spans go to `spans` distinct gaps among the kept + 1 (before each kept token, and at the end).
    gaps = torch.arange(length + 1, device=device)[None, :]
    scores = torch.rand(b, length + 1, generator=gen, device=device).masked_fill(gaps > kept[:, None], 2.0)
    chosen = scores.argsort(dim=1).argsort(dim=1) < spans[:, None]
    span_of_gap = (torch.cumsum(chosen.long(), dim=1) - 1).clamp(0, length - 1)
    gap_lengths = lengths.gather(1, span_of_gap) * chosen
    starts = gaps + torch.cumsum(gap_lengths, dim=1) - gap_lengths     # where each gap's span begins
    removed = spans_mask(starts.masked_fill(~chosen, length + 1), gap_lengths, length + 1)[:, :length]
    mask_before = torch.zeros(b, length + 2, dtype=torch.bool, device=device)
    mask_before.scatter_(1, starts.masked_fill(~chosen, length + 1), True)
    # Two slots per position: a MASK before it (when a span starts there), then the token if it stays.
    slot_values = torch.stack([torch.full((b, length + 1), MASK, device=device),
                               F.pad(tokens, (0, 1), value=PAD)], dim=2).flatten(1)
    stays = F.pad((index < counts[:, None]) & ~removed, (0, 1), value=False)
    slot_keep = torch.stack([mask_before[:, :length + 1], stays], dim=2).flatten(1)
    return compact(slot_values, slot_keep, length + 1), kept + spans


@register_method("bart")
class BART(Denoising):
    config_class = BARTConfig
    needs_sentence_ends = True           # the text modality fills method.sentence_end_ids from the tokenizer

    def __init__(self, backbone, cfg: BARTConfig, augment_cfg=None):
        super().__init__(backbone, cfg, augment_cfg)
        self.register_buffer("sentence_ends", torch.tensor(sorted(cfg.sentence_end_ids), dtype=torch.long),
                             persistent=False)

    def corrupt(self, ids: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        length = ids.shape[1]
        tokens, counts = document_tokens(ids)
        shuffled = tokens
        if self.cfg.permute_sentences and len(self.sentence_ends):
            shuffled = permute_sentences(tokens, counts, torch.isin(tokens, self.sentence_ends), gen)
        noised, noised_counts = text_infilling(shuffled, counts, self.cfg.mask_ratio, self.cfg.poisson_lambda, gen)
        return with_eos(noised, noised_counts, length), with_eos(tokens, counts, length)
