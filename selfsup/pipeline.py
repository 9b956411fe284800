"""Pretrain -> evaluate -> report, as one library call: what `selfsup pretrain` runs, so that a Python
user of `selfsup.pretrain_and_evaluate()` gets the same run folder as the command:

    result = selfsup.pretrain_and_evaluate(selfsup.load_config(overrides=["train.minutes=6"]), "runs/demo")

Each stage is a function of its own as well (`evaluate_knn`, `evaluate_perplexity`,
`evaluate_few_labels`); every stage prints what it measured and writes it into the run folder.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from selfsup.build import build_method
from selfsup.config import Config
from selfsup.data import load_scenes
from selfsup.data.coco import find_annotations, read_coco
from selfsup.data.holdout import part_of, path_position
from selfsup.errors import ConfigError, DataError
from selfsup.evaluate.dense import SegmentSettings, segment
from selfsup.evaluate.detect import detect
from selfsup.evaluate.protocols import evaluate_protocol
from selfsup.evaluate.ranking import ranking_report
from selfsup.evaluate.splits import parse_label_budget
from selfsup.interactions.data import ITEM_OFFSET
from selfsup.modalities.image import FOLDER_TEST_FRACTION, image_parts
from selfsup.report import write_report
from selfsup.run import Run, knn_report, load_run
from selfsup.run_folder import RunFolder
from selfsup.runtime import resolve_device
from selfsup.text.generate import perplexity
from selfsup.trackers import open_trackers
from selfsup.train import TrainResult, pretrain


@dataclass
class PipelineResult:
    training: TrainResult
    summary: dict                       # what train_summary.json holds
    knn: dict | None = None             # eval/knn.json; None when there were no labels or no evaluation
    perplexity: dict | None = None      # eval/perplexity.json, for language models
    ranking: dict | None = None         # eval/ranking.json, for recommenders
    report: Path | None = None


def pretrain_and_evaluate(cfg: Config, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
                          evaluate: bool = True) -> PipelineResult | None:
    """Pretrain, write train_summary.json, then (unless evaluate=False or training stopped early) the
    held-out perplexity of a language model, the ranking metrics of a recommender, kNN with its baselines, the few-label protocols of
    eval.after_pretrain and the report of eval.report. Under torchrun every rank trains and rank 0
    alone evaluates; the other ranks get None."""
    folder = RunFolder(run_dir)
    training = pretrain(cfg, folder.path, resume=resume, progress=progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    summary = training_summary(training)
    folder.write_summary(summary)
    result = PipelineResult(training, summary)
    if training.stopped_early or not evaluate:
        return result
    run = load_run(folder.path)
    if run.method.language_model:
        result.perplexity = evaluate_perplexity(run)
    if run.method.recommends:
        result.ranking = evaluate_ranking(run)
    result.knn = evaluate_knn(run, progress=progress)
    few_labels = []
    if result.knn is not None and cfg.eval.after_pretrain:
        few_labels = evaluate_few_labels(run, cfg.eval.after_pretrain, cfg.eval.labels, progress=progress)
    track_evaluations(run, result, few_labels)
    if cfg.eval.report:
        result.report = write_report(folder.path, progress=progress)
        print(f"report: {result.report.resolve()}  (open it in a browser)")
    return result


def track_evaluations(run: Run, result: PipelineResult, few_labels: list[dict]) -> None:
    """The evaluations' headline numbers to the run's trackers (train.loggers), at the run's last step."""
    if not run.config.train.loggers:
        return
    scores = {}
    if result.knn:
        scores.update({key: result.knn[key] for key in ("knn_top1", "knn_top1_random_init", "knn_top1_raw")
                       if key in result.knn})
    if result.perplexity:
        scores["perplexity"] = result.perplexity["perplexity"]
    if result.ranking:
        k = result.ranking["k"]
        scores.update({f"{name}_{metric}{'' if metric == 'mrr' else k}": result.ranking[name][metric]
                       for name in ("model", "most_popular", "item_knn") for metric in ("hr", "ndcg", "mrr")})
    scores.update({f"{row['protocol']}_{row['labels']}": row["mean"] for row in few_labels})
    trackers = open_trackers(run.config.train.loggers, run.path, run.step, run.config.to_dict())
    for tracker in trackers:
        tracker({"step": run.step, "evaluation": scores})
        tracker.close()


def training_summary(result: TrainResult) -> dict:
    """Steps, epochs, seconds, images/s, peak memory and final loss of a pretraining, printed."""
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
    return summary


def evaluate_knn(run: Run, source: str = "", data_dir: str = "", k: int | None = None,
                 temperature: float | None = None, baselines: bool = True, progress: bool = True) -> dict | None:
    """kNN top-1 on the test part (with the random-init and raw-input baselines), printed and written to
    eval/knn.json; None, with a note, when the evaluation data has no labels."""
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
    started = time.time()
    report = knn_report(run, train, test, k, temperature, baselines=baselines, progress=progress,
                        data_name=run.data_name(source))
    report["seconds"] = round(time.time() - started, 1)
    report["step"] = run.step
    written = run.folder.write_eval("knn", report)
    print(f"kNN top-1 (k={report['k']}, T={report['temperature']}, {report['train_size']} train / "
          f"{report['test_size']} test {run.modality.sample_word}):")
    print(f"  pretrained backbone    {100 * report['knn_top1']:.2f}%")
    if baselines:
        print(f"  random-init backbone   {100 * report['knn_top1_random_init']:.2f}%")
        print(f"  {report['raw_features']:<22} {100 * report['knn_top1_raw']:.2f}%")
    print(f"saved {written}")
    return report


def evaluate_perplexity(run: Run, source: str = "", max_rows: int = 0) -> dict:
    """Loss and perplexity of a language model on held-out text, printed and written to eval/perplexity.json."""
    held_out = run.modality.held_out_text(run.config, run.path, source).subset(max_rows)
    result = perplexity(run.method, held_out.samples)
    result.update(rows=len(held_out), tokens=int((held_out.samples != 0).sum()), step=run.step,
                  method=run.config.method.name, data=source or f"held-out share of {run.config.data.source}")
    print(f"{run.config.method.name} on {result['tokens']} held-out tokens: loss {result['loss']:.4f} nats/token, "
          f"perplexity {result['perplexity']:.3f}")
    run.folder.write_eval("perplexity", result)
    return result


def evaluate_ranking(run: Run, part: str = "test", source: str = "") -> dict:
    """HR@k, NDCG@k and MRR of a recommender with full ranking on the leave-one-out part, against the
    most-popular and item-kNN baselines; printed and written to eval/ranking.json (the validation
    part's to eval/ranking-val.json)."""
    cfg = run.config
    split = run.modality.leave_one_out(cfg, source, run.path)
    device = resolve_device(cfg.train.device)
    run.method.to(device).eval()
    report = ranking_report(run.method.next_item_scores, split, part, ITEM_OFFSET + cfg.interactions.items,
                            cfg.interactions.ranking_k, device)
    report.update(step=run.step, method=cfg.method.name)
    k = report["k"]
    print(f"next-item ranking over all {cfg.interactions.items} items, leave-one-out {part} item of "
          f"{report['users']} users (items they had excluded):")
    print(f"  {'':<14} {'HR@' + str(k):>8} {'NDCG@' + str(k):>8} {'MRR':>8}")
    for name in ("model", "most_popular", "item_knn"):
        row = report[name]
        print(f"  {name:<14} {row['hr']:>8.4f} {row['ndcg']:>8.4f} {row['mrr']:>8.4f}")
    print(f"saved {run.folder.write_eval('ranking' if part == 'test' else 'ranking-val', report)}")
    return report


def evaluate_few_labels(run: Run, protocols: list[str], labels: list[str], progress: bool = True) -> list[dict]:
    """Each protocol at each label budget on the test part, one draw; rows go to eval/results.jsonl."""
    train, test = run.labelled_sets()
    source = run.data_name()
    print(f"few-label evaluation ({', '.join(protocols)} with {', '.join(labels)} of the labels):")
    return [row for protocol in protocols
            for row in evaluate_protocol(run, protocol, train, test, labels, 1, source, progress=progress)]


def evaluate_dense(run: Run, task: str, labels: list[str], seeds: int = 1, settings: SegmentSettings | None = None,
                   baseline: bool = False, part: str = "test", source: str = "", data_dir: str = "", size: int = 0,
                   progress: bool = True) -> list[dict]:
    """Segmentation (task 'segment': selfsup.evaluate.dense) or detection ('detect': selfsup.evaluate.detect)
    from the run's encoder, on fashion-scenes or a COCO-style annotation file (scene_parts), with each share of
    the training scenes and each seed; with `baseline`, the same network from random initialisation too. The
    validation scenes choose the kept state; `part` is scored. Rows go to eval/dense.jsonl."""
    settings = settings or SegmentSettings(mode="finetune" if task == "detect" else "linear")  # detection fine-tunes
    source = source or "fashion-scenes"
    if not run.modality.dense_tasks:
        raise ConfigError(f"{run.path} is a {run.modality.name} run; dense tasks need an image encoder")
    train, val, scored = scene_parts(run, source, data_dir, part, size)
    if task == "segment" and train.semantic is None:
        raise DataError(f"{source} has boxes only (an annotation without 'segmentation'); segmentation needs masks, "
                        "detection (selfsup evaluate detect) works with boxes")
    cfg, device, prepare = run.config, resolve_device(run.config.train.device), run.modality.native_input(run.config)
    frozen = task == "segment" and settings.mode == "linear"
    encoders = [("pretrained", run.backbone)]
    if baseline:
        encoders.append(("random init" if frozen else "from scratch", build_method(cfg).evaluated_backbone))
    protocol, train_task = ("detect", detect) if task == "detect" else (f"segment-{settings.mode}", segment)
    measures = ("map", "map50") if task == "detect" else ("miou", "pixel_accuracy")
    print(f"{protocol} on {source}: {len(train)} training scenes, {len(val)} validation, {len(scored)} scored "
          f"({part}); {' and '.join(measures)} over {train.num_classes} classes")
    rows = []
    for budget_text in labels:
        budget = parse_label_budget(budget_text)
        count = budget.total or max(1, round(budget.fraction * len(train)))
        for seed in range(seeds):
            chosen = train.select(torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:count]
                                  .sort().values)
            for init, encoder in encoders:
                started = time.perf_counter()
                result = train_task(encoder, chosen, val, scored, prepare, settings, seed, device, progress,
                                    desc=f"{init} {budget.text} seed {seed}")
                row = {"protocol": protocol, "data": source, "init": init, "labels": budget.text, "scenes": count,
                       "seed": seed, "scored_on": part, "step": run.step, "method": cfg.method.name, **result,
                       "seconds": round(time.perf_counter() - started, 1), "settings": vars(settings)}
                run.folder.append_result(row, to=run.folder.dense_results_file)
                scores = "  ".join(f"{name} {100 * row[name]:6.2f}" for name in measures)
                maps = f"{row['maps']} maps, " if settings.maps == "auto" and "maps" in row else ""
                print(f"  {budget.text:>5} seed {seed} {init:<12} {scores}  ({maps}validation {measures[0]} "
                      f"{100 * row['val_' + measures[0]]:.2f}; {row['seconds']:.0f} s)")
                rows.append(row)
    return rows


def scene_parts(run: Run, source: str, data_dir: str = "", part: str = "test", size: int = 0):
    """(train, validation, scored) SceneSets: fashion-scenes' training scenes less its validation part, and its
    validation or test scenes; or a COCO-style annotation file's images (read at `size`, else the run's image
    size, in the run's channels) cut into train, validation and test by the hash of each file name, as image
    folders are."""
    data_dir = data_dir or run.config.data.data_dir or None
    if source == "fashion-scenes":
        scenes = load_scenes("train", data_dir)
        parts = image_parts(scenes.as_images(), source, run.config.data.val_fraction)
        scored = scenes.select(parts["val"]) if part == "val" else load_scenes("test", data_dir)
        return scenes.select(parts["train"]), scenes.select(parts["val"]), scored
    annotations = find_annotations(source)
    if annotations is None:
        raise ConfigError(f"dense tasks read fashion-scenes (selfsup data fetch fashion-scenes) or a COCO-style "
                          f"annotation file (or a folder holding one); {source!r} is neither")
    scenes = read_coco(annotations, size or run.config.data.size, run.config.data.channels or 3)
    names = [part_of(path_position(p), FOLDER_TEST_FRACTION, run.config.data.val_fraction) for p in scenes.paths]
    cut = {name: scenes.select(torch.tensor([i for i, n in enumerate(names) if n == name], dtype=torch.long))
           for name in ("train", "val", "test")}
    for name, piece in cut.items():
        if not len(piece):
            raise DataError(f"{annotations}: none of its {len(scenes)} images falls in the {name} part (test "
                            f"{FOLDER_TEST_FRACTION:.0%}, validation {run.config.data.val_fraction:.0%} by file name "
                            "hash); annotate more images")
    return cut["train"], cut["val"], cut[part]
