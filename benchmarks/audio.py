"""Issue 26's table (docs/audio.md): each audio method pretrained for --minutes on spoken-words, whose
test voices are never heard in training; then kNN, and the linear probe at 1% and 10% of the
training labels (--seeds draws) next to the same network at random initialisation and MFCC
statistics with logistic regression; clips/s and peak memory of the pretraining. One JSON line per
method on stdout (and appended to --out).

    python benchmarks/audio.py byola simclr --minutes 10 --out docs/audio-cpu.jsonl
    python benchmarks/audio.py byola --minutes 3 --on val --no-baselines --set audio.mix_ratio=0.1   # a screen
    python benchmarks/audio.py cola --pretrain-data phone-prompts --set audio.cut_every=1   # transfer

With --pretrain-data the network pretrains on another source (unlabelled recordings) and every
evaluation, the online monitor's included, still reads spoken-words (eval.source).

The random-initialised network's results go to a folder of their own (RUN-random-init/eval/), so the
pretrained run's results and report hold its own rows only.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from json_lines import emit
from selfsup.build import build_method
from selfsup.evaluate.protocols import evaluate_protocol
from selfsup.run import Run, load_run

EVALUATED = "spoken-words"


def pretrain(method: str, name: str, runs_dir: Path, minutes: float, seed: int, extra: list[str],
             data: str = EVALUATED) -> Path:
    evaluated_elsewhere = [] if data == EVALUATED else [f"eval.source={EVALUATED}"]
    command = [sys.executable, "-m", "selfsup", "pretrain", "--method", method, "--data", data, *evaluated_elsewhere,
               "--modality", "audio", "--runs-dir", str(runs_dir), "--name", name, "--quiet",
               f"train.minutes={minutes}", f"train.seed={seed}", "eval.report=false", *extra]
    subprocess.run(command, check=True)
    return runs_dir / name


def probe_rows(run: Run, protocol: str, train, test, labels: list[str], seeds: int) -> dict:
    rows = evaluate_protocol(run, protocol, train, test, labels, seeds=seeds, progress=False)
    return {row["labels"]: {"mean": row["mean"], "std": row["std"]} for row in rows}


def measure(method: str, args) -> dict:
    name = args.name or f"audio-{method}-s{args.seed}"
    started = time.perf_counter()
    after = ["--no-eval"] if args.no_baselines else ["eval.after_pretrain=[knn]"]       # --no-eval: not even kNN
    path = pretrain(method, name, Path(args.runs_dir), args.minutes, args.seed, after + args.set, args.pretrain_data)
    pretrain_seconds = time.perf_counter() - started
    run = load_run(path)
    train, held_out = run.labelled_sets(part=args.on)
    summary = json.loads((path / "train_summary.json").read_text())
    row = {
        "method": method, "pretrained_on": args.pretrain_data, "data": f"{EVALUATED} ({args.on} voices held out)",
        "scored_on": args.on, "set": args.set,
        "minutes": args.minutes, "seed": args.seed, "steps": summary["steps"], "clips_per_s": summary["images_per_s"],
        "peak_memory_mb": summary["peak_memory_mb"], "pretrain_wall_s": round(pretrain_seconds, 1),
        "train_clips": len(train), "scored_clips": len(held_out),
        "linear": probe_rows(run, "linear", train, held_out, args.labels, args.seeds),
    }
    if args.no_baselines:
        return row
    scratch_dir = path.parent / f"{name}-random-init"
    scratch_dir.mkdir(exist_ok=True)
    scratch = Run(scratch_dir, run.config, build_method(run.config), step=0)
    knn = json.loads((path / "eval" / "knn.json").read_text())      # after pretraining: on the test voices
    return {**row, "knn_top1_test": knn["knn_top1"], "knn_top1_random_init_test": knn["knn_top1_random_init"],
            "knn_top1_mfcc_test": knn["knn_top1_raw"],
            "linear_random_init": probe_rows(scratch, "linear", train, held_out, args.labels, args.seeds),
            "mfcc_logistic_regression": probe_rows(run, "raw", train, held_out, args.labels, args.seeds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("methods", nargs="+", help="audio methods (byola, or simclr/byol/moco3/... on sound)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--labels", nargs="+", default=["1%", "10%"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="the pretraining's seed")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--out", default="", help="append each JSON line to this file too")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    parser.add_argument("--on", choices=["test", "val"], default="test",
                        help="scored voices: test for final figures, val for screens and choices")
    parser.add_argument("--no-baselines", action="store_true",
                        help="only the pretrained network's linear probe (screens): no kNN, random init or MFCC")
    parser.add_argument("--pretrain-data", default=EVALUATED,
                        help="the source pretraining reads (a fetched set, folder or manifest); evaluations read "
                             f"{EVALUATED} [default: {EVALUATED}]")
    parser.add_argument("--name", default="", help="run name [default: audio-METHOD-sSEED]")
    args = parser.parse_args()
    for method in args.methods:
        emit(measure(method, args), args.out)


if __name__ == "__main__":
    main()
