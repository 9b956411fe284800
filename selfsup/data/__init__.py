"""Data sources. A source reads a data set into memory as one uint8 tensor (N, C, H, W)
plus optional labels; it knows nothing of methods.

    load_images("fashion-mnist", split="train")       # IDX files, searched in the usual places
    load_images("fashion-scenes", split="train")      # composed scenes (`selfsup data fetch fashion-scenes`)
    load_scenes("train")                               # the same scenes with their masks and boxes
    load_images("path/to/images", labels=True)        # an image folder, labels from subfolders
    load_images("path/to/photos.store")               # a packed store (`selfsup data pack`, data/store.py)
    from_array(np_or_torch_array, labels=None)        # arrays (N, H, W) or (N, C, H, W)
"""
from __future__ import annotations

from pathlib import Path

from selfsup.data.arrays import from_array
from selfsup.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from selfsup.data.fetch import find
from selfsup.data.image_folder import load_image_folder
from selfsup.data.imageset import ImageSet, convert, require_class_subfolders
from selfsup.data.scenes import SceneSet, read_scenes
from selfsup.data.store import ImageStore, is_store, load_store, pack
from selfsup.errors import DataError

__all__ = ["BUILTIN", "DataError", "FASHION_MNIST_CLASSES", "ImageSet", "ImageStore", "convert", "from_array",
           "is_store", "load_fashion_mnist", "load_image_folder", "load_images", "load_scenes", "load_store", "pack",
           "require_class_subfolders", "SceneSet"]


def load_scenes(split: str = "train", data_dir: str | None = None) -> SceneSet:
    """The fashion-scenes set with its masks and boxes, from where `selfsup data fetch` wrote it."""
    folder = find("fashion-scenes", data_dir)
    if folder is None:
        raise DataError("fashion-scenes not found; compose it with `selfsup data fetch fashion-scenes` "
                        "(it needs Fashion-MNIST: `selfsup data check fashion-mnist`)")
    return read_scenes(folder, split)


def load_scene_images(split: str = "train", data_dir: str | None = None) -> ImageSet:
    """The scenes as images, each labelled with its largest object's class (for kNN and probes)."""
    return load_scenes(split, data_dir).as_images()


BUILTIN = {"fashion-mnist": load_fashion_mnist, "fashion-scenes": load_scene_images}


def load_images(source: str, split: str = "train", *, data_dir: str | None = None, channels: int = 0,
                size: int = 0, labels: bool = False, strict: bool = False) -> ImageSet:
    """Load a built-in data set by name (split 'train' or 'test'), a packed store or an image folder by path.

    channels / size: convert every image to this many channels / this square side (0 = keep
    the data set's own; an image folder with mixed sizes needs size, and takes 3 channels by default).
    """
    if source in BUILTIN:
        images = BUILTIN[source](split=split, data_dir=data_dir)
        return convert(images, channels, size)
    path = Path(source).expanduser()
    if is_store(path):
        return load_store(path, channels=channels or 3, size=size or 32, labels=labels, strict=strict)
    if not path.exists():
        raise DataError(f"data source {source!r} is neither a built-in data set ({', '.join(BUILTIN)}) "
                        f"nor an existing folder; check the path")
    return load_image_folder(path, channels=channels or 3, size=size or 32, labels=labels, strict=strict)
