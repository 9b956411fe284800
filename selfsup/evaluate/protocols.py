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
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from selfsup.augment import light_crop_flip
from selfsup.backbones import build_backbone_from_config
from selfsup.evaluate.features import AVERAGED_MAPS, MAP_GRID, MAP_LAYOUTS, PROBE_FEATURES, kinds_read
from selfsup.evaluate.finetune import FinetuneSettings, finetune
from selfsup.evaluate.knn import knn_accuracy
from selfsup.evaluate.linear import CROSS_VALIDATE_BELOW, FOLDS, feature_scale, linear_probe
from selfsup.evaluate import propagation
from selfsup.evaluate.propagation import choose_by_cross_validation, knn_graph, propagation_knn
from selfsup.evaluate.selftrain import selftrain
from selfsup.evaluate.splits import LabelBudget, balanced_subset, parse_label_budget
from selfsup.run_folder import RunFolder
from selfsup.runtime import resolve_device, resolve_precision

# The protocols whose learning rate and weight decay a search chooses on the validation part, each from
# the same grid, so that pretraining and its from-scratch baseline get the same tuning budget.
SEARCHABLE = ("finetune", "supervised")
SEARCH_LR = (4e-3, 8e-3, 1.6e-2)
SEARCH_WEIGHT_DECAY = (0.05, 0.5)


def cached_features(run, data, description: str, progress: bool = False, kind: str = "pooled") -> torch.Tensor:
    """The run's frozen features of `data` (kind: 'pooled' or a map layout, see Run.embed), from
    RUN_DIR/eval/features/ when this checkpoint already computed them for the same samples;
    `description` (e.g. 'fashion-mnist test') names the file."""
    if kind != "pooled":
        description = f"{description} {kind}"
    digest = hashlib.sha1(data.samples[:: max(1, len(data) // 64)].contiguous().numpy().tobytes())
    # Which stages a map reads is part of the key: a cache from another choice of stages is not reused.
    layout = (MAP_LAYOUTS[kind], MAP_GRID) if kind in MAP_LAYOUTS else ()
    digest.update(repr((tuple(data.samples.shape), description, *layout)).encode())
    folder = run.folder.features_dir
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
    stored = feats.half() if kind in MAP_LAYOUTS else feats
    save_file({"features": stored.contiguous()}, str(path))
    return stored.float()


def check_features(run, protocol: str, features: str) -> None:
    """ValueError unless `protocol` can read `features` of this run's backbone."""
    if features not in PROBE_FEATURES:
        raise ValueError(f"unknown features {features!r}; choose one of: {', '.join(PROBE_FEATURES)}")
    if features != "pooled" and protocol != "linear":
        raise ValueError(f"--features {features} applies to the linear probe only, not to {protocol}")
    if features != "pooled" and not hasattr(run.backbone, "stage_maps"):
        raise ValueError(f"--features {features} reads a convolutional backbone's feature maps, and this run's "
                         f"{run.config.backbone.name} has none; use --features pooled")


def finetune_settings(run, protocol: str = "finetune", **given) -> FinetuneSettings:
    """The run's modality's defaults for fine-tuning (or for the supervised baseline), with the given
    values (None: not given) on top."""
    defaults = {**run.modality.finetune_defaults,
                **(run.modality.supervised_defaults if protocol == "supervised" else {})}
    return FinetuneSettings(**{**defaults, **{key: value for key, value in given.items() if value is not None}})


def evaluate_protocol(run, protocol: str, train, test, labels: list[str] = ("100%",),
                      seeds: int = 1, data_name: str = "", knn_ks: list[int] | None = None,
                      settings: FinetuneSettings | None = None, progress: bool = True,
                      log: Callable[[str], None] = print, augment_copies: int = 0,
                      features: str = "pooled", val=None, search: dict | None = None,
                      scored_on: str = "test") -> list[dict]:
    """Score `protocol` for every label budget (and every k for knn) over `seeds` class-balanced draws
    of the training labels; each result row is logged, appended to eval/results.jsonl and returned.
    augment_copies (linear): also fit on that many light crop-and-flip copies of each labelled image.
    features (linear): which frozen features the probe reads, 'pooled' or a map layout (Run.embed), or
    'auto': each, the one that cross-validates best inside the draw's labels kept.
    search (finetune, supervised): {'lr': [...], 'weight_decay': [...]}, a grid tried on each budget's
    first draw and scored on `val` (the validation part); every draw then trains with the best.
    scored_on: which held-out part `test` is, 'test' or 'val'; the rows say it, and reports show test rows only."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    if train.labels is None or test.labels is None:
        raise ValueError(f"{protocol} needs labelled train and test sets")
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    check_features(run, protocol, features)
    if search is not None and (protocol not in SEARCHABLE or val is None or val.labels is None):
        raise ValueError(f"a search needs the labelled validation part and one of: {', '.join(SEARCHABLE)}")
    budgets = [parse_label_budget(text) for text in labels]
    num_classes = int(train.labels.unique().numel())
    score, variants = _scorer(run, protocol, train, test, data_name, knn_ks, settings, progress, augment_copies,
                              features)
    rows = []
    for budget in budgets:
        count = budget.count(len(train), num_classes)
        chosen = None
        if search is not None:
            chosen = choose_on_validation(run, protocol, train, val, balanced_subset(train.labels, count, 0),
                                          variants[0], search, progress, log)
        for setting in [chosen["settings"]] if chosen else variants:
            started, scores, details = time.time(), [], []
            for seed in range(seeds):
                top1, detail = score(balanced_subset(train.labels, count, seed), seed, setting)
                scores.append(top1)
                details.append(detail)
            row = _row(run, protocol, budget, count, scores, time.time() - started, setting, data_name, len(test))
            if any(details):
                row["per_seed"] = details
            if chosen:
                row["search"] = chosen["search"]
            row["scored_on"] = scored_on
            run.folder.append_result(row)
            log(_describe(row, run.modality.sample_word))
            rows.append(row)
    return rows


def choose_on_validation(run, protocol: str, train, val, idx: torch.Tensor, base: dict, search: dict,
                         progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train `protocol` on the labelled images `idx` at every (lr, weight decay) of the search grid, from
    the settings `base`, and score each on `val`: {'settings': the best, 'search': what was tried}."""
    tune, _ = _scorer(run, protocol, train, val, "", None, FinetuneSettings(**base), progress)
    trials = []
    for lr in search["lr"]:
        for weight_decay in search["weight_decay"]:
            setting = {**base, "lr": lr, "weight_decay": weight_decay}
            trials.append({"lr": lr, "weight_decay": weight_decay, "val_top1": tune(idx, 0, setting)[0]})
    best = max(trials, key=lambda trial: trial["val_top1"])
    log(f"{protocol:>10} search on {len(val)} validation {run.modality.sample_word} ({len(trials)} trials, "
        f"first draw of {len(idx)} labels): lr {best['lr']:g}, weight decay {best['weight_decay']:g} "
        f"(validation top-1 {100 * best['val_top1']:.2f}%)")
    return {"settings": {**base, "lr": best["lr"], "weight_decay": best["weight_decay"]},
            "search": {"trials": trials, "chosen_on": f"validation part ({len(val)} images)", "draw": 0}}


@dataclass
class Scoring:
    """What a protocol's scorer is given besides the run: the data and the caller's choices."""
    train: object
    test: object
    data_name: str = ""
    knn_ks: list[int] | None = None
    settings: FinetuneSettings | None = None
    progress: bool = True
    augment_copies: int = 0
    features: str = "pooled"


def _scorer(run, protocol: str, train, test, data_name, knn_ks, settings, progress, augment_copies=0,
            features="pooled"):
    """(score(indices, seed, setting) -> (top-1, per-seed details or None), the settings to score)."""
    if augment_copies and not run.modality.probe_augmentation:
        raise ValueError(f"--augment (crop and flip copies) applies to images only, not to {run.modality.name} data")
    scoring = Scoring(train, test, data_name, knn_ks, settings, progress, augment_copies, features)
    return SCORERS[protocol](run, protocol, scoring)


def _frozen_features(run, protocol: str, s: Scoring) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{kind: (train, test) features}: the backbone's frozen ones of every kind s.features reads, or the
    raw input's for the raw baseline."""
    if protocol == "raw":                  # the no-learning baseline: the same probe on the raw input
        return {run.modality.raw_name: run.modality.raw_features(s.train, s.test)}
    kinds = kinds_read(s.features)
    return {kind: (cached_features(run, s.train, f"{s.data_name} train", s.progress, kind),
                   cached_features(run, s.test, f"{s.data_name} test", s.progress, kind)) for kind in kinds}


def _knn_scorer(run, protocol: str, s: Scoring):
    train_f, test_f = _frozen_features(run, protocol, s)["pooled"]

    def knn(idx, seed, setting):
        return knn_accuracy(train_f[idx], s.train.labels[idx], test_f, s.test.labels,
                            min(setting["k"], len(idx)), setting["temperature"]), None
    cfg = run.config
    return knn, [{"k": k, "temperature": cfg.eval.knn_temperature} for k in (s.knn_ks or [cfg.eval.knn_k])]


def _propagate_scorer(run, protocol: str, s: Scoring):
    train_f, test_f = _frozen_features(run, protocol, s)["pooled"]
    return _propagation_scorer(train_f, s.train.labels, test_f, s.test.labels, run.config.eval.knn_temperature)


def _linear_scorer(run, protocol: str, s: Scoring):
    """The linear probe ('linear') or the same probe on the raw input ('raw'). With features AVERAGED_MAPS it
    fits the probe on each map layout and averages their class probabilities. With 'auto' it fits the probe
    on the pooled features and on each map layout, adds their average, and keeps the candidate whose
    cross-validated accuracy inside the draw's labels is highest (the first listed on a tie): a choice a
    few-label user can make."""
    feats = _frozen_features(run, protocol, s)
    # Standardised with every training image's statistics: the same for every draw.
    pool_scales = {kind: feature_scale(kind_train_f) for kind, (kind_train_f, _) in feats.items()}
    averaging = set(MAP_LAYOUTS) <= set(feats)

    def linear(idx, seed, setting):
        results = {}
        for kind, (kind_train_f, kind_test_f) in feats.items():
            augmented = None
            if s.augment_copies:           # features of crops of these images: drawn per seed, not cached
                augmented = torch.stack([run.embed(light_crop_flip(s.train.images[idx], 7919 * seed + copy),
                                                   run.config.eval.batch_size, kind=kind)
                                         for copy in range(s.augment_copies)])
            results[kind] = linear_probe(kind_train_f[idx], s.train.labels[idx], kind_test_f, s.test.labels,
                                         seed=seed, augmented=augmented, scale=pool_scales[kind],
                                         probabilities=averaging)
        cross_validated = {kind: max(result["val_top1"].values()) for kind, result in results.items()}
        if averaging:
            results[AVERAGED_MAPS] = averaged_probes([results[kind] for kind in MAP_LAYOUTS], s.train.labels[idx],
                                                     s.test.labels)
            cross_validated[AVERAGED_MAPS] = results[AVERAGED_MAPS]["cross_validated"]
        chosen = AVERAGED_MAPS if s.features == AVERAGED_MAPS else max(cross_validated, key=cross_validated.get)
        result = results[chosen]
        detail = {"weight_decay": result["weight_decay"], "folds": result["folds"], "val_top1": result["val_top1"]}
        if len(results) > 1:
            detail |= {"features": chosen, "cross_validated_by_features": cross_validated}
        return result["top1"], detail
    setting = {"classifier": "logistic regression (L-BFGS)", "val_fraction": 0.1,
               f"folds_under_{CROSS_VALIDATE_BELOW}_labels": FOLDS, "standardised_on": "every training image"}
    if protocol == "raw":
        return linear, [{**setting, "features": run.modality.raw_name}]
    return linear, [{**setting, "augment_copies": s.augment_copies, "features": s.features}]


def averaged_probes(results: list[dict], labels: torch.Tensor, test_labels: torch.Tensor) -> dict:
    """One classifier from several linear probes of the same labels (linear_probe(..., probabilities=True),
    each on its own features, folds alike): the mean of their class probabilities. Its cross-validated
    accuracy is the averaged held-out probabilities' on the labels; its top-1, the averaged test ones'."""
    held_out = results[0]["held_out"]
    if any(not torch.equal(result["held_out"], held_out) for result in results):
        raise ValueError("probes averaged must hold out the same labels (the same folds of one draw)")
    mean = lambda key: torch.stack([result[key] for result in results]).mean(0)
    return {"top1": (mean("test_probabilities").argmax(1) == test_labels).float().mean().item(),
            "cross_validated": (mean("held_out_probabilities").argmax(1) == labels[held_out]).float().mean().item(),
            "weight_decay": [result["weight_decay"] for result in results], "folds": results[0]["folds"],
            "val_top1": None}


def _training_scorer(run, protocol: str, s: Scoring):
    """Fine-tuning the pretrained backbone ('finetune', 'selftrain') or training the same backbone from
    scratch on the same labels ('supervised')."""
    cfg = run.config
    settings = s.settings or finetune_settings(run, protocol)
    if protocol == "supervised":
        settings = from_scratch(settings)
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    train, test = s.train, s.test

    def tune(idx, seed, setting):
        settings = FinetuneSettings(**setting)
        prepare = run.modality.finetune_input(cfg, settings)
        backbone = random_backbone(run, seed) if protocol == "supervised" else run.backbone
        if protocol == "selftrain":
            result = selftrain(backbone, train, idx, test, settings, prepare, seed, device, precision, s.progress)
            return result["top1"], {"first_top1": result["first_top1"],
                                    "propagated_top1": _right_share(result["propagated_labels"], idx, train.labels)}
        result = finetune(backbone, train.select(idx), test, settings, prepare, seed, device,
                          precision, s.progress, desc=f"{protocol} seed {seed}")
        return result["top1"], {"final_train_loss": round(result["final_train_loss"], 4)}
    return tune, [asdict(settings)]


def from_scratch(settings: FinetuneSettings) -> FinetuneSettings:
    """The supervised baseline's version of fine-tuning settings: a random backbone has nothing to
    preserve, so it learns at the full rate with a random head."""
    return replace(settings, backbone_lr_scale=1.0, layer_decay=0.0, probe_init=False)


def random_backbone(run, seed: int) -> torch.nn.Module:
    """The run's backbone at the random initialisation the supervised baseline starts draw `seed` from."""
    cfg = run.config
    torch.manual_seed(cfg.train.seed + 1000 + seed)
    return build_backbone_from_config(cfg.backbone, **run.modality.backbone_inputs(cfg))


def _propagation_scorer(train_f, train_labels, test_f, test_labels, temperature):
    """Two settings: fixed in advance, and chosen per draw by cross-validation inside its labels."""
    graphs = {}                            # depend on the features only: one graph per size for every draw

    def graph_of(neighbours):
        if neighbours not in graphs:
            graphs[neighbours] = knn_graph(train_f, neighbours)
        return graphs[neighbours]

    def propagated(idx, seed, setting):
        chosen, detail = setting, {}
        if setting["choice"] == "cross-validated":
            chosen, trials = choose_by_cross_validation(train_f, graph_of, idx, train_labels[idx], temperature,
                                                        seed=seed)
            detail = {"chosen": chosen, "cv_top1": max(t["cv_top1"] for t in trials)}
        result = propagation_knn(train_f, idx, train_labels[idx], test_f, test_labels,
                                 graph_of(chosen["graph_neighbours"]), chosen["alpha"], chosen["k"], temperature)
        return result["top1"], {**detail,
                                "propagated_top1": _right_share(result["propagated_labels"], idx, train_labels)}
    common = {"classifier": "weighted kNN over propagated labels", "gamma": propagation.GAMMA,
              "temperature": temperature}
    return propagated, [{**common, "choice": "fixed", "graph_neighbours": propagation.NEIGHBOURS,
                         "alpha": propagation.ALPHA, "k": propagation.VOTERS},
                        {**common, "choice": "cross-validated", "grid": propagation.GRID, "folds": propagation.FOLDS}]


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


def _describe(row: dict, sample_word: str) -> str:
    extra = f" k={row['settings']['k']}" if row["protocol"] == "knn" else ""
    if row["protocol"] == "propagate":
        extra = f" ({row['settings']['choice']})"
    spread = f" ± {100 * row['std']:.2f}" if row["seeds"] > 1 else ""
    if "search" in row:
        extra = (f" (lr {row['settings']['lr']:g}, weight decay {row['settings']['weight_decay']:g}, chosen from "
                 f"{len(row['search']['trials'])} on validation)")
    return (f"{row['protocol']:>10}{extra} with {row['labels']:>9} labels ({row['num_labels']} {sample_word}, "
            f"{row['seeds']} seed(s)): top-1 {100 * row['mean']:.2f}%{spread}  [{row['seconds']:.1f} s]")


def read_results(run_dir: str | Path, scored_on: str = "test") -> list[dict]:
    """The rows of RUN_DIR/eval/results.jsonl scored on the held-out part `scored_on` (rows from before
    the validation part existed were scored on test), oldest first ([] when there are none)."""
    return [row for row in RunFolder(run_dir).read_results() if row.get("scored_on", "test") == scored_on]


# protocol -> scorer(run, protocol, Scoring) -> (score(indices, seed, setting) -> (top-1, details), settings)
SCORERS = {"knn": _knn_scorer, "linear": _linear_scorer, "propagate": _propagate_scorer,
           "finetune": _training_scorer, "selftrain": _training_scorer, "supervised": _training_scorer,
           "raw": _linear_scorer}
PROTOCOLS = tuple(SCORERS)
