"""Text encoders: integer token ids (B, L) -> per-token states (B, L, dim) and a pooled (B, dim).

    transformer   bidirectional Transformer encoder (BERT-style; Vaswani et al. 2017, Devlin et al. 2019)
    gpt           causal Transformer decoder (GPT-style; Radford et al. 2018): position i sees tokens <= i
    lstm, gru     unidirectional recurrent networks (causal, so they too can predict the next token)

Every text backbone has ``vocab_size``, ``causal``, ``feature_dim`` (= dim), ``tokens(ids)`` (the final
hidden states) and ``forward(ids)``: the mean of tokens() over the non-PAD positions, the sentence
embedding that evaluation uses. Rows are right padded, and no real token attends to PAD (id 0), so
padding changes nothing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones.registry import register_backbone
from selfsup.text.tokenizer import PAD

CAUSAL_BACKBONES = ("gpt", "lstm", "gru")
BIDIRECTIONAL_BACKBONES = ("transformer",)


def mean_over_tokens(states: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """states (B, L, D), ids (B, L) -> (B, D): the mean over positions whose id is not PAD."""
    keep = (ids != PAD).unsqueeze(-1).to(states.dtype)
    return (states * keep).sum(1) / keep.sum(1).clamp_min(1.0)


def nothing_padded(padded: torch.Tensor) -> bool:
    """Whether no position of `padded` (bool) is set, so attention can do without a mask and torch can
    use its fused kernels. Read back from the device eagerly; never claimed under torch.compile, where
    a branch on a tensor's value would split the graph (and rule out CUDA graphs): there the mask is
    always built, which gives the same result."""
    return not torch.compiler.is_compiling() and not bool(padded.any())


def attention_mask(ids: torch.Tensor, causal: bool) -> torch.Tensor | None:
    """bool (B, 1, L, L), True where query i may attend to key j of ids (B, L), or None where the
    attention's `causal` flag alone decides, which lets torch use its fused kernels.

    Bidirectional: keys that are PAD are hidden; every position still sees itself, so a PAD query (whose
    output nobody reads) never has an empty row, which would give NaN. None when nothing is PAD
    (nothing_padded). Causal: always None. Rows are right padded (every row selfsup makes: documents,
    histories, targets), so the keys at or before a real token are all real: hiding PAD keys would only
    change what PAD queries see, which nobody reads. Nor does it have to read the ids back to decide."""
    if causal:
        return None
    padded = ids == PAD
    if nothing_padded(padded):
        return None
    allowed = ~padded[:, None, :] | torch.eye(ids.shape[1], dtype=torch.bool, device=ids.device)
    return allowed.unsqueeze(1)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None, causal: bool,
                cache: dict | None = None) -> torch.Tensor:
        """allowed: bool (B, 1, L, L), True where query i may attend to key j; None = no padding, then
        `causal` alone decides (which lets torch use its fused causal kernels).

        cache: generation one token at a time (x is (B, 1, dim), the newest position): the keys and
        values of the earlier positions are kept in it and the new one attends to all of them."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            if n != 1:
                raise ValueError(f"a key/value cache takes one new position at a time, got {n}")
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
            causal = False                   # the one new query may see every cached key
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=causal and allowed is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm Transformer block: x + drop(attn(LN(x))), then x + drop(MLP(LN(x)))."""

    shard_unit = True      # train.strategy=fsdp gathers each block's parameters only while it runs

    def __init__(self, dim: int, heads: int, dropout: float, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None, causal: bool) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), allowed, causal))
        return x + self.drop(self.mlp(self.norm2(x)))


def _check_sizes(vocab_size: int, dim: int, depth: int, dropout: float) -> None:
    if vocab_size < 5 or dim < 1 or depth < 1:
        raise ValueError(f"a text backbone needs vocab_size >= 5 (4 specials + tokens), dim >= 1 and depth >= 1; "
                         f"got vocab_size={vocab_size}, dim={dim}, depth={depth}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


class TextTransformer(nn.Module):
    """Token + learned position embeddings, `depth` pre-norm blocks, a final LayerNorm."""

    def __init__(self, vocab_size: int, max_length: int, dim: int, depth: int, heads: int, dropout: float,
                 causal: bool):
        super().__init__()
        _check_sizes(vocab_size, dim, depth, dropout)
        if heads < 1 or dim % heads:
            raise ValueError(f"dim {dim} must be divisible by the number of heads {heads}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.vocab_size, self.max_length, self.causal, self.feature_dim = vocab_size, max_length, causal, dim
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Parameter(torch.zeros(max_length, dim))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.apply(_init_weights)
        nn.init.normal_(self.position_embedding, std=0.02)

    def tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L), L <= max_length -> (B, L, dim)."""
        ids = ids.long()
        length = ids.shape[1]
        if length > self.max_length:
            raise ValueError(f"sequences of {length} tokens are longer than this backbone's max_length "
                             f"{self.max_length}")
        x = self.drop(self.token_embedding(ids) + self.position_embedding[:length])
        allowed = attention_mask(ids, self.causal)
        for block in self.blocks:
            x = block(x, allowed, self.causal)
        return self.norm(x)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> the mean of the non-PAD tokens' final states (B, dim)."""
        return mean_over_tokens(self.tokens(ids), ids)


def _init_weights(module: nn.Module) -> None:
    # GPT-2's initialisation: small normal weights, zero biases.
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class TextRNN(nn.Module):
    """A token embedding feeding a unidirectional `depth`-layer LSTM or GRU of hidden size dim."""

    causal = True

    def __init__(self, cell: str, vocab_size: int, dim: int, depth: int, dropout: float):
        super().__init__()
        _check_sizes(vocab_size, dim, depth, dropout)
        self.vocab_size, self.feature_dim = vocab_size, dim
        self.max_length = None                      # any length
        self.token_embedding = nn.Embedding(vocab_size, dim)
        # Unit-norm rows: inputs of a sensible size, and small logits when a head ties to them.
        nn.init.normal_(self.token_embedding.weight, std=dim ** -0.5)
        self.drop = nn.Dropout(dropout)
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(dim, dim, num_layers=depth, batch_first=True, dropout=dropout if depth > 1 else 0.0)

    def tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> the last layer's hidden states (B, L, dim). Right padding cannot change the
        states before it, since the network reads left to right."""
        states, _ = self.rnn(self.drop(self.token_embedding(ids.long())))
        return states

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return mean_over_tokens(self.tokens(ids), ids)


def language_model_head(backbone: nn.Module) -> nn.Linear:
    """Linear(dim, vocab_size) from states to token logits, its weight tied to the backbone's token
    embedding (Press & Wolf 2017, as in GPT-2 and BERT): fewer parameters, better language models."""
    if not hasattr(backbone, "tokens") or not hasattr(backbone, "vocab_size"):
        names = ", ".join(BIDIRECTIONAL_BACKBONES + CAUSAL_BACKBONES)
        raise ValueError(f"a language-model head needs a text backbone ({names}), got {type(backbone).__name__}")
    head = nn.Linear(backbone.feature_dim, backbone.vocab_size)
    nn.init.zeros_(head.bias)
    embedding = getattr(backbone, "token_embedding", None)
    if isinstance(embedding, nn.Embedding) and embedding.weight.shape == head.weight.shape:
        head.weight = embedding.weight
    return head


@register_backbone("transformer")
def transformer(vocab_size: int, max_length: int, dim: int = 128, depth: int = 2, heads: int = 4,
                dropout: float = 0.1) -> TextTransformer:
    return TextTransformer(vocab_size, max_length, dim, depth, heads, dropout, causal=False)


@register_backbone("gpt")
def gpt(vocab_size: int, max_length: int, dim: int = 128, depth: int = 2, heads: int = 4,
        dropout: float = 0.1) -> TextTransformer:
    return TextTransformer(vocab_size, max_length, dim, depth, heads, dropout, causal=True)


@register_backbone("lstm")
def lstm(vocab_size: int, max_length: int = 0, dim: int = 128, depth: int = 2,
         dropout: float = 0.1) -> TextRNN:
    return TextRNN("lstm", vocab_size, dim, depth, dropout)


@register_backbone("gru")
def gru(vocab_size: int, max_length: int = 0, dim: int = 128, depth: int = 2,
        dropout: float = 0.1) -> TextRNN:
    return TextRNN("gru", vocab_size, dim, depth, dropout)


# The recommendation papers' names for the same networks over item tokens (selfsup.interactions):
# SASRec (Kang and McAuley 2018) is the causal Transformer, BERT4Rec (Sun et al. 2019) the
# bidirectional one, GRU4Rec (Hidasi et al. 2016) the GRU. A bidirectional network's weights load
# into the causal one (`causal` is not a weight), which is how a BERT4Rec pretraining is fine-tuned
# on next-item prediction.
register_backbone("sasrec")(gpt)
register_backbone("bert4rec")(transformer)
register_backbone("gru4rec")(gru)
