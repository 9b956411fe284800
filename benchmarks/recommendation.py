"""One row of the recommendation table (issue 27, docs/recommendation.md): pretrain a sequence method
on an interaction log (MovieLens-100K by default: `selfsup data fetch movielens-100k`) for --minutes,
optionally fine-tune it on next-item prediction for --then-nextitem more minutes from the pretrained
backbone (train.init_from), then HR@k, NDCG@k and MRR with full ranking on the leave-one-out test
items, next to the most-popular and item-kNN baselines. Prints one JSON line (appended to --out).

    python benchmarks/recommendation.py nextitem --minutes 10 --seed 0 --out docs/recommendation.jsonl
    python benchmarks/recommendation.py maskeditem --minutes 5 --then-nextitem 5 --seed 0 --out ...

On a shared machine, --quiet-file makes each stage wait while another job's marker (any `quiet*` file
beside it) exists, then hold its own marker for --quiet-seconds, the stage's timing trial and
re-plan, so that a watcher can pause the other jobs meanwhile (the budget's step count is then
timed on a quiet machine; only the wall time of the rest stretches).

The model is scored twice: at its last checkpoint (what `selfsup pretrain` reports) and at the
checkpoint with the best validation NDCG@k of the online monitor (chosen on the validation items,
never the test items).
"""
from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from pathlib import Path

from selfsup.checkpoint import read_pointer
from selfsup.config import load_config
from selfsup.evaluate.ranking import ranking_report
from selfsup.interactions.data import ITEM_OFFSET
from selfsup.pipeline import pretrain_and_evaluate
from selfsup.run import load_run
from selfsup.run_folder import RunFolder


def hold_quiet(marker: Path | None, seconds: float) -> None:
    """Wait while another job's quiet marker exists, then hold `marker` for `seconds`."""
    if marker is None:
        return
    while any(p != marker for p in marker.parent.glob("quiet*")):
        time.sleep(5)
    marker.touch()
    threading.Timer(seconds, lambda: marker.unlink(missing_ok=True)).start()


def train(method: str, minutes: float, seed: int, run_dir: Path, overrides: list[str], init_from: Path | None = None,
          quiet: tuple[Path | None, float] = (None, 0.0)):
    shutil.rmtree(run_dir, ignore_errors=True)
    hold_quiet(*quiet)
    settings = [f"method.name={method}", f"train.minutes={minutes}", f"train.seed={seed}", "eval.report=false",
                "interactions.label=", *overrides]
    if init_from is not None:
        settings.append(f"train.init_from={init_from}")
    started = time.time()
    result = pretrain_and_evaluate(load_config(overrides=settings), run_dir, progress=False)
    return result, time.time() - started


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", help="nextitem, maskeditem or cl4srec")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE on top of the method's recipe")
    p.add_argument("--minutes", type=float, default=10.0, help="pretraining budget [default: 10]")
    p.add_argument("--then-nextitem", type=float, default=0.0, metavar="MINUTES",
                   help="then fine-tune on next-item prediction for this long [default: 0, no fine-tuning]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="movielens-100k")
    p.add_argument("--runs-dir", default="/tmp/selfsup-recommendation")
    p.add_argument("--out", help="append the JSON line to this file")
    p.add_argument("--quiet-file", type=Path, help="the marker that asks other jobs to pause (see above)")
    p.add_argument("--quiet-seconds", type=float, default=60.0)
    args = p.parse_intermixed_args()
    quiet = (args.quiet_file, args.quiet_seconds)

    overrides = [f"data.source={args.data}", *args.overrides]
    base = Path(args.runs_dir) / f"{args.method}-{args.minutes:g}-then-{args.then_nextitem:g}-seed{args.seed}"
    stages = [train(args.method, args.minutes, args.seed, base / "pretrain", overrides, quiet=quiet)]
    if args.then_nextitem:
        stages.append(train("nextitem", args.then_nextitem, args.seed, base / "finetune", overrides, base / "pretrain",
                            quiet))
    final, _ = stages[-1]
    run_dir = base / ("finetune" if args.then_nextitem else "pretrain")
    row = {"method": args.method, "then_nextitem_min": args.then_nextitem, "minutes": args.minutes,
           "seed": args.seed, "data": args.data, "overrides": args.overrides,
           "stages": [{"steps": r.summary["steps"], "epochs": r.summary["epochs"], "train_s": r.summary["seconds"],
                       "rows_per_s": r.summary["images_per_s"], "peak_memory_mb": r.summary["peak_memory_mb"],
                       "wall_s": round(wall, 1)} for r, wall in stages],
           "test_last": {name: final.ranking[name] for name in ("model", "most_popular", "item_knn")},
           "k": final.ranking["k"], "users": final.ranking["users"]}
    best = read_pointer(RunFolder(run_dir).checkpoints, "best")
    if best is not None:
        run = load_run(run_dir, best.with_suffix(".safetensors"))
        split = run.modality.leave_one_out(run.config, run_dir=run.path)
        scores = ranking_report(run.method.eval().next_item_scores, split, "test",
                                ITEM_OFFSET + run.config.interactions.items, run.config.interactions.ranking_k)
        row["test_best_val"] = {"step": run.step, **scores["model"]}
    line = json.dumps(row)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
