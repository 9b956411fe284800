"""One row of the per-method table: pretrain METHOD for a fixed wall-clock budget with its default
recipe (on Fashion-MNIST unless data.source=... says otherwise), then kNN on the full test split when
the data has labels, and for a language model (clm, mlm) the perplexity on the held-out text and a
sample. Prints one JSON line (and appends it to
--out). Run one method per process, so peak memory is the method's own:

    for m in simclr moco2 byol; do python benchmarks/methods.py $m --minutes 5 --out docs/methods.jsonl; done

The budget is the trainer's own train.minutes: a few timed steps fix the step count, so every
method gets a full warm-up + cosine schedule inside the same time. Online kNN stays on (it is part
of what a user's run costs).
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from json_lines import emit
from selfsup.config import load_config
from selfsup.data import DataError
from selfsup.evaluate.protocols import evaluate_protocol
from selfsup.run import knn_report, load_run
from selfsup.train import pretrain


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE on top of the method's recipe")
    p.add_argument("--minutes", type=float, default=15.0, help="training wall-clock budget [default: 15]")
    p.add_argument("--runs-dir", default="/tmp/selfsup-methods")
    p.add_argument("--baselines", action="store_true", help="also random-init and raw-pixel kNN")
    p.add_argument("--linear", action="store_true",
                   help="also the linear probe with all training labels (1 seed), on the cached kNN features")
    p.add_argument("--out", help="append the JSON line to this file")
    args = p.parse_intermixed_args()     # KEY=VALUE overrides may come before or after the options

    overrides = [f"method.name={args.method}", f"train.minutes={args.minutes}", *args.overrides]
    run_dir = Path(args.runs_dir) / args.method
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load_config(overrides=overrides)
    t = time.time()
    result = pretrain(cfg, run_dir, progress=False)
    train_s = time.time() - t
    run = load_run(run_dir)
    t = time.time()
    try:
        train, test = run.labelled_sets()
        data_name = cfg.data.source          # names the cached features the linear probe reuses
        report = knn_report(run, train, test, baselines=args.baselines, progress=False, data_name=data_name)
        if run.method.evaluated_backbone is not run.method.backbone:      # a teacher is evaluated (DINO)
            report["knn_top1_student"] = student_knn(run, train, test)
        if args.linear:
            report.update(linear_row(run, train, test, data_name))
    except DataError as e:                 # unlabeled data: nothing to score with kNN
        report = {"knn": f"skipped: {e}"}
    if hasattr(run.method, "summed_loss"):
        report.update(language_model(run))
    row = {"method": args.method, "overrides": args.overrides, "budget_min": args.minutes,
           "backbone": f"{cfg.backbone.name} width {cfg.backbone.width}" if cfg.backbone.name.startswith("resnet")
           else f"{cfg.backbone.name} patch {cfg.backbone.patch_size}" if cfg.backbone.name.startswith("vit")
           else f"{cfg.backbone.name} dim {cfg.backbone.dim} depth {cfg.backbone.depth}",
           "batch": cfg.train.batch_size, "epochs": round(result.epochs, 2), "train_s": round(train_s),
           "images_per_s": round(result.images_per_second, 1), "peak_memory_mb": round(result.peak_memory_mb),
           "final_loss": result.final_loss, "eval_s": round(time.time() - t), **report}
    emit(row, args.out)


def student_knn(run, train, test) -> float:
    """kNN top-1 of the network the gradient trains, for a method evaluated with its teacher (DINO):
    its method.evaluate setting switched to the student for the measurement."""
    cfg = run.method.cfg
    evaluated, cfg.evaluate = cfg.evaluate, "student"
    try:
        return knn_report(run, train, test, baselines=False, progress=False)["knn_top1"]
    finally:
        cfg.evaluate = evaluated


def linear_row(run, train, test, data_name: str) -> dict:
    """Top-1 of the linear probe over every training label, and the seconds it took."""
    [row] = evaluate_protocol(run, "linear", train, test, labels=["100%"], seeds=1, data_name=data_name,
                              progress=False, log=lambda line: None)
    return {"linear_top1": row["mean"], "linear_s": row["seconds"]}


def language_model(run) -> dict:
    """Validation loss and perplexity on the held-out text; a sample for a next-token model."""
    from selfsup.pipeline import evaluate_perplexity
    from selfsup.text.generate import continue_prompt
    measured = evaluate_perplexity(run)
    result = {"val_loss": round(measured["loss"], 4), "val_perplexity": round(measured["perplexity"], 3),
              "val_tokens": measured["tokens"]}
    if getattr(run.backbone, "causal", False):
        result["sample"] = "The " + continue_prompt(run, "The ", max_new_tokens=300, seed=0)
    return result


if __name__ == "__main__":
    main()
