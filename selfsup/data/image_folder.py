"""Image folder source: every image file under a folder, at any depth, as one uint8 tensor.

    root/cat/001.jpg, root/cat/more/002.png, root/dog/003.webp   ->  labels from "cat", "dog"

Every image is converted the same way, whatever its file mode:
- transparency (RGBA, LA, palette or grey/RGB with a transparent colour) is composited onto
  black, so a transparent background reads as 0, like the zero padding the models already see;
- 16-bit grey (I;16) is scaled to 8 bit by dividing by 257 (65535 -> 255), not clipped; 32-bit
  integer (I) and float (F) images have no fixed range, so they are stretched so that their
  maximum is 255 when it lies above 255, and taken as they are otherwise;
- CMYK and everything else goes through Pillow's own conversion to RGB or L;
- animated GIF / WebP: the first frame;
- the whole image is resized to size x size (no crop, so the aspect ratio is not kept).

Large images: JPEGs are decoded at up to 8x reduced scale when they are much larger than size,
and the resize first shrinks by whole factors (reducing_gap), so a 10000 x 10000 photo loads in
well under a second. Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS) is left as the
user set it: an image above twice the limit is skipped as unreadable with Pillow's message (raise
the limit yourself to load it), and Pillow's warning for images between one and two times the
limit is silenced, since each image is shrunk right away and only a few are decoded at a time.

Hidden files and folders (names starting with ".") are ignored, so ".ipynb_checkpoints" or
macOS "._x.jpg" files never become a class or a skipped image.
"""
from __future__ import annotations

import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from selfsup.data.imageset import ImageSet, require_class_subfolders
from selfsup.errors import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
PROGRESS_ABOVE = 2000          # files; smaller folders load in a few seconds without a bar
SHOWN_SKIPPED = 5              # unreadable files named in the warning


def load_image_folder(path, channels: int = 3, size: int = 32, labels: bool = False, strict: bool = False):
    """Load every image under the folder `path` as an ImageSet of uint8 (N, channels, size, size).

    labels=True: each image is labelled with its first-level subfolder (the class); `classes`
    holds the sorted subfolder names and images directly in `path` are an error.
    Unreadable files are skipped and files that are not images ignored, with one `warning:` line on
    stderr naming up to five unreadable ones; strict=True raises a DataError on the first unreadable one.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"image folder {str(root)!r} {what}")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if size < 1:
        raise DataError(f"size must be a positive number of pixels, got {size}")

    files, other_files = find_image_files(root)
    if not files:
        raise DataError(f"no images found in {str(root)!r}: looked for files ending in {', '.join(EXTENSIONS)} "
                        f"(at any depth, in any case) and found {len(other_files)} file(s) with other extensions")

    classes: list[str] = []
    if labels:
        require_class_subfolders(files, root, "images")
        classes = sorted({f.parts[0] for f in files})
    class_index = {name: i for i, name in enumerate(classes)}

    decoded = decode_images(lambda i: root / files[i], [str(root / f) for f in files], channels, size, strict,
                            f"loading {root.name}")
    if not decoded.kept:
        raise DataError(f"no readable images in {str(root)!r}: all {len(files)} files ending in "
                        f"{', '.join(EXTENSIONS)} could not be read, e.g. {files[decoded.skipped[0][0]]} "
                        f"({decoded.skipped[0][1]})")
    warn_once(root, len(files), [f"{files[i]} ({why})" for i, why in decoded.skipped], other_files)
    kept = [files[i] for i in decoded.kept]
    label_tensor = torch.tensor([class_index[f.parts[0]] for f in kept], dtype=torch.int64) if labels else None
    return ImageSet(decoded.images, label_tensor, classes, root.resolve().name, paths=[str(f) for f in kept])


@dataclass
class Decoded:
    images: torch.Tensor               # uint8 (len(kept), C, size, size)
    kept: list[int]                    # positions of the images that could be read
    skipped: list[tuple[int, str]]     # (position, why) of those that could not


def decode_images(open_item: Callable[[int], object], names: list[str], channels: int, size: int,
                  strict: bool = False, desc: str = "loading") -> Decoded:
    """Decode images 0..len(names)-1 (open_item(i): a path or a binary file object) into uint8
    (N, channels, size, size), in threads. Unreadable ones are skipped, or with strict a DataError
    names the first (names[i] says which)."""
    mode = "L" if channels == 1 else "RGB"
    images = torch.empty((len(names), channels, size, size), dtype=torch.uint8)
    kept: list[int] = []
    skipped: list[tuple[int, str]] = []
    # Decoding and resizing release the GIL, so threads give a near-linear speed-up; a few
    # workers keep the memory of several very large images decoded at once bounded.
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            results = pool.map(lambda i: _read(open_item(i), mode, size), range(len(names)))
            for i, (pixels, error) in tqdm(enumerate(results), total=len(names), unit="img", file=sys.stderr,
                                           desc=desc, disable=len(names) <= PROGRESS_ABOVE):
                if error is not None:
                    if strict:
                        raise DataError(f"cannot read image {names[i]!r}: {error}; "
                                        f"without --strict (strict=False) it would be skipped")
                    skipped.append((i, error))
                    continue
                images[len(kept)] = torch.from_numpy(pixels.reshape(size, size, channels)).permute(2, 0, 1)
                kept.append(i)
    finally:
        # On an error or Ctrl-C, do not wait for the rest to decode.
        pool.shutdown(cancel_futures=True)
    # A view, not a copy: the rows left over are only those of the skipped images.
    return Decoded(images[:len(kept)], kept, skipped)


_warned: set = set()                  # (folder, what was said): a folder read twice in a process warns once


def warn_once(root: Path, total: int, skipped: list[str], other_files: list[str], kind: str = "image",
              suffixes: tuple[str, ...] = EXTENSIONS) -> None:
    """One `warning:` line on stderr for the files of the folder that were skipped or ignored; `kind`
    (image, audio) names the files looked for, which end in `suffixes`."""
    parts = []
    if skipped:
        more = f" and {len(skipped) - SHOWN_SKIPPED} more" if len(skipped) > SHOWN_SKIPPED else ""
        parts.append(f"skipped {len(skipped)} unreadable {kind} file(s) of {total}: "
                     f"{'; '.join(skipped[:SHOWN_SKIPPED])}{more} (strict=True / --strict makes this an error)")
    if other_files:
        kinds = sorted({Path(name).suffix.lower() or "(no extension)" for name in other_files})
        parts.append(f"ignored {len(other_files)} file(s) that are not {kind} files ({', '.join(kinds)}); "
                     f"{kind} files end in {', '.join(suffixes)}")
    message = f"warning: {str(root)!r}: " + "; ".join(parts)
    if parts and (root, message) not in _warned:
        _warned.add((root, message))
        print(message, file=sys.stderr)


def find_image_files(root: Path, suffixes: tuple[str, ...] = EXTENSIONS) -> tuple[list[Path], list[str]]:
    """Files under root ending in `suffixes` (any case; images by default) as paths relative to it, sorted
    by path parts; and the names of the other files. Hidden files and folders are left out."""
    found, others = [], []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        for name in names:
            if name.startswith("."):
                continue
            if name.lower().endswith(suffixes):
                found.append(Path(folder, name).relative_to(root))
            else:
                others.append(name)
    return sorted(found, key=lambda p: p.parts), others


def _read(file, mode: str, size: int) -> tuple[np.ndarray | None, str | None]:
    """(pixels, None) with pixels uint8 (size, size[, 3]) in `mode`, or (None, why) for a file that cannot be read."""
    try:
        with Image.open(file) as img:
            img.draft(mode, (size, size))   # JPEG only; a no-op for other formats
            img = to_8_bit(img)
            img = img.resize((size, size), Image.BICUBIC, reducing_gap=3.0)
            if img.mode == "RGBA":
                black = Image.new("RGBA", img.size, (0, 0, 0, 255))
                img = Image.alpha_composite(black, img)
            return np.array(img.convert(mode)), None   # a writable copy, as torch.from_numpy wants
    # Decoders signal bad data with many exception types (OSError for truncated files, but also
    # ValueError, SyntaxError, EOFError, DecompressionBombError...); the message goes into the
    # warning or the strict error, so a real bug here would still show.
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {e}"


def to_8_bit(img: Image.Image) -> Image.Image:
    """The image as L, RGB or RGBA (RGBA exactly when it has transparency), scaling deeper pixels to 8 bit."""
    if img.has_transparency_data:
        return img.convert("RGBA")
    if img.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(img) / 257).round().astype(np.uint8))
    if img.mode in ("I", "F"):
        pixels = np.asarray(img, dtype=np.float64).clip(min=0)
        peak = pixels.max()
        if peak > 255:
            pixels = pixels * (255 / peak)
        return Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8))
    return img if img.mode in ("L", "RGB") else img.convert("RGB")
