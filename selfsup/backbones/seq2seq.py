"""An encoder-decoder Transformer (Vaswani et al. 2017) for the denoising pretext tasks (bart, t5) and
for writing summaries after them.

Pre-norm blocks as in the other text backbones; one token embedding shared by the encoder input,
the decoder input and the output layer (tied, as BART and T5 do); learned positions, one table for
each side. The encoder is bidirectional over the source with PAD hidden; the decoder attends
causally to its own tokens and, in every block, to the encoder's states of the non-PAD source
tokens.

    model = build_backbone("seq2seq", vocab_size=260, max_length=128)
    memory = model.tokens(source)                       # (B, S, dim) encoder states
    logits = model.logits(source, target_in)            # (B, T, vocab) for teacher forcing
    model(source)                                       # (B, dim): the mean encoder state (evaluation)

`decode(..., caches=[{} for _ in model.decoder_blocks])` runs the decoder one new token at a time
with each block's keys and values kept, which is how generation avoids recomputing the prefix.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones.registry import register_backbone
from selfsup.backbones.text import (Block, _check_sizes, _init_weights, attention_mask, nothing_padded,
                                    language_model_head, mean_over_tokens)
from selfsup.text.tokenizer import PAD


class CrossAttention(nn.Module):
    """Queries from the decoder, keys and values from the encoder's states; PAD source tokens hidden."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, visible: torch.Tensor | None,
                cache: dict | None = None) -> torch.Tensor:
        """x (B, T, dim), memory (B, S, dim), visible: bool (B, 1, 1, S) or None (no PAD). The memory's
        keys and values are computed once per generation when a cache is given."""
        b, t, d = x.shape
        head_dim = d // self.heads
        q = self.q(x).view(b, t, self.heads, head_dim).transpose(1, 2)
        if cache is not None and "memory_k" in cache:
            k, v = cache["memory_k"], cache["memory_v"]
        else:
            k, v = self.kv(memory).view(b, -1, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
            if cache is not None:
                cache["memory_k"], cache["memory_v"] = k, v
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=visible,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(x.transpose(1, 2).reshape(b, t, d))


class DecoderBlock(Block):
    """x + attn(LN(x)) (causal), x + cross(LN(x), memory), x + MLP(LN(x)); dropout after each."""

    def __init__(self, dim: int, heads: int, dropout: float, mlp_ratio: float = 4.0):
        super().__init__(dim, heads, dropout, mlp_ratio)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross = CrossAttention(dim, heads, dropout)

    def forward(self, x, memory, visible, cache: dict | None = None) -> torch.Tensor:
        # Causal over right-padded targets, so no padding mask (see text.attention_mask).
        x = x + self.drop(self.attn(self.norm1(x), None, True, cache))
        x = x + self.drop(self.cross(self.norm_cross(x), memory, visible, cache))
        return x + self.drop(self.mlp(self.norm2(x)))


class EncoderDecoder(nn.Module):
    causal = False               # the encoder, which `tokens` and `forward` run, sees both sides
    is_encoder_decoder = True

    def __init__(self, vocab_size: int, max_length: int, dim: int, depth: int, decoder_depth: int, heads: int,
                 dropout: float):
        super().__init__()
        _check_sizes(vocab_size, dim, depth, dropout)
        if heads < 1 or dim % heads:
            raise ValueError(f"dim {dim} must be divisible by the number of heads {heads}")
        if max_length < 2 or decoder_depth < 0:
            raise ValueError(f"an encoder-decoder needs max_length >= 2 and decoder_depth >= 0, got "
                             f"{max_length} and {decoder_depth}")
        self.vocab_size, self.max_length, self.feature_dim = vocab_size, max_length, dim
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.encoder_positions = nn.Parameter(torch.zeros(max_length, dim))
        self.decoder_positions = nn.Parameter(torch.zeros(max_length, dim))
        self.drop = nn.Dropout(dropout)
        self.encoder_blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(depth))
        self.encoder_norm = nn.LayerNorm(dim)
        self.decoder_blocks = nn.ModuleList(DecoderBlock(dim, heads, dropout) for _ in range(decoder_depth or depth))
        self.decoder_norm = nn.LayerNorm(dim)
        self.apply(_init_weights)
        nn.init.normal_(self.encoder_positions, std=0.02)
        nn.init.normal_(self.decoder_positions, std=0.02)
        self.lm_head = language_model_head(self)          # tied to token_embedding

    def _check_length(self, ids: torch.Tensor, side: str, start: int = 0) -> None:
        if start + ids.shape[1] > self.max_length:
            raise ValueError(f"{side} sequences of {start + ids.shape[1]} tokens are longer than this "
                             f"backbone's max_length {self.max_length}")

    def tokens(self, source: torch.Tensor) -> torch.Tensor:
        """source ids (B, S) -> the encoder's final states (B, S, dim)."""
        source = source.long()
        self._check_length(source, "source")
        x = self.drop(self.token_embedding(source) + self.encoder_positions[:source.shape[1]])
        allowed = attention_mask(source, causal=False)
        for block in self.encoder_blocks:
            x = block(x, allowed, False)
        return self.encoder_norm(x)

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        """source ids (B, S) -> the mean of the non-PAD encoder states (B, dim): the document embedding."""
        return mean_over_tokens(self.tokens(source), source)

    def decode(self, target_in: torch.Tensor, memory: torch.Tensor, source: torch.Tensor,
               caches: list[dict] | None = None, start: int = 0) -> torch.Tensor:
        """Decoder states (B, T, dim) of target_in (B, T) ids given the encoder's memory (B, S, dim) of
        source (B, S). With caches (one dict per decoder block), target_in is the single token at
        position `start`, and the earlier positions come from the caches."""
        target_in = target_in.long()
        self._check_length(target_in, "target", start)
        x = self.drop(self.token_embedding(target_in)
                      + self.decoder_positions[start:start + target_in.shape[1]])
        visible = memory_mask(source)
        for i, block in enumerate(self.decoder_blocks):
            x = block(x, memory, visible, caches[i] if caches is not None else None)
        return self.decoder_norm(x)

    def logits(self, source: torch.Tensor, target_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: (B, T, vocab) logits, row t predicting the token after target_in[:, :t + 1]."""
        return self.lm_head(self.decode(target_in, self.tokens(source), source))


def memory_mask(source: torch.Tensor) -> torch.Tensor | None:
    """bool (B, 1, 1, S): the source tokens the decoder may attend to (not PAD); None when none is PAD
    (nothing_padded). An all-PAD source shows its first position, so no query has an empty row (NaN)."""
    padded = source == PAD
    if nothing_padded(padded):
        return None
    visible = ~padded
    visible[:, 0] |= padded.all(1)
    return visible[:, None, None, :]


@register_backbone("seq2seq")
def seq2seq(vocab_size: int, max_length: int, dim: int = 128, depth: int = 2, decoder_depth: int = 0,
            heads: int = 4, dropout: float = 0.1) -> EncoderDecoder:
    return EncoderDecoder(vocab_size, max_length, dim, depth, decoder_depth, heads, dropout)
