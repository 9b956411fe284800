"""Tables: rows (N, F) of standardised numbers and category codes, with the run's fitted normalisation."""
from __future__ import annotations

from pathlib import Path

import torch

from selfsup.data.holdout import carve_validation
from selfsup.errors import DataError
from selfsup.modalities.base import Modality, require_source
from selfsup.run_folder import RunFolder
from selfsup.tabular import TablePreprocessor, TableSet, read_table, split_rows
from selfsup.tabular.baselines import raw_features


class TabularModality(Modality):
    name = "tabular"
    channels_last = False
    raw_name = "raw columns"
    sample_word = "rows"
    PREPROCESSOR_FILE = "table.json"

    def _preprocessor(self, cfg, columns: dict, run_dir: Path | None, fit_rows=None):
        """The run's fitted preprocessor when it has one, else one fitted on fit_rows (all rows when None)."""
        saved = RunFolder(run_dir).asset(self.PREPROCESSOR_FILE) if run_dir else None
        if saved is not None and saved.is_file():
            return TablePreprocessor.load(saved)
        fit_on = columns if fit_rows is None else _rows(columns, fit_rows)
        return TablePreprocessor().fit(fit_on, label_column=cfg.table.label_column,
                                       categorical=cfg.table.categorical, ignore=cfg.table.ignore)

    def _split(self, cfg, columns) -> dict[str, torch.Tensor] | None:
        """The rows of each part ('train', 'val', 'test'); None for a table without labels (all rows train)."""
        if not cfg.table.label_column:
            return None
        n = len(next(iter(columns.values())))
        rest, test = split_rows(n, cfg.table.test_fraction)
        train, val = carve_validation(rest, int(n * cfg.data.val_fraction))
        return {"train": train, "val": val, "test": test}

    def training_data(self, cfg, run_dir: Path | None = None):
        """The training rows (with a label column, its held-out share is the test set); the normalisation
        and vocabularies are fitted on them alone."""
        columns = read_table(require_source(cfg, "a .csv, .tsv or .parquet file"))
        split = self._split(cfg, columns)
        train_rows = None if split is None else split["train"].tolist()
        preprocessor = self._preprocessor(cfg, columns, run_dir, train_rows)
        data = self._encode(columns if train_rows is None else _rows(columns, train_rows), preprocessor, labels=False)
        data.assets = {self.PREPROCESSOR_FILE: preprocessor}
        return data.subset(cfg.data.subset)

    def _encode(self, columns, preprocessor, labels: bool):
        if not labels:                     # pretraining never reads the labels: a row missing one still counts
            columns = {k: v for k, v in columns.items() if k != preprocessor.label_column}
        values, y = preprocessor.transform(columns)
        return TableSet(values, y if labels else None, list(preprocessor.classes) if labels else [], "",
                        len(preprocessor.numeric_columns), list(preprocessor.cardinalities))

    def complete_config(self, cfg, data) -> None:
        preprocessor = data.assets[self.PREPROCESSOR_FILE]
        cfg.table.numeric_features = len(preprocessor.numeric_columns)
        cfg.table.cardinalities = list(preprocessor.cardinalities)

    def save_assets(self, data, run_dir: Path) -> None:
        data.assets[self.PREPROCESSOR_FILE].save(RunFolder(run_dir).asset(self.PREPROCESSOR_FILE))

    def backbone_inputs(self, cfg) -> dict:
        return {"numeric_features": cfg.table.numeric_features, "cardinalities": list(cfg.table.cardinalities)}

    def labelled_sets(self, cfg, run_dir: Path | None = None, source: str = "", data_dir: str = "",
                      part: str = "test"):
        source = Path(source or cfg.eval.source or cfg.data.source).expanduser()
        if not cfg.table.label_column:
            raise DataError("the table has no label column: set table.label_column to evaluate")
        columns = read_table(source)
        preprocessor = self._preprocessor(cfg, columns, run_dir)
        split = self._split(cfg, columns)
        if not len(split[part]):
            raise DataError(f"{source}: no rows fall in the validation part; raise data.val_fraction or use more rows")
        return tuple(self._encode(_rows(columns, split[wanted].tolist()), preprocessor, labels=True)
                     for wanted in ("train", part))

    def read(self, cfg, run_dir: Path | None, source: str, split: str = "test", data_dir: str = "",
             strict: bool = False):
        columns = read_table(Path(source).expanduser())
        preprocessor = self._preprocessor(cfg, columns, run_dir)
        return self._encode(columns, preprocessor, labels=bool(cfg.table.label_column)
                            and cfg.table.label_column in columns)

    def raw_features(self, train, test) -> tuple[torch.Tensor, torch.Tensor]:
        return raw_features(train), raw_features(test)


def _rows(columns: dict, rows: list[int]) -> dict:
    return {name: [values[i] for i in rows] for name, values in columns.items()}
