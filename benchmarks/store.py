"""Pack a synthetic photo-like image folder into a store and time it (issue 24's packing figures).

    python benchmarks/store.py --count 200000 --folder /tmp/photos --store /tmp/photos.store

The folder is generated once (procedural JPEGs with ImageNet-like sizes: about 500 x 375 on average,
aspect ratios from 3:5 to 5:3, smooth colour fields with soft-edged blocks and noise so that they
compress like photos; about 8 ms an image on one core), in 10 class subfolders. Prints one JSON line:
images, generation seconds (0 when the folder existed), pack seconds and images/s, store bytes, bytes
per image, and a second pack's seconds (which must find the store up to date).
"""
import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from selfsup.data.store import pack

CLASSES = 10


def photo(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    width = int(np.clip(rng.normal(500, 90), 200, 900))
    aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.67))))
    height = int(np.clip(width / aspect, 150, 900))
    coarse = rng.integers(0, 256, (rng.integers(3, 9), rng.integers(3, 9), 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    # 16-px blocks with soft 4-px edges: nearest-neighbour at a quarter of the size, then bilinear up
    # (as soft as a Gaussian blur of radius 2, at a quarter of its cost).
    blocks = Image.fromarray(rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8))
    edges = blocks.resize((width // 4, height // 4), Image.NEAREST).resize((width, height), Image.BILINEAR)
    img = Image.blend(img, edges, 0.3)
    # Sensor-like noise cut from one fixed field at a random offset: drawing fresh normals for every
    # pixel took two thirds of the generation time.
    noise = noise_field()
    top, left = rng.integers(0, NOISE_SIDE - height + 1), rng.integers(0, NOISE_SIDE - width + 1)
    noisy = np.asarray(img, dtype=np.int16) + noise[top:top + height, left:left + width]
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


NOISE_SIDE = 1024
_noise: list[np.ndarray] = []


def noise_field() -> np.ndarray:
    if not _noise:
        field = np.random.default_rng(0).normal(0, 6, (NOISE_SIDE, NOISE_SIDE, 3))
        _noise.append(np.clip(np.round(field), -127, 127).astype(np.int16))
    return _noise[0]


def write(args) -> None:
    folder, index = args
    path = Path(folder) / f"class{index % CLASSES}" / f"{index:07d}.jpg"
    if not path.exists():
        photo(index).save(path, "JPEG", quality=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=200_000)
    p.add_argument("--folder", default="/tmp/selfsup-photos")
    p.add_argument("--store", default="/tmp/selfsup-photos.store")
    p.add_argument("--max-side", type=int, default=512)
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args()
    folder = Path(args.folder)
    for c in range(CLASSES):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers or os.cpu_count()) as pool:
        list(pool.map(write, [(str(folder), i) for i in range(args.count)], chunksize=64))
    generated = time.perf_counter() - start
    print(f"generated {args.count} images in {generated:.0f} s; packing", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = pack(folder, args.store, max_side=args.max_side, workers=args.workers, progress=False)
    packed = time.perf_counter() - start
    start = time.perf_counter()
    again = pack(folder, args.store, max_side=args.max_side, workers=args.workers, progress=False)
    second = time.perf_counter() - start
    source_bytes = sum(f.stat().st_size for f in folder.rglob("*.jpg"))
    print(json.dumps({"images": result.images, "generate_s": round(generated, 1), "pack_s": round(packed, 1),
                      "pack_images_per_s": round(result.images / packed, 1), "store_bytes": result.bytes,
                      "bytes_per_image": round(result.bytes / result.images), "source_bytes": source_bytes,
                      "second_pack_s": round(second, 2), "second_pack_did_work": again.packed,
                      "workers": args.workers or os.cpu_count(), "max_side": args.max_side}))


if __name__ == "__main__":
    main()
