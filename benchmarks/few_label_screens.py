"""Screens of ways to get more from a few labels, scored on the VALIDATION part only (the test set is
never read): what might lift the 1% map probe, and whether it lifts the supervised baseline as much.

    python benchmarks/few_label_screens.py runs/default-val --screens ensemble pseudo --out FILE

- ensemble: the class probabilities of the map probe on each layout, of the fine-tuned encoder and
  of two supervised networks trained from scratch (different seeds), averaged in several
  combinations; a pretrained ensemble is compared with a supervised one of as many networks.
- pseudo: the map probe refitted on its labels plus the unlabelled training images it is most sure
  of, the same count per predicted class, at its own weight decay and a tenth of it.

Every draw's probe chooses its weight decay by 5-fold cross-validation inside its labels, as
`selfsup evaluate linear` does; fine-tuning and the baseline use --lr and --weight-decay (default: what
the 1% search chose on the validation part for both, docs/evaluation.md). Prints one JSON line per
draw and screen and a mean line per screen; --out appends them.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from json_lines import emit
from selfsup.evaluate.features import MAP_LAYOUTS
from selfsup.evaluate.finetune import class_logits, train_classifier
from selfsup.evaluate.linear import feature_scale, fit_logistic_regression, linear_probe
from selfsup.evaluate.protocols import cached_features, finetune_settings, from_scratch, random_backbone
from selfsup.evaluate.splits import balanced_subset, parse_label_budget
from selfsup.run import load_run
from selfsup.runtime import resolve_device, resolve_precision

PSEUDO_PER_CLASS = (500, 2000)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--labels", default="1%")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--screens", nargs="+", choices=tuple(SCREENS), default=["ensemble"])
    p.add_argument("--lr", type=float, default=1.6e-2, help="fine-tuning's and the baseline's learning rate")
    p.add_argument("--weight-decay", type=float, default=0.5, help="fine-tuning's and the baseline's weight decay")
    p.add_argument("--out", help="append the JSON lines to this file")
    args = p.parse_args()

    run = load_run(args.run_dir)
    train, val = run.labelled_sets(part="val")
    count = parse_label_budget(args.labels).count(len(train), int(train.labels.unique().numel()))
    draws = [balanced_subset(train.labels, count, seed) for seed in range(args.seeds)]
    common = {"run": args.run_dir, "labels": args.labels, "scored_on": f"validation part ({len(val)})"}
    for screen in args.screens:
        started = time.time()
        rows = SCREENS[screen](run, train, val, draws, args)
        for seed, scores in enumerate(rows):
            emit({**common, "screen": screen, "seed": seed, "val_top1": scores}, args.out)
        means = {name: round(statistics.mean(row[name] for row in rows), 4) for name in rows[0]}
        emit({**common, "screen": screen, "mean_val_top1": means, "seconds": round(time.time() - started, 1)}, args.out)


def _probe(train_f, val_f, train_labels, val_labels, idx, seed, scale):
    """The few-label linear probe as a classifier (weight decay cross-validated inside the draw) and its
    chosen decay: what pseudo-labelling the unlabelled images needs."""
    chosen = linear_probe(train_f[idx], train_labels[idx], val_f, val_labels, seed=seed, scale=scale)["weight_decay"]
    num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    return fit_logistic_regression(train_f[idx], train_labels[idx], num_classes, chosen, scale=scale), chosen


def _top1(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    return round((probabilities.argmax(1) == labels).float().mean().item(), 4)


def _networks(run, train, val, idx, seed, args) -> dict[str, torch.Tensor]:
    """Validation probabilities of the fine-tuned encoder and of two networks trained from scratch."""
    cfg = run.config
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    tuned = finetune_settings(run, "finetune", lr=args.lr, weight_decay=args.weight_decay)
    scratch = from_scratch(finetune_settings(run, "supervised", lr=args.lr, weight_decay=args.weight_decay))
    few, num_classes = train.select(idx), int(train.labels.max()) + 1
    out = {}
    model, _ = train_classifier(run.backbone, few, num_classes, tuned, run.modality.finetune_input(cfg, tuned), seed,
                                device, precision)
    out["finetune"] = class_logits(model, val, device, precision).softmax(1)
    for member in range(2):
        member_seed = seed + 100 * member              # member 0 is the protocol's own baseline
        model, _ = train_classifier(random_backbone(run, member_seed), few, num_classes, scratch,
                                    run.modality.finetune_input(cfg, scratch), member_seed, device, precision)
        out[f"supervised{member}"] = class_logits(model, val, device, precision).softmax(1)
    return out


def screen_ensemble(run, train, val, draws, args) -> list[dict]:
    probabilities = [{} for _ in draws]
    for kind in MAP_LAYOUTS:
        train_f = cached_features(run, train, f"{run.data_name()} train", False, kind)
        val_f = cached_features(run, val, f"{run.data_name()} val", False, kind)
        scale = feature_scale(train_f)
        for seed, idx in enumerate(draws):
            probabilities[seed][kind] = linear_probe(train_f[idx], train.labels[idx], val_f, val.labels, seed=seed,
                                                     scale=scale, probabilities=True)["test_probabilities"]
        del train_f, val_f
    rows = []
    for seed, idx in enumerate(draws):
        p = probabilities[seed] | _networks(run, train, val, idx, seed, args)
        maps = sum(p[kind] for kind in MAP_LAYOUTS)
        rows.append({**{kind: _top1(p[kind], val.labels) for kind in p},
                     "maps": _top1(maps, val.labels),
                     "map+finetune": _top1(p["map"] + p["finetune"], val.labels),
                     "maps+finetune": _top1(maps + p["finetune"], val.labels),
                     "supervised0+supervised1": _top1(p["supervised0"] + p["supervised1"], val.labels)})
    return rows


def screen_pseudo(run, train, val, draws, args) -> list[dict]:
    train_f = cached_features(run, train, f"{run.data_name()} train", False, "map")
    val_f = cached_features(run, val, f"{run.data_name()} val", False, "map")
    scale = feature_scale(train_f)
    rows = []
    for seed, idx in enumerate(draws):
        probe, decay = _probe(train_f, val_f, train.labels, val.labels, idx, seed, scale)
        row = {"map": round(probe.accuracy(val_f, val.labels), 4)}
        sureness, guess = probe.logits(train_f).softmax(1).max(1)
        sureness[idx] = -1.0                        # the labelled images keep their own labels
        for per_class in PSEUDO_PER_CLASS:
            chosen = torch.cat([_surest(guess, sureness, c, per_class) for c in range(probe.bias.numel())])
            feats = torch.cat([train_f[idx], train_f[chosen]])
            labels = torch.cat([train.labels[idx], guess[chosen]])
            for name, wd in (("own", decay), ("tenth", decay / 10)):
                refit = fit_logistic_regression(feats, labels, probe.bias.numel(), wd, scale=scale)
                row[f"map+{per_class}/class, {name} decay"] = round(refit.accuracy(val_f, val.labels), 4)
            row[f"pseudo-labels right, {per_class}/class"] = round((guess[chosen] == train.labels[chosen])
                                                                    .float().mean().item(), 4)
        rows.append(row)
    return rows


def _surest(guess: torch.Tensor, sureness: torch.Tensor, label: int, count: int) -> torch.Tensor:
    """Indices of the `count` unlabelled images the probe is surest are of class `label`."""
    members = ((guess == label) & (sureness >= 0)).nonzero().flatten()
    return members[sureness[members].argsort(descending=True)[:count]]


SCREENS = {"ensemble": screen_ensemble, "pseudo": screen_pseudo}

if __name__ == "__main__":
    main()
