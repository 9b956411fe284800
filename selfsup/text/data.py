"""Text sources and their token tensors.

    iter_documents("corpus/")                   # every *.txt under a folder, one file = one document
    iter_documents("reviews/", labels=True)     # ... labelled by first-level subfolder (reviews/pos/1.txt)
    iter_documents("data.jsonl", "text", "label", labels=True)
    iter_documents("book.txt")                  # one document per paragraph (blank-line separated)
    iter_documents(["a document", "another"])

Documents stream one at a time; nothing reads a whole corpus into memory. Two ways to make samples:
``encode_documents`` (one row per document: BOS + tokens, truncated and padded; labels kept) for
classification-sized sets, and ``pack_corpus`` (the corpus as one token stream on disk, cut into
windows) for language modelling on corpora of any size.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Iterable, Iterator

import numpy as np
import torch

from selfsup.data import DataError, require_class_subfolders
from selfsup.data.cache import sidecar_of, trusted_sidecar
from selfsup.data.jsonl import json_objects
from selfsup.text.tokenizer import BOS, EOS, PAD, TOKENIZER_FILE

SOURCE_KINDS = "a folder of .txt files, a .jsonl file, a .txt file or a list of strings"
ENCODE_CHUNK_DOCS = 256          # documents tokenised together (BPE encodes a batch in parallel)
WRITE_CHUNK_TOKENS = 1 << 20     # tokens buffered before they are appended to the cache file
PACKED_FORMAT = "selfsup-packed-tokens"


def iter_documents(source, text_field: str = "text", label_field: str = "", labels: bool = False
                   ) -> Iterator[tuple[str, str | None]]:
    """Yield (text, label) per document of `source`; label is None unless labels=True.

    Documents that are empty or only whitespace are skipped. A source with no document left is a
    DataError, raised when the iteration ends.
    """
    found = 0
    for text, label in _documents(source, text_field, label_field, labels):
        if text.strip():
            found += 1
            yield text, label
    if not found:
        raise DataError(f"{_describe(source)} holds no text (every document is empty); expected {SOURCE_KINDS}")


def _describe(source) -> str:
    return f"the text source {str(source)!r}" if isinstance(source, (str, Path)) else "the list of texts"


def _documents(source, text_field, label_field, labels):
    if isinstance(source, (list, tuple)):
        if labels:
            raise DataError("a list of strings has no labels; pass labels=False, or use a .jsonl file or "
                            "a folder with one subfolder per class")
        for i, text in enumerate(source):
            if not isinstance(text, str):
                raise DataError(f"text number {i} of the list is a {type(text).__name__}, not a string")
            yield text, None
        return
    if not isinstance(source, (str, Path)):
        raise DataError(f"cannot read text from a {type(source).__name__}; expected {SOURCE_KINDS}")
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"the text source {str(path)!r} does not exist; expected {SOURCE_KINDS}")
    if path.is_dir():
        yield from _folder_documents(path, labels)
    elif path.suffix.lower() == ".jsonl":
        yield from _jsonl_documents(path, text_field, label_field, labels)
    elif path.suffix.lower() == ".txt":
        if labels:
            raise DataError(f"a single .txt file ({path}) has no labels; put the documents of each class in "
                            f"a subfolder (root/<class>/*.txt) or use a .jsonl file with a label field")
        yield from _paragraphs(path)
    else:
        raise DataError(f"cannot read text from {str(path)!r} (suffix {path.suffix!r}); expected {SOURCE_KINDS}")


def _folder_documents(root: Path, labels: bool):
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))   # no .ipynb_checkpoints class
        files += [Path(folder, n).relative_to(root) for n in sorted(names)
                  if n.lower().endswith(".txt") and not n.startswith(".")]
    if not files:
        raise DataError(f"no .txt files found in the folder {str(root)!r} (searched at any depth)")
    if labels:
        require_class_subfolders(files, root, "text files")
    for f in files:
        yield (root / f).read_text(encoding="utf-8", errors="replace"), (f.parts[0] if labels else None)


def _jsonl_documents(path: Path, text_field: str, label_field: str, labels: bool):
    if labels and not label_field:
        raise DataError(f"labels from {path} need the name of the field that holds them (text.label_field)")
    for number, record in json_objects(path, f"a {text_field!r} field"):
        wanted = [text_field] + ([label_field] if labels else [])
        missing = [k for k in wanted if k not in record]
        if missing:
            raise DataError(f"{path} line {number} has no field {missing[0]!r}; its fields are "
                            f"{sorted(record)}: name the right one (text.field / text.label_field)")
        text = record[text_field]
        if not isinstance(text, str):
            raise DataError(f"{path} line {number}: field {text_field!r} holds a {type(text).__name__}, "
                            f"not a string")
        yield text, (str(record[label_field]) if labels else None)


def _paragraphs(path: Path):
    """One document per paragraph: runs of non-blank lines, split at blank lines."""
    lines: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                lines.append(line.rstrip("\r\n"))
            elif lines:
                yield "\n".join(lines), None
                lines = []
    if lines:
        yield "\n".join(lines), None


@dataclass
class TextSet:
    """Token rows of a text data set; the text counterpart of ImageSet."""
    tokens: torch.Tensor                      # integer (N, L), PAD-padded; may be a view of a memmap
    labels: torch.Tensor | None = None        # int64 (N,)
    classes: list[str] = field(default_factory=list)
    name: str = ""
    texts: list[str] = field(default_factory=list)    # the raw documents (empty for packed corpora)
    assets: dict = field(default_factory=dict)        # {TOKENIZER_FILE: the tokenizer that encoded the rows}

    def __post_init__(self):
        if self.tokens.dim() != 2 or torch.is_floating_point(self.tokens) or self.tokens.dtype == torch.bool:
            raise DataError(f"TextSet.tokens must be an integer (N, L) tensor, got {self.tokens.dtype} "
                            f"{tuple(self.tokens.shape)}")
        if self.labels is not None and len(self.labels) != len(self.tokens):
            raise DataError(f"{len(self.labels)} labels for {len(self.tokens)} texts")
        if self.texts and len(self.texts) != len(self.tokens):
            raise DataError(f"{len(self.texts)} raw texts for {len(self.tokens)} token rows")

    @property
    def samples(self) -> torch.Tensor:
        return self.tokens

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def subset(self, n: int) -> "TextSet":
        """The first n rows (all when n <= 0 or n >= len)."""
        if n <= 0 or n >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:n]
        return TextSet(self.tokens[:n], labels, self.classes, self.name, self.texts[:n], self.assets)

    def select(self, idx: torch.Tensor) -> "TextSet":
        """The rows idx (a 1-D index tensor), in that order."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        labels = None if self.labels is None else self.labels[idx]
        texts = [self.texts[i] for i in idx.tolist()] if self.texts else []
        return TextSet(self.tokens[idx], labels, self.classes, self.name, texts, self.assets)


def _check_max_length(max_length: int) -> None:
    if max_length < 2:
        raise DataError(f"max_length must be >= 2 tokens, got {max_length}")


def encode_documents(docs: Iterable[tuple[str, str | None]], tokenizer, max_length: int,
                     classes: list[str] | None = None, name: str = "", start: int = BOS,
                     split_at: Collection[int] | None = None) -> TextSet:
    """One int32 row per document: [start, tokens...] cut to max_length, then PAD up to max_length.
    `start` is BOS, or EOS for a model trained on a packed stream, where EOS is what precedes a document.

    With `split_at` (the ids of sentence-ending tokens), a longer document is not cut short but becomes
    several rows, each ending at a sentence end (see document_pieces); their texts are the pieces
    decoded, and how many documents were split is said once.

    Labels (all documents labelled, or none) become indices into `classes`: the given list (a label
    outside it is a DataError) or the sorted distinct labels.
    """
    _check_max_length(max_length)
    texts: list[str] = []
    raw_labels: list[str | None] = []
    rows: list[np.ndarray] = []
    split_documents = 0
    for text, label in docs:
        ids = tokenizer.encode(text)
        pieces = [ids[:max_length - 1]] if split_at is None else document_pieces(ids, max_length - 1, split_at)
        split_documents += len(pieces) > 1
        for piece in pieces:
            row = np.full(max_length, PAD, dtype=np.int32)
            row[0] = start
            row[1:1 + len(piece)] = piece
            rows.append(row)
            texts.append(text if len(pieces) == 1 else tokenizer.decode(piece))
            raw_labels.append(label)
    if not rows:
        raise DataError("no documents to encode")
    if split_documents:
        warnings.warn(f"{split_documents} document(s) longer than {max_length - 1} tokens were cut at sentence ends "
                      f"into {len(rows)} rows in all (text.long_documents=truncate keeps only their start)")
    tokens = torch.from_numpy(np.stack(rows))
    labelled = sum(label is not None for label in raw_labels)
    if labelled == 0:
        return TextSet(tokens, None, list(classes or []), name, texts, {TOKENIZER_FILE: tokenizer})
    if labelled < len(raw_labels):
        raise DataError(f"{len(raw_labels) - labelled} of {len(raw_labels)} documents have no label; label all "
                        f"of them or none")
    classes = sorted(set(raw_labels)) if classes is None else list(classes)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(raw_labels) - set(index))
    if unknown:
        raise DataError(f"labels {unknown[:5]} are not among the classes {classes[:20]}")
    labels = torch.tensor([index[label] for label in raw_labels], dtype=torch.int64)
    return TextSet(tokens, labels, classes, name, texts, {TOKENIZER_FILE: tokenizer})


def document_pieces(ids: list[int], room: int, split_at: Collection[int]) -> list[list[int]]:
    """`ids` cut into consecutive pieces of at most `room` tokens. Each piece ends after the last
    sentence end it holds, unless that would leave it under half full (a long run without one is cut
    at `room`), so a denoiser's sentences stay whole where the text allows."""
    pieces, first = [], 0
    while len(ids) - first > room:
        window = ids[first:first + room]
        ends = [k + 1 for k in range(room // 2, room) if window[k] in split_at]
        cut = ends[-1] if ends else room
        pieces.append(window[:cut])
        first += cut
    pieces.append(ids[first:])
    return pieces


def _stream_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.int32)


def _tokenizer_digest(tokenizer) -> str:
    return hashlib.sha256(json.dumps(tokenizer.to_dict(), sort_keys=True).encode()).hexdigest()


def pack_corpus(texts: Iterable[str], tokenizer, max_length: int, cache_file: str | Path, key: str = "",
                name: str = "") -> TextSet:
    """The corpus as one token stream (each document's tokens, then EOS), cut into consecutive
    non-overlapping windows of max_length tokens: rows (N, max_length), the last partial window dropped.

    The stream is written to `cache_file` chunk by chunk (uint16 when the vocabulary allows, else
    int32) and the rows are a view of it mapped from disk, so a corpus larger than memory works.
    A sidecar `<cache_file>.json` records the tokenizer's digest and `key` (the caller's digest of
    its sources and settings); when both match, the cache is reused and `texts` is not read. The
    windows are cut on loading, so another max_length reuses the same stream.
    """
    _check_max_length(max_length)
    cache_file = Path(cache_file)
    sidecar = sidecar_of(cache_file)
    dtype = _stream_dtype(tokenizer.vocab_size)
    identity = {"format": PACKED_FORMAT, "key": key, "tokenizer": _tokenizer_digest(tokenizer), "dtype": dtype.name}
    meta = trusted_sidecar(cache_file, identity, lambda meta: meta["num_tokens"] * dtype.itemsize
                           if isinstance(meta.get("num_tokens"), int) else -1)
    num_tokens = meta["num_tokens"] if meta else None
    if num_tokens is None:
        num_tokens = _write_stream(texts, tokenizer, cache_file, sidecar, dtype)
        sidecar.write_text(json.dumps({**identity, "num_tokens": num_tokens}))
    rows = num_tokens // max_length
    if rows == 0:
        raise DataError(f"the corpus has {num_tokens} tokens, fewer than one window of max_length={max_length}; "
                        f"lower text.max_length or add text")
    # Copy-on-write: the tensor is writable (torch warns on read-only arrays) but the cache never changes.
    stream = np.memmap(cache_file, dtype=dtype, mode="c", shape=(rows * max_length,))
    return TextSet(torch.from_numpy(stream.reshape(rows, max_length)), None, [], name or cache_file.stem, [],
                   {TOKENIZER_FILE: tokenizer})


def _write_stream(texts: Iterable[str], tokenizer, cache_file: Path, sidecar: Path, dtype: np.dtype) -> int:
    """Tokenise texts into cache_file (written under a temporary name, renamed when complete)."""
    sidecar.unlink(missing_ok=True)          # a crash below must not leave a sidecar vouching for old tokens
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_file.with_name(cache_file.name + ".partial")
    num_tokens = 0
    pending: list[int] = []
    docs: list[str] = []

    def encode_docs():
        for ids in tokenizer.encode_batch(docs):
            pending.extend(ids)
            pending.append(EOS)
        docs.clear()

    def flush(out):
        nonlocal num_tokens
        out.write(np.asarray(pending, dtype=dtype).tobytes())
        num_tokens += len(pending)
        pending.clear()

    with open(partial, "wb") as out:
        for text in texts:
            docs.append(text)
            if len(docs) >= ENCODE_CHUNK_DOCS:
                encode_docs()
            if len(pending) >= WRITE_CHUNK_TOKENS:
                flush(out)
        encode_docs()
        flush(out)
    os.replace(partial, cache_file)
    return num_tokens
