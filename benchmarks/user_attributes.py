"""User attributes from the user representation (issue 27, docs/recommendation.md): for a pretrained
recommendation run and each attribute (MovieLens-100K: gender, age in 4 bands, occupation), the linear
probe on the frozen user representation (the backbone's output pooled over the history), the same
probe on the bag of items the user had ('raw'), and the same network trained from scratch on the
labels ('supervised'), each with --labels of the training users over --seeds draws. Users are split
into parts by a hash of their id (selfsup/modalities/interactions.py); the test part gives the
figures. One JSON line per (attribute, protocol, budget), appended to --out.

    python benchmarks/user_attributes.py runs/rec27/nextitem-10-then-0-seed0/pretrain --out docs/recommendation-users-cpu.jsonl
"""
from __future__ import annotations

import argparse
import time

from json_lines import emit
from selfsup.evaluate.protocols import evaluate_protocol
from selfsup.run import load_run


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--attributes", nargs="+", default=["gender", "age", "occupation"])
    p.add_argument("--protocols", nargs="+", default=["linear", "raw", "supervised"])
    p.add_argument("--labels", nargs="+", default=["10%", "100%"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", help="append the JSON lines to this file too")
    args = p.parse_args()
    run = load_run(args.run_dir)
    for attribute in args.attributes:
        run.config.interactions.label = attribute          # which user attribute labels the users
        train, test = run.labelled_sets(part="test")
        majority = float(test.labels.bincount().max()) / len(test)
        for protocol in args.protocols:
            started = time.time()
            rows = evaluate_protocol(run, protocol, train, test, labels=args.labels, seeds=args.seeds,
                                     data_name=f"users by {attribute}", progress=False, log=lambda _: None)
            for row in rows:
                emit({"run": args.run_dir, "attribute": attribute, "classes": int(train.labels.unique().numel()),
                      "majority_share": round(majority, 4),
                      "train_users": len(train), "test_users": len(test), "protocol": protocol,
                      "labels": row["labels"], "seeds": row["seeds"], "mean": row["mean"],
                      "std": row.get("std"), "seconds": round(time.time() - started, 1)}, args.out)


if __name__ == "__main__":
    main()
