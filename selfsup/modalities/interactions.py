"""Interactions: user histories of item tokens (N, L) for recommendation, with the run's item vocabulary.

Pretraining draws windows of each user's history minus its last two items (leave-one-out: the one
before last validates, the last tests). The labelled sets, for evaluating the user representation,
are one row per user (its most recent training items) labelled by a user attribute
(interactions.label), the users split into parts by a hash of their id.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from selfsup.data.fetch import DATASETS, find
from selfsup.data.holdout import part_of, path_position
from selfsup.errors import DataError
from selfsup.interactions.data import (ITEM_OFFSET, SOURCES, InteractionLog, LeaveOneOut, item_titles, leave_one_out,
                                       read_interactions, right_padded, user_attributes, user_item_matrix)
from selfsup.evaluate.ranking import ranking_metrics
from selfsup.methods import method_class
from selfsup.modalities.base import Modality, OnlineTask
from selfsup.run_folder import RunFolder
from selfsup.tabular.table import parse_number, sorted_values
from selfsup.text.data import TextSet

VOCABULARY_FILE = "items.json"
BANDS = 4                      # a numeric label with many values is cut into this many bands
MANY_VALUES = 10


class InteractionsModality(Modality):
    name = "interactions"
    channels_last = False
    raw_name = "bag of items"
    sample_word = "users"
    report_panels = ("ranking",)

    def log_path(self, cfg, source: str = "") -> Path:
        """The log a source names: a path, or a data set fetched with `selfsup data fetch` (movielens-100k)."""
        source = source or cfg.data.source
        path = Path(source).expanduser()
        if path.exists():
            return path
        if source in DATASETS:
            found = find(source, cfg.data.data_dir or None)
            if found is None:
                raise DataError(f"{source} has not been fetched yet: run `selfsup data fetch {source}`")
            return found
        raise DataError(f"the interaction log {source!r} does not exist; pass --data with {SOURCES}")

    def log(self, cfg, source: str = "", run_dir: Path | None = None) -> InteractionLog:
        """The log, read as the config says; with a run folder, checked against the vocabulary it trained with."""
        c = cfg.interactions
        log = read_interactions(self.log_path(cfg, source), c.user_column, c.item_column, c.time_column)
        saved = RunFolder(run_dir).asset(VOCABULARY_FILE) if run_dir else None
        if saved is not None and saved.is_file() and json.loads(saved.read_text())["items"] != log.items:
            raise DataError(f"{log.path} does not have the items the run in {run_dir} trained on "
                            f"({saved} lists them); evaluate it on the log it was trained on")
        return log

    def online_task(self, cfg, run_dir: Path | None) -> OnlineTask | None:
        """A recommender's HR@k and NDCG@k on the validation items of the first eval.online_test users;
        the best checkpoint is the one with the highest NDCG@k."""
        if not method_class(cfg.method.name).recommends:
            return None
        val = self.leave_one_out(cfg, run_dir=run_dir).val
        val = val.select(torch.arange(min(len(val), cfg.eval.online_test)))
        k = cfg.interactions.ranking_k

        def measure(method, device) -> dict[str, float]:
            scores = ranking_metrics(method.next_item_scores, val, k, device=device)
            return {f"online_hr{k}": scores["hr"], f"online_ndcg{k}": scores["ndcg"]}
        return OnlineTask(measure, (f"online_hr{k}", f"online_ndcg{k}"), f"online_ndcg{k}")

    def leave_one_out(self, cfg, source: str = "", run_dir: Path | None = None) -> LeaveOneOut:
        return leave_one_out(self.log(cfg, source, run_dir), cfg.interactions.max_length)

    def training_data(self, cfg, run_dir: Path | None = None):
        log = self.log(cfg, run_dir=run_dir)
        split = leave_one_out(log, cfg.interactions.max_length)
        data = TextSet(split.training_rows(), name=log.path.stem)
        data.assets = {VOCABULARY_FILE: {"items": log.items, "titles": item_titles(log)}}
        return data.subset(cfg.data.subset)

    def complete_config(self, cfg, data) -> None:
        if VOCABULARY_FILE not in data.assets:
            raise DataError("item histories passed to pretrain need their vocabulary: "
                            "TextSet(..., assets={'items.json': {'items': [...], 'titles': [...]}})")
        cfg.interactions.items = len(data.assets[VOCABULARY_FILE]["items"])

    def item_vocabulary(self, run_dir: Path) -> dict:
        """{'items': ids as in the log, 'titles': readable names}, as the run saved them."""
        path = RunFolder(run_dir).asset(VOCABULARY_FILE)
        if not path.is_file():
            raise DataError(f"{run_dir} has no {VOCABULARY_FILE}; is it an interactions run folder?")
        return json.loads(path.read_text())

    def save_assets(self, data, run_dir: Path) -> None:
        path = RunFolder(run_dir).asset(VOCABULARY_FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data.assets[VOCABULARY_FILE]))

    def backbone_inputs(self, cfg) -> dict:
        if not cfg.interactions.items:
            raise DataError("the config does not say how many items the log has (interactions.items); "
                            "build the method after reading the training data")
        return {"vocab_size": ITEM_OFFSET + cfg.interactions.items, "max_length": cfg.interactions.max_length}

    def labelled_sets(self, cfg, run_dir: Path | None = None, source: str = "", data_dir: str = "",
                      part: str = "test"):
        """(train, held-out part) users with their label attribute, split by a hash of the user id."""
        if not cfg.interactions.label:
            raise DataError("no user attribute to evaluate the user representation with: set interactions.label "
                            "to a column of the log's .user file (e.g. gender)")
        log = self.log(cfg, source or cfg.eval.source, run_dir)
        split = leave_one_out(log, cfg.interactions.max_length)
        parts = [part_of(path_position(user), cfg.interactions.test_fraction, cfg.data.val_fraction)
                 for user in log.users]
        values, order = self._label_values(cfg, log, parts)
        sets = []
        for wanted in ("train", part):
            rows = [u for u, (p, v) in enumerate(zip(parts, values)) if p == wanted and v is not None]
            if not rows:
                raise DataError(f"{log.path}: no user with a {cfg.interactions.label!r} value falls in the {wanted} part")
            sets.append((rows, [values[u] for u in rows]))
        present = {v for _, labels in sets for v in labels}
        classes = [c for c in order if c in present] if order else sorted_values(present)
        return tuple(TextSet(self._user_rows(split, rows), torch.tensor([classes.index(v) for v in labels]), classes,
                             log.path.stem) for rows, labels in sets)

    def _label_values(self, cfg, log: InteractionLog, parts: list[str]) -> tuple[list[str | None], list[str]]:
        """(each user's label, the bands in order): the attribute's value (no bands), or its band for a
        numeric attribute with many values (quartiles of the training users' values)."""
        attributes = user_attributes(log)
        name = cfg.interactions.label
        if name not in attributes:
            where = log.side_file(".user") or log.path.with_suffix(".user")
            raise DataError(f"no user attribute {name!r}: {where} " +
                            (f"has {', '.join(attributes)}" if attributes else "does not exist"))
        values = attributes[name]
        numbers = {v: parse_number(v) for v in values if v is not None}
        if len(numbers) <= MANY_VALUES or any(n is None for n in numbers.values()):
            return values, []
        training = sorted(numbers[v] for v, p in zip(values, parts) if v is not None and p == "train")
        edges = [training[min(len(training) - 1, len(training) * q // BANDS)] for q in range(1, BANDS)]
        bounds = [float("-inf"), *edges, float("inf")]
        labels = [f"{_plain(low)}-{_plain(high)}" for low, high in zip(bounds, bounds[1:])]
        return [None if v is None else labels[sum(numbers[v] >= e for e in edges)] for v in values], labels

    def _user_rows(self, split: LeaveOneOut, users: list[int]) -> torch.Tensor:
        return right_padded([split.train_histories[u][-split.max_length:] for u in users], split.max_length)

    def read(self, cfg, run_dir: Path | None, source: str, split: str = "test", data_dir: str = "",
             strict: bool = False):
        """One row per user (its most recent training items), in the log's user order."""
        parts = self.leave_one_out(cfg, source, run_dir)
        return TextSet(self._user_rows(parts, list(range(len(parts.train_histories)))), name=Path(source).stem)

    def raw_features(self, train, test) -> tuple[torch.Tensor, torch.Tensor]:
        vocab = int(max(train.samples.max(), test.samples.max())) + 1
        return user_item_matrix(train.samples, vocab), user_item_matrix(test.samples, vocab)


def _plain(value: float) -> str:
    return "" if abs(value) == float("inf") else f"{value:g}"
