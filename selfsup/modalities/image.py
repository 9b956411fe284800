"""Images: uint8 tensors (N, C, H, W) from a built-in data set, an image folder or a packed store, held
in memory; or, from a store or a folder, streamed from disk step by step (selfsup.data.stream)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from selfsup.augment import augment, channel_stats, normalize, random_resized_crop_flip, to_float
from selfsup.data import BUILTIN, DataError, ImageSet, convert, load_images
from selfsup.data.holdout import BUILTIN_VALIDATION, carve_validation, check_part, part_of, path_position
from selfsup.data.stream import ImageSource, StreamedImages, streams
from selfsup.errors import ConfigError
from selfsup.evaluate.features import pixel_features
from selfsup.modalities.base import Modality

FOLDER_TEST_FRACTION = 0.2             # of a labelled image folder's files
STATS_IMAGES = 512                     # streamed images: how many the normalisation statistics are measured on
STREAM_VIEW_SIZE = 224                 # streamed images: the view side when neither augment.size nor data.size says


class ImageModality(Modality):
    name = "image"
    channels_last = True               # conv nets run faster with channels_last inputs
    raw_name = "raw pixels"
    sample_word = "images"
    probe_augmentation = True
    exports_onnx = True
    dense_tasks = True
    report_panels = ("retrieval", "views", "explanations")
    # Fine-tuning on images: the whole network at the head's rate. Each protocol's rate and weight decay
    # are what its searches on the validation part chose on the default Fashion-MNIST run at 1% and 10% of
    # the labels (docs/evaluation.md, "What chose each setting").
    finetune_defaults = {"lr": 8e-3, "backbone_lr_scale": 1.0, "weight_decay": 0.5}
    supervised_defaults = {"lr": 1.6e-2, "weight_decay": 0.05}

    def training_data(self, cfg, run_dir: Path | None = None) -> ImageSet | StreamedImages:
        """The training part of the source: a labelled folder's test and validation files and a built-in
        set's validation images never enter pretraining (selfsup.data.holdout). Decoded into memory, or
        streamed from disk (data.stream; selfsup.data.stream)."""
        if _streams(cfg, cfg.data.source):
            everything = streamed_source(cfg, cfg.data.source)
            train = image_parts(everything.source, cfg.data.source, cfg.data.val_fraction)["train"]
            return everything.select(train).subset(cfg.data.subset)
        if cfg.data.stream == "on":
            raise ConfigError(f"data.stream=on reads image files, and {cfg.data.source} is a built-in data set held "
                              "in memory; stream a packed store or an image folder")
        data = load_images(cfg.data.source, "train", data_dir=cfg.data.data_dir or None, channels=cfg.data.channels,
                           size=cfg.data.size, strict=cfg.data.strict)
        return data.select(image_parts(data, cfg.data.source, cfg.data.val_fraction)["train"]).subset(cfg.data.subset)

    def complete_config(self, cfg, data: ImageSet | StreamedImages) -> None:
        """Image size and channels, normalisation and view size, so evaluation reads images as training did
        (streamed or in memory: data.stream=auto is resolved to on or off for files, since its choice
        depends on the machine's memory)."""
        if isinstance(data, StreamedImages):
            return _complete_streamed(cfg, data)
        if cfg.data.source not in BUILTIN:
            cfg.data.stream = "off"
        cfg.data.channels = data.channels
        cfg.data.size = data.images.shape[-1]
        if not cfg.augment.mean:
            cfg.augment.mean, cfg.augment.std = channel_stats(data.images)
        elif len(cfg.augment.mean) != data.channels:
            raise DataError(f"augment.mean has {len(cfg.augment.mean)} values but the images have "
                            f"{data.channels} channels")
        if not cfg.augment.size:
            cfg.augment.size = data.images.shape[-1]
        if data.images.dtype != torch.uint8:
            raise DataError("training images must be uint8")

    def backbone_inputs(self, cfg) -> dict:
        return {"in_channels": cfg.data.channels, "image_size": cfg.augment.size or cfg.data.size}

    def labelled_sets(self, cfg, run_dir: Path | None = None, source: str = "", data_dir: str = "",
                      part: str = "test"):
        return labelled_image_sets(cfg, source, data_dir, part)

    def read(self, cfg, run_dir: Path | None, source: str, split: str = "test", data_dir: str = "",
             strict: bool = False) -> ImageSet | StreamedImages:
        if _streams(cfg, source):
            return streamed_source(cfg, source, strict)
        return load_images(source, split, data_dir=data_dir or None, channels=cfg.data.channels,
                           size=cfg.data.size, strict=strict)

    def match_input(self, cfg, samples: torch.Tensor) -> torch.Tensor:
        """Images with another channel count are converted to the backbone's (size is the method's job)."""
        if samples.shape[1] != cfg.data.channels:
            samples = convert(ImageSet(samples), channels=cfg.data.channels).images
        return samples

    def native_input(self, cfg) -> Callable:
        """uint8 images -> the backbone's normalised input at the images' own size with the run's channels: what
        dense tasks and explanation maps read (no resizing to the view size)."""
        return lambda images_u8: normalize(to_float(self.match_input(cfg, images_u8)), cfg.augment.mean,
                                           cfg.augment.std)

    def raw_features(self, train: ImageSet, test: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
        return pixel_features(train.images), pixel_features(test.images)

    def finetune_input(self, cfg, settings) -> Callable:
        return image_input(cfg.augment.eval_size or cfg.data.size, cfg.augment.mean, cfg.augment.std, settings)

    def monitor_views(self, method) -> Callable | None:
        """(samples, gen) -> an augmented view the backbone embeds, for the online alignment measure."""
        return lambda batch, gen: method._layout(augment(batch, method.augment_cfg, gen))


def _complete_streamed(cfg, data: StreamedImages) -> None:
    """Streamed images have no size of their own: views are cut at augment.size, and evaluation, which
    reads images into memory, reads them at data.size (0: augment.eval_size, else augment.size)."""
    cfg.data.stream = "on"
    cfg.data.channels = data.channels
    cfg.augment.size = cfg.augment.size or cfg.data.size or STREAM_VIEW_SIZE
    cfg.data.size = data.size = cfg.data.size or cfg.augment.eval_size or cfg.augment.size
    if not cfg.augment.mean:
        cfg.augment.mean, cfg.augment.std = channel_stats(data.spaced_preview(STATS_IMAGES, cfg.augment.size))
    elif len(cfg.augment.mean) != data.channels:
        raise DataError(f"augment.mean has {len(cfg.augment.mean)} values but the images have {data.channels} channels")


def _streams(cfg, source: str) -> bool:
    return source not in BUILTIN and streams(cfg, Path(source).expanduser())


def streamed_source(cfg, source: str, strict: bool | None = None) -> StreamedImages:
    """Every image of a store or folder, read when needed: decoded with the run's channels, its evaluation
    views at data.size, by train.workers data workers."""
    images = ImageSource(source)
    return StreamedImages(images, torch.arange(len(images)), cfg.data.channels or 3,
                          cfg.data.strict if strict is None else strict, cfg.data.size, cfg.train.workers)


def image_input(size: int, mean, std, settings) -> Callable:
    """(uint8 batch, generator or None) -> normalised float images at `size`: random resized crop and
    flip (settings.crop_scale, settings.flip_p) when a generator is given (training), else resized only."""

    def prepare(batch_u8: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        x = to_float(batch_u8)
        if gen is not None:
            x = random_resized_crop_flip(x, size, settings.crop_scale, (3 / 4, 4 / 3), settings.flip_p, gen)
        elif x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return normalize(x, mean, std)
    return prepare


def image_parts(images: ImageSet | ImageSource, source: str, val_fraction: float) -> dict[str, torch.Tensor]:
    """Indices of `images` (read from `source`; a built-in data set's training split; anything with a
    length and per-image paths) in each part.
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


def labelled_image_sets(cfg, source: str = "", data_dir: str = "",
                        part: str = "test") -> tuple[ImageSet | StreamedImages, ImageSet | StreamedImages]:
    """(train, held-out): a built-in data set's training split less its validation images, and its
    validation images or its test split; or an image folder or store with class subfolders cut by path
    hash (read when needed if it streams: selfsup.data.stream.StreamedImages)."""
    check_part(part)
    source = source or cfg.eval.source or cfg.data.source
    data_dir = data_dir or cfg.data.data_dir or None
    read_as = dict(channels=cfg.data.channels, size=cfg.data.size)     # as the training images were read
    if _streams(cfg, source):
        full = streamed_source(cfg, source)
    else:
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
