"""The interface every kind of data implements, so the trainer, the evaluations and the report never
branch on a modality's name: they read its declared properties and call its members.

A data set of any modality has ``samples`` (indexed on dim 0), ``labels``, ``classes``, ``subset(n)``
and ``select(idx)``. `run_dir` arguments are a run folder whose assets (tokenizer, table
normalisation) read new data as training read it; None when there is no run yet.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from selfsup.errors import DataError


@dataclass
class OnlineTask:
    """measure(method, device) -> {name: value} for each of `names`; `selects` is the one the best
    checkpoint is chosen on (higher is better)."""
    measure: Callable
    names: tuple[str, ...]
    selects: str

    def __call__(self, method, device) -> dict[str, float]:
        return self.measure(method, device)


def identity_input(batch: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    return batch


class Modality(ABC):
    name: str                          # data.modality
    raw_name: str                      # the no-learning baseline (raw pixels, bag of words, ...) in reports
    sample_word: str = "samples"       # what one sample is called in printed counts (images, users, ...)
    channels_last: bool = False        # conv nets run faster with channels_last inputs
    finetune_defaults: dict = {}       # FinetuneSettings for fine-tuning (else its own defaults)
    supervised_defaults: dict = {}     # ... and on top of those for the supervised baseline
    probe_augmentation: bool = False   # the linear probe may add crop-and-flip copies (evaluate --augment)
    # `selfsup export --format onnx` can trace the backbone: its input has a fixed meaning per position
    # (a token backbone's padding mask depends on the values, which tracing would freeze).
    exports_onnx: bool = False
    # Its encoder gives feature maps that dense tasks read (segmentation, detection: selfsup.evaluate.dense).
    dense_tasks: bool = False
    # The report's sections beyond the common ones (selfsup.report): retrieval, views, explanations,
    # text_retrieval, text_sample, ranking.
    report_panels: tuple[str, ...] = ()

    def fits_on_device(self, data) -> bool:
        """Whether the training data set may be moved whole to the GPU (an in-memory one may)."""
        return True

    @abstractmethod
    def training_data(self, cfg, run_dir: Path | None = None):
        """The training part of the config's source: the samples pretraining draws batches from."""

    @abstractmethod
    def complete_config(self, cfg, data) -> None:
        """Fill the config values the data decides (image size, vocabulary, column layout)."""

    def save_assets(self, data, run_dir: Path) -> None:
        """Keep in the run folder what reading new data as training did needs (nothing by default)."""

    @abstractmethod
    def backbone_inputs(self, cfg) -> dict:
        """The backbone factory's data-decided arguments (channels, vocabulary, columns)."""

    @abstractmethod
    def labelled_sets(self, cfg, run_dir: Path | None = None, source: str = "", data_dir: str = "",
                      part: str = "test"):
        """(train, held-out) labelled data sets, the held-out one the part 'val' or 'test'."""

    @abstractmethod
    def read(self, cfg, run_dir: Path | None, source: str, split: str = "test", data_dir: str = "",
             strict: bool = False):
        """Any source of this modality, read as training read its data (for `selfsup embed`)."""

    @abstractmethod
    def raw_features(self, train, test) -> tuple[torch.Tensor, torch.Tensor]:
        """The no-learning baseline's features of two data sets."""

    def method_inputs(self, cfg):
        """What the methods that train on several kinds of data read of this one (a ModalityInputs:
        views and the evaluation view); None: the method's own (images, or its own modality's)."""
        return None

    def match_input(self, cfg, samples: torch.Tensor) -> torch.Tensor:
        """Samples in the layout the backbone takes (as they are by default)."""
        return samples

    def finetune_input(self, cfg, settings) -> Callable:
        """(batch, generator or None) -> the backbone's input during fine-tuning (the batch by default)."""
        return identity_input

    def monitor_views(self, method) -> Callable | None:
        """(samples, gen) -> an augmented view for the online alignment measure; None: no views."""
        return None

    def online_task(self, cfg, run_dir: Path | None):
        """A measure of the pretext task itself on validation data, for the online monitor (an
        OnlineTask), or None: then the monitor has kNN and the label-free measures only."""
        return None

    def item_vocabulary(self, run_dir: Path) -> dict:
        """A recommender run's item ids and titles ({'items': [...], 'titles': [...]})."""
        raise DataError(f"{self.name} data has no item vocabulary; it belongs to an interactions run")

    def leave_one_out(self, cfg, source: str = "", run_dir: Path | None = None):
        """Interaction histories split by time (selfsup.interactions.LeaveOneOut), for ranking metrics."""
        raise DataError(f"{self.name} data has no interaction histories; ranking needs an interactions run")

    def held_out_text(self, cfg, run_dir: Path, source: str = ""):
        """The held-out documents a language model's perplexity is measured on."""
        raise DataError(f"{self.name} data has no held-out text; perplexity needs a text run")


def require_source(cfg, what: str) -> Path:
    path = Path(cfg.data.source).expanduser()
    if not path.exists():
        raise DataError(f"{cfg.modality} data source {cfg.data.source!r} does not exist; pass --data with {what}")
    return path
