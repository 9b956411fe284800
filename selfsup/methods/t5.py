"""T5's span corruption (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
Text-to-Text Transformer", section 3.1.4): hide 15% of a document's tokens in spans of mean length 3;
the encoder reads the document with each span replaced by its own sentinel token, the decoder writes
each sentinel followed by the span it stands for.

    document  Thank you for inviting me to your party last week .
    source    Thank you <X> me to your party <Y>                   (then EOS)
    target    <X> for inviting <Y> last week .                     (then EOS)

As in T5's code: n_noise = round(0.15 n) (at least 1, at most n - 1), n_spans = round(n_noise / 3)
(at least 1); the noise tokens and the other tokens are each cut into n_spans non-empty runs at
random, and the runs alternate, starting with a run of kept tokens and so ending with a span (as
T5's code does; the paper's figure ends with kept tokens). The sentinels are `sentinels`
ids added above the tokenizer's vocabulary, the first span's the highest, like T5's <extra_id_0>.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.methods import MethodConfig, register_method
from selfsup.methods.denoising import Denoising, compact, document_tokens, random_segments, spans_mask, with_eos


@dataclass
class T5Config(MethodConfig):
    name: str = "t5"
    noise_density: float = 0.15        # share of a document's tokens hidden
    mean_span_length: float = 3.0
    sentinels: int = 100               # ids added to the vocabulary; a document has at most this many spans

    def validate(self) -> None:
        if not 0 < self.noise_density < 1:
            raise ValueError(f"method.noise_density must be in (0, 1), got {self.noise_density}")
        if self.mean_span_length < 1:
            raise ValueError(f"method.mean_span_length must be >= 1, got {self.mean_span_length}")
        if self.sentinels < 1:
            raise ValueError(f"method.sentinels must be >= 1, got {self.sentinels}")


def noise_spans(counts: torch.Tensor, noise_density: float, mean_span_length: float, max_spans: int,
                width: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """counts (B,) -> (noise (B, width) bool over each row's first counts[b] positions, span_start (B, width)
    bool where each noise span begins). Rows with fewer than 2 tokens get no noise."""
    noise = (counts.double() * noise_density).round().long().clamp(min=1).minimum(counts - 1).clamp_min(0)
    # At most as many spans as noise tokens, kept tokens (each span follows a run of them) and sentinels.
    spans = (noise.double() / mean_span_length).round().long().clamp(min=1).minimum(noise).minimum(counts - noise)
    spans = spans.clamp(max=max_spans)
    kept_runs = random_segments(counts - noise, spans, width, gen)
    noise_runs = random_segments(noise, spans, width, gen)
    # Run i of kept tokens, then span i: span i starts after kept runs 0..i and spans 0..i-1.
    starts = torch.cumsum(kept_runs, dim=1) + torch.cumsum(noise_runs, dim=1) - noise_runs
    real_span = noise_runs > 0
    starts = starts.masked_fill(~real_span, width)
    span_start = torch.zeros(counts.shape[0], width + 1, dtype=torch.bool, device=counts.device)
    span_start.scatter_(1, starts, True)
    return spans_mask(starts, noise_runs, width), span_start[:, :width]


@register_method("t5")
class T5(Denoising):
    config_class = T5Config

    @classmethod
    def added_tokens(cls, cfg: T5Config) -> int:
        return cfg.sentinels

    def corrupt(self, ids: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        b, length = ids.shape
        tokens, counts = document_tokens(ids)
        noise, span_start = noise_spans(counts, self.cfg.noise_density, self.cfg.mean_span_length,
                                        self.cfg.sentinels, length, gen)
        sentinel = self.backbone.vocab_size - torch.cumsum(span_start.long(), dim=1)    # span i: vocab - 1 - i
        real = torch.arange(length, device=ids.device)[None, :] < counts[:, None]
        # Two slots per position: the sentinel (where a span starts), then the token.
        slot_values = torch.stack([sentinel, tokens], dim=2).flatten(1)
        source_keep = torch.stack([span_start, real & ~noise], dim=2).flatten(1)
        target_keep = torch.stack([span_start, noise], dim=2).flatten(1)
        source, target = compact(slot_values, source_keep, length), compact(slot_values, target_keep, length)
        return (with_eos(source, source_keep.sum(1), length), with_eos(target, target_keep.sum(1), length))
