"""An image data set in memory: one uint8 tensor (N, C, H, W) plus optional labels."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from selfsup.errors import DataError


@dataclass
class ImageSet:
    images: torch.Tensor                      # uint8 (N, C, H, W)
    labels: torch.Tensor | None = None        # int64 (N,)
    classes: list[str] = field(default_factory=list)
    name: str = ""
    paths: list[str] = field(default_factory=list)   # per image, when read from files

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"ImageSet.images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise DataError(f"{len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def samples(self) -> torch.Tensor:
        """The tensor training batches are drawn from (every modality's data set has one)."""
        return self.images

    def subset(self, n: int) -> "ImageSet":
        """The first n images (all when n <= 0 or n >= len)."""
        if n <= 0 or n >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:n]
        return ImageSet(self.images[:n], labels, self.classes, self.name, self.paths[:n])

    def select(self, idx: torch.Tensor) -> "ImageSet":
        """The images at idx, with their labels and paths."""
        labels = None if self.labels is None else self.labels[idx]
        paths = [self.paths[i] for i in idx.tolist()] if self.paths else []
        return ImageSet(self.images[idx], labels, self.classes, self.name, paths)


def require_class_subfolders(files: list[Path], root: Path, what: str) -> None:
    """With labels from first-level subfolders, every file (a path relative to root) must be in one."""
    in_root = [f for f in files if len(f.parts) == 1]
    if in_root:
        raise DataError(f"with labels, {what} must be inside class subfolders ({root}/<class>/...), "
                        f"but {len(in_root)} are directly in {str(root)!r}, e.g. {in_root[0]}; "
                        f"move them into a class folder or load without labels")


def convert(images: ImageSet, channels: int = 0, size: int = 0) -> ImageSet:
    """Change channel count (1 <-> 3) and square size of an in-memory set, keeping uint8."""
    x = images.images
    if channels and channels != x.shape[1]:
        if channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1).contiguous()
        elif channels == 1:
            x = x.float().mean(1, keepdim=True).round().to(torch.uint8)
        else:
            raise DataError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")
    if size and x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True,
                                            align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return ImageSet(x, images.labels, images.classes, images.name, images.paths)
