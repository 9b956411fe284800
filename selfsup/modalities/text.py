"""Text: token ids (N, L), one row per document or windows of a packed corpus, with the run's tokenizer."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch

from selfsup.data import fetch
from selfsup.data.holdout import index_position, part_of
from selfsup.errors import ConfigError, DataError
from selfsup.methods import method_class
from selfsup.modalities.base import Modality, require_source
from selfsup.run_folder import RunFolder
from selfsup.text import (BOS, EOS, build_tokenizer, encode_documents, iter_documents, load_tokenizer, pack_corpus,
                          save_tokenizer)
from selfsup.text.baselines import bag_of_words
from selfsup.text.tokenizer import TOKENIZER_FILE, sentence_end_ids


def text_part(cfg, index: int) -> str:
    """'train', 'val' or 'test': the part of a text source document number `index` belongs to, from a
    fixed hash of the index, so a stream of any length is split the same way without being counted first."""
    return part_of(index_position(index), cfg.text.test_fraction, cfg.data.val_fraction)


class TextModality(Modality):
    name = "text"
    channels_last = False
    raw_name = "bag of words"
    sample_word = "texts"
    report_panels = ("text_retrieval", "text_sample", "summaries")
    SOURCES = "a folder of .txt files, a .jsonl file (text.field) or a .txt file (one document per paragraph)"

    def fits_on_device(self, data) -> bool:
        """No: a packed corpus is mapped from disk and may be larger than memory."""
        return False

    def tokenizer(self, cfg, run_dir: Path | None, texts: Callable | None = None):
        """The run's tokenizer (RUN_DIR/tokenizer.json) when it has one; else a new one (BPE is trained on texts())."""
        saved = RunFolder(run_dir).asset(TOKENIZER_FILE) if run_dir else None
        if saved is not None and saved.is_file():
            return load_tokenizer(saved)
        if texts is None:
            raise DataError(f"{run_dir} has no {TOKENIZER_FILE}; is it a text run folder?")
        return build_tokenizer(cfg.text.tokenizer, texts, cfg.text.vocab_size or 4096)

    def _documents(self, cfg, source: str | Path, labels: bool = False, part: str | None = None):
        """(text, label) of the source's documents, streamed: all of them (part None), or only those
        of the part 'train', 'val' or 'test'."""
        # A folder's labels are its first-level subfolders; text.label_field (any value) asks for them.
        field = "" if Path(source).is_dir() else cfg.text.label_field
        for i, doc in enumerate(iter_documents(source, cfg.text.field, field, labels=labels)):
            if part is None or text_part(cfg, i) == part:
                yield doc

    def _packs(self, cfg) -> bool:
        method = method_class(cfg.method.name)
        if cfg.text.pack == "on" and method.needs_documents:
            raise ConfigError(f"method.name={cfg.method.name} corrupts and rebuilds whole documents, one a row; "
                              "text.pack=on would run documents together: use text.pack=auto or off")
        return cfg.text.pack == "on" or (cfg.text.pack == "auto" and method.packs_text)

    def start_token(self, cfg) -> int:
        """The token a document follows as the model saw it in training, and so the first token of a
        document it is asked to read or continue: EOS for a packed stream (documents separated by EOS,
        as GPT-2's), BOS for one row per document."""
        return EOS if self._packs(cfg) else BOS

    def training_data(self, cfg, run_dir: Path | None = None):
        """The source's training part (its test share, scored by a language model's held-out
        perplexity and a labelled source's final figures, and its validation share held out), then
        every document of text.extra_sources, as one token window per row (packed) or one row per
        document."""
        source = require_source(cfg, self.SOURCES)
        extras = _extra_sources(cfg)

        def texts():
            yield from (text for text, _ in self._documents(cfg, source, part="train"))
            for extra in extras:
                yield from (text for text, _ in iter_documents(extra, cfg.text.field))
        tokenizer = self.tokenizer(cfg, run_dir, texts)
        return self._encode(cfg, [source, *extras], texts, tokenizer, "train").subset(cfg.data.subset)

    def held_out_text(self, cfg, run_dir: Path, source: str = ""):
        """The held-out documents of the source (or all of another source), encoded as training encodes
        text: for a language model's validation loss."""
        source = Path(source or cfg.data.source).expanduser()
        # The training corpus named another way (relative, absolute, through a link) is still the training corpus.
        part = "test" if _same_source(str(source), cfg.data.source) else None
        texts = lambda: (text for text, _ in self._documents(cfg, source, part=part))   # noqa: E731
        return self._encode(cfg, [source], texts, self.tokenizer(cfg, run_dir), "held-out" if part else "all")

    def _encode(self, cfg, sources: list[Path], texts: Callable, tokenizer, part: str):
        if self._packs(cfg):
            key = self._cache_key(cfg, sources, tokenizer, part)
            return pack_corpus(texts(), tokenizer, cfg.text.max_length, _cache_dir() / f"{key}.bin", key=key)
        return encode_documents(((text, None) for text in texts()), tokenizer, cfg.text.max_length,
                                split_at=self._sentence_ends_to_split_at(cfg, tokenizer))

    def _sentence_ends_to_split_at(self, cfg, tokenizer) -> set[int] | None:
        mode = cfg.text.long_documents
        if mode == "auto":
            mode = "split" if method_class(cfg.method.name).needs_documents else "truncate"
        return set(sentence_end_ids(tokenizer)) if mode == "split" else None

    def _cache_key(self, cfg, sources: list[Path], tokenizer, part: str) -> str:
        """Packed tokens are reused only for the same files, tokenizer and settings."""
        files = [f for source in sources for f in (sorted(source.rglob("*")) if source.is_dir() else [source])]
        stamp = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
        settings = [cfg.text.field, cfg.text.test_fraction, cfg.data.val_fraction, part]
        text = json.dumps([stamp, settings, tokenizer.to_dict()], sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def complete_config(self, cfg, data) -> None:
        if TOKENIZER_FILE not in data.assets:
            raise DataError("text passed to pretrain needs the tokenizer it was encoded with: "
                            "TextSet(..., assets={'tokenizer.json': tokenizer})")
        tokenizer = data.assets[TOKENIZER_FILE]
        cfg.text.vocab_size = tokenizer.vocab_size
        if method_class(cfg.method.name).needs_sentence_ends and not cfg.method.sentence_end_ids:
            cfg.method.sentence_end_ids = sentence_end_ids(tokenizer)

    def save_assets(self, data, run_dir: Path) -> None:
        save_tokenizer(data.assets[TOKENIZER_FILE], RunFolder(run_dir).asset(TOKENIZER_FILE))

    def backbone_inputs(self, cfg) -> dict:
        added = method_class(cfg.method.name).added_tokens(cfg.method)
        return {"vocab_size": cfg.text.vocab_size + added, "max_length": cfg.text.max_length}

    def labelled_sets(self, cfg, run_dir: Path | None = None, source: str = "", data_dir: str = "",
                      part: str = "test"):
        """(train, held-out part): the labelled documents of the source, split as pretraining split them."""
        source = Path(source or cfg.eval.source or cfg.data.source).expanduser()
        if not source.exists():
            raise DataError(f"text evaluation source '{source}' does not exist; pass --data with {self.SOURCES}")
        if not cfg.text.label_field:
            raise DataError(f"{source}: no labels asked for; set text.label_field to the .jsonl field holding "
                            "them (for a folder, text.label_field=folder takes the first-level subfolders)")
        docs = list(self._documents(cfg, source, labels=True))
        classes = sorted({label for _, label in docs if label is not None})
        if len(classes) < 2:
            raise DataError(f"{source} has {len(classes)} label value(s); evaluation needs at least 2")
        tokenizer = self.tokenizer(cfg, run_dir)
        parts = [[doc for i, doc in enumerate(docs) if text_part(cfg, i) == wanted] for wanted in ("train", part)]
        if not parts[1]:
            raise DataError(f"{source}: none of its {len(docs)} documents falls in the "
                            f"{'validation' if part == 'val' else 'test'} part; use more documents")
        return tuple(encode_documents(part, tokenizer, cfg.text.max_length, classes, start=self.start_token(cfg))
                     for part in parts)

    def read(self, cfg, run_dir: Path | None, source: str, split: str = "test", data_dir: str = "",
             strict: bool = False):
        docs = self._documents(cfg, Path(source).expanduser(), labels=bool(cfg.text.label_field))
        return encode_documents(docs, self.tokenizer(cfg, run_dir), cfg.text.max_length, start=self.start_token(cfg))

    def raw_features(self, train, test) -> tuple[torch.Tensor, torch.Tensor]:
        if not train.texts or not test.texts:
            raise DataError("the bag-of-words baseline needs the documents' texts")
        return bag_of_words(train.texts, test.texts)


def _extra_sources(cfg) -> list[Path]:
    paths = [Path(extra).expanduser() for extra in cfg.text.extra_sources]
    for path in paths:
        if not path.exists():
            raise DataError(f"text.extra_sources names {str(path)!r}, which does not exist; give "
                            f"{TextModality.SOURCES}, or drop it from the list")
    return paths


def _same_source(a: str, b: str) -> bool:
    return not b or Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _cache_dir() -> Path:
    return fetch.default_root() / "token-cache"
