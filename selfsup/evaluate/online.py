"""Online monitoring during pretraining, cheap enough to run every epoch: kNN top-1 of the current
backbone on a small held-out labelled split (when the data has labels), and the label-free
measures (RankMe, normalised std, alignment, uniformity) on a fixed sample of images, so a run
shows whether it is learning, warns when its embeddings collapse, and can keep its best checkpoint."""
from __future__ import annotations

import sys
import time

import torch

from selfsup.data.stream import StreamedImages
from selfsup.errors import DataError
from selfsup.evaluate.datasets import labelled_eval_sets
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.knn import knn_accuracy
from selfsup.evaluate.representation import CollapseWatch, representation_metrics
from selfsup.modalities import MODALITIES

VIEW_SEED = 20231


class OnlineMonitor:
    def __init__(self, sample: torch.Tensor, labelled: tuple | None, k: int,
                 temperature: float, batch_size: int, device: torch.device, precision: str, task=None,
                 modality: str = "image"):
        """sample: samples (images, token ids, table rows) for the label-free measures; labelled:
        (train, test) data sets for kNN, or None; task: the modality's online measure of the task
        itself (Modality.online_task), whose `selects` score then chooses the best checkpoint;
        modality: the data's (its views feed the alignment measure)."""
        if labelled is not None and (labelled[0].labels is None or labelled[1].labels is None):
            raise ValueError("online kNN needs labelled train and test sets")
        self.sample, self.labelled, self.task = sample, labelled, task
        self.k, self.temperature, self.batch_size = k, temperature, batch_size
        self.device, self.precision, self.modality = device, precision, MODALITIES[modality]
        self.selects = task.selects if task is not None else "online_knn_top1"

    def __call__(self, method) -> dict[str, float]:
        """{'online_knn_top1' (with labels), 'rankme', 'std', 'uniformity', 'alignment'}; the method is
        put in eval mode for the features and back afterwards."""
        was_training = method.training
        method.eval()
        try:
            record = self._label_free(method)
            if self.labelled is not None:
                train, test = self.labelled
                feats = [self._features(method.embed, s.samples) for s in (train, test)]
                record["online_knn_top1"] = knn_accuracy(feats[0], train.labels, feats[1], test.labels, self.k,
                                                         self.temperature)
            if self.task is not None:
                record.update(self.task(method, self.device))
        finally:
            method.train(was_training)
        return record

    def _features(self, embed, images: torch.Tensor) -> torch.Tensor:
        return extract_features(embed, images, self.batch_size, self.device, self.precision)

    def _label_free(self, method) -> dict[str, float]:
        plain = self._features(method.embed, self.sample)
        make_view = self.modality.monitor_views(method)
        views = (None, None)
        if make_view is not None:
            # Two views from the run's own augmentation recipe, with a fixed seed so every
            # evaluation of a run compares the same pairs (alignment needs views; text and tables have none).
            gen = torch.Generator(device=self.device).manual_seed(VIEW_SEED)
            views = [self._features(lambda batch: method.evaluated_backbone(make_view(batch, gen)), self.sample)
                     for _ in range(2)]
        return {k: round(v, 5) for k, v in representation_metrics(plain, *views).items()}


def online_monitor(cfg, data, device: torch.device, precision: str, labelled: tuple | None,
                   look_for_labels: bool, run_dir=None) -> OnlineMonitor | None:
    """The online monitor: label-free measures on a fixed sample of images, and kNN on `labelled`
    (train, validation) or, when look_for_labels, on the config's labelled data if it has labels: its
    validation part, since the best checkpoint is chosen on this score (or on the modality's measure
    of the task itself, a recommender's validation NDCG). None when eval.online_every is 0."""
    if not cfg.eval.online_every:
        return None
    task = MODALITIES[cfg.modality].online_task(cfg, run_dir)
    if labelled is None and look_for_labels:
        try:
            labelled = labelled_eval_sets(cfg, max_train=cfg.eval.online_train, max_test=cfg.eval.online_test,
                                          run_dir=run_dir, part="val")
        except (DataError, ValueError) as e:
            print(f"note: no online kNN during pretraining ({e}); label-free measures only", file=sys.stderr)
    if labelled is not None:
        # Streamed images are decoded once here: the monitor reads its few thousand at every evaluation.
        labelled = tuple(s.decoded() if isinstance(s, StreamedImages) else s
                         for s in (labelled[0].subset(cfg.eval.online_train), labelled[1].subset(cfg.eval.online_test)))
    # The validation samples when there are labels; else evenly spaced training samples.
    sample = labelled[1].samples if labelled is not None else _spaced_samples(data, cfg.eval.online_test, cfg.data.size)
    return OnlineMonitor(sample, labelled, min(cfg.eval.knn_k, cfg.eval.online_train), cfg.eval.knn_temperature,
                         cfg.eval.batch_size, device, precision, task, cfg.modality)


def _spaced_samples(data, count: int, image_size: int) -> torch.Tensor:
    """`count` evenly spaced training samples (streamed images: decoded now, centre crops at image_size)."""
    if isinstance(data, StreamedImages):
        return data.spaced_preview(count, image_size)
    return data.samples[::max(1, len(data) // count)][:count]


class OnlineSchedule:
    """The training loop's online evaluations: due every `every` steps and at the last step; each one
    is a metrics row, a progress line, and the collapse warning when the embedding collapsed."""

    def __init__(self, monitor: OnlineMonitor, every: int, steps_per_epoch: int, spreads_embeddings: bool,
                 progress: bool):
        self.monitor, self.every, self.steps_per_epoch, self.progress = monitor, every, steps_per_epoch, progress
        self.collapse_watch = CollapseWatch(spreads_embeddings)

    def due(self, step: int, total_steps: int) -> bool:
        return step % self.every == 0 or step == total_steps

    def __call__(self, step: int, method, log, say) -> float | None:
        """Evaluate `method` at `step`, write the row with `log`, print with `say(text, file=...)` (the
        progress bar's write); return the score the best checkpoint is chosen on (online kNN top-1, or
        the task's own measure; None without either)."""
        start = time.perf_counter()
        measured = self.monitor(method)
        online_knn = measured.get("online_knn_top1")
        epoch = step / self.steps_per_epoch
        row = {"step": step, "epoch": round(epoch, 4), **measured, "seconds": round(time.perf_counter() - start, 3)}
        warning = self.collapse_watch(measured)
        if warning:
            row["collapse_warning"] = warning
            say(f"warning: step {step}: {warning}; check the learning rate and the method's "
                "anti-collapse settings (docs/evaluation.md)", file=sys.stderr)
        log(row)
        if self.progress:
            knn_text = f"online kNN top-1 {online_knn:.2%}, " if online_knn is not None else ""
            task_text = "".join(f"{name.removeprefix('online_')} {value:.4f}, " for name, value in measured.items()
                                if self.monitor.task is not None and name in self.monitor.task.names)
            say(f"step {step} (epoch {epoch:.2f}): {knn_text}{task_text}RankMe {measured['rankme']:.1f}, "
                f"std {measured['std']:.2f}")
        return measured.get(self.monitor.selects)
