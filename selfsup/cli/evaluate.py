"""`selfsup evaluate PROTOCOL RUN_DIR`: score a run's encoder with all or few of the labels."""
from __future__ import annotations

import argparse

from selfsup.cli.common import add_run_arguments
from selfsup.errors import ConfigError
from selfsup.evaluate.dense import MAPS as SEGMENT_MAPS, MODES as SEGMENT_MODES, SegmentSettings
from selfsup.evaluate.features import PROBE_FEATURES
from selfsup.evaluate.finetune import FinetuneSettings
from selfsup.evaluate.protocols import (SEARCH_LR, SEARCH_WEIGHT_DECAY, SEARCHABLE, check_features, evaluate_protocol,
                                        finetune_settings)
from selfsup.evaluate.splits import parse_label_budget
from selfsup.modalities import ImageModality
from selfsup.pipeline import evaluate_knn, evaluate_perplexity, evaluate_ranking, evaluate_dense
from selfsup.run import load_run


def add_parsers(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a pretrained run: knn, linear, propagate, finetune, "
                                        "selftrain, supervised, raw, perplexity, ranking, segment, detect",
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
    linear.add_argument("--features", choices=PROBE_FEATURES, default="pooled",
                        help="what the probe reads: 'pooled', the backbone's output (a ResNet's globally averaged "
                             "last stage, the usual protocol), or stage outputs kept spatial (each at most 7x7 cells; "
                             "convolutional backbones): 'map', the two stages before the last, 'map-late', the last "
                             "two, 'map-all', all four. Maps are the better few-label probe and cost more time and "
                             "disk (docs/evaluation.md); 'maps-averaged', the three map probes' class probabilities "
                             "averaged; 'auto' fits every kind and the average and keeps, per draw, the candidate "
                             "with the best cross-validated accuracy inside the labels [default: pooled]")
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
        image_weight_decay = (ImageModality.supervised_defaults if name == "supervised" else image)["weight_decay"]
        f.add_argument("--weight-decay", type=float,
                       help=f"AdamW weight decay on the weights [default: {image_weight_decay} for images, "
                            f"{defaults.weight_decay} for text and tables; chosen on validation; selftrain can "
                            "reuse what a fine-tuning --search chose]")
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
    add_run_arguments(perplexity)
    perplexity.add_argument("--data", help="other text to score, all of it [default: the held-out share of the "
                                           "run's source]")
    perplexity.add_argument("--max-rows", type=int, default=0, help="score at most this many rows (documents, or "
                                                                    "windows of a packed corpus) [default: 0, all]")
    perplexity.set_defaults(func=cmd_perplexity)
    ranking = protocols.add_parser(
        "ranking", help="next-item ranking of a recommender run (nextitem, maskeditem, cl4srec): HR@k, NDCG@k, MRR",
        description="Every item is ranked for each user's leave-one-out item (the items the user had are left "
                    "out; no sampled negatives), next to the most-popular and item-kNN baselines, with the "
                    "cold-start users apart and the metric by history length. --part val scores the validation "
                    "items (for choices), test the test items (final figures). Written to "
                    "RUN_DIR/eval/ranking.json; `selfsup pretrain` prints it at the end (docs/recommendation.md).")
    add_run_arguments(ranking, checkpoint=True)
    ranking.add_argument("--part", choices=["val", "test"], default="test",
                         help="which held-out item of each user [default: test]")
    ranking.set_defaults(func=cmd_ranking)
    defaults = SegmentSettings()
    segment_parser = protocols.add_parser(
        "segment", help="semantic segmentation of fashion-scenes from an image run's encoder: mIoU, pixel accuracy",
        description="Per-pixel classes of the fashion-scenes set (selfsup data fetch fashion-scenes) from the run's "
                    "encoder. --mode linear: the backbone is frozen and a batch norm + 1x1 convolution classifies "
                    "its last feature map or its maps of four depths (--maps), upsampled to the image; "
                    "--mode finetune: the backbone trains with a "
                    "light FPN decoder on its last three maps. The validation scenes (carved from the training "
                    "scenes) choose the state kept; the test scenes give the final figure. Rows go to "
                    "RUN_DIR/eval/dense.jsonl (docs/dense.md).")
    segment_parser.add_argument("--mode", choices=SEGMENT_MODES, default=defaults.mode,
                                help=f"frozen linear head or fine-tuned backbone + decoder [default: {defaults.mode}]")
    segment_parser.add_argument("--maps", choices=SEGMENT_MAPS, default="",
                                help="what the linear head reads: 'last', the last feature map; 'stack', the maps "
                                     "of four depths (a ResNet's stages, a ViT's patch tokens after four evenly "
                                     "spaced blocks) pooled to the last map's grid; 'auto', a head on each and "
                                     "the one better on the validation scenes kept [default: auto]")
    detect_parser = protocols.add_parser(
        "detect", help="object detection on fashion-scenes, fine-tuning the run's encoder: COCO mAP",
        description="Boxes of the fashion-scenes objects: the run's backbone is fine-tuned with a CenterNet head "
                    "(class-centre heatmaps, box size and offset) on the FPN of its last three maps. COCO's "
                    "mAP@[.5:.95] and mAP@.5 (pycocotools: pip install 'selfsup[dense]'); the validation scenes "
                    "choose the state kept, the test scenes give the final figure. Rows go to "
                    "RUN_DIR/eval/dense.jsonl (docs/dense.md).")
    for task, parser in (("segment", segment_parser), ("detect", detect_parser)):
        add_run_arguments(parser, checkpoint=True)
        parser.add_argument("--labels", nargs="+", default=["100%"], metavar="BUDGET",
                            help="share (10%%) or count (900) of the training scenes with labels [default: 100%%]")
        parser.add_argument("--seeds", type=int, default=1, help="draws of the scenes (and head seeds) per budget "
                                                                 "[default: 1]")
        parser.add_argument("--baseline", action="store_true",
                            help="also the same network from random initialisation (a frozen linear head reads "
                                 "random features; a fine-tuned one trains from scratch)")
        parser.add_argument("--epochs", type=float, default=0.0,
                            help="passes over the labelled scenes [default: " + ("30 linear, 10 finetune"
                                 if task == "segment" else "10") + "]")
        parser.add_argument("--steps", type=int, default=defaults.steps,
                            help=f"at least this many steps [default: {defaults.steps}]")
        parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                            help=f"[default: {defaults.batch_size}]")
        parser.add_argument("--lr", type=float, default=0.0,
                            help="AdamW learning rate [default: " + ("5e-2 linear (chosen on validation), 1e-3 "
                                 "finetune" if task == "segment" else "1e-3") + "]")
        parser.add_argument("--on", choices=("test", "val"), default="test",
                            help="scored part: test for final figures, val for choices [default: test]")
        parser.add_argument("--data", default="fashion-scenes",
                            help="fashion-scenes, or a COCO-style annotation .json (or a folder holding one) with "
                                 "its images beside it, split 70/10/20 by file name hash [default: fashion-scenes]")
        parser.add_argument("--size", type=int, default=0,
                            help="side COCO images are squashed to [default: the run's image size]")
        parser.add_argument("--data-dir", default="", help="folder holding fashion-scenes [default: where fetch "
                                                           "writes]")
        parser.add_argument("--quiet", action="store_true", help="no progress bars")
        parser.set_defaults(func=cmd_dense, task=task)


def _evaluate_parser(protocols, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    """A `selfsup evaluate NAME` parser with the options every protocol shares."""
    p = protocols.add_parser(name, help=help_text, description=description)
    add_run_arguments(p, checkpoint=True)
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
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate, protocol=name)
    return p


def cmd_evaluate(args) -> int:
    try:
        for text in args.labels or []:
            parse_label_budget(text)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    knn_ks = getattr(args, "k", None) or []
    if args.protocol == "knn" and not args.labels and len(knn_ks) <= 1 and args.seeds == 1 and args.on == "test":
        evaluate_knn(load_run(args.run_dir, args.checkpoint), args.data or "", args.data_dir,
                     knn_ks[0] if knn_ks else None, args.temperature, args.baselines, not args.quiet)
        return 0
    run = load_run(args.run_dir, args.checkpoint)
    try:
        check_features(run, args.protocol, getattr(args, "features", "pooled"))
    except ValueError as e:
        raise ConfigError(str(e)) from e
    train, test = run.labelled_sets(args.data or "", args.data_dir, part=args.on)
    data_name = run.data_name(args.data or "")
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
                                         weight_decay=args.weight_decay,
                                         backbone_lr_scale=getattr(args, "backbone_lr_scale", None),
                                         layer_decay=getattr(args, "layer_decay", None),
                                         probe_init=getattr(args, "probe_init", None))
        evaluate_protocol(run, protocol, train, test, args.labels or ["100%"], args.seeds, data_name, knn_ks,
                          settings, progress=not args.quiet, augment_copies=getattr(args, "augment", 0),
                          features=getattr(args, "features", "pooled") if protocol == "linear" else "pooled",
                          val=val, search=search, scored_on=args.on)
    print(f"results appended to {run.folder.results_file}")
    return 0


def cmd_ranking(args) -> int:
    run = load_run(args.run_dir, args.checkpoint)
    if not run.method.recommends:
        raise ConfigError(f"{args.run_dir} is a {run.config.method.name} run; ranking needs a nextitem, maskeditem "
                          "or cl4srec run")
    evaluate_ranking(run, args.part)
    return 0


def cmd_perplexity(args) -> int:
    run = load_run(args.run_dir)
    if not run.method.language_model:
        raise ConfigError(f"{args.run_dir} is a {run.config.method.name} run; perplexity needs a clm or mlm run")
    evaluate_perplexity(run, args.data or "", args.max_rows)
    return 0


def cmd_dense(args) -> int:
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    try:
        budgets = [parse_label_budget(text) for text in args.labels]
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if any(budget.per_class for budget in budgets):
        raise ConfigError("scene budgets are a share (10%) or a count (900) of the training scenes, "
                          "not a count per class")
    settings = SegmentSettings(mode=getattr(args, "mode", "finetune"), maps=getattr(args, "maps", ""),
                               epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    run = load_run(args.run_dir, args.checkpoint)
    evaluate_dense(run, args.task, args.labels, args.seeds, settings, args.baseline, args.on, args.data,
                   args.data_dir, args.size, progress=not args.quiet)
    print(f"results appended to {run.folder.dense_results_file}")
    return 0
