"""Batched augmentation vs the same recipe applied one image at a time (the per-image loop a
torchvision-style Dataset runs); prints JSON with both rates and their ratio.

    python benchmarks/augment.py --batch 256 --size 28 --channels 1
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from selfsup.augment import AugmentConfig, augment


def rate(fn, images: int, repeats: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return images * repeats / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--blur-p", type=float, default=0.0)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    cfg = AugmentConfig(size=args.size, blur_p=args.blur_p, mean=[0.5] * args.channels, std=[0.25] * args.channels)
    batch = torch.randint(0, 256, (args.batch, args.channels, args.size, args.size), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    batched = rate(lambda: augment(batch, cfg, gen), args.batch, args.repeats)
    per_image = rate(lambda: [augment(batch[i:i + 1], cfg, gen) for i in range(args.batch)], args.batch,
                     max(1, args.repeats // 5))
    print(json.dumps({"benchmark": "augment", "batch": args.batch, "size": args.size, "channels": args.channels,
                      "threads": torch.get_num_threads(), "batched_images_per_s": round(batched),
                      "per_image_images_per_s": round(per_image), "speedup": round(batched / per_image, 1)},
                     indent=1))


if __name__ == "__main__":
    main()
