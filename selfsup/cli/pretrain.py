"""`selfsup pretrain`: pretrain, then evaluate and report (selfsup.pipeline does the work)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from selfsup.cli.common import EPILOG_OVERRIDES, cli_overrides
from selfsup.config import MODALITIES, load_config
from selfsup.errors import ConfigError
from selfsup.methods import method_names
from selfsup.pipeline import pretrain_and_evaluate
from selfsup.run_folder import RunFolder


def add_parsers(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain an encoder on unlabeled images, text, tables or user histories, "
                                        "then evaluate it",
                       description="Pretrain an encoder with a pretext task on unlabeled data (images, text, "
                                   "tables, interaction logs). Writes the run folder runs/<name>/ (config.yaml, "
                                   "metrics.jsonl, checkpoints/, eval/; tokenizer.json, table.json or items.json "
                                   "for text, tables and interactions) and, for a recommender, its next-item "
                                   "ranking metrics against most-popular and item-kNN (eval/ranking.json); "
                                   "when the data has labels, ends by printing kNN top-1 on the labelled test split "
                                   "next to the same backbone at random initialisation and the raw input, then the "
                                   "few-label evaluations and the report. By default it trains for "
                                   "train.minutes of wall-clock time (`selfsup config` shows it), whatever the "
                                   "machine: a few timed steps fix the step count; train.epochs=N or train.steps=N "
                                   "fix it instead.",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_OVERRIDES)
    p.add_argument("--config", help="YAML config file (see configs/); KEY=VALUE overrides apply on top")
    p.add_argument("--data", help="training data: 'fashion-mnist' or a folder of images (any depth); text: a "
                                  "folder of .txt files, a .jsonl file or a .txt file; tabular: a .csv/.tsv/"
                                  ".parquet file; interactions: an .inter/.csv/.tsv/.parquet log or a folder "
                                  "holding one .inter file, or movielens-100k once fetched "
                                  "[data.source; default fashion-mnist]")
    p.add_argument("--modality", choices=list(MODALITIES),
                   help="kind of data [data.modality; default: the method's: clm/mlm/simcse text, "
                        "scarf/vime tabular, nextitem/maskeditem/cl4srec interactions, the rest image]")
    p.add_argument("--data-dir", help="extra folder to search for built-in data sets [data.data_dir]")
    p.add_argument("--method", help=f"pretext task: {', '.join(method_names())} (docs/methods.md) "
                                    "[method.name; default simclr]")
    p.add_argument("--name", help="run name; the run folder is RUNS_DIR/NAME [default: <method>-<data>-<time>]")
    p.add_argument("--runs-dir", default="runs", help="parent folder of run folders [default: runs]")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last good checkpoint "
                                                       "(its config.yaml is used; overrides still apply)")
    p.add_argument("--strict", action="store_true", help="stop on an unreadable image instead of skipping it")
    p.add_argument("--no-eval", action="store_true", help="skip the kNN evaluation at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=1.0")
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args) -> int:
    if args.resume:
        folder = RunFolder(args.resume)
        if not folder.is_run():
            raise ConfigError(f"--resume {folder}: the folder {folder.why_not_a_run()}; "
                              "pass a run folder of `selfsup pretrain`")
        cfg = load_config(folder.config_file, cli_overrides(args))
        run_dir = folder.path
    else:
        cfg = load_config(args.config, cli_overrides(args))
        if not cfg.name:
            source = Path(cfg.data.source).name or "data"
            cfg.name = args.name or f"{cfg.method.name}-{source}-{time.strftime('%Y%m%d-%H%M%S')}"
        elif args.name:
            cfg.name = args.name
        run_dir = Path(args.runs_dir) / cfg.name
    pretrain_and_evaluate(cfg, run_dir, resume=bool(args.resume), progress=not args.quiet, evaluate=not args.no_eval)
    return 0
