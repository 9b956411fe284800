"""Modalities: what the trainer, the evaluation and the report need to know about a kind of data.

One loop trains every method; what differs between images, text and tables is only how a data
set is read into one sample tensor (uint8 images, token ids, standardised table rows), what the
data decides about the config (image size, vocabulary, column layout), which files the run
must keep to read new data the same way (a tokenizer, a table's normalisation), and the no-learning
baseline (raw pixels, bag of words, the raw columns). A data set of any modality has
``samples`` (indexed on dim 0), ``labels``, ``classes``, ``subset(n)`` and ``select(idx)``.

    modality_of(cfg).training_data(cfg, run_dir)       the samples pretraining draws batches from
    modality_of(cfg).labelled_sets(cfg, run_dir, part=...)  (train, validation or test) with labels
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import torch

from selfsup.data import DataError, ImageSet, convert, load_images
from selfsup.data.holdout import carve_validation, index_position, part_of
from selfsup.text.tokenizer import TOKENIZER_FILE


def text_part(cfg, index: int) -> str:
    """'train', 'val' or 'test': the part of a text source document number `index` belongs to, from a
    fixed hash of the index, so a stream of any length is split the same way without being counted first."""
    return part_of(index_position(index), cfg.text.test_fraction, cfg.data.val_fraction)


class ImageModality:
    name = "image"
    channels_last = True               # conv nets run faster with channels_last inputs
    fits_on_device = True              # the uint8 data set may live on the GPU
    raw_name = "raw pixels"
    # Fine-tuning on images: the whole network at the head's rate. Each protocol's rate is the one its
    # search on the validation part chose on the default Fashion-MNIST run (docs/evaluation.md).
    finetune_defaults = {"lr": 8e-3, "backbone_lr_scale": 1.0}
    supervised_defaults = {"lr": 1.6e-2}

    def training_data(self, cfg, run_dir: Path | None = None) -> ImageSet:
        """The training part of the source: a labelled folder's test and validation files and a built-in
        set's validation images never enter pretraining (selfsup.data.holdout)."""
        from selfsup.evaluate.datasets import image_parts
        data = load_images(cfg.data.source, "train", data_dir=cfg.data.data_dir or None, channels=cfg.data.channels,
                           size=cfg.data.size, strict=cfg.data.strict)
        return data.select(image_parts(data, cfg.data.source, cfg.data.val_fraction)["train"]).subset(cfg.data.subset)

    def complete_config(self, cfg, data: ImageSet) -> None:
        """Image size and channels, normalisation and view size, so evaluation reads images as training did."""
        from selfsup.augment import channel_stats
        cfg.data.channels = data.channels
        cfg.data.size = data.images.shape[-1]
        if not cfg.augment.mean:
            cfg.augment.mean, cfg.augment.std = channel_stats(data.images)
        elif len(cfg.augment.mean) != data.channels:
            raise DataError(f"augment.mean has {len(cfg.augment.mean)} values but the images have "
                            f"{data.channels} channels")
        if not cfg.augment.size:
            cfg.augment.size = data.images.shape[-1]
        if data.images.dtype != torch.uint8:
            raise DataError("training images must be uint8")

    def save_assets(self, data, run_dir: Path) -> None:
        """Images need nothing besides config.yaml to be read again."""

    def backbone_inputs(self, cfg) -> dict:
        return {"in_channels": cfg.data.channels, "image_size": cfg.augment.size or cfg.data.size}

    def labelled_sets(self, cfg, run_dir: Path | None = None, source: str = "", data_dir: str = "",
                      part: str = "test"):
        from selfsup.evaluate.datasets import labelled_image_sets
        return labelled_image_sets(cfg, source, data_dir, part)

    def read(self, cfg, run_dir: Path | None, source: str, split: str = "test", data_dir: str = "",
             strict: bool = False) -> ImageSet:
        return load_images(source, split, data_dir=data_dir or None, channels=cfg.data.channels,
                           size=cfg.data.size, strict=strict)

    def match_input(self, cfg, samples: torch.Tensor) -> torch.Tensor:
        """Images with another channel count are converted to the backbone's (size is the method's job)."""
        if samples.shape[1] != cfg.data.channels:
            samples = convert(ImageSet(samples), channels=cfg.data.channels).images
        return samples

    def raw_features(self, train: ImageSet, test: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
        from selfsup.evaluate.features import pixel_features
        return pixel_features(train.images), pixel_features(test.images)

    def finetune_input(self, cfg, settings) -> Callable:
        return image_input(cfg.augment.eval_size or cfg.data.size, cfg.augment.mean, cfg.augment.std, settings)

    def monitor_views(self, method) -> Callable | None:
        """(samples, gen) -> an augmented view the backbone embeds, for the online alignment measure."""
        from selfsup.augment import augment
        return lambda batch, gen: method._layout(augment(batch, method.augment_cfg, gen))


def image_input(size: int, mean, std, settings) -> Callable:
    """(uint8 batch, generator or None) -> normalised float images at `size`: random resized crop and
    flip (settings.crop_scale, settings.flip_p) when a generator is given (training), else resized only."""
    import torch.nn.functional as F
    from selfsup.augment import normalize, random_resized_crop_flip, to_float

    def prepare(batch_u8: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        x = to_float(batch_u8)
        if gen is not None:
            x = random_resized_crop_flip(x, size, settings.crop_scale, (3 / 4, 4 / 3), settings.flip_p, gen)
        elif x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return normalize(x, mean, std)
    return prepare


def _identity_input(batch: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    return batch


def _same_source(a: str, b: str) -> bool:
    return not b or Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _require_source(cfg, what: str) -> Path:
    path = Path(cfg.data.source).expanduser()
    if not path.exists():
        raise DataError(f"{cfg.modality} data source {cfg.data.source!r} does not exist; pass --data with {what}")
    return path


def _cache_dir() -> Path:
    root = os.environ.get("SELFSUP_DATA") or Path.home() / ".cache" / "selfsup"
    return Path(root) / "token-cache"


class TextModality:
    name = "text"
    channels_last = False
    fits_on_device = False             # a packed corpus is mapped from disk and may be larger than memory
    raw_name = "bag of words"
    finetune_defaults: dict = {}        # FinetuneSettings' own (a small backbone rate)
    supervised_defaults: dict = {}
    SOURCES = "a folder of .txt files, a .jsonl file (text.field) or a .txt file (one document per paragraph)"

    def tokenizer(self, cfg, run_dir: Path | None, texts: Callable | None = None):
        """The run's tokenizer (RUN_DIR/tokenizer.json) when it has one; else a new one (BPE is trained on texts())."""
        from selfsup.text import build_tokenizer, load_tokenizer
        saved = Path(run_dir) / TOKENIZER_FILE if run_dir else None
        if saved is not None and saved.is_file():
            return load_tokenizer(saved)
        if texts is None:
            raise DataError(f"{run_dir} has no {TOKENIZER_FILE}; is it a text run folder?")
        return build_tokenizer(cfg.text.tokenizer, texts, cfg.text.vocab_size or 4096)

    def _documents(self, cfg, source: str | Path, labels: bool = False, part: str | None = None):
        """(text, label) of the source's documents, streamed: all of them (part None), or only those
        of the part 'train', 'val' or 'test'."""
        from selfsup.text import iter_documents
        # A folder's labels are its first-level subfolders; text.label_field (any value) asks for them.
        field = "" if Path(source).is_dir() else cfg.text.label_field
        for i, doc in enumerate(iter_documents(source, cfg.text.field, field, labels=labels)):
            if part is None or text_part(cfg, i) == part:
                yield doc

    def _packs(self, cfg) -> bool:
        from selfsup.methods import method_class
        return cfg.text.pack == "on" or (cfg.text.pack == "auto" and method_class(cfg.method.name).packs_text)

    def start_token(self, cfg) -> int:
        """The token a document follows as the model saw it in training, and so the first token of a
        document it is asked to read or continue: EOS for a packed stream (documents separated by EOS,
        as GPT-2's), BOS for one row per document."""
        from selfsup.text import BOS, EOS
        return EOS if self._packs(cfg) else BOS

    def training_data(self, cfg, run_dir: Path | None = None):
        """The source's training part (its test share, scored by a language model's held-out
        perplexity and a labelled source's final figures, and its validation share held out), as one
        token window per row (packed) or one row per document."""
        source = _require_source(cfg, self.SOURCES)
        texts = lambda: (text for text, _ in self._documents(cfg, source, part="train"))   # noqa: E731
        tokenizer = self.tokenizer(cfg, run_dir, texts)
        return self._encode(cfg, source, texts, tokenizer, "train").subset(cfg.data.subset)

    def held_out_text(self, cfg, run_dir: Path, source: str = ""):
        """The held-out documents of the source (or all of another source), encoded as training encodes
        text: for a language model's validation loss."""
        source = Path(source or cfg.data.source).expanduser()
        # The training corpus named another way (relative, absolute, through a link) is still the training corpus.
        part = "test" if _same_source(str(source), cfg.data.source) else None
        texts = lambda: (text for text, _ in self._documents(cfg, source, part=part))   # noqa: E731
        return self._encode(cfg, source, texts, self.tokenizer(cfg, run_dir), "held-out" if part else "all")

    def _encode(self, cfg, source: Path, texts: Callable, tokenizer, part: str):
        from selfsup.text import encode_documents, pack_corpus
        if self._packs(cfg):
            key = self._cache_key(cfg, source, tokenizer, part)
            return pack_corpus(texts(), tokenizer, cfg.text.max_length, _cache_dir() / f"{key}.bin", key=key)
        return encode_documents(((text, None) for text in texts()), tokenizer, cfg.text.max_length)

    def _cache_key(self, cfg, source: Path, tokenizer, part: str) -> str:
        """Packed tokens are reused only for the same files, tokenizer and settings."""
        import json
        files = sorted(source.rglob("*")) if source.is_dir() else [source]
        stamp = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
        settings = [cfg.text.field, cfg.text.test_fraction, cfg.data.val_fraction, part]
        text = json.dumps([stamp, settings, tokenizer.to_dict()], sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def complete_config(self, cfg, data) -> None:
        if TOKENIZER_FILE not in data.assets:
            raise DataError("text passed to pretrain needs the tokenizer it was encoded with: "
                            "TextSet(..., assets={'tokenizer.json': tokenizer})")
        cfg.text.vocab_size = data.assets[TOKENIZER_FILE].vocab_size

    def save_assets(self, data, run_dir: Path) -> None:
        from selfsup.text import save_tokenizer
        save_tokenizer(data.assets[TOKENIZER_FILE], Path(run_dir) / TOKENIZER_FILE)

    def backbone_inputs(self, cfg) -> dict:
        return {"vocab_size": cfg.text.vocab_size, "max_length": cfg.text.max_length}

    def labelled_sets(self, cfg, run_dir: Path | None = None, source: str = "", data_dir: str = "",
                      part: str = "test"):
        """(train, held-out part): the labelled documents of the source, split as pretraining split them."""
        from selfsup.text import encode_documents
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
        from selfsup.text import encode_documents
        docs = self._documents(cfg, Path(source).expanduser(), labels=bool(cfg.text.label_field))
        return encode_documents(docs, self.tokenizer(cfg, run_dir), cfg.text.max_length, start=self.start_token(cfg))

    def match_input(self, cfg, samples: torch.Tensor) -> torch.Tensor:
        return samples

    def raw_features(self, train, test) -> tuple[torch.Tensor, torch.Tensor]:
        from selfsup.text.baselines import bag_of_words
        if not train.texts or not test.texts:
            raise DataError("the bag-of-words baseline needs the documents' texts")
        return bag_of_words(train.texts, test.texts)

    def finetune_input(self, cfg, settings) -> Callable:
        return _identity_input

    def monitor_views(self, method) -> Callable | None:
        return None


class TabularModality:
    name = "tabular"
    channels_last = False
    fits_on_device = True
    raw_name = "raw columns"
    finetune_defaults: dict = {}        # FinetuneSettings' own (a small backbone rate)
    supervised_defaults: dict = {}
    PREPROCESSOR_FILE = "table.json"

    def _preprocessor(self, cfg, columns: dict, run_dir: Path | None, fit_rows=None):
        """The run's fitted preprocessor when it has one, else one fitted on fit_rows (all rows when None)."""
        from selfsup.tabular import TablePreprocessor
        saved = Path(run_dir) / self.PREPROCESSOR_FILE if run_dir else None
        if saved is not None and saved.is_file():
            return TablePreprocessor.load(saved)
        fit_on = columns if fit_rows is None else _rows(columns, fit_rows)
        return TablePreprocessor().fit(fit_on, label_column=cfg.table.label_column,
                                       categorical=cfg.table.categorical, ignore=cfg.table.ignore)

    def _split(self, cfg, columns) -> dict[str, torch.Tensor] | None:
        """The rows of each part ('train', 'val', 'test'); None for a table without labels (all rows train)."""
        from selfsup.tabular import split_rows
        if not cfg.table.label_column:
            return None
        n = len(next(iter(columns.values())))
        rest, test = split_rows(n, cfg.table.test_fraction)
        train, val = carve_validation(rest, int(n * cfg.data.val_fraction))
        return {"train": train, "val": val, "test": test}

    def training_data(self, cfg, run_dir: Path | None = None):
        """The training rows (with a label column, its held-out share is the test set); the normalisation
        and vocabularies are fitted on them alone."""
        from selfsup.tabular import read_table
        columns = read_table(_require_source(cfg, "a .csv, .tsv or .parquet file"))
        split = self._split(cfg, columns)
        train_rows = None if split is None else split["train"].tolist()
        preprocessor = self._preprocessor(cfg, columns, run_dir, train_rows)
        data = self._encode(columns if train_rows is None else _rows(columns, train_rows), preprocessor, labels=False)
        data.assets = {self.PREPROCESSOR_FILE: preprocessor}
        return data.subset(cfg.data.subset)

    def _encode(self, columns, preprocessor, labels: bool):
        from selfsup.tabular import TableSet
        if not labels:                     # pretraining never reads the labels: a row missing one still counts
            columns = {k: v for k, v in columns.items() if k != preprocessor.label_column}
        values, y = preprocessor.transform(columns)
        return TableSet(values, y if labels else None, list(preprocessor.classes) if labels else [], "",
                        len(preprocessor.numeric_columns), list(preprocessor.cardinalities))

    def complete_config(self, cfg, data) -> None:
        preprocessor = data.assets[self.PREPROCESSOR_FILE]
        cfg.table.numeric_features = len(preprocessor.numeric_columns)
        cfg.table.cardinalities = list(preprocessor.cardinalities)

    def save_assets(self, data, run_dir: Path) -> None:
        data.assets[self.PREPROCESSOR_FILE].save(Path(run_dir) / self.PREPROCESSOR_FILE)

    def backbone_inputs(self, cfg) -> dict:
        return {"numeric_features": cfg.table.numeric_features, "cardinalities": list(cfg.table.cardinalities)}

    def labelled_sets(self, cfg, run_dir: Path | None = None, source: str = "", data_dir: str = "",
                      part: str = "test"):
        source = Path(source or cfg.eval.source or cfg.data.source).expanduser()
        if not cfg.table.label_column:
            raise DataError("the table has no label column: set table.label_column to evaluate")
        from selfsup.tabular import read_table
        columns = read_table(source)
        preprocessor = self._preprocessor(cfg, columns, run_dir)
        split = self._split(cfg, columns)
        if not len(split[part]):
            raise DataError(f"{source}: no rows fall in the validation part; raise data.val_fraction or use more rows")
        return tuple(self._encode(_rows(columns, split[wanted].tolist()), preprocessor, labels=True)
                     for wanted in ("train", part))

    def read(self, cfg, run_dir: Path | None, source: str, split: str = "test", data_dir: str = "",
             strict: bool = False):
        from selfsup.tabular import read_table
        columns = read_table(Path(source).expanduser())
        preprocessor = self._preprocessor(cfg, columns, run_dir)
        return self._encode(columns, preprocessor, labels=bool(cfg.table.label_column)
                            and cfg.table.label_column in columns)

    def match_input(self, cfg, samples: torch.Tensor) -> torch.Tensor:
        return samples

    def raw_features(self, train, test) -> tuple[torch.Tensor, torch.Tensor]:
        from selfsup.tabular.baselines import raw_features
        return raw_features(train), raw_features(test)

    def finetune_input(self, cfg, settings) -> Callable:
        return _identity_input

    def monitor_views(self, method) -> Callable | None:
        return None


def _rows(columns: dict, rows: list[int]) -> dict:
    return {name: [values[i] for i in rows] for name, values in columns.items()}


MODALITIES = {m.name: m for m in (ImageModality(), TextModality(), TabularModality())}


def modality_of(cfg):
    """The modality of a config: data.modality, or the method's when that is empty."""
    return MODALITIES[cfg.modality]
