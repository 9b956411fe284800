"""What the experiment trackers cost a run (issue 29, docs/integrations.md): replays a finished run's
metrics.jsonl into fresh trackers and times the calls, the same rows the trainer hands them, against
the run's training seconds. Prints one JSON line.

    python benchmarks/tracker_overhead.py runs/default --trackers tensorboard mlflow wandb
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

from selfsup.run_folder import RunFolder
from selfsup.trackers import open_trackers


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--trackers", nargs="+", default=["tensorboard"])
    args = p.parse_args()
    folder = RunFolder(args.run_dir)
    rows = folder.read_metrics()
    train_seconds = folder.read_summary()["seconds"]
    config = yaml.safe_load(folder.config_file.read_text())
    result = {"run": str(args.run_dir), "rows": len(rows), "train_seconds": train_seconds}
    for name in args.trackers:
        with tempfile.TemporaryDirectory() as scratch:
            started = time.perf_counter()
            [tracker] = open_trackers([name], Path(scratch), 0, config)
            opened = time.perf_counter()
            for row in rows:
                tracker(row)
                if "loss" in row and row["step"] % 50 == 0:
                    tracker.checkpointed(row["step"])
            tracker.close()
            done = time.perf_counter()
        result[name] = {"open_s": round(opened - started, 3), "rows_and_close_s": round(done - opened, 3),
                        "share_of_training": round((done - started) / train_seconds, 5)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
