"""Labelled data for evaluation, read exactly as the training data was: a built-in image data set's
train/test splits, or a labelled source (image folder with class subfolders, labelled text, a table
with a label column) split by a fixed draw."""
from __future__ import annotations

from pathlib import Path

import torch

from selfsup.data import BUILTIN, DataError, ImageSet, load_images


def labelled_eval_sets(cfg, source: str = "", data_dir: str = "", max_train: int | None = None,
                       max_test: int | None = None, run_dir: str | Path | None = None):
    """(train, test) labelled sets of the config's modality; the first max_train / max_test of each
    (default: the config's eval.max_train / eval.max_test; 0 = all). Text and tables are read with the
    tokenizer / normalisation saved in run_dir."""
    from selfsup.modalities import modality_of
    train, test = modality_of(cfg).labelled_sets(cfg, Path(run_dir) if run_dir else None, source, data_dir)
    max_train = cfg.eval.max_train if max_train is None else max_train
    max_test = cfg.eval.max_test if max_test is None else max_test
    return train.subset(max_train), test.subset(max_test)


def labelled_image_sets(cfg, source: str = "", data_dir: str = "") -> tuple[ImageSet, ImageSet]:
    """A built-in data set's splits, or an image folder with class subfolders split 80/20 by a fixed draw."""
    source = source or cfg.eval.source or cfg.data.source
    data_dir = data_dir or cfg.data.data_dir or None
    read_as = dict(channels=cfg.data.channels, size=cfg.data.size)     # as the training images were read
    if source in BUILTIN:
        return (load_images(source, "train", data_dir=data_dir, **read_as),
                load_images(source, "test", data_dir=data_dir, **read_as))
    full = load_images(source, labels=True, **read_as)
    if len(full.classes) < 2:
        raise DataError(f"{source} has {len(full.classes)} class subfolder(s); kNN needs at least 2 "
                        "(put each class's images in its own subfolder)")
    return split_labelled(full)


def split_labelled(data: ImageSet, test_fraction: float = 0.2, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(len(data) * test_fraction))
    return data.select(order[n_test:]), data.select(order[:n_test])
