import gzip
import random
import struct

import numpy as np
import pytest
import torch


def write_idx(path, array: np.ndarray) -> None:
    """Write an IDX file (gzip when path ends in .gz): the format Fashion-MNIST ships in."""
    type_code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[array.dtype]
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def write_tiny_fashion(folder):
    """A fake Fashion-MNIST folder: 10 classes, separable by which image block is bright."""
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    for split, n, prefix in (("train", 400, "train"), ("test", 100, "t10k")):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
        for i, y in enumerate(labels):
            r, c = divmod(int(y), 5)
            images[i, r * 14:(r + 1) * 14, c * 5:(c + 1) * 5] = 220
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return folder


@pytest.fixture
def tiny_fashion(tmp_path):
    return write_tiny_fashion(tmp_path / "fmnist")


@pytest.fixture(autouse=True)
def seeded_draws():
    """Every test starts from the same global random state, whichever worker runs it and whatever ran
    before: a draw that crosses a tolerance then fails on every run, not one CI run in fifty."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture(autouse=True)
def one_thread():
    """Every test runs torch on one thread: the models here are tiny and gain nothing from a second
    one, and on a busy CPU two OpenMP threads per process wait on each other (5-20x slower measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
