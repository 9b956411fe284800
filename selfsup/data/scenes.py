"""Scenes with dense labels, composed offline from Fashion-MNIST items (`selfsup data fetch fashion-scenes`).

Each scene is a grey canvas (96 px by default) with a textured background and 1-6 Fashion-MNIST
items pasted at random positions, scales (0.5x-2x, log-uniform) and small rotations. Items may
overlap, but a new item is dropped when it would hide more than half of one already there, so
every object stays mostly visible. Every scene comes with

- ``semantic`` (H, W): 0 for background, 1 + the Fashion-MNIST class under each pixel;
- ``instances`` (H, W): 0 for background, k for the scene's k-th item (its topmost visible pixels);
- one box per item, (x0, y0, x1, y1) in pixels around its visible pixels, with its class.

Training scenes use Fashion-MNIST training items and test scenes its test items, each item at
most once, so no test item is ever seen in a training scene. The whole set is a function of the
seed: the same command writes the same arrays.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from selfsup.data.imageset import ImageSet
from selfsup.errors import DataError

FORMAT_VERSION = 1
META_FILE = "scenes.json"
SPLIT_FILES = {"train": "train.npz", "test": "test.npz"}


@dataclass
class SceneRecipe:
    canvas: int = 96
    train_scenes: int = 10000
    test_scenes: int = 2000
    max_items: int = 6
    scale_range: tuple[float, float] = (0.5, 2.0)
    max_rotation_deg: float = 15.0
    max_hidden: float = 0.5            # an item is dropped if it would leave less than half of an earlier one visible
    item_threshold: int = 24           # an item pixel brighter than this (of 255) belongs to the item
    seed: int = 0

    def validate(self) -> None:
        if self.canvas < round(28 * self.scale_range[1]) or self.canvas % 8:
            raise DataError(f"a scene canvas of {self.canvas} px must be a multiple of 8 and hold the largest "
                            f"item ({round(28 * self.scale_range[1])} px)")
        if not 1 <= self.max_items <= 250:
            raise DataError(f"max_items must be between 1 and 250, got {self.max_items}")


@dataclass
class SceneSet:
    """Scenes in memory: images and their dense labels, plus one row per object. A set with boxes only
    (COCO annotations without segmentations) has no masks: semantic and instances are None."""
    images: torch.Tensor                  # uint8 (N, C, H, W)
    semantic: torch.Tensor | None         # uint8 (N, H, W): 0 background, 1 + class
    instances: torch.Tensor | None        # uint8 (N, H, W): 0 background, k = the scene's k-th object
    boxes: torch.Tensor                   # float32 (M, 4): x0, y0, x1, y1 in pixels, around the visible pixels
    box_labels: torch.Tensor              # int64 (M,): the object's class (0-based, without background)
    box_scene: torch.Tensor               # int64 (M,): the scene the object is in
    classes: list[str] = field(default_factory=lambda: list(FASHION_MNIST_CLASSES))
    items: torch.Tensor | None = None     # int64 (M,): the Fashion-MNIST item index of each object
    paths: list[str] = field(default_factory=list)   # per scene, when read from files

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def select(self, idx: torch.Tensor) -> "SceneSet":
        """The scenes at idx (in that order) with their objects, renumbered."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        where = torch.full((len(self),), -1, dtype=torch.long)
        where[idx] = torch.arange(len(idx))
        keep = where[self.box_scene] >= 0
        order = torch.argsort(where[self.box_scene[keep]], stable=True)
        pick = lambda t: None if t is None else t[keep][order]
        per_scene = lambda t: None if t is None else t[idx]
        return SceneSet(self.images[idx], per_scene(self.semantic), per_scene(self.instances), pick(self.boxes),
                        pick(self.box_labels), where[self.box_scene[keep]][order], self.classes, pick(self.items),
                        [self.paths[i] for i in idx.tolist()] if self.paths else [])

    def dominant_labels(self) -> torch.Tensor:
        """(N,) the class of each scene's largest visible object (by pixels; by box area without masks): a
        whole-image label for kNN monitoring. A scene without objects gets class 0."""
        if self.semantic is None:
            area = (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])
            largest = torch.full((len(self),), -1.0)
            labels = torch.zeros(len(self), dtype=torch.long)
            for scene, size, label in zip(self.box_scene.tolist(), area.tolist(), self.box_labels.tolist()):
                if size > largest[scene]:
                    largest[scene], labels[scene] = size, label
            return labels
        counts = torch.zeros(len(self), self.num_classes + 1, dtype=torch.long)
        flat = self.semantic.flatten(1).long()
        counts.scatter_add_(1, flat, torch.ones_like(flat))
        counts[:, 0] = -1
        return counts.argmax(1) - 1

    def as_images(self, name: str = "fashion-scenes") -> ImageSet:
        return ImageSet(self.images, self.dominant_labels(), list(self.classes), name, list(self.paths))


def background_texture(n: int, canvas: int, rng: np.random.Generator) -> np.ndarray:
    """(n, canvas, canvas) float32 in [0, 255]: smooth blotches plus a faint grating, different per scene,
    darker on average than the items so they stand out without a flat black backdrop."""
    coarse = torch.from_numpy(rng.uniform(0, 1, (n, 1, 6, 6)).astype(np.float32))
    blotches = F.interpolate(coarse, size=(canvas, canvas), mode="bicubic", align_corners=False)[:, 0].numpy()
    ys, xs = np.mgrid[0:canvas, 0:canvas].astype(np.float32)
    angle = rng.uniform(0, math.pi, (n, 1, 1)).astype(np.float32)
    period = rng.uniform(4, 16, (n, 1, 1)).astype(np.float32)
    grating = np.sin(2 * math.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period)
    level = rng.uniform(10, 70, (n, 1, 1)).astype(np.float32)
    texture = level + 35 * (blotches - 0.5) + rng.uniform(0, 15, (n, 1, 1)).astype(np.float32) * grating
    return np.clip(texture, 0, 255)


def render_items(items: torch.Tensor, sizes: torch.Tensor, angles: torch.Tensor, centres: torch.Tensor,
                 canvas: int) -> torch.Tensor:
    """items (K, 28, 28) float in [0, 255] -> (K, canvas, canvas): each item scaled to sizes[k] px, turned by
    angles[k] radians and centred at centres[k] = (x, y) pixels, zero elsewhere (one grid_sample per batch)."""
    scale = canvas / sizes                                          # canvas units per item unit
    cos, sin = torch.cos(angles), torch.sin(angles)
    centre = 2 * centres / canvas - 1                               # in grid_sample's [-1, 1] coordinates
    theta = torch.zeros(len(items), 2, 3)
    # input = scale * R(-angle) @ (output - centre)
    theta[:, 0, 0], theta[:, 0, 1] = scale * cos, scale * sin
    theta[:, 1, 0], theta[:, 1, 1] = -scale * sin, scale * cos
    theta[:, :, 2] = -(theta[:, :, :2] @ centre[:, :, None])[:, :, 0]
    grid = F.affine_grid(theta, (len(items), 1, canvas, canvas), align_corners=False)
    return F.grid_sample(items[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def compose(item_images: np.ndarray, item_labels: np.ndarray, count: int, recipe: SceneRecipe,
            rng: np.random.Generator) -> SceneSet:
    """`count` scenes from the items (each used at most once, in a random order)."""
    canvas, order = recipe.canvas, rng.permutation(len(item_images))
    per_scene = rng.integers(1, recipe.max_items + 1, count)
    if per_scene.sum() > len(order):
        raise DataError(f"{count} scenes of up to {recipe.max_items} items need about {per_scene.sum()} items; "
                        f"only {len(order)} are available: ask for fewer scenes")
    images = background_texture(count, canvas, rng)
    semantic = np.zeros((count, canvas, canvas), np.uint8)
    instances = np.zeros((count, canvas, canvas), np.uint8)
    rows = []                                                       # (scene, object number, item index, area)
    first = np.concatenate([[0], np.cumsum(per_scene)[:-1]])
    chunk = 256
    for start in range(0, count, chunk):
        scenes = range(start, min(start + chunk, count))
        picks = np.concatenate([order[first[s]:first[s] + per_scene[s]] for s in scenes])
        k = len(picks)
        low, high = np.log(recipe.scale_range[0]), np.log(recipe.scale_range[1])
        sizes = 28 * np.exp(rng.uniform(low, high, k))
        angles = np.deg2rad(rng.uniform(-recipe.max_rotation_deg, recipe.max_rotation_deg, k))
        margin = sizes / 2
        centres = np.stack([rng.uniform(margin, canvas - margin), rng.uniform(margin, canvas - margin)], 1)
        layers = render_items(torch.from_numpy(item_images[picks].astype(np.float32)),
                              torch.from_numpy(sizes.astype(np.float32)), torch.from_numpy(angles.astype(np.float32)),
                              torch.from_numpy(centres.astype(np.float32)), canvas).numpy()
        at = 0
        for s in scenes:
            for item, layer in zip(picks[at:at + per_scene[s]], layers[at:at + per_scene[s]]):
                _paste(s, item, layer, item_labels[item], images, semantic, instances, rows, recipe)
            at += per_scene[s]
    return _finish(images, semantic, instances, rows, item_labels)


def _paste(scene: int, item: int, layer: np.ndarray, label: int, images, semantic, instances, rows,
           recipe: SceneRecipe) -> None:
    """Lay one rendered item over the scene unless it would leave an earlier item less than
    1 - max_hidden of its own area visible."""
    mask = layer > recipe.item_threshold
    if mask.sum() < 16:
        return
    earlier = [row for row in rows[-recipe.max_items:] if row[0] == scene]
    for _, number, _, area in earlier:
        visible_after = (instances[scene] == number).sum() - (instances[scene][mask] == number).sum()
        if visible_after < (1 - recipe.max_hidden) * area:
            return
    number = len(earlier) + 1
    alpha = np.clip(layer / (2 * recipe.item_threshold), 0, 1)
    images[scene] = alpha * layer + (1 - alpha) * images[scene]
    semantic[scene][mask] = label + 1
    instances[scene][mask] = number
    rows.append((scene, number, item, int(mask.sum())))


def _finish(images, semantic, instances, rows, item_labels) -> SceneSet:
    """Boxes around each object's visible pixels; objects hidden entirely by later ones are dropped."""
    boxes, labels, scenes, items = [], [], [], []
    for scene, number, item, _ in rows:
        ys, xs = np.nonzero(instances[scene] == number)
        if not len(xs):
            continue
        boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        labels.append(int(item_labels[item]))
        scenes.append(scene)
        items.append(int(item))
    return SceneSet(torch.from_numpy(np.round(images).astype(np.uint8))[:, None], torch.from_numpy(semantic),
                    torch.from_numpy(instances), torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                    torch.tensor(labels, dtype=torch.long), torch.tensor(scenes, dtype=torch.long),
                    items=torch.tensor(items, dtype=torch.long))


def write_scenes(output: Path, recipe: SceneRecipe, data_dir: str | None = None, log=print) -> dict:
    """Compose the training and test scenes into the folder `output` (train.npz, test.npz, scenes.json)."""
    recipe.validate()
    output.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, count in (("train", recipe.train_scenes), ("test", recipe.test_scenes)):
        source = load_fashion_mnist(split, data_dir)
        rng = np.random.default_rng([recipe.seed, 0 if split == "train" else 1])
        scenes = compose(source.images[:, 0].numpy(), source.labels.numpy(), count, recipe, rng)
        np.savez_compressed(output / SPLIT_FILES[split], images=scenes.images.numpy(),
                            semantic=scenes.semantic.numpy(), instances=scenes.instances.numpy(),
                            boxes=scenes.boxes.numpy(), box_labels=scenes.box_labels.numpy(),
                            box_scene=scenes.box_scene.numpy(), items=scenes.items.numpy())
        counts[split] = {"scenes": len(scenes), "objects": len(scenes.boxes)}
        log(f"fashion-scenes: {split}: {len(scenes):,} scenes, {len(scenes.boxes):,} objects")
    meta = {"format": FORMAT_VERSION, "classes": list(FASHION_MNIST_CLASSES), "recipe": recipe.__dict__ | {
        "scale_range": list(recipe.scale_range)}, "counts": counts}
    (output / META_FILE).write_text(json.dumps(meta, indent=1))
    return meta


def read_scenes(folder: str | Path, split: str = "train") -> SceneSet:
    folder = Path(folder)
    if split not in SPLIT_FILES:
        raise DataError(f"fashion-scenes has splits 'train' and 'test', not {split!r}")
    meta_path, path = folder / META_FILE, folder / SPLIT_FILES[split]
    if not meta_path.is_file() or not path.is_file():
        raise DataError(f"{folder} is not a complete fashion-scenes folder (no {meta_path.name} or {path.name}); "
                        "write it with `selfsup data fetch fashion-scenes`")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise DataError(f"{folder} was written by another selfsup (format {meta.get('format')}, this one reads "
                        f"{FORMAT_VERSION}); delete it and run `selfsup data fetch fashion-scenes` again")
    with np.load(path) as arrays:
        t = {name: torch.from_numpy(arrays[name]) for name in arrays.files}
    return SceneSet(t["images"], t["semantic"], t["instances"], t["boxes"], t["box_labels"].long(),
                    t["box_scene"].long(), list(meta["classes"]), t["items"].long())
