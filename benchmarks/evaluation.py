"""The few-label table of a run: kNN, linear probe, fine-tuning and the supervised-from-scratch
baseline at several label budgets, each over several seeds, with the time each protocol takes.
Prints one JSON line per (protocol, budget) and a final summary line; --out appends them.

    python benchmarks/evaluation.py runs/default --labels 1% 10% 100% --seeds 3 --out docs/evaluation-cpu.jsonl

The frozen-feature cache of the run is emptied first, so the first frozen protocol's time
includes the one feature pass (reported apart as "feature_seconds"). Fine-tuning and the baseline
train --steps batches, or --epochs passes over the labels when that is more; with --search both
choose their learning rate and weight decay from the same grid on the validation part.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from selfsup.evaluate.features import PROBE_FEATURES, kinds_read
from selfsup.evaluate.finetune import FinetuneSettings
from selfsup.evaluate.protocols import (SEARCH_LR, SEARCH_WEIGHT_DECAY, SEARCHABLE, cached_features,
                                        evaluate_protocol, finetune_settings)
from selfsup.run import load_run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--labels", nargs="+", default=["1%", "10%", "100%"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--protocols", nargs="+", default=["knn", "linear", "finetune", "supervised"],
                   help="any of knn linear propagate finetune selftrain supervised raw")
    p.add_argument("--steps", type=int, default=FinetuneSettings.steps)
    p.add_argument("--epochs", type=float, default=FinetuneSettings.epochs,
                   help="finetune and supervised: at least this many passes over the labels")
    p.add_argument("--search", action="store_true",
                   help="finetune and supervised: choose lr and weight decay on the validation part, from the "
                        "same grid for both")
    p.add_argument("--search-lr", type=float, nargs="+", default=list(SEARCH_LR))
    p.add_argument("--search-weight-decay", type=float, nargs="+", default=list(SEARCH_WEIGHT_DECAY))
    p.add_argument("--lr", type=float, help="finetune and supervised: the head's learning rate (the backbone's "
                                             "too, for supervised) [default: the modality's]")
    p.add_argument("--weight-decay", type=float, help="finetune, selftrain and supervised: AdamW weight decay "
                                                       "[default: the modality's]")
    p.add_argument("--backbone-lr-scale", type=float,
                   help="finetune: backbone lr / head lr (1.0 with --no-probe-init = the supervised recipe) "
                        "[default: the modality's]")
    p.add_argument("--probe-init", default=True, action=argparse.BooleanOptionalAction,
                   help="finetune: start the head from a linear probe (LP-FT)")
    p.add_argument("--features", choices=PROBE_FEATURES, default="pooled",
                   help="linear: the frozen features the probe reads (selfsup evaluate linear --features)")
    p.add_argument("--out", help="append the JSON lines to this file")
    args = p.parse_args()

    run = load_run(args.run_dir)
    train, test = run.labelled_sets()
    val = run.labelled_sets(part="val")[1] if args.search else None
    name = run.config.data.source
    started = time.time()
    lines = [{"images": len(train) + len(test)}]
    if set(args.protocols) & {"knn", "linear", "propagate"}:      # the frozen protocols share one feature pass
        shutil.rmtree(Path(args.run_dir) / "eval" / "features", ignore_errors=True)
        for split, images in (("train", train), ("test", test)):
            cached_features(run, images, f"{name} {split}")
        lines[0]["feature_seconds"] = round(time.time() - started, 1)
    if args.features != "pooled" and "linear" in args.protocols:
        map_started = time.time()
        for kind in (kind for kind in kinds_read(args.features) if kind != "pooled"):
            for split, images in (("train", train), ("test", test)):
                cached_features(run, images, f"{name} {split}", kind=kind)
        lines[0]["map_feature_seconds"] = round(time.time() - map_started, 1)
    for protocol in args.protocols:
        for labels in args.labels:
            settings = None
            if protocol in ("finetune", "selftrain", "supervised"):
                settings = finetune_settings(run, protocol, steps=args.steps, epochs=args.epochs, lr=args.lr,
                                             weight_decay=args.weight_decay,
                                             backbone_lr_scale=args.backbone_lr_scale, probe_init=args.probe_init)
            features = args.features if protocol == "linear" else "pooled"
            search = {"lr": args.search_lr, "weight_decay": args.search_weight_decay} \
                if args.search and protocol in SEARCHABLE else None
            for row in evaluate_protocol(run, protocol, train, test, [labels], args.seeds, name, settings=settings,
                                         progress=False, log=lambda text: print(text, file=sys.stderr),
                                         features=features, val=val, search=search):
                steps = settings.steps_for(row["num_labels"]) if settings else None
                lines.append({k: row[k] for k in ("protocol", "labels", "num_labels", "seeds", "top1", "mean",
                                                  "std", "seconds")} | {"steps": steps}
                             | ({"settings": row["settings"]} if settings else {})
                             | ({"search": row["search"]} if "search" in row else {})
                             | ({"features": features} if protocol == "linear" else {}))
    lines.append({"run": str(args.run_dir), "step": run.step, "threads": torch.get_num_threads(),
                  "total_seconds": round(time.time() - started, 1)})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    print(text, end="")
    if args.out:
        with open(args.out, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
