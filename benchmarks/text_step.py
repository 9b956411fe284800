"""A text method's training step, eager and compiled, on synthetic token rows; prints JSON.

    python benchmarks/text_step.py --method clm --padded 0        # packed windows: no PAD anywhere
    python benchmarks/text_step.py --method mlm --padded 1        # one document a row, all padded

Rows are `--length` tokens from a `--vocab`-token vocabulary; a share `--padded` of them holds a
document of uniform random length and PAD after it (right padded, as every row selfsup makes), the
others are full. Per mode (eager; torch.compile with --compile-modes): the mean time of a step
(views, forward, backward, AdamW update) over --steps steps after --warmup, samples/s, and for the
compiled modes the compile warm-up and the graph breaks dynamo counted. On a GPU each timed stretch
ends with a synchronize, so the times are the device's.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch._dynamo.utils import counters

from json_lines import emit
from selfsup.build import build_method
from selfsup.config import load_config
from selfsup.text.tokenizer import BOS, NUM_SPECIAL, PAD
from selfsup.train import Objective, step_generator
from throughput import sync


def token_rows(count: int, length: int, vocab: int, padded: float, seed: int = 0) -> torch.Tensor:
    """(count, length) int64: BOS, then ordinary tokens; a `padded` share of the rows ends early in PAD."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(NUM_SPECIAL, vocab, (count, length), generator=gen)
    rows[:, 0] = BOS
    ends = torch.randint(2, length, (count,), generator=gen)
    short = torch.rand(count, generator=gen) < padded
    rows[short[:, None] & (torch.arange(length) >= ends[:, None])] = PAD
    return rows


def time_steps(method, objective, optimizer, rows: torch.Tensor, batch: int, first: int, steps: int,
               device: torch.device) -> float:
    """Seconds a step, mean over `steps` steps from step `first`."""
    sync(device)
    started = time.perf_counter()
    for step in range(first, first + steps):
        start = (step * batch) % (len(rows) - batch)
        views = method.views(rows[start:start + batch], step_generator(0, step, 0, device))
        loss, _ = objective(views)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return (time.perf_counter() - started) / steps


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="clm", help="a text method: clm, mlm, simcse [default: clm]")
    p.add_argument("--backbone", default="", help="[default: the method's recipe (gpt for clm, transformer "
                                                  "for mlm)]")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--length", type=int, default=128, help="tokens a row [default: 128]")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--padded", type=float, default=0.0, help="share of the rows that end in PAD [default: 0]")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (the compile happens here)")
    p.add_argument("--compile-modes", nargs="*", default=["default"],
                   help="torch.compile modes to time after eager, e.g. default reduce-overhead [default: default]")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--out", help="append the JSON (one line) to this file")
    args = p.parse_args()

    device = torch.device(args.device)
    overrides = [f"method.name={args.method}", f"text.vocab_size={args.vocab}", f"text.max_length={args.length}",
                 f"backbone.dim={args.dim}", f"backbone.depth={args.depth}", f"backbone.heads={args.heads}",
                 *([f"backbone.name={args.backbone}"] if args.backbone else [])]
    cfg = load_config(overrides=overrides)
    rows = token_rows(max(8 * args.batch, 512), args.length, args.vocab, args.padded).to(device)
    record = {"method": args.method, "backbone": cfg.backbone.name, "dim": args.dim, "depth": args.depth,
              "length": args.length, "vocab": args.vocab, "padded": args.padded, "batch": args.batch,
              "precision": args.precision, "device": str(device), "torch": torch.__version__}
    for mode in ["eager", *args.compile_modes]:
        torch._dynamo.reset()
        counters.clear()
        method = build_method(cfg).to(device).train()
        objective = Objective(method)
        if mode != "eager":
            objective = torch.compile(objective, mode=mode)
        optimizer = torch.optim.AdamW(method.parameters(), lr=1e-4)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            started = time.perf_counter()
            time_steps(method, objective, optimizer, rows, args.batch, 0, args.warmup, device)
            warmup = time.perf_counter() - started
            seconds = time_steps(method, objective, optimizer, rows, args.batch, args.warmup, args.steps, device)
        record[mode] = {"ms_per_step": round(seconds * 1e3, 2), "samples_per_s": round(args.batch / seconds, 1),
                        "warmup_s": round(warmup, 1)}
        if mode != "eager":
            record[mode]["graph_breaks"] = sum(counters["graph_break"].values())
    emit(record, args.out)


if __name__ == "__main__":
    main()
