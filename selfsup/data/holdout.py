"""Which samples are held out of pretraining, and what each held-out part may be used for.

Every labelled source is cut into three parts, the same way whenever it is read:

- ``train``: pretraining, the kNN bank and the few-label draws of every protocol;
- ``val`` (validation, carved from the training data): every choice -- online kNN during
  pretraining, the ``best`` checkpoint, recipe screens, hyper-parameter searches;
- ``test``: the final figures only.

A built-in data set brings its own test split, and its validation part is a fixed count of its
training images (Fashion-MNIST: 5,000 of 60,000; fashion-scenes: 1,000 of 10,000) drawn with a fixed seed. An image folder, a text
source and a table hold out ``test_fraction`` and ``data.val_fraction`` of their samples, decided
per sample from a hash of what identifies it (a file's path inside the folder, a document's
position, a row's position), so a folder read with or without labels, or a stream read twice, is
split the same way without being counted first.
"""
from __future__ import annotations

import hashlib

import torch

PARTS = ("train", "val", "test")
HELD_OUT = ("val", "test")
BUILTIN_VALIDATION = {"fashion-mnist": 5000, "fashion-scenes": 1000}
VALIDATION_SEED = 52361


def check_part(part: str) -> None:
    if part not in HELD_OUT:
        raise ValueError(f"a held-out part is 'val' (for choices) or 'test' (final figures), not {part!r}")


def part_of(position: float, test_fraction: float, val_fraction: float) -> str:
    """The part of a sample whose hash is `position` in [0, 1): the lowest test_fraction is test, the
    next val_fraction validation, the rest train. A smaller test share only moves samples out of test."""
    if position < test_fraction:
        return "test"
    return "val" if position < test_fraction + val_fraction else "train"


def index_position(index: int) -> float:
    """A fixed position in [0, 1) for sample number `index` (Knuth's multiplicative hash): consecutive
    indices spread evenly, so any prefix of a stream is split in the stated shares."""
    return (index * 2654435761 % 2**32) / 2**32


def path_position(relative_path: str) -> float:
    """A fixed position in [0, 1) for a file, from its path inside the data folder (with '/' separators)."""
    digest = hashlib.sha1(relative_path.replace("\\", "/").encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def carve_validation(indices: torch.Tensor, count: int, seed: int = VALIDATION_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val): `count` of `indices` drawn with `seed` for validation, the rest for training, both sorted."""
    if not 0 <= count < len(indices):
        raise ValueError(f"cannot hold {count} of {len(indices)} samples out for validation")
    order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))
    return indices[order[count:]].sort().values, indices[order[:count]].sort().values
