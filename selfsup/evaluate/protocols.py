"""The evaluation protocols of a run, with few labels: knn, linear, propagate (kNN over labels
propagated to the unlabelled training images), finetune, selftrain (fine-tune, propagate, fine-tune
on every training image), and two baselines (supervised: the same backbone trained from scratch;
raw: the linear probe on the raw input -- pixels, a bag of words, the table's columns), each over
label budgets ('1%', '10%', '100/class') and seeds, reported as mean and std and appended to
RUN_DIR/eval/results.jsonl (one row per protocol, budget and setting).

Frozen features (knn, linear, propagate) are extracted once per checkpoint and data set and cached in
RUN_DIR/eval/features/, so a sweep over budgets, seeds or k costs one feature pass.
"""
from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from selfsup.augment import light_crop_flip
from selfsup.backbones import build_backbone_from_config
from selfsup.checkpoint import atomic_write
from selfsup.evaluate.features import MAP_GRID, MAP_STAGES, check_kind
from selfsup.evaluate.finetune import FinetuneSettings, finetune
from selfsup.evaluate.knn import knn_accuracy
from selfsup.evaluate.linear import CROSS_VALIDATE_BELOW, FOLDS, feature_scale, linear_probe
from selfsup.evaluate.propagation import ALPHA, GAMMA, NEIGHBOURS, VOTERS, knn_graph, propagation_knn
from selfsup.evaluate.selftrain import selftrain
from selfsup.evaluate.splits import LabelBudget, balanced_subset, parse_label_budget

PROTOCOLS = ("knn", "linear", "propagate", "finetune", "selftrain", "supervised", "raw")


def cached_features(run, data, description: str, progress: bool = False, kind: str = "pooled") -> torch.Tensor:
    """The run's frozen features of `data` (kind: 'pooled' or 'map', see Run.embed), from
    RUN_DIR/eval/features/ when this checkpoint already computed them for the same samples;
    `description` (e.g. 'fashion-mnist test') names the file."""
    if kind != "pooled":
        description = f"{description} {kind}"
    digest = hashlib.sha1(data.samples[:: max(1, len(data) // 64)].contiguous().numpy().tobytes())
    # Which stages a map reads is part of the key: a cache from another choice of stages is not reused.
    layout = (MAP_STAGES, MAP_GRID) if kind == "map" else ()
    digest.update(repr((tuple(data.samples.shape), description, *layout)).encode())
    folder = Path(run.path) / "eval" / "features"
    stem = "".join(c if c.isalnum() else "-" for c in description)
    path = folder / f"{stem}-{digest.hexdigest()[:10]}-step{run.step}.safetensors"
    if path.is_file():
        return load_file(path)["features"].float()
    feats = run.embed(data.samples, run.config.eval.batch_size, progress=progress, kind=kind)
    folder.mkdir(parents=True, exist_ok=True)
    for older in folder.glob(f"{stem}-{digest.hexdigest()[:10]}-step*.safetensors"):
        older.unlink()                   # features of an earlier checkpoint: stale
    # Map features are 37x the size of pooled ones (4704 numbers an image on Fashion-MNIST, 1.3 GB for its
    # 70,000 images in float32): they are kept in half precision, 1e-3 relative error on unit-norm rows.
    stored = feats.half() if kind == "map" else feats
    save_file({"features": stored.contiguous()}, str(path))
    return stored.float()


def check_features(run, protocol: str, features: str) -> None:
    """ValueError unless `protocol` can read `features` of this run's backbone."""
    check_kind(features)
    if features != "pooled" and protocol != "linear":
        raise ValueError(f"--features {features} applies to the linear probe only, not to {protocol}")
    if features == "map" and not hasattr(run.backbone, "stage_maps"):
        raise ValueError(f"--features map reads a convolutional backbone's feature maps, and this run's "
                         f"{run.config.backbone.name} has none; use --features pooled")


def finetune_settings(run, **given) -> FinetuneSettings:
    """The run's modality's fine-tuning defaults, with the given values (None: not given) on top."""
    return FinetuneSettings(**{**run.modality.finetune_defaults,
                               **{key: value for key, value in given.items() if value is not None}})


def evaluate_protocol(run, protocol: str, train, test, labels: list[str] = ("100%",),
                      seeds: int = 1, data_name: str = "", knn_ks: list[int] | None = None,
                      settings: FinetuneSettings | None = None, progress: bool = True,
                      log: Callable[[str], None] = print, augment_copies: int = 0,
                      features: str = "pooled") -> list[dict]:
    """Score `protocol` for every label budget (and every k for knn) over `seeds` class-balanced draws
    of the training labels; each result row is logged, appended to eval/results.jsonl and returned.
    augment_copies (linear): also fit on that many light crop-and-flip copies of each labelled image.
    features (linear): which frozen features the probe reads, 'pooled' or 'map' (Run.embed)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    if train.labels is None or test.labels is None:
        raise ValueError(f"{protocol} needs labelled train and test sets")
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    check_features(run, protocol, features)
    budgets = [parse_label_budget(text) for text in labels]
    num_classes = int(train.labels.unique().numel())
    score, variants = _scorer(run, protocol, train, test, data_name, knn_ks, settings, progress, augment_copies,
                              features)
    rows = []
    for budget in budgets:
        count = budget.count(len(train), num_classes)
        for setting in variants:
            started, scores, details = time.time(), [], []
            for seed in range(seeds):
                top1, detail = score(balanced_subset(train.labels, count, seed), seed, setting)
                scores.append(top1)
                details.append(detail)
            row = _row(run, protocol, budget, count, scores, time.time() - started, setting, data_name, len(test))
            if any(details):
                row["per_seed"] = details
            _append(Path(run.path) / "eval" / "results.jsonl", row)
            log(_describe(row))
            rows.append(row)
    return rows


def _scorer(run, protocol, train, test, data_name, knn_ks, settings, progress, augment_copies=0,
            features="pooled"):
    """(score(indices, seed, setting) -> (top-1, per-seed details or None), the settings to score)."""
    cfg = run.config
    if augment_copies and run.modality.name != "image":
        raise ValueError("--augment (crop and flip copies) applies to images only")
    if protocol in ("knn", "linear", "propagate", "raw"):
        if protocol == "raw":              # the no-learning baseline: the same probe on the raw input
            train_f, test_f = run.modality.raw_features(train, test)
        else:
            train_f = cached_features(run, train, f"{data_name} train", progress, features)
            test_f = cached_features(run, test, f"{data_name} test", progress, features)
        if protocol == "knn":
            def knn(idx, seed, setting):
                return knn_accuracy(train_f[idx], train.labels[idx], test_f, test.labels,
                                    min(setting["k"], len(idx)), setting["temperature"]), None
            return knn, [{"k": k, "temperature": cfg.eval.knn_temperature} for k in (knn_ks or [cfg.eval.knn_k])]
        if protocol == "propagate":
            return _propagation_scorer(train_f, train.labels, test_f, test.labels, cfg.eval.knn_temperature)

        pool_scale = feature_scale(train_f)     # of every training image: the same for every draw

        def linear(idx, seed, setting):
            augmented = None
            if augment_copies:             # features of crops of these images: drawn per seed, not cached
                augmented = torch.stack([run.embed(light_crop_flip(train.images[idx], 7919 * seed + copy),
                                                   cfg.eval.batch_size, kind=features)
                                         for copy in range(augment_copies)])
            result = linear_probe(train_f[idx], train.labels[idx], test_f, test.labels, seed=seed,
                                  augmented=augmented, scale=pool_scale)
            return result["top1"], {"weight_decay": result["weight_decay"], "folds": result["folds"],
                                    "val_top1": result["val_top1"]}
        setting = {"classifier": "logistic regression (L-BFGS)", "val_fraction": 0.1,
                   f"folds_under_{CROSS_VALIDATE_BELOW}_labels": FOLDS, "standardised_on": "every training image"}
        if protocol == "raw":
            return linear, [{**setting, "features": run.modality.raw_name}]
        return linear, [{**setting, "augment_copies": augment_copies, "features": features}]

    from selfsup.train import resolve_device, resolve_precision
    settings = settings or finetune_settings(run)
    if protocol == "supervised":           # a random backbone has nothing to preserve: full rate, random head
        settings = replace(settings, backbone_lr_scale=1.0, layer_decay=0.0, probe_init=False)
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    prepare = run.modality.finetune_input(cfg, settings)

    def tune(idx, seed, setting):
        if protocol == "supervised":
            torch.manual_seed(cfg.train.seed + 1000 + seed)
            backbone = build_backbone_from_config(cfg.backbone, **run.modality.backbone_inputs(cfg))
        else:
            backbone = run.backbone
        if protocol == "selftrain":
            result = selftrain(backbone, train, idx, test, settings, prepare, seed, device, precision, progress)
            return result["top1"], {"first_top1": result["first_top1"],
                                    "propagated_top1": _right_share(result["propagated_labels"], idx, train.labels)}
        result = finetune(backbone, train.select(idx), test, settings, prepare, seed, device,
                          precision, progress, desc=f"{protocol} seed {seed}")
        return result["top1"], {"final_train_loss": round(result["final_train_loss"], 4)}
    return tune, [asdict(settings)]


def _propagation_scorer(train_f, train_labels, test_f, test_labels, temperature):
    graph = knn_graph(train_f)             # depends on the features only: one graph for every draw

    def propagated(idx, seed, setting):
        result = propagation_knn(train_f, idx, train_labels[idx], test_f, test_labels, graph,
                                 temperature=temperature)
        return result["top1"], {"propagated_top1": _right_share(result["propagated_labels"], idx, train_labels)}
    return propagated, [{"classifier": "weighted kNN over propagated labels", "graph_neighbours": NEIGHBOURS,
                         "alpha": ALPHA, "gamma": GAMMA, "k": VOTERS, "temperature": temperature}]


def _right_share(propagated: torch.Tensor, labelled: torch.Tensor, train_labels: torch.Tensor) -> float | None:
    """How many of the labels propagation gave the unlabelled images are right (None when every image
    was labelled): what the classifier after it learns from."""
    unlabelled = torch.ones(len(train_labels), dtype=torch.bool)
    unlabelled[labelled] = False
    if not bool(unlabelled.any()):
        return None
    return round((propagated[unlabelled] == train_labels[unlabelled]).float().mean().item(), 4)


def _row(run, protocol, budget: LabelBudget, count, scores, seconds, setting, data_name, test_size) -> dict:
    return {"protocol": protocol, "labels": budget.text, "num_labels": count, "seeds": len(scores),
            "top1": scores, "mean": statistics.fmean(scores),
            "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            "seconds": round(seconds, 2), "settings": setting, "data": data_name, "test_size": test_size,
            "step": run.step, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _describe(row: dict) -> str:
    extra = f" k={row['settings']['k']}" if row["protocol"] == "knn" else ""
    spread = f" ± {100 * row['std']:.2f}" if row["seeds"] > 1 else ""
    return (f"{row['protocol']:>10}{extra} with {row['labels']:>9} labels ({row['num_labels']} images, "
            f"{row['seeds']} seed(s)): top-1 {100 * row['mean']:.2f}%{spread}  [{row['seconds']:.1f} s]")


def _append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = path.read_bytes() if path.exists() else b""
    atomic_write(path, previous + (json.dumps(row) + "\n").encode())


def read_results(run_dir: str | Path) -> list[dict]:
    """Every row of RUN_DIR/eval/results.jsonl, oldest first ([] when there are none)."""
    path = Path(run_dir) / "eval" / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
