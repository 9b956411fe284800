"""Batched augmentation vs the same recipe applied one image at a time (the per-image loop a
torchvision-style Dataset runs); prints JSON with both rates, their ratio, and how many device ops
(kernels on a GPU) one batched call runs.

    python benchmarks/augment.py --batch 256 --size 28 --channels 1
    python benchmarks/augment.py --batch 64 --size 224 --channels 3 --per-image-repeats 0

The views are made as a training step makes them: `--copies` views of each image in one call, with
SimCLR's colour strengths (brightness and contrast 2.0, saturation 1.0, hue 0.25), which are what
`benchmarks/throughput.py` trains with.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from json_lines import emit
from selfsup.augment import AugmentConfig, augment_views
from selfsup.runtime import resolve_device

# Ops that allocate or relabel memory without running a kernel over it.
NO_KERNEL = {torch.ops.aten.empty, torch.ops.aten.empty_like, torch.ops.aten.empty_strided, torch.ops.aten.lift_fresh,
             torch.ops.aten.detach, torch.ops.aten.scalar_tensor}


class CountOps(TorchDispatchMode):
    """Counts the ops that reach the backend and compute something: each is a kernel launch on a GPU.
    Views, allocations and 0-dim results (Python scalars, which a GPU kernel takes as arguments) are
    not counted."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        results = out if isinstance(out, (tuple, list)) else (out,)
        if not func.is_view and func.overloadpacket not in NO_KERNEL and \
                any(isinstance(r, torch.Tensor) and r.dim() > 0 for r in results):
            self.count += 1
        return out


def median_seconds(fn, repeats: int, device: torch.device) -> float:
    # torch.cuda.synchronize directly, not selfsup.runtime's: with PYTHONPATH at an older checkout (gpu_check.sh's
    # BEFORE) this script imports only what every checkout since the batched augmentation has
    wait = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    times = []
    for _ in range(repeats):
        wait()
        t = time.perf_counter()
        fn()
        wait()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--copies", type=int, default=2, help="views of each image per call, as a training step makes")
    p.add_argument("--blur-p", type=float, default=0.0)
    p.add_argument("--solarize-p", type=float, default=0.0)
    p.add_argument("--repeats", type=int, default=9, help="timed batched calls (the median is reported)")
    p.add_argument("--per-image-repeats", type=int, default=1, help="timed per-image loops; 0 skips the baseline")
    p.add_argument("--out", default="", help="append the JSON (one line) to this file")
    args = p.parse_args()
    cfg = AugmentConfig(size=args.size, brightness=2.0, contrast=2.0, saturation=1.0, hue=0.25, blur_p=args.blur_p,
                        solarize_p=args.solarize_p, mean=[0.5] * args.channels, std=[0.25] * args.channels)
    cfg.validate()
    device = resolve_device(args.device)
    batch = torch.randint(0, 256, (args.batch, args.channels, args.size, args.size), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0)).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    views = args.batch * args.copies
    counter = CountOps()
    with counter:
        augment_views(batch, cfg, gen, args.copies)
    row = {"benchmark": "augment", "batch": args.batch, "copies": args.copies, "size": args.size,
           "channels": args.channels, "device": str(device), "blur_p": args.blur_p, "solarize_p": args.solarize_p,
           "threads": torch.get_num_threads(), "ops_per_call": counter.count}
    batched = median_seconds(lambda: augment_views(batch, cfg, gen, args.copies), args.repeats, device)
    row.update(ms_per_call=round(batched * 1000, 3), batched_views_per_s=round(views / batched))
    if args.per_image_repeats:
        per_image = median_seconds(lambda: [augment_views(batch[i:i + 1], cfg, gen, args.copies)
                                            for i in range(args.batch)], args.per_image_repeats, device)
        row.update(per_image_views_per_s=round(views / per_image), speedup=round(per_image / batched, 1))
    emit(row, args.out)


if __name__ == "__main__":
    main()
