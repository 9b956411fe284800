"""Streamed images: each training step's batch read from disk and cropped by DataLoader workers.

    selfsup pretrain --data photos.store augment.size=64          # a packed store streams by default
    selfsup pretrain --data photos/ data.stream=on                # an image folder, when asked (or too big)

Nothing is decoded ahead: a worker reads the step's images (from a packed store or the folder's
files), decodes each at the smallest JPEG draft scale its crops allow, takes every view's random
resized crop on the original image and aspect ratio (torchvision's box: an area share of the
image's pixels and a width / height ratio in pixels), flips it and resizes it to the view's side.
The uint8 crops go to the training device as a `CroppedViews`, and the batched augmentation does
everything after the crop there (selfsup.augment), as it does for images in memory.

The guarantees of the in-memory path hold: a step's images are its slice of the epoch's seeded
permutation, and its crops are drawn from a generator of (seed, step, rank) alone, so a worker
count or a resume changes nothing in what a step sees.
"""
from __future__ import annotations

import io
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from selfsup.augment import AugmentConfig, CroppedViews
from selfsup.data.image_folder import find_image_files, to_8_bit
from selfsup.data.imageset import ImageSet
from selfsup.data.order import epoch_order
from selfsup.data.store import ImageStore, is_store
from selfsup.errors import DataError, TrainingError

STREAM_MEMORY_SHARE = 0.25             # a folder streams by itself when decoding it would take more of the memory
CROP_SEED_SALT = 0x5EED_C0DE_5EED_C0DE  # keeps the workers' crop draws apart from the step's augmentation draws
CROP_DRAWS = 5                         # area, aspect, left, top, flip


@dataclass(frozen=True)
class CropRecipe:
    """How one view is cut from an image: its side, area share, aspect-ratio range and flip chance."""
    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip_p: float


def crop_recipes(cfg: AugmentConfig, global_views: int) -> tuple[list[CropRecipe], list[CropRecipe]]:
    """(the global views' recipes, the local crops' recipes) of a method's multi-crop."""
    def recipe(view_cfg: AugmentConfig, size: int, scale) -> CropRecipe:
        return CropRecipe(size, tuple(scale), tuple(view_cfg.crop_ratio), view_cfg.flip_p)
    views = [cfg.for_view(i) for i in range(global_views)]
    local = [recipe(cfg, cfg.local_size, cfg.local_crop_scale)] * cfg.local_crops
    return [recipe(v, cfg.size, v.crop_scale) for v in views], local


Box = tuple[float, float, float, float]          # left, top, right, bottom in pixels


def crop_box(width: int, height: int, u: torch.Tensor, recipe: CropRecipe) -> tuple[Box, bool]:
    """The crop box (left, top, right, bottom) in the image's pixels, and whether to flip it, from the
    draws u = (area, aspect, left, top, flip) in [0, 1). A box larger than the image shrinks to fit it."""
    area = (recipe.scale[0] + u[0].item() * (recipe.scale[1] - recipe.scale[0])) * width * height
    log_lo, log_hi = math.log(recipe.ratio[0]), math.log(recipe.ratio[1])
    aspect = math.exp(log_lo + u[1].item() * (log_hi - log_lo))
    w = min(width, math.sqrt(area * aspect))
    h = min(height, math.sqrt(area / aspect))
    left = (width - w) * u[2].item()
    top = (height - h) * u[3].item()
    return (left, top, left + w, top + h), u[4].item() < recipe.flip_p


class ImageSource:
    """Random access to the encoded images of a packed store or an image folder: len, open(i), paths,
    labels (int64 or None) and classes. A store's index is read once; its shards open on the first read
    (a positioned read, safe in forked workers; a worker started by spawn opens the store again)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self._store: ImageStore | None = None
        if is_store(self.path):
            self._store = ImageStore(self.path)
            self.paths, self.labels, self.classes = self._store.paths, self._store.labels, self._store.classes
            self.is_store = True
        else:
            if not self.path.is_dir():
                raise DataError(f"data source {str(self.path)!r} is neither a packed store nor an image folder")
            files, _ = find_image_files(self.path)
            if not files:
                raise DataError(f"no images found in {str(self.path)!r}")
            self.paths = [str(f) for f in files]
            labelled = all(len(f.parts) > 1 for f in files) and len({f.parts[0] for f in files}) > 1
            self.classes = sorted({f.parts[0] for f in files}) if labelled else []
            index = {c: i for i, c in enumerate(self.classes)}
            self.labels = torch.tensor([index[f.parts[0]] for f in files]) if labelled else None
            self.is_store = False

    def __len__(self) -> int:
        return len(self.paths)

    def open(self, i: int):
        if not self.is_store:
            return self.path / self.paths[i]
        if self._store is None:
            self._store = ImageStore(self.path)
        return io.BytesIO(self._store.read(i))

    def __getstate__(self):             # pickled for a spawned worker: it opens the store itself
        return {**self.__dict__, "_store": None}


def read_crops(file, mode: str, place, sizes: list[int]) -> list[np.ndarray]:
    """Decode one image and cut its crops: uint8 (S, S[, 3]) each, S from `sizes`; place(width, height)
    gives the crops' (box, flip) on the image at its full size. The JPEG decoder reduces the image by
    the largest power of two that leaves every crop at least its output side (draft mode)."""
    with Image.open(file) as img:
        width, height = img.size
        boxes = place(width, height)
        # The scale each crop needs: its box, shrunk by this, still spans its output side both ways.
        scale = min(1.0, max(size / max(min(box[2] - box[0], box[3] - box[1]), 1e-6)
                             for (box, _), size in zip(boxes, sizes)))
        img.draft(mode, (math.ceil(width * scale), math.ceil(height * scale)))
        img = to_8_bit(img)
        if img.mode == "RGBA":
            img = Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)), img)
        img = img.convert(mode)
        sx, sy = img.size[0] / width, img.size[1] / height       # what the draft reduced
        crops = []
        for ((left, top, right, bottom), flip), size in zip(boxes, sizes):
            crop = img.resize((size, size), Image.BILINEAR, box=(left * sx, top * sy, right * sx, bottom * sy),
                              reducing_gap=2.0)
            if flip:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crops.append(np.asarray(crop))
        return crops


def centre_box(width: int, height: int) -> Box:
    """The largest centred square of the image."""
    side = min(width, height)
    return (width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2


def centre_crops(source: ImageSource, indices: list[int], channels: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """(uint8 (len(indices), C, size, size), why each unreadable image failed): the largest centred square
    of each image resized to `size` (a resize of the short side, then a centre crop), the evaluation view
    of a streamed image. An image that cannot be read stays black; its path and error are listed."""
    mode = "L" if channels == 1 else "RGB"
    out = torch.zeros((len(indices), channels, size, size), dtype=torch.uint8)
    failures = []
    for row, i in enumerate(indices):
        try:
            pixels = read_crops(source.open(i), mode, lambda w, h: [(centre_box(w, h), False)], [size])[0]
        except Exception as e:  # noqa: BLE001 - decoders raise many types; the message says which
            failures.append(f"{source.path / source.paths[i]} ({type(e).__name__}: {e})")
            continue
        out[row] = torch.from_numpy(pixels.reshape(size, size, channels).copy()).permute(2, 0, 1)
    return out, failures


class StreamedImages:
    """Images of a source read when needed instead of held in memory: the training data object the
    trainer gets when images stream, and the labelled sets evaluation reads from a streamed source (len,
    labels, classes, paths, channels, name, source, indices; `samples` / `images`: their evaluation
    views at `size`, decoded as they are read)."""

    def __init__(self, source: ImageSource, indices: torch.Tensor, channels: int, strict: bool = False,
                 size: int = 0, workers: int = 0):
        self.source, self.indices, self.strict = source, indices.long(), strict
        self.channels, self.size, self.workers = channels, size, workers
        self.name = source.path.name
        self.labels = source.labels[self.indices] if source.labels is not None else None
        self.classes = source.classes

    def __len__(self) -> int:
        return len(self.indices)

    def select(self, idx: torch.Tensor) -> "StreamedImages":
        """The images at positions idx of this set."""
        return StreamedImages(self.source, self.indices[idx], self.channels, self.strict, self.size, self.workers)

    def subset(self, n: int) -> "StreamedImages":
        """The first n images (all when n <= 0 or n >= len)."""
        return self if n <= 0 or n >= len(self) else self.select(torch.arange(n))

    @property
    def paths(self) -> list[str]:
        return [self.source.paths[i] for i in self.indices.tolist()]

    @property
    def samples(self) -> "StreamedSamples":
        if not self.size:
            raise ValueError("these streamed images have no evaluation size yet (data.size is set when the "
                             "run's config is completed); pass size= to StreamedImages")
        return StreamedSamples(self)

    images = samples

    def decoded(self) -> ImageSet:
        """Every image's evaluation view decoded into memory: for small sets read many times (the online
        monitor's)."""
        return ImageSet(self.samples[:], self.labels, self.classes, self.name, self.paths)

    def spaced_preview(self, count: int, size: int) -> torch.Tensor:
        """Centre crops of `count` evenly spaced images: the normalisation statistics and the online
        measures' sample."""
        picked = self.indices[::max(1, len(self) // count)][:count].tolist()
        return centre_crops(self.source, picked, self.channels, size)[0]


class StreamedSamples:
    """What an in-memory uint8 image tensor (N, C, S, S) is to evaluation, for streamed images: each
    image's evaluation view (its short side resized to S, then a centre crop) decoded when it is asked
    for. Indexing (an int, a slice, indices) decodes those images in this process; `batches(n)` hands
    every image over in order, n at a time, decoded by DataLoader workers, so a feature extraction over
    any number of images holds one batch of pixels at a time."""

    dtype = torch.uint8

    def __init__(self, streamed: StreamedImages):
        self.streamed = streamed

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.streamed), self.streamed.channels, self.streamed.size, self.streamed.size))

    def __len__(self) -> int:
        return len(self.streamed)

    def dim(self) -> int:
        return 4

    def __getitem__(self, key) -> torch.Tensor:
        indices = self.streamed.indices[key]
        if indices.dim() == 0:
            return self._decode(indices.view(1))[0]
        return self._decode(indices)

    def __iter__(self):
        for start in range(0, len(self), 64):
            yield from self[start:start + 64]

    def _decode(self, indices: torch.Tensor) -> torch.Tensor:
        streamed = self.streamed
        pixels, failures = centre_crops(streamed.source, indices.tolist(), streamed.channels, streamed.size)
        _report_unreadable(failures, self.streamed.strict)
        return pixels

    def batches(self, batch_size: int):
        """uint8 (<= batch_size, C, S, S) batches of every image in order, from DataLoader workers."""
        workers = self.streamed.workers or default_workers()
        loader = torch.utils.data.DataLoader(_EvaluationBatches(self.streamed, batch_size), batch_size=None,
                                             num_workers=workers, worker_init_fn=_quiet_worker,
                                             prefetch_factor=2, persistent_workers=False)
        for pixels, failures in loader:
            _report_unreadable(failures, self.streamed.strict)
            yield pixels


class _EvaluationBatches(torch.utils.data.Dataset):
    """Item b: (the evaluation views of images b * batch_size onwards, the unreadable ones among them)."""

    def __init__(self, images: StreamedImages, batch_size: int):
        self.images, self.batch_size = images, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, list[str]]:
        chosen = self.images.indices[b * self.batch_size:(b + 1) * self.batch_size].tolist()
        return centre_crops(self.images.source, chosen, self.images.channels, self.images.size)


def _report_unreadable(failures: list[str], strict: bool) -> None:
    if failures and strict:
        raise DataError(f"cannot read image {failures[0]}")
    if failures:
        more = f" and {len(failures) - 1} more in the same batch" if len(failures) > 1 else ""
        warnings.warn(f"unreadable image {failures[0]}{more}: evaluated as black images, so that rows keep the "
                      "source's order (data.strict=true makes this an error)")


class StepBatches(torch.utils.data.Dataset):
    """Item `step`: that step's CroppedViews (the rank's slice of the epoch's permutation, every
    image's global and local crops). What one DataLoader worker computes."""

    def __init__(self, data: StreamedImages, augment_cfg: AugmentConfig, global_views: int, seed: int,
                 steps_per_epoch: int, local_batch: int, rank: int, world_size: int):
        self.data, self.seed, self.rank, self.world_size = data, seed, rank, world_size
        self.steps_per_epoch, self.local_batch = steps_per_epoch, local_batch
        self.global_recipes, self.local_recipes = crop_recipes(augment_cfg, global_views)
        self.mode = "L" if data.channels == 1 else "RGB"
        self._order: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:                # steps are asked for by number; the loader never counts them
        return sys.maxsize

    def positions(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(len(self.data), self.seed, epoch, self.rank, self.world_size))
        return self._order[1][position * self.local_batch:(position + 1) * self.local_batch]

    def __getitem__(self, step: int) -> CroppedViews:
        images = self.data.indices[self.positions(step)].tolist()
        gen = torch.Generator().manual_seed((((self.seed * 1_000_003 + step) * 1024 + self.rank) ^ CROP_SEED_SALT)
                                            % 2 ** 63)
        recipes = self.global_recipes + self.local_recipes
        draws = torch.rand(len(recipes), len(images), CROP_DRAWS, generator=gen)
        per_image = [self._crops(i, draws[:, row], recipes) for row, i in enumerate(images)]
        per_image = self._replace_unreadable(per_image, images)
        views = len(self.global_recipes)
        local = len(self.local_recipes)
        local_crops = CroppedViews(_stacked(per_image, range(views, views + local)), local) if local else None
        return CroppedViews(_stacked(per_image, range(views)), views, local_crops)

    def _crops(self, i: int, draws: torch.Tensor, recipes: list[CropRecipe]) -> list[np.ndarray] | str:
        try:
            return read_crops(self.data.source.open(i), self.mode,
                              lambda w, h: [crop_box(w, h, u, r) for u, r in zip(draws, recipes)],
                              [r.size for r in recipes])
        except Exception as e:  # noqa: BLE001 - decoders raise many types; the message says which
            return f"{type(e).__name__}: {e}"

    def _replace_unreadable(self, per_image: list, images: list[int]) -> list:
        bad = [row for row, crops in enumerate(per_image) if isinstance(crops, str)]
        if not bad:
            return per_image
        name = lambda row: f"{self.data.source.path / self.data.source.paths[images[row]]}"   # noqa: E731
        if self.data.strict or len(bad) == len(per_image):
            raise DataError(f"cannot read image {name(bad[0])!r}: {per_image[bad[0]]}"
                            + ("" if self.data.strict else "; every image of the batch failed"))
        good = [row for row in range(len(per_image)) if row not in bad]
        for row in bad:
            warnings.warn(f"skipped unreadable image {name(row)!r} ({per_image[row]}); another image of its batch "
                          "takes its place (data.strict=true makes this an error)")
            per_image[row] = per_image[good[row % len(good)]]
        return per_image



def _stacked(per_image: list[list[np.ndarray]], views: range) -> torch.Tensor:
    """uint8 (len(views) * B, C, S, S) from each image's crops (S, S[, C]): view j of image i at row j * B + i."""
    x = torch.from_numpy(np.stack([image[v] for v in views for image in per_image]))
    return (x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)).contiguous()


def _quiet_worker(_worker_id: int) -> None:
    torch.set_num_threads(1)             # decoding is the worker's work; torch ops in it are tiny


class StreamBatches:
    """The batch of each step from DataLoader workers: called with consecutive steps, it hands over
    what the workers prepared ahead; asked for another step (the budget's trial, a resume), it starts
    the workers again from there."""

    def __init__(self, dataset: StepBatches, workers: int, device: torch.device):
        self.dataset, self.workers, self.device = dataset, workers, device
        self._iterator = None
        self._next_step: int | None = None

    def _start(self, step: int) -> None:
        self.close()
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=None, sampler=_StepsFrom(step), num_workers=self.workers,
            pin_memory=self.device.type == "cuda", worker_init_fn=_quiet_worker if self.workers else None,
            prefetch_factor=2 if self.workers else None, persistent_workers=False)
        self._iterator, self._next_step = iter(loader), step

    def __call__(self, step: int) -> CroppedViews:
        if step != self._next_step:
            self._start(step)
        try:
            batch = next(self._iterator)
        except DataError as e:
            # Raised in a worker, the loader raises it again here with the worker's traceback in its text;
            # its last line is the error itself.
            self.close()
            raise DataError(str(e).strip().splitlines()[-1].partition("DataError: ")[2] or str(e)) from None
        except RuntimeError as e:
            if "DataLoader worker" not in str(e):
                raise
            self.close()
            raise TrainingError(f"a data worker stopped while reading step {step}'s images ({e}); the last "
                                "checkpoint is kept: --resume continues from it (lower train.workers if memory "
                                "ran out)") from e
        self._next_step = step + 1
        return batch.to(self.device, non_blocking=True)

    def close(self) -> None:
        self._iterator = None            # its workers stop when it goes
        self._next_step = None


class _StepsFrom(torch.utils.data.Sampler):
    """Step numbers from `first` on, without end: the loop decides when training stops."""

    def __init__(self, first: int):
        self.first = first

    def __iter__(self):
        step = self.first
        while True:
            yield step
            step += 1


def default_workers() -> int:
    """One data worker per core the process may use, up to 16."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cores))


def memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def streams(cfg, source_path: Path) -> bool:
    """Whether the image source streams: data.stream on / off, or auto: a packed store always (it was
    packed to be streamed at its own resolution), a folder when decoding it at data.size would take more
    than STREAM_MEMORY_SHARE of the machine's memory (said once)."""
    if cfg.data.stream != "auto":
        return cfg.data.stream == "on"
    if is_store(source_path):
        return True
    if not source_path.is_dir():
        return False
    files, _ = find_image_files(source_path)
    needed = len(files) * (cfg.data.channels or 3) * (cfg.data.size or 32) ** 2     # bytes, decoded as uint8
    return too_large_for_memory(needed, f"{len(files):,} images at {cfg.data.size or 32} px",
                                "streaming them from disk")


def too_large_for_memory(needed_bytes: int, what: str, instead: str) -> bool:
    """Whether `what`, needed_bytes decoded, would take more than STREAM_MEMORY_SHARE of this machine's
    memory; if so a note says so and what is done `instead`."""
    if needed_bytes <= STREAM_MEMORY_SHARE * memory_bytes():
        return False
    print(f"note: {what} would take {needed_bytes / 2**30:.1f} GiB decoded, over {STREAM_MEMORY_SHARE:.0%} of this "
          f"machine's memory: {instead} (data.stream=off keeps them in memory)", file=sys.stderr)
    return True
