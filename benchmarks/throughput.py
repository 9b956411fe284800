"""Training throughput of one method/backbone on synthetic uint8 images; prints JSON.

    python benchmarks/throughput.py --precision fp32 bf16      # both, with the bf16/fp32 ratio

Per precision: source images/s (each image gives the method's views), the step time split
into data (index + copy to device), augmentation, forward+backward and optimizer, peak
memory, and model FLOP/s (counted by torch's FlopCounterMode on one step) as a fraction of
this machine's matmul peak, which the script measures itself in the same precision. A large 3x3
convolution is timed too: on some CPUs (MKL on AMD) the convolution library beats the matmul
library, so the fraction of the better of the two peaks is given as well; it is the stricter one.

The split waits for the device between the parts, so it adds up each part's full time. The training
loop does not: `loop` times the loop's own step (selfsup.train.TrainStep: learning rates, views, loss,
backward, clipping, finiteness check, update) over the same number of steps, waiting only at the end,
once with each step's finiteness check read in the step (`check_read_at_once`, the loop before
2026-12-07) and once read a step late (`check_read_a_step_late`, the loop now), which lets the host
queue the next step while a GPU still computes this one.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from selfsup.config import load_config
from selfsup.optim import build_optimizer
from selfsup.precision import autocast, grad_scaler
from selfsup.build import build_method
from selfsup.run_folder import RunFolder
from selfsup.runtime import peak_memory_mb, prepare_device, resolve_device, resolve_precision
from selfsup.train import Objective, TrainStep, compile_training, step_generator


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(precision: str, device, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large square matmul in the given precision: the machine's practical peak."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t)


def conv_peak(precision: str, device, batch: int = 16, channels: int = 512, side: int = 32, repeats: int = 3) -> float:
    """FLOP/s of a large 3x3 convolution (channels_last) in the given precision."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    x = torch.randn(batch, channels, side, side, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        F.conv2d(x, w, padding=1)
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        F.conv2d(x, w, padding=1)
    sync(device)
    return 2 * batch * channels * channels * 9 * side * side * repeats / (time.perf_counter() - t)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(args, precision: str) -> dict:
    device = prepare_device(resolve_device(args.device))
    cfg = load_config(overrides=[f"method.name={args.method}", f"backbone.name={args.backbone}",
                                 f"backbone.width={args.width}", f"backbone.stem={args.stem}",
                                 f"train.batch_size={args.batch}", f"augment.size={args.size}",
                                 f"augment.mean={[0.5] * args.channels}", f"augment.std={[0.25] * args.channels}",
                                 f"train.channels_last={args.channels_last}", f"backbone.patch_size={args.patch_size}"])
    method = build_method(cfg, args.channels).to(device)
    if args.channels_last:
        method = method.use_channels_last()
    method.train()
    objective = Objective(method)
    if args.compile:
        objective = compile_training(objective, args.compile_mode)
    optimizer = build_optimizer(method, cfg.optim)
    scaler = grad_scaler(device.type, precision)
    # As in training: on a GPU the uint8 data set lives on the device.
    images = torch.randint(0, 256, (args.batch * 4, args.channels, args.size, args.size), dtype=torch.uint8,
                           device=device if device.type == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def batch_of(step: int) -> torch.Tensor:
        idx = torch.randint(0, images.shape[0], (args.batch,), device=images.device)
        return images[idx].to(device, non_blocking=True)

    def one_step(step: int, timings: dict | None):
        t0 = time.perf_counter()
        batch = batch_of(step)
        sync(device)
        t1 = time.perf_counter()
        views = method.views(batch, step_generator(0, step, 0, device))
        sync(device)
        t2 = time.perf_counter()
        with autocast(device.type, precision):
            loss, _ = objective(views)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        sync(device)
        t3 = time.perf_counter()
        scaler.step(optimizer)
        scaler.update()
        method.after_step(0.5)
        sync(device)
        t4 = time.perf_counter()
        if timings is not None:
            for key, dt in (("data", t1 - t0), ("augment", t2 - t1), ("forward_backward", t3 - t2),
                            ("optimizer", t4 - t3)):
                timings[key] += dt

    for step in range(args.warmup):
        one_step(step, None)
    counter = FlopCounterMode(display=False)
    with counter:
        one_step(args.warmup, None)
    flops_per_step = counter.get_total_flops()
    timings = dict(data=0.0, augment=0.0, forward_backward=0.0, optimizer=0.0)
    for step in range(args.steps):
        one_step(args.warmup + 1 + step, timings)
    step_time = sum(timings.values()) / args.steps
    loop = {name: timed_loop(cfg, method, objective, optimizer, scaler, batch_of, device, precision, args, lag)
            for name, lag in (("check_read_at_once", 0), ("check_read_a_step_late", 1))}
    peak = matmul_peak(precision, device)
    best_peak = max(peak, conv_peak(precision, device))
    model_flops = flops_per_step / (timings["forward_backward"] / args.steps)
    return {
        "precision": precision,
        "images_per_s": round(args.batch / step_time, 1),
        "step_ms": round(1000 * step_time, 2),
        "split_ms": {k: round(1000 * v / args.steps, 2) for k, v in timings.items()},
        "augment_share": round(timings["augment"] / sum(timings.values()), 4),
        "optimizer_share": round(timings["optimizer"] / sum(timings.values()), 4),
        "model_gflop_per_step": round(flops_per_step / 1e9, 2),
        "model_tflop_s": round(model_flops / 1e12, 3),
        "matmul_peak_tflop_s": round(peak / 1e12, 3),
        "fraction_of_matmul_peak": round(model_flops / peak, 3),
        "conv_or_matmul_peak_tflop_s": round(best_peak / 1e12, 3),
        "fraction_of_best_peak": round(model_flops / best_peak, 3),
        "peak_memory_mb": round(peak_memory_mb(device)),
        "loop": loop,
    }


def timed_loop(cfg, method, objective, optimizer, scaler, batch_of, device, precision: str, args, lag: int) -> dict:
    """The training loop's step, `args.steps` of them after `args.warmup`, with its finiteness check read
    `lag` steps late; the device is waited for at the end only, as in training."""
    with tempfile.TemporaryDirectory() as scratch:       # where a failed check would look for a checkpoint
        train_step = TrainStep(cfg, method, objective, optimizer, scaler, batch_of, warmup_steps=0,
                               folder=RunFolder(scratch), rank=0, device=device, precision=precision, check_lag=lag)
        total = args.warmup + args.steps
        for step in range(args.warmup):
            train_step(step, total)
        train_step.settle()
        sync(device)
        start = time.perf_counter()
        for step in range(args.warmup, total):
            train_step(step, total)
        train_step.settle()
        sync(device)
        seconds = (time.perf_counter() - start) / args.steps
    return {"images_per_s": round(args.batch / seconds, 1), "step_ms": round(1000 * seconds, 2)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="simclr")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--stem", default="cifar")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--patch-size", type=int, default=4, help="ViT patch side [default: 4]")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training step's forward and the augmentation (compiled in the warm-up)")
    p.add_argument("--compile-mode", default="default", help="torch.compile's mode [default: default]")
    p.add_argument("--out", help="append the JSON (one line) to this file")
    p.add_argument("--device", default="auto")
    p.add_argument("--channels-last", default=True, action=argparse.BooleanOptionalAction)
    p.add_argument("--steps", type=int, default=5, help="timed steps per precision")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    args = p.parse_args()
    results = [measure(args, precision) for precision in args.precision]
    out = {"benchmark": "throughput", "compile": args.compile,
           "compile_mode": args.compile_mode if args.compile else None, "method": args.method, "backbone": args.backbone, "width": args.width,
           "stem": args.stem, "batch": args.batch, "size": args.size, "channels": args.channels,
           "device": str(resolve_device(args.device)), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu": cpu_model(), "results": results}
    by_precision = {r["precision"]: r for r in results}
    if "fp32" in by_precision and "bf16" in by_precision:
        out["bf16_speedup"] = round(by_precision["bf16"]["images_per_s"] / by_precision["fp32"]["images_per_s"], 2)
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
