"""Labelled data for evaluation, read exactly as the training data was and cut into the parts of
selfsup.data.holdout: the training part (kNN bank, few-label draws) and one held-out part, the
validation part for every choice or the test part for final figures. Only the code that reports
final figures asks for part="test"; pretraining, online monitoring, checkpoint selection and every
hyper-parameter search ask for part="val" (tests/test_honest_evaluation.py checks both)."""
from __future__ import annotations

from pathlib import Path

import torch

from selfsup.data import ImageSet
from selfsup.data.holdout import check_part
from selfsup.modalities import modality_of


def labelled_eval_sets(cfg, source: str = "", data_dir: str = "", max_train: int | None = None,
                       max_test: int | None = None, run_dir: str | Path | None = None, part: str = "test"):
    """(train, held-out) labelled sets of the config's modality, the held-out one the `part` 'val' or
    'test'; the first max_train / max_test of each (default: the config's eval.max_train /
    eval.max_test; 0 = all). Text and tables are read with the tokenizer / normalisation saved in run_dir."""
    check_part(part)
    train, held_out = modality_of(cfg).labelled_sets(cfg, Path(run_dir) if run_dir else None, source, data_dir,
                                                     part)
    max_train = cfg.eval.max_train if max_train is None else max_train
    max_test = cfg.eval.max_test if max_test is None else max_test
    return train.subset(max_train), held_out.subset(max_test)


def split_labelled(data: ImageSet, test_fraction: float = 0.2, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(len(data) * test_fraction))
    return data.select(order[n_test:]), data.select(order[:n_test])
