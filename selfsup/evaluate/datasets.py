"""Labelled data for evaluation, read exactly as the training data was and cut into the parts of
selfsup.data.holdout: the training part (kNN bank, few-label draws) and one held-out part, the
validation part for every choice or the test part for final figures. Only the code that reports
final figures asks for part="test"; pretraining, online monitoring, checkpoint selection and every
hyper-parameter search ask for part="val" (tests/test_honest_evaluation.py checks both)."""
from __future__ import annotations

from pathlib import Path

import torch

from selfsup.data import BUILTIN, DataError, ImageSet, load_images
from selfsup.data.holdout import BUILTIN_VALIDATION, carve_validation, check_part, part_of, path_position

FOLDER_TEST_FRACTION = 0.2             # of a labelled image folder's files


def labelled_eval_sets(cfg, source: str = "", data_dir: str = "", max_train: int | None = None,
                       max_test: int | None = None, run_dir: str | Path | None = None, part: str = "test"):
    """(train, held-out) labelled sets of the config's modality, the held-out one the `part` 'val' or
    'test'; the first max_train / max_test of each (default: the config's eval.max_train /
    eval.max_test; 0 = all). Text and tables are read with the tokenizer / normalisation saved in run_dir."""
    from selfsup.modalities import modality_of
    check_part(part)
    train, held_out = modality_of(cfg).labelled_sets(cfg, Path(run_dir) if run_dir else None, source, data_dir,
                                                     part)
    max_train = cfg.eval.max_train if max_train is None else max_train
    max_test = cfg.eval.max_test if max_test is None else max_test
    return train.subset(max_train), held_out.subset(max_test)


def image_parts(images: ImageSet, source: str, val_fraction: float) -> dict[str, torch.Tensor]:
    """Indices of `images` (read from `source`; a built-in data set's training split) in each part.
    A built-in set: at most its stated validation count, the rest train (its test split is a file of
    its own). A folder whose images all sit in two or more class subfolders: by the hash of each
    file's path. Any other folder cannot be evaluated, and every image trains."""
    everything = torch.arange(len(images))
    if source in BUILTIN:
        count = min(BUILTIN_VALIDATION.get(source, len(images)), int(len(images) * val_fraction))
        train, val = carve_validation(everything, count)
        return {"train": train, "val": val, "test": everything[:0]}
    parts = [Path(p).parts for p in images.paths]
    if not parts or any(len(p) < 2 for p in parts) or len({p[0] for p in parts}) < 2:
        return {"train": everything, "val": everything[:0], "test": everything[:0]}
    names = [part_of(path_position("/".join(p)), FOLDER_TEST_FRACTION, val_fraction) for p in parts]
    return {part: everything[[i for i, name in enumerate(names) if name == part]] for part in ("train", "val", "test")}


def labelled_image_sets(cfg, source: str = "", data_dir: str = "", part: str = "test") -> tuple[ImageSet, ImageSet]:
    """(train, held-out): a built-in data set's training split less its validation images, and its
    validation images or its test split; or an image folder with class subfolders cut by path hash."""
    check_part(part)
    source = source or cfg.eval.source or cfg.data.source
    data_dir = data_dir or cfg.data.data_dir or None
    read_as = dict(channels=cfg.data.channels, size=cfg.data.size)     # as the training images were read
    full = load_images(source, "train", data_dir=data_dir, labels=True, **read_as)
    if source not in BUILTIN and len(full.classes) < 2:
        raise DataError(f"{source} has {len(full.classes)} class subfolder(s); kNN needs at least 2 "
                        "(put each class's images in its own subfolder)")
    parts = image_parts(full, source, cfg.data.val_fraction)
    if source in BUILTIN and part == "test":
        return full.select(parts["train"]), load_images(source, "test", data_dir=data_dir, **read_as)
    if not len(parts[part]):
        raise DataError(f"{source}: no images fall in the {'validation' if part == 'val' else 'test'} part "
                        f"({len(full)} images); use more images" + (" or raise data.val_fraction" if part == "val" else ""))
    return full.select(parts["train"]), full.select(parts[part])


def split_labelled(data: ImageSet, test_fraction: float = 0.2, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(len(data) * test_fraction))
    return data.select(order[n_test:]), data.select(order[:n_test])
