"""Labelled data for evaluation: a built-in data set's train/test splits, or an image folder with
class subfolders split 80/20 by a fixed draw; read exactly as the training images were."""
from __future__ import annotations

import torch

from selfsup.data import BUILTIN, DataError, ImageSet, load_images


def labelled_eval_sets(cfg, source: str = "", data_dir: str = "", max_train: int | None = None,
                       max_test: int | None = None) -> tuple[ImageSet, ImageSet]:
    """(train, test) labelled sets for kNN: a built-in data set's splits, or an image folder with class
    subfolders split into train/test by a fixed 80/20 draw; the first max_train / max_test of each
    (default: the config's eval.max_train / eval.max_test; 0 = all)."""
    source = source or cfg.eval.source or cfg.data.source
    data_dir = data_dir or cfg.data.data_dir or None
    read_as = dict(channels=cfg.data.channels, size=cfg.data.size)     # as the training images were read
    if source in BUILTIN:
        train = load_images(source, "train", data_dir=data_dir, **read_as)
        test = load_images(source, "test", data_dir=data_dir, **read_as)
    else:
        full = load_images(source, labels=True, **read_as)
        if len(full.classes) < 2:
            raise DataError(f"{source} has {len(full.classes)} class subfolder(s); kNN needs at least 2 "
                            "(put each class's images in its own subfolder)")
        train, test = split_labelled(full)
    max_train = cfg.eval.max_train if max_train is None else max_train
    max_test = cfg.eval.max_test if max_test is None else max_test
    return train.subset(max_train), test.subset(max_test)


def split_labelled(data: ImageSet, test_fraction: float = 0.2, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(len(data) * test_fraction))
    def pick(idx: torch.Tensor) -> ImageSet:
        paths = [data.paths[i] for i in idx.tolist()] if data.paths else []
        return ImageSet(data.images[idx], data.labels[idx], data.classes, data.name, paths)
    return pick(order[n_test:]), pick(order[:n_test])
