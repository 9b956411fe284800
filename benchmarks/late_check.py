"""The late finiteness check on a real device; prints JSON.

    python benchmarks/late_check.py --device cuda

On a GPU the training step copies its loss and gradient norm to pinned host memory and reads them a
step later (selfsup.train.LateChecks); that path runs only on CUDA, so CI (CPU only) never takes it.
This trains SimCLR on random images with the loss made NaN at step 2 and reports what the run did:
which step the error named, which checkpoints were left and whether their weights are finite. With
checkpoints every 2 steps the answer to expect is: "at step 2", checkpoints [2] only, finite.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import selfsup
from json_lines import emit
from selfsup.checkpoint import list_checkpoints
from selfsup.errors import TrainingError
from selfsup.methods.simclr import SimCLR
from selfsup.run import load_run
from selfsup.train import pretrain


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--compile", action="store_true", help="with train.compile (and --compile-mode)")
    p.add_argument("--compile-mode", default="default")
    p.add_argument("--out", help="append the JSON (one line) to this file")
    args = p.parse_args()

    real_loss, calls = SimCLR.loss, []

    def loss_that_breaks_at_step_2(self, views):
        calls.append(1)
        loss, logs = real_loss(self, views)
        return (loss * float("nan"), logs) if len(calls) == 3 else (loss, logs)
    SimCLR.loss = loss_that_breaks_at_step_2

    images = np.random.default_rng(0).integers(0, 256, (256, 28, 28), dtype=np.uint8)
    cfg = selfsup.load_config(overrides=[
        "backbone.width=0.25", "train.batch_size=64", "train.steps=10", "train.checkpoint_every=2",
        "eval.online_every=0", f"train.device={args.device}", f"train.precision={args.precision}",
        f"train.compile={str(args.compile).lower()}", f"train.compile_mode={args.compile_mode}"])
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run"
        try:
            pretrain(cfg, run_dir, data=selfsup.from_array(images), progress=False)
            message = None
        except TrainingError as error:
            message = str(error)
        kept = [int(stem.name.removeprefix("step-")) for stem in list_checkpoints(run_dir / "checkpoints")]
        finite = all(torch.isfinite(p).all().item() for p in load_run(run_dir).method.parameters()) if kept else None
    out = {"benchmark": "late_check", "device": args.device, "precision": args.precision, "compile": args.compile,
           "compile_mode": args.compile_mode if args.compile else None, "torch": torch.__version__,
           "error": message, "names_step_2": message is not None and "at step 2;" in message,
           "checkpoints": kept, "checkpoint_weights_finite": finite,
           "as_expected": message is not None and "at step 2;" in message and kept == [2] and bool(finite)}
    emit(out, args.out)


if __name__ == "__main__":
    main()
