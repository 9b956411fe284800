"""Write with an encoder-decoder: beam search, greedy decoding and sampling; ROUGE; the lead baseline.

    settings = DecodeSettings(strategy="beam", beams=4, length_penalty=1.0, no_repeat_ngram=3)
    ids = generate_seq2seq(backbone, sources, settings)        # one list of token ids per source row
    rouge(predictions, references)                              # ROUGE-1/2/L F1 (rouge-score) and mean length

The decoder runs one token at a time with its key/value caches (selfsup.backbones.seq2seq), every
row of the batch (and every beam) together.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from selfsup.text.generate import restrict
from selfsup.text.tokenizer import BOS, EOS, MASK, PAD

STRATEGIES = ("beam", "greedy", "sample")
UNWRITTEN = (PAD, BOS, MASK)          # special tokens a summary never contains


@dataclass
class DecodeSettings:
    strategy: str = "beam"
    beams: int = 4
    length_penalty: float = 1.0          # beam scores are log p / length ** length_penalty (Wu et al. 2016's simple form)
    max_new_tokens: int = 48
    no_repeat_ngram: int = 3             # no n-gram of this size twice in one output (0: allowed)
    temperature: float = 1.0             # sampling
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"decoding strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.beams < 1 or self.max_new_tokens < 1 or self.no_repeat_ngram < 0:
            raise ValueError(f"beams and max_new_tokens must be >= 1 and no_repeat_ngram >= 0; got {self.beams}, "
                             f"{self.max_new_tokens} and {self.no_repeat_ngram}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature must be > 0 and top_p in (0, 1]; got {self.temperature} and {self.top_p}")


def banned_by_ngrams(history: list[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already in `history` (no-repeat n-gram blocking)."""
    if n <= 0 or len(history) < n - 1:
        return []
    if n == 1:
        return list(set(history))
    prefix = tuple(history[len(history) - n + 1:])
    return [history[i + n - 1] for i in range(len(history) - n + 1) if tuple(history[i:i + n - 1]) == prefix]


def _block_repeats(logprobs: torch.Tensor, histories: list[list[int]], n: int) -> torch.Tensor:
    """The log-probabilities without the tokens nothing should write (PAD, BOS, MASK: EOS ends a text) and,
    per row, those no-repeat n-gram blocking bans."""
    logprobs[:, list(UNWRITTEN)] = float("-inf")
    for row, history in enumerate(histories):
        banned = banned_by_ngrams(history, n)
        if banned:
            logprobs[row, banned] = float("-inf")
    return logprobs


class _EncoderDecoderRows:
    """An encoder-decoder's decoding state, one hypothesis a row: its caches and the next position."""

    def __init__(self, backbone, sources: torch.Tensor):
        self.backbone, self.sources = backbone, sources
        self.memory = backbone.tokens(sources)
        self.caches = [{} for _ in backbone.decoder_blocks]
        self.position = 0
        self.room = backbone.max_length                  # positions the decoder has

    def next_logprobs(self, tokens: torch.Tensor | None) -> torch.Tensor:
        """tokens (R,): each row's newest token (None at the start: BOS) -> log-probabilities of the next
        one (R, vocab), fp32, on the CPU."""
        if tokens is None:
            tokens = torch.full((len(self.sources),), BOS, dtype=torch.long, device=self.sources.device)
        states = self.backbone.decode(tokens.to(self.sources.device)[:, None], self.memory, self.sources,
                                      self.caches, start=self.position)
        self.position += 1
        return self.backbone.lm_head(states[:, -1]).float().log_softmax(-1).cpu()

    def reorder(self, rows: list[int]) -> None:
        """Keep rows `rows`, in that order (beam search's survivors)."""
        index = torch.tensor(rows, device=self.sources.device)
        self.memory, self.sources = self.memory[index], self.sources[index]
        for cache in self.caches:
            for key in cache:
                cache[key] = cache[key][index]


class _CausalRows:
    """A causal language model's decoding state (a clm method: `logits(ids)` over a causal backbone), one
    hypothesis a row: its prompt and what it has written, run whole at each step."""

    def __init__(self, model, prompts: torch.Tensor):
        self.model, self.device = model, prompts.device
        self.rows = [row[row != PAD].tolist() for row in prompts]
        window = getattr(model.backbone, "max_length", None) or 10 ** 9
        self.room = window - max(len(row) for row in self.rows)

    def next_logprobs(self, tokens: torch.Tensor | None) -> torch.Tensor:
        if tokens is not None:
            for row, token in zip(self.rows, tokens.tolist()):
                row.append(token)
        lengths = torch.tensor([len(row) for row in self.rows])
        batch = torch.full((len(self.rows), int(lengths.max())), PAD, dtype=torch.long)
        for i, row in enumerate(self.rows):
            batch[i, :len(row)] = torch.tensor(row)
        logits = self.model.logits(batch.to(self.device))            # right-padded: PAD after cannot change them
        return logits[torch.arange(len(self.rows)), (lengths - 1).to(self.device)].float().log_softmax(-1).cpu()

    def reorder(self, rows: list[int]) -> None:
        self.rows = [list(self.rows[i]) for i in rows]


def _rows_kind(model):
    """The decoding state a model writes with; a model that cannot write is refused."""
    if getattr(model, "is_encoder_decoder", False):
        return _EncoderDecoderRows
    if getattr(getattr(model, "backbone", None), "causal", False) and hasattr(model, "logits"):
        return _CausalRows
    raise ValueError(f"writing from a document needs an encoder-decoder (backbone.name=seq2seq) or a causal "
                     f"language model (a clm method), got {type(model).__name__}")


def _rows(model, sources: torch.Tensor):
    return _rows_kind(model)(model, sources)


def _sample(model, sources: torch.Tensor, settings: DecodeSettings) -> list[list[int]]:
    """Greedy (strategy 'greedy') or sampled tokens, each row until EOS or max_new_tokens."""
    rows = _rows(model, sources)
    gen = torch.Generator().manual_seed(settings.seed)       # on the CPU: the same text on every device
    outputs: list[list[int]] = [[] for _ in range(len(sources))]
    done = [False] * len(sources)
    tokens = None
    for _ in range(min(settings.max_new_tokens, rows.room)):
        logprobs = _block_repeats(rows.next_logprobs(tokens), outputs, settings.no_repeat_ngram)
        if settings.strategy == "greedy":
            chosen = logprobs.argmax(-1)
        else:
            chosen = torch.stack([torch.multinomial(restrict(row, settings.temperature, settings.top_k,
                                                             settings.top_p).softmax(-1), 1, generator=gen)[0]
                                  for row in logprobs])
        for row, token in enumerate(chosen.tolist()):
            if not done[row]:
                done[row] = token == EOS
                if not done[row]:
                    outputs[row].append(token)
        if all(done):
            break
        tokens = chosen
    return outputs


def _beam_search(model, sources: torch.Tensor, settings: DecodeSettings) -> list[list[int]]:
    """The best finished hypothesis per row by log p / length ** length_penalty, `beams` kept per row. A row
    stops when it has `beams` finished ones and no live beam can still beat the worst of them: a live beam's
    log p only falls as it grows, so its best possible score is its log p over the longest length it can
    reach (length_penalty > 0) or over its length now (<= 0)."""
    b, k = len(sources), settings.beams
    rows = _rows(model, sources.repeat_interleave(k, 0))
    scores = torch.full((b, k), float("-inf"))
    scores[:, 0] = 0.0                                       # all beams start equal: keep one of them
    histories: list[list[int]] = [[] for _ in range(b * k)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    closed = [False] * b
    tokens = None
    norm = lambda length: max(length, 1) ** settings.length_penalty   # noqa: E731
    limit = min(settings.max_new_tokens, rows.room)
    for step in range(limit):
        logprobs = _block_repeats(rows.next_logprobs(tokens), histories, settings.no_repeat_ngram)
        vocab = logprobs.shape[1]
        candidates = (scores.reshape(-1, 1) + logprobs).reshape(b, k * vocab)
        top_scores, top_index = candidates.topk(2 * k, dim=1)
        survivors, new_tokens, new_scores, new_histories = [], [], [], []
        for i in range(b):
            kept = 0
            for score, index in zip(top_scores[i].tolist(), top_index[i].tolist()):
                beam, token = divmod(index, vocab)
                history = histories[i * k + beam]
                if closed[i] or score == float("-inf"):
                    break
                if token == EOS or step == limit - 1:
                    words = history if token == EOS else history + [token]
                    finished[i].append((score / norm(len(words)), words))
                    continue
                survivors.append(i * k + beam)
                new_tokens.append(token)
                new_scores.append(score)
                new_histories.append(history + [token])
                kept += 1
                if kept == k:
                    break
            while kept < k:                                  # a closed row (or too few candidates): dead beams
                survivors.append(i * k)
                new_tokens.append(EOS)
                new_scores.append(float("-inf"))
                new_histories.append([])
                kept += 1
            finished[i].sort(key=lambda hypothesis: -hypothesis[0])
            del finished[i][k:]
            best_alive = max(new_scores[-k:]) / norm(limit if settings.length_penalty > 0 else step + 1)
            closed[i] = closed[i] or (len(finished[i]) == k and best_alive <= finished[i][-1][0])
        if all(closed):
            break
        rows.reorder(survivors)
        scores = torch.tensor(new_scores).reshape(b, k)
        histories = new_histories
        tokens = torch.tensor(new_tokens)
    return [max(finished[i], key=lambda hypothesis: hypothesis[0])[1] if finished[i] else histories[i * k]
            for i in range(b)]


@torch.no_grad()
def generate_seq2seq(model, sources: torch.Tensor, settings: DecodeSettings | None = None,
                     batch_size: int = 64) -> list[list[int]]:
    """The token ids written for each source row (EOS excluded), in eval mode: model is an encoder-decoder
    backbone reading the sources, or a causal language model (a clm method) continuing them as prompts
    (right-padded)."""
    settings = settings or DecodeSettings()
    _rows_kind(model)                                    # refuses a model that cannot write
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    decode = _beam_search if settings.strategy == "beam" and settings.beams > 1 else _sample
    if decode is _sample and settings.strategy == "beam":
        settings = DecodeSettings(**{**vars(settings), "strategy": "greedy"})     # one beam is greedy decoding
    outputs: list[list[int]] = []
    try:
        for start in range(0, len(sources), batch_size):
            outputs += decode(model, sources[start:start + batch_size].to(device), settings)
    finally:
        model.train(was_training)
    return outputs


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F1 in percent (Lin 2004, by Google's `rouge-score`, with its
    Porter stemmer) and the predictions' mean length in words."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:
        raise ImportError("ROUGE needs the `rouge-score` package: pip install 'selfsup[summaries]'") from e
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"ROUGE needs as many predictions as references (and some): got {len(predictions)} "
                         f"and {len(references)}")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references):
        for name, score in scorer.score(reference, prediction).items():
            totals[name] += score.fmeasure
    means = {name: 100 * total / len(predictions) for name, total in totals.items()}
    means["length"] = sum(len(p.split()) for p in predictions) / len(predictions)
    return means


def first_sentence(document: str) -> str:
    """The document up to its first full stop, '!' or '?' followed by a space or a line's end, or its first line."""
    first_line = document.strip().split("\n", 1)[0]
    match = re.search(r"[.!?](\s|$)", first_line)
    return first_line[:match.end()].strip() if match else first_line


def lead_summaries(documents: list[str], words: int) -> list[str]:
    """The lead baseline: each document's first sentence, cut to `words` words (the mean length of the
    training summaries)."""
    return [" ".join(first_sentence(document).split()[:max(1, words)]) for document in documents]
