"""What the denoising pretext tasks (bart, t5) share: an encoder-decoder reads a corrupted document and
writes a target (the whole original for BART, the hidden spans for T5), trained by the cross-entropy
of every non-PAD target token under teacher forcing.

The corruption works on whole batches with tensor operations and draws everything from the step's
generator, so a resumed run corrupts the same way. The batched building blocks:

    document_tokens(ids)             the ordinary tokens of each row, left-aligned (specials and PAD dropped)
    compact(values, keep, length)    the kept values of each row, in order, left-aligned, PAD after
    random_segments(counts, parts)   cut each row's `counts` items into `parts` non-empty runs at random
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.methods.token_prediction import TokenPrediction, summed_cross_entropy
from selfsup.text.tokenizer import BOS, EOS, NUM_SPECIAL, PAD


def compact(values: torch.Tensor, keep: torch.Tensor, length: int) -> torch.Tensor:
    """values, keep (B, M) -> (B, length): each row's values where keep, in their order, then PAD;
    a row with more than `length` kept values is cut."""
    order = (~keep).to(torch.uint8).argsort(dim=1, stable=True)
    packed = values.gather(1, order).masked_fill(~keep.gather(1, order), PAD)
    if packed.shape[1] >= length:
        return packed[:, :length]
    return F.pad(packed, (0, length - packed.shape[1]), value=PAD)


def document_tokens(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, L) -> (tokens (B, L), counts (B,)): each row's ordinary tokens (id >= NUM_SPECIAL),
    left-aligned and PAD-filled, and how many there are."""
    ordinary = ids >= NUM_SPECIAL
    return compact(ids, ordinary, ids.shape[1]), ordinary.sum(1)


def random_segments(counts: torch.Tensor, parts: torch.Tensor, width: int, gen: torch.Generator) -> torch.Tensor:
    """counts, parts (B,) with 1 <= parts <= counts (rows with counts 0 get nothing) -> lengths (B, width):
    row b's counts[b] items cut into parts[b] non-empty runs, every cut equally likely (the parts - 1
    cut points drawn without replacement among the counts - 1 gaps, as T5's random segmentation);
    zero after the parts. width >= max(counts)."""
    b = counts.shape[0]
    gaps = torch.arange(width, device=counts.device)                     # gap g lies after item g
    scores = torch.rand(b, width, generator=gen, device=counts.device)
    scores = scores.masked_fill(gaps[None, :] >= (counts - 1).clamp_min(0)[:, None], 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    cut = rank < (parts - 1)[:, None]                                     # the parts - 1 lowest-scored gaps
    # The run of item i is the number of cuts before it; the lengths count items per run.
    run_of_item = torch.cumsum(F.pad(cut[:, :-1].long(), (1, 0)), dim=1)
    real = gaps[None, :] < counts[:, None]
    lengths = torch.zeros(b, width + 1, dtype=torch.long, device=counts.device)
    lengths.scatter_add_(1, run_of_item.masked_fill(~real, width), real.long())
    return lengths[:, :width]


def spans_mask(starts: torch.Tensor, lengths: torch.Tensor, width: int) -> torch.Tensor:
    """starts, lengths (B, K) -> bool (B, width): True inside any span [start, start + length)."""
    delta = torch.zeros(starts.shape[0], width + 1, dtype=torch.long, device=starts.device)
    delta.scatter_add_(1, starts.clamp(max=width), (lengths > 0).long())
    delta.scatter_add_(1, (starts + lengths).clamp(max=width), -(lengths > 0).long())
    return torch.cumsum(delta, dim=1)[:, :width] > 0


def teacher_forced(backbone, source: torch.Tensor, target_in: torch.Tensor) -> torch.Tensor:
    """An encoder-decoder's decoder states (B, T, dim), the decoder reading target_in (teacher forcing)
    over the encoded source."""
    return backbone.decode(target_in, backbone.tokens(source), source)


def target_logits(backbone, source: torch.Tensor, target_in: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """An encoder-decoder's output logits (N, vocab) at the `predicted` (bool (B, T)) target positions."""
    return backbone.lm_head(teacher_forced(backbone, source, target_in)[predicted])


def shift_right(target: torch.Tensor) -> torch.Tensor:
    """The decoder's input under teacher forcing: BOS, then the target without its last position."""
    return torch.cat([torch.full_like(target[:, :1], BOS), target[:, :-1]], dim=1)


def with_eos(tokens: torch.Tensor, counts: torch.Tensor, length: int) -> torch.Tensor:
    """tokens (B, M) left-aligned with counts (B,) real ones -> (B, length): EOS after them (where it fits)."""
    out = F.pad(tokens, (0, max(0, length + 1 - tokens.shape[1])), value=PAD)[:, :length + 1].clone()
    out.scatter_(1, counts.clamp(max=length)[:, None], EOS)
    return out[:, :length]


class Denoising(TokenPrediction):
    """Views: [source (B, L), decoder input (B, T), target (B, T)]; `corrupt` says how they are made."""

    spreads_embeddings = False
    language_model = True                 # held-out loss and perplexity of the reconstruction
    packs_text = False
    needs_documents = True                # one document a row: spans and sentences stay inside it
    backbone_choices = ("seq2seq",)
    recipe = {
        "backbone": {"name": "seq2seq"},
        # BART / RoBERTa's AdamW (betas (0.9, 0.98), weight decay 0.01, clip) at a small model's lr.
        "optim": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.98], "weight_decay": 0.01, "warmup_epochs": 0.2,
                  "grad_clip": 1.0},
    }

    def __init__(self, backbone, cfg, augment_cfg=None):
        super().__init__(backbone, cfg, augment_cfg)
        if not getattr(backbone, "is_encoder_decoder", False):
            raise ValueError(f"method.name={cfg.name} reconstructs text with an encoder-decoder; set "
                             f"backbone.name=seq2seq (got {type(backbone).__name__})")

    def corrupt(self, ids: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, L) -> (source (B, L), target (B, L)), both ending in EOS and PAD-filled."""
        raise NotImplementedError

    def views(self, batch: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        source, target = self.corrupt(batch.long(), gen)
        return [source, shift_right(target), target]

    def summed_loss(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the cross-entropies of the non-PAD target tokens, their number)."""
        source, target_in, target = views
        return summed_cross_entropy(self.backbone.lm_head, teacher_forced(self.backbone, source, target_in), target,
                                    target != PAD)
