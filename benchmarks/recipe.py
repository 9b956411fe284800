"""One recipe experiment: pretrain with KEY=VALUE overrides, then kNN on the validation part
carved from the training data (a screen chooses on it; --on test gives the final figure of the
recipe chosen); prints one JSON line (train seconds, epochs, images/s, peak memory, kNN top-1).

    python benchmarks/recipe.py NAME train.epochs=2 optim.lr=4.0 [--baselines] [--eval-size 28]
    python benchmarks/recipe.py NAME --run-dir runs/default --eval-size 24    # score a finished run again

The run folder is /tmp/selfsup-recipes/NAME, or --run-dir (then nothing is trained and the training
fields of the line are left out).
"""
from __future__ import annotations

import argparse
import json
import time

from selfsup.config import load_config
from selfsup.run import knn_report, labelled_eval_sets, load_run
from selfsup.train import pretrain


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--baselines", action="store_true", help="also random-init and raw-pixel kNN")
    p.add_argument("--eval-size", type=int, help="re-evaluate at this image side (augment.eval_size)")
    p.add_argument("--on", choices=["val", "test"], default="val",
                   help="the held-out part scored: val while choosing, test for the chosen recipe [default: val]")
    p.add_argument("--run-dir", help="score this finished run (e.g. at another --eval-size) instead of pretraining")
    args = p.parse_intermixed_args()     # KEY=VALUE overrides may come before or after the options
    if args.run_dir and args.overrides:
        p.error("--run-dir scores a finished run as it was trained; KEY=VALUE overrides need a new run")
    run_dir = args.run_dir or f"/tmp/selfsup-recipes/{args.name}"
    training = {}
    if not args.run_dir:
        t = time.time()
        result = pretrain(load_config(overrides=args.overrides), run_dir, progress=False)
        training = {"train_s": round(time.time() - t), "epochs": result.epochs,
                    "images_per_s": round(result.images_per_second), "peak_memory_mb": round(result.peak_memory_mb),
                    "final_loss": result.final_loss}
    run = load_run(run_dir)
    if args.eval_size is not None:
        run.config.augment.eval_size = args.eval_size
    train, held_out = labelled_eval_sets(run.config, part=args.on)
    t = time.time()
    report = knn_report(run, train, held_out, baselines=args.baselines, progress=False)
    print(json.dumps({"name": args.name, "run_dir": run_dir, "overrides": args.overrides, "scored_on": args.on,
                      "eval_size": run.config.augment.eval_size, "eval_s": round(time.time() - t), **training,
                      **report}))


if __name__ == "__main__":
    main()
