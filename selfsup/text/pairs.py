"""Document -> summary pairs for fine-tuning an encoder-decoder: read, split, encode.

    parts = pair_parts("debian-descriptions")            # {"train", "val", "test"}: lists of (document, summary)
    parts = pair_parts("pairs.jsonl", "body", "subject")  # a file of your own, split 80/10/10 by line hash
    sources, targets = encode_pairs(parts["train"], tokenizer, max_length=128)

Bad input (docs/summaries.md): a line without the fields is an error naming the line and the fields
it has; an empty document or summary is skipped and counted; bytes that are not UTF-8 are replaced
(U+FFFD) and counted; documents longer than max_length tokens are cut, counted and said once.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from selfsup.data.fetch import find
from selfsup.data.holdout import index_position
from selfsup.errors import DataError
from selfsup.text.descriptions import SPLIT_SHARES
from selfsup.text.tokenizer import EOS, PAD

PAIR_SETS = {"debian-descriptions": ("document", "summary")}     # fetched sets: their fields
PARTS = tuple(SPLIT_SHARES)


def read_pairs(path: str | Path, source_field: str, target_field: str) -> list[tuple[str, str]]:
    """The (document, summary) pairs of a .jsonl file, in file order; see the module docstring for bad input."""
    return [pair for _, pair in numbered_pairs(path, source_field, target_field)]


def numbered_pairs(path: str | Path, source_field: str, target_field: str) -> list[tuple[int, tuple[str, str]]]:
    """(line number, (document, summary)) of each pair of a .jsonl file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"pairs file {path} does not exist; pass a .jsonl file with one object a line, or "
                        f"one of: {', '.join(PAIR_SETS)}")
    pairs, empty, replaced = [], 0, 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line, replaced = raw.decode("utf-8", errors="replace"), replaced + 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not a JSON object ({e.msg}); each line must be one") from None
            if not isinstance(record, dict) or source_field not in record or target_field not in record:
                fields = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise DataError(f"{path}:{number}: no {source_field!r} and {target_field!r} fields (it has: "
                                f"{fields}); name them with --source-field and --target-field")
            document, summary = str(record[source_field] or "").strip(), str(record[target_field] or "").strip()
            if not document or not summary:
                empty += 1
                continue
            pairs.append((number, (document, summary)))
    if empty or replaced:
        warnings.warn(f"{path}: skipped {empty} pairs with an empty document or summary; {replaced} lines had "
                      "bytes that are not UTF-8 (replaced by U+FFFD)", stacklevel=2)
    if not pairs:
        raise DataError(f"{path} holds no pair with a non-empty {source_field!r} and {target_field!r}")
    return pairs


def pair_parts(source: str, source_field: str = "", target_field: str = "",
               data_dir: str | None = None) -> dict[str, list[tuple[str, str]]]:
    """{'train', 'val', 'test'}: a fetched pair set (its own split files) or a .jsonl file of your own,
    split 80/10/10 by a fixed hash of each line's number."""
    if source in PAIR_SETS:
        folder = find(source, data_dir)
        if folder is None:
            raise DataError(f"{source} is not fetched yet: run `selfsup data fetch {source}`")
        fields = (source_field or PAIR_SETS[source][0], target_field or PAIR_SETS[source][1])
        return {part: read_pairs(folder / f"{part}.jsonl", *fields) for part in PARTS}
    bounds = np.cumsum([SPLIT_SHARES[part] for part in PARTS])
    parts: dict[str, list] = {part: [] for part in PARTS}
    for number, pair in numbered_pairs(source, source_field or "document", target_field or "summary"):
        parts[PARTS[int(np.searchsorted(bounds, index_position(number), side="right"))]].append(pair)
    empty = [part for part in PARTS if not parts[part]]
    if empty:
        raise DataError(f"{source}: no pair falls in the {' and '.join(empty)} part of the 80/10/10 split by line; "
                        f"use more pairs (it has {sum(len(p) for p in parts.values())})")
    return parts


def encode_texts(texts: list[str], tokenizer, max_length: int) -> tuple[torch.Tensor, int]:
    """(ids (N, max_length): each text's tokens, EOS, PAD; the number of texts cut to fit)."""
    rows = np.full((len(texts), max_length), PAD, dtype=np.int64)
    cut = 0
    for i, ids in enumerate(tokenizer.encode_batch(texts)):
        cut += len(ids) > max_length - 1
        ids = ids[:max_length - 1] + [EOS]
        rows[i, :len(ids)] = ids
    return torch.from_numpy(rows), cut


def encode_pairs(pairs: list[tuple[str, str]], tokenizer, max_length: int, target_length: int = 0,
                 name: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """(sources (N, max_length), targets (N, target_length or max_length)), each text + EOS; the documents
    and summaries cut to fit are counted and said once."""
    sources, cut_sources = encode_texts([doc for doc, _ in pairs], tokenizer, max_length)
    targets, cut_targets = encode_texts([summary for _, summary in pairs], tokenizer, target_length or max_length)
    if cut_sources or cut_targets:
        warnings.warn(f"{name or 'pairs'}: {cut_sources} of {len(pairs)} documents longer than {max_length - 1} "
                      f"tokens and {cut_targets} summaries longer than {(target_length or max_length) - 1} were cut "
                      "(text.max_length sets the documents' length)", stacklevel=2)
    return sources, targets
