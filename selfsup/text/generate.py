"""Use a pretrained language model: sample text from it, measure its perplexity.

    generate(clm_method, tokenizer, "Once upon a time", max_new_tokens=100)
    perplexity(clm_method, test.tokens)    # {"loss": mean next-token cross-entropy, "perplexity": exp(loss)}
"""
from __future__ import annotations

import math

import torch

from selfsup.text.tokenizer import EOS


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def restrict(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Next-token logits (V,) -> the logits sampling draws from: divided by temperature, then all but the
    top_k likeliest tokens (top_k <= 0: no limit) and all outside the smallest set of likeliest tokens
    whose probability reaches top_p (nucleus sampling; 1.0: no limit) set to -inf."""
    logits = logits / temperature
    if 0 < top_k < logits.numel():
        logits = logits.masked_fill(logits < logits.topk(top_k).values[-1], float("-inf"))
    if top_p < 1.0:
        probs, order = logits.softmax(-1).sort(descending=True)
        before = probs.cumsum(0) - probs                     # probability of the likelier tokens
        logits[order[before >= top_p]] = float("-inf")       # the first token is always kept
    return logits


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
             top_k: int = 40, seed: int = 0, top_p: float = 1.0, start_token: int = EOS) -> str:
    """The text sampled after `prompt` (the continuation only) from a causal language model: any
    module with `backbone` (causal) and `logits(ids) -> (B, L, vocab)`, e.g. a clm method.

    Each step samples from the logits `restrict` leaves (temperature, top_k, top_p; temperature 0:
    the likeliest token). The context is [start_token] + prompt, cropped to the backbone's
    max_length - 1 tokens (transformers): EOS for a model trained on a packed stream (clm's default,
    where EOS is what comes before a document), BOS for one trained on one row per document
    (`Text.start_token` says which). Stops at EOS. The same seed gives the same text.
    """
    if not getattr(model.backbone, "causal", False) or not hasattr(model, "logits"):
        raise ValueError("generate needs a causal language model (a clm method: backbone gpt, lstm or gru)")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    device = _device(model)
    window = getattr(model.backbone, "max_length", None)
    gen = torch.Generator().manual_seed(seed)      # sampling on the CPU: the same text on every device
    ids = [start_token] + tokenizer.encode(prompt)
    new: list[int] = []
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            # max_length - 1 tokens at most: training windows of max_length tokens give their last
            # position no next token to learn, so a prediction from that position is untrained.
            context = ids[-(window - 1):] if window else ids
            logits = model.logits(torch.tensor([context], device=device))[0, -1].float().cpu()
            if temperature == 0:
                token = int(logits.argmax())
            else:
                logits = restrict(logits, temperature, top_k, top_p)
                token = int(torch.multinomial(logits.softmax(-1), 1, generator=gen))
            if token == EOS:
                break
            ids.append(token)
            new.append(token)
    finally:
        model.train(was_training)
    return tokenizer.decode(new)


@torch.no_grad()
def perplexity(method, tokens: torch.Tensor, batch_size: int = 64, seed: int = 0) -> dict[str, float]:
    """{"loss": mean cross-entropy per predicted token, "perplexity": exp(loss)} of a language-model
    method (one with `views` and `summed_loss`) on tokens (N, L), in eval mode.

    clm: every non-PAD next token is predicted, so this is the usual perplexity. mlm: the method's own
    masking (15%, 80/10/10) drawn from a generator seeded with `seed`, so the number is reproducible;
    it is a masked-LM perplexity (each token predicted from both sides), not comparable to a clm one.
    """
    if not hasattr(method, "summed_loss"):
        raise ValueError(f"perplexity needs a language-model method (clm or mlm), got {type(method).__name__}")
    if len(tokens) == 0:
        raise ValueError("perplexity of an empty token set")
    device = _device(method)
    gen = torch.Generator(device=device).manual_seed(seed)
    total, count = 0.0, 0
    was_training = method.training
    method.eval()
    try:
        for start in range(0, len(tokens), batch_size):
            batch = tokens[start:start + batch_size].to(device)
            summed, n = method.summed_loss(method.views(batch, gen))
            total, count = total + float(summed), count + int(n)
    finally:
        method.train(was_training)
    if count == 0:
        raise ValueError("no token to predict: every target is PAD")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss)}


def continue_prompt(run, prompt: str, **sampling) -> str:
    """generate() for a pretrained clm run (selfsup.run.Run): its tokenizer, and the start token its
    training stream put before documents. `sampling`: generate's max_new_tokens, temperature, top_k,
    top_p, seed."""
    tokenizer = run.modality.tokenizer(run.config, run.path)
    return generate(run.method, tokenizer, prompt, start_token=run.modality.start_token(run.config), **sampling)
