"""Images with COCO-style annotations (boxes, and polygons or RLE masks) as a SceneSet, for users' own data.

    read_coco("annotations.json", size=96)        # images found beside the file (or under image_root)

COCO's layout (cocodataset.org/#format-data): "images" (id, file_name, width, height), "annotations"
(image_id, category_id, bbox [x, y, w, h], optional segmentation, iscrowd) and "categories" (id,
name). Every image is read in `channels` and squashed to size x size, its boxes and masks scaled
with it. Classes are the categories in the order of their ids. Masks are painted largest object
first, so a smaller object in front of a larger one keeps its pixels. Crowd annotations are left
out. An image whose file is missing or unreadable is skipped with a warning (strict: an error).
When any annotation has no segmentation, the set has boxes only (``semantic`` is None):
detection works on it, segmentation says it needs masks.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from selfsup.data.scenes import SceneSet
from selfsup.errors import ConfigError, DataError

MAX_OBJECTS = 255                        # instance ids are uint8


def find_annotations(source: str | Path) -> Path | None:
    """The COCO file `source` names: a .json file, or the one .json file in a folder; None if it is neither."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".json":
        return path
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if len(files) == 1:
            return files[0]
        if len(files) > 1:
            raise DataError(f"{path} holds {len(files)} .json files ({', '.join(f.name for f in files[:4])}); "
                            "pass the annotation file itself")
    return None


def read_coco(annotations: str | Path, size: int, channels: int = 3, image_root: str | Path | None = None,
              strict: bool = False) -> SceneSet:
    path = Path(annotations)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        images, annotations_list, categories = spec["images"], spec["annotations"], spec["categories"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read COCO annotations {path}: {e}") from e
    except (KeyError, TypeError) as e:
        raise DataError(f"{path} is not a COCO annotation file: it needs 'images', 'annotations' and "
                        f"'categories' lists (missing {e})") from e
    if not categories:
        raise DataError(f"{path} lists no categories")
    if size < 8:
        raise ConfigError(f"read COCO images at a size of at least 8 px, not {size}")
    class_of = {c["id"]: k for k, c in enumerate(sorted(categories, key=lambda c: c["id"]))}
    names = [c.get("name", str(c["id"])) for c in sorted(categories, key=lambda c: c["id"])]
    by_image: dict = {}
    for a in annotations_list:
        if not a.get("iscrowd", 0):
            by_image.setdefault(a["image_id"], []).append(a)
    with_masks = all(a.get("segmentation") for objects in by_image.values() for a in objects)
    root = Path(image_root) if image_root else path.parent
    pictures, semantic, instances, boxes, labels, scene_of, skipped = [], [], [], [], [], [], []
    for entry in sorted(images, key=lambda e: e["id"]):
        picture = _read_image(root / entry["file_name"], channels, strict, skipped)
        if picture is None:
            continue
        height, width = picture.shape[:2]
        objects = sorted(by_image.get(entry["id"], []), key=lambda a: -a["bbox"][2] * a["bbox"][3])
        if len(objects) > MAX_OBJECTS:
            raise DataError(f"{entry['file_name']} has {len(objects)} objects; at most {MAX_OBJECTS} an image are read")
        scale = np.array([size / width, size / height, size / width, size / height], dtype=np.float32)
        classes = np.zeros((height, width), np.uint8)
        numbers = np.zeros((height, width), np.uint8)
        for number, a in enumerate(objects, start=1):
            if a["category_id"] not in class_of:
                raise DataError(f"{path}: annotation {a.get('id')} has category {a['category_id']}, which is not "
                                "in 'categories'")
            x, y, w, h = a["bbox"]
            boxes.append(np.array([x, y, x + w, y + h], dtype=np.float32) * scale)
            labels.append(class_of[a["category_id"]])
            scene_of.append(len(pictures))
            if with_masks:
                mask = _mask(a["segmentation"], height, width)
                classes[mask] = class_of[a["category_id"]] + 1
                numbers[mask] = number
        pictures.append(_resize(torch.from_numpy(picture).permute(2, 0, 1)[None].float(), size, "bilinear"))
        semantic.append(_resize(torch.from_numpy(classes)[None, None].float(), size, "nearest"))
        instances.append(_resize(torch.from_numpy(numbers)[None, None].float(), size, "nearest"))
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable or missing image(s) of {path}, e.g. {skipped[0]}")
    if not pictures:
        raise DataError(f"none of the {len(images)} images of {path} could be read (looked under {root})")
    return SceneSet(torch.cat(pictures).round().clamp(0, 255).to(torch.uint8),
                    torch.cat(semantic)[:, 0].to(torch.uint8) if with_masks else None,
                    torch.cat(instances)[:, 0].to(torch.uint8) if with_masks else None,
                    torch.from_numpy(np.stack(boxes)) if boxes else torch.zeros(0, 4),
                    torch.tensor(labels, dtype=torch.long), torch.tensor(scene_of, dtype=torch.long), names,
                    paths=[e["file_name"] for e in sorted(images, key=lambda e: e["id"])
                           if str(root / e["file_name"]) not in skipped])


def _read_image(path: Path, channels: int, strict: bool, skipped: list) -> np.ndarray | None:
    """(H, W, channels) uint8, or None (noted in `skipped`) when the file is missing or unreadable."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert("L" if channels == 1 else "RGB")).reshape(image.height, image.width, -1)
    except (OSError, UnidentifiedImageError) as e:
        if strict:
            raise DataError(f"cannot read image {path}: {e}") from e
        skipped.append(str(path))
        return None


def _mask(segmentation, height: int, width: int) -> np.ndarray:
    """A boolean (H, W) mask from COCO polygons or RLE (pycocotools decodes them)."""
    try:
        from pycocotools import mask as coco_mask
    except ImportError as e:
        raise ConfigError("COCO masks are decoded by pycocotools: pip install 'selfsup[dense]'") from e
    if isinstance(segmentation, list):
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return coco_mask.decode(rle).astype(bool)


def _resize(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest")
    return F.interpolate(x, size=(size, size), mode=mode, antialias=True, align_corners=False)
