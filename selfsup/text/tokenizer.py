"""Tokenizers: text <-> integer ids, with four special ids fixed for every tokenizer.

    PAD=0  padding, at a row's end: never a target, and no real token attends to it
    BOS=1  start of a document
    EOS=2  end of a document (packed corpora)
    MASK=3 masked-LM's hidden token

``ByteTokenizer`` needs nothing: the UTF-8 bytes of any language at ids 4..259. ``BPETokenizer``
(optional extra 'bpe', the `tokenizers` package) learns byte-level BPE merges on the user's corpus,
so any text still encodes and sequences are ~3-4x shorter than bytes. Tokenizers save to JSON.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

PAD, BOS, EOS, MASK = 0, 1, 2, 3
TOKENIZER_FILE = "tokenizer.json"      # the name a run folder keeps its tokenizer under
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<mask>")    # in id order
NUM_SPECIAL = len(SPECIAL_TOKENS)
TOKENIZER_KINDS = ("byte", "bpe")


def _as_ints(ids) -> list[int]:
    return ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]


class ByteTokenizer:
    """UTF-8 bytes shifted past the specials: byte b has id b + 4; vocab_size 260."""

    kind = "byte"
    vocab_size = NUM_SPECIAL + 256

    def encode(self, text: str) -> list[int]:
        """Ids of the text's bytes; no BOS/EOS added."""
        return [b + NUM_SPECIAL for b in text.encode("utf-8")]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        """Text of ids (a list or an integer tensor); specials are skipped, invalid UTF-8 becomes U+FFFD."""
        data = bytes(i - NUM_SPECIAL for i in _as_ints(ids) if NUM_SPECIAL <= i < self.vocab_size)
        return data.decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": self.kind}

    @classmethod
    def from_dict(cls, d: dict) -> "ByteTokenizer":
        return cls()


def sentence_end_ids(tokenizer) -> list[int]:
    """The ids of the ordinary tokens whose text ends a sentence (ends in '.', '!' or '?' once trailing
    space is stripped): where BART cuts a document into sentences."""
    return [i for i in range(NUM_SPECIAL, tokenizer.vocab_size)
            if tokenizer.decode([i]).rstrip().endswith((".", "!", "?"))]


def _require_tokenizers():
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError("the BPE tokenizer needs the `tokenizers` package: pip install 'selfsup[bpe]' "
                          "(or use text.tokenizer=byte, which needs nothing)") from e
    return tokenizers


class BPETokenizer:
    """Byte-level BPE (GPT-2's scheme: merges learned over UTF-8 bytes) trained on the user's corpus.

    The specials occupy ids 0..3; text that happens to contain "<mask>" etc. is encoded as plain
    text, never as a special id.
    """

    kind = "bpe"

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        # Not saved by `tokenizers` itself, so set on every construction.
        self._tokenizer.encode_special_tokens = True
        found = [tokenizer.token_to_id(s) for s in SPECIAL_TOKENS]
        if found != list(range(NUM_SPECIAL)):
            raise ValueError(f"a BPE tokenizer must have the special tokens {SPECIAL_TOKENS} at ids 0..3, "
                             f"found ids {found}")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        """Learn merges on `texts` (streamed) up to vocab_size ids (specials and 256 bytes included).
        A small corpus may stop short of vocab_size: read the result's vocab_size."""
        if vocab_size < NUM_SPECIAL + 256:
            raise ValueError(f"a byte-level BPE vocabulary needs at least {NUM_SPECIAL + 256} ids "
                             f"(4 specials + 256 bytes), got vocab_size={vocab_size}")
        tk = _require_tokenizers()
        tokenizer = tk.Tokenizer(tk.models.BPE())
        tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                         initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                         show_progress=False)
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Ids of the text; no BOS/EOS added."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        """Text of ids (a list or an integer tensor); specials are skipped, invalid UTF-8 becomes U+FFFD."""
        return self._tokenizer.decode(_as_ints(ids), skip_special_tokens=True)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer": json.loads(self._tokenizer.to_str())}

    @classmethod
    def from_dict(cls, d: dict) -> "BPETokenizer":
        tk = _require_tokenizers()
        return cls(tk.Tokenizer.from_str(json.dumps(d["tokenizer"])))


Tokenizer = ByteTokenizer | BPETokenizer
_CLASSES = {"byte": ByteTokenizer, "bpe": BPETokenizer}


def tokenizer_from_dict(d: dict) -> Tokenizer:
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind not in _CLASSES:
        raise ValueError(f"not a selfsup tokenizer (kind={kind!r}); expected one of {', '.join(TOKENIZER_KINDS)}")
    return _CLASSES[kind].from_dict(d)


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(tokenizer.to_dict(), ensure_ascii=False), encoding="utf-8")
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer save_tokenizer wrote (plain JSON: nothing is unpickled)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"tokenizer file {path} is not valid JSON ({e})") from e
    return tokenizer_from_dict(d)


def build_tokenizer(kind: str, texts: Callable[[], Iterable[str]], vocab_size: int) -> Tokenizer:
    """A tokenizer of `kind`: "byte" (ignores texts and vocab_size) or "bpe" (trained on texts(), which is
    called only then, so a corpus is read only when needed)."""
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.train(texts(), vocab_size)
    raise ValueError(f"unknown tokenizer {kind!r}; choose one of: {', '.join(TOKENIZER_KINDS)}")
