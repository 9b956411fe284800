"""Fashion-MNIST (Xiao et al., 2017) from its standard IDX gzip files."""
from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from selfsup.data.imageset import ImageSet
from selfsup.errors import DataError

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip or raw): 2 zero bytes, a type byte, a rank byte, big-endian dims, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}; delete it and fetch it again") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    rank = raw[3]
    dims = struct.unpack(f">{rank}I", raw[4:4 + 4 * rank])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * rank:]
    if len(body) != expected:
        raise DataError(f"{path} is truncated or corrupt: {len(body)} data bytes for shape {dims}, expected {expected}")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def search_dirs(data_dir: str | None = None) -> list[Path]:
    """Where the files are looked for, in order."""
    dirs = []
    if data_dir:
        dirs += [Path(data_dir), Path(data_dir) / "fashion-mnist"]
    if os.environ.get("SELFSUP_DATA"):
        dirs += [Path(os.environ["SELFSUP_DATA"]), Path(os.environ["SELFSUP_DATA"]) / "fashion-mnist"]
    dirs += [Path.home() / ".cache" / "selfsup" / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist")]
    return dirs


def find_files(split: str, data_dir: str | None = None) -> tuple[Path, Path]:
    if split not in FILES:
        raise DataError(f"Fashion-MNIST has splits 'train' and 'test', not {split!r}")
    names = FILES[split]
    for d in search_dirs(data_dir):
        for variant in (names, tuple(n[:-3] for n in names)):        # gzip, or unpacked
            paths = tuple(d / n for n in variant)
            if all(p.is_file() for p in paths):
                return paths
    looked = "\n  ".join(str(d) for d in search_dirs(data_dir))
    raise DataError(
        f"Fashion-MNIST ({split}) not found. Looked for {names[0]} and {names[1]} in:\n  {looked}\n"
        "Get it with `selfsup data download fashion-mnist` (needs internet), or on Debian/Ubuntu "
        "`apt-get install dataset-fashion-mnist`, or pass --data-dir / set $SELFSUP_DATA to a folder holding the files.")


def load_fashion_mnist(split: str = "train", data_dir: str | None = None):
    images_path, labels_path = find_files(split, data_dir)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise DataError(f"{images_path} / {labels_path}: shapes {images.shape} and {labels.shape} do not match")
    return ImageSet(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                    list(FASHION_MNIST_CLASSES), "fashion-mnist")


def download(dest: str | Path | None = None, mirror: str = MIRROR) -> Path:
    """Download the four files into dest (default ~/.cache/selfsup/fashion-mnist); each file is
    written to a temporary name and renamed when complete, so an interrupted download leaves nothing half-written."""
    dest = Path(dest) if dest else Path.home() / ".cache" / "selfsup" / "fashion-mnist"
    dest.mkdir(parents=True, exist_ok=True)
    for name in (n for pair in FILES.values() for n in pair):
        target = dest / name
        if target.exists():
            continue
        print(f"downloading {mirror}{name}")
        with urllib.request.urlopen(mirror + name, timeout=60) as response, \
                tempfile.NamedTemporaryFile(dir=dest, suffix=".gz", delete=False) as tmp:
            shutil.copyfileobj(response, tmp)
        try:
            read_idx(tmp.name)                                          # a bad download never lands
        except Exception:
            os.unlink(tmp.name)
            raise
        os.replace(tmp.name, target)
    return dest
