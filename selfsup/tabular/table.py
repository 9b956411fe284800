"""Tables as a data source: a file's columns -> one float32 tensor (N, F) per row set.

The F features are the numeric columns, standardised by the training rows' mean and std (a
missing cell becomes 0.0, the training mean), then the categorical columns as integer codes
stored as floats (0 = missing or not seen in training, 1.. = the training vocabulary, sorted).
The preprocessor that does this is fitted on the training rows only and saved as JSON with a
run, so every later table is read exactly as training read it.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from selfsup.data import DataError

# Cells that mean "no value" (after stripping surrounding whitespace).
MISSING = frozenset({"", "NA", "N/A", "NaN", "nan", "?", "null", "None"})
_DELIMITERS = (",", "\t", ";", "|")

Columns = dict[str, list[str | None]]


def read_table(path: str | Path) -> Columns:
    """Column name -> the raw cells (stripped strings) in row order, None where missing.

    .csv/.tsv/.txt via the csv module (the delimiter is a tab for .tsv, else the most frequent of
    , tab ; | in the header line); .parquet via pandas + pyarrow (pip install 'selfsup[parquet]').
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"table file {str(path)!r} does not exist or is not a file; check the path")
    columns = _read_parquet(path) if path.suffix.lower() == ".parquet" else _read_delimited(path)
    if not columns or not len(next(iter(columns.values()))):
        raise DataError(f"{path} is an empty table: it needs a header line and at least one row")
    return columns


def _read_delimited(path: Path) -> Columns:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            first_line = f.readline()
            # The header's most frequent candidate (a comma on a tie or when it has none).
            delimiter = "\t" if path.suffix.lower() == ".tsv" else max(_DELIMITERS, key=first_line.count)
            f.seek(0)
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if not header:
                return {}
            names = _column_names(header, path)
            cells: list[list[str | None]] = [[] for _ in names]
            for row in reader:
                if not row:                     # a blank line
                    continue
                if len(row) != len(names):
                    raise DataError(f"{path}, line {reader.line_num}: {len(row)} cells where the header has "
                                    f"{len(names)} columns; fix the row (a cell holding the delimiter "
                                    f"{delimiter!r} must be quoted)")
                for column, cell in zip(cells, row):
                    cell = cell.strip()
                    column.append(None if cell in MISSING else cell)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); save it as UTF-8 CSV") from e
    except csv.Error as e:
        raise DataError(f"{path} is not a well-formed CSV file: {e}") from e
    return dict(zip(names, cells))


def _read_parquet(path: Path) -> Columns:
    try:
        import pandas as pd
        frame = pd.read_parquet(path)
    except ImportError as e:
        raise ImportError(f"reading {path.name} needs pandas and pyarrow: pip install 'selfsup[parquet]' "
                          f"({e})") from e
    except Exception as e:      # pyarrow's errors for a damaged or non-Parquet file have no common base
        raise DataError(f"cannot read {path} as a Parquet file: {e}") from e
    names = _column_names([str(name) for name in frame.columns], path)

    def cell(value) -> str | None:
        if pd.isna(value):
            return None
        text = str(value).strip()
        return None if text in MISSING else text
    return {name: [cell(v) for v in frame[original].tolist()] for name, original in zip(names, frame.columns)}


def _column_names(header: Sequence[str], path: Path) -> list[str]:
    """Stripped header names; an unnamed column (e.g. a saved index) is called column_<position>."""
    names = [name.strip() or f"column_{i + 1}" for i, name in enumerate(header)]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DataError(f"{path}: duplicate column names {', '.join(map(repr, duplicates))}; rename them")
    return names


def parse_number(cell: str) -> float | None:
    """The cell as a finite number, or None."""
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def sorted_values(values: Iterable[str]) -> list[str]:
    """Distinct values in a fixed order: by number when all are numbers (so "2" < "10"), else as text."""
    distinct = set(values)
    if all(parse_number(v) is not None for v in distinct):
        return sorted(distinct, key=lambda v: (parse_number(v), v))
    return sorted(distinct)


def _names(names: str | Iterable[str]) -> list[str]:
    """Column names given as a list, or as one comma-separated string (as a command line gives them)."""
    if isinstance(names, str):
        return [name.strip() for name in names.split(",") if name.strip()]
    return list(names)


def _row_count(columns: Columns) -> int:
    lengths = {len(cells) for cells in columns.values()}
    if len(lengths) > 1:
        raise DataError(f"the table's columns have different lengths {sorted(lengths)}")
    return lengths.pop() if lengths else 0


class TablePreprocessor:
    """Fitted on the training rows: per numeric column its mean and std, per categorical column its
    vocabulary, and the label classes; `transform` then encodes any rows the same way.

        pre = TablePreprocessor().fit(train_columns, label_column="y", categorical=["zip"])
        values, labels = pre.transform(columns)     # float32 (N, F), int64 (N,) or None
    """

    def __init__(self):
        self.label_column = ""
        self.numeric_columns: list[str] = []
        self.means: list[float] = []
        self.stds: list[float] = []
        self.categorical_columns: list[str] = []
        self.vocabularies: list[list[str]] = []    # per categorical column; its value v[i] gets code i + 1
        self.classes: list[str] = []

    @property
    def cardinalities(self) -> list[int]:
        """Codes per categorical column, counting the 0 of missing / unknown values."""
        return [len(vocabulary) + 1 for vocabulary in self.vocabularies]

    @property
    def num_features(self) -> int:
        return len(self.numeric_columns) + len(self.categorical_columns)

    def fit(self, columns: Columns, label_column: str = "", categorical: str | Iterable[str] = (),
            ignore: str | Iterable[str] = ()) -> "TablePreprocessor":
        """A column is numeric when every non-missing cell is a finite number and it is not listed in
        `categorical`; the label column and the `ignore`d ones are not features."""
        categorical, ignore = _names(categorical), _names(ignore)
        named = ([label_column] if label_column else []) + categorical + ignore
        unknown = [name for name in named if name not in columns]
        if unknown:
            raise DataError(f"no column named {', '.join(map(repr, unknown))} in the table; its columns are: "
                            f"{', '.join(columns)}")
        _row_count(columns)
        features = [name for name in columns if name != label_column and name not in ignore]
        if not features:
            raise DataError(f"the table has no feature columns left (columns: {', '.join(columns)}; label "
                            f"{label_column!r}, ignored {ignore})")
        self.label_column = label_column
        self.numeric_columns, self.means, self.stds = [], [], []
        self.categorical_columns, self.vocabularies = [], []
        for name in features:
            present = [cell for cell in columns[name] if cell is not None]
            numbers = [parse_number(cell) for cell in present]
            if name not in categorical and all(x is not None for x in numbers):
                values = np.asarray(numbers, dtype=np.float64)
                std = float(values.std()) if len(values) else 0.0
                self.numeric_columns.append(name)
                self.means.append(float(values.mean()) if len(values) else 0.0)
                self.stds.append(std if std > 0 else 1.0)          # a constant column maps to 0
            else:
                self.categorical_columns.append(name)
                self.vocabularies.append(sorted_values(present))
        self.classes = sorted_values(c for c in columns[label_column] if c is not None) if label_column else []
        return self

    def transform(self, columns: Columns) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> values float32 (N, n_numeric + n_categorical), labels int64 (N,) (None when the table has
        no label column or was fitted without one)."""
        if not self.num_features:
            raise DataError("the table preprocessor is not fitted; call fit() or load() first")
        absent = [name for name in self.numeric_columns + self.categorical_columns if name not in columns]
        if absent:
            raise DataError(f"the table lacks the column(s) {', '.join(map(repr, absent))} the preprocessor was "
                            f"fitted with; its columns are: {', '.join(columns)}")
        n = _row_count(columns)
        features = [self._numeric(name, columns[name], mean, std)
                    for name, mean, std in zip(self.numeric_columns, self.means, self.stds)]
        for name, vocabulary in zip(self.categorical_columns, self.vocabularies):
            code = {value: i + 1 for i, value in enumerate(vocabulary)}
            features.append(np.asarray([code.get(cell, 0) for cell in columns[name]], dtype=np.float64))
        values = torch.from_numpy(np.stack(features, axis=1).astype(np.float32)) if n else \
            torch.zeros(0, self.num_features)
        labels = None
        if self.label_column and self.label_column in columns:
            labels = torch.tensor(self._labels(columns[self.label_column]), dtype=torch.int64)
        return values, labels

    @staticmethod
    def _numeric(name: str, cells: list[str | None], mean: float, std: float) -> np.ndarray:
        values = np.empty(len(cells), dtype=np.float64)
        for i, cell in enumerate(cells):
            number = math.nan if cell is None else parse_number(cell)
            if number is None:
                raise DataError(f"column {name!r} is numeric in the training rows but data row {i + 1} holds "
                                f"{cell!r}; list the column in table.categorical or clean the cell")
            values[i] = number
        return np.nan_to_num((values - mean) / std, nan=0.0)

    def _labels(self, cells: list[str | None]) -> list[int]:
        index = {c: i for i, c in enumerate(self.classes)}
        missing = [i + 1 for i, cell in enumerate(cells) if cell is None]
        if missing:
            raise DataError(f"label column {self.label_column!r} is empty in data row(s) {missing[:5]}; "
                            f"drop those rows or the label column")
        unseen = sorted({cell for cell in cells if cell not in index})
        if unseen:
            raise DataError(f"label(s) {unseen[:5]} of column {self.label_column!r} never occur in the training "
                            f"rows (classes: {self.classes[:20]}); every class needs training rows")
        return [index[cell] for cell in cells]

    def to_dict(self) -> dict:
        return {"label_column": self.label_column, "numeric_columns": self.numeric_columns, "means": self.means,
                "stds": self.stds, "categorical_columns": self.categorical_columns,
                "vocabularies": self.vocabularies, "classes": self.classes}

    @classmethod
    def from_dict(cls, state: dict) -> "TablePreprocessor":
        keys = set(cls().to_dict())
        if not isinstance(state, dict) or set(state) != keys:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise DataError(f"not a table preprocessor: expected the keys {sorted(keys)}, got {got}")
        pre = cls()
        for key in keys:
            setattr(pre, key, state[key])
        if not (len(pre.numeric_columns) == len(pre.means) == len(pre.stds)
                and len(pre.categorical_columns) == len(pre.vocabularies)):
            raise DataError("not a table preprocessor: its column lists and statistics differ in length")
        return pre

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "TablePreprocessor":
        try:
            state = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read the table preprocessor {path}: {e}") from e
        return cls.from_dict(state)


@dataclass
class TableSet:
    values: torch.Tensor                       # float32 (N, F): numeric_features columns, then the codes
    labels: torch.Tensor | None = None         # int64 (N,)
    classes: list[str] = field(default_factory=list)
    name: str = ""
    numeric_features: int = 0
    cardinalities: list[int] = field(default_factory=list)
    assets: dict = field(default_factory=dict)     # files a run keeps to read tables again (the preprocessor)

    def __post_init__(self):
        if self.values.dtype != torch.float32 or self.values.dim() != 2:
            raise DataError(f"TableSet.values must be float32 (N, F), got {self.values.dtype} "
                            f"{tuple(self.values.shape)}")
        if self.values.shape[1] != self.numeric_features + len(self.cardinalities):
            raise DataError(f"TableSet has {self.values.shape[1]} columns but {self.numeric_features} numeric and "
                            f"{len(self.cardinalities)} categorical features")
        if self.labels is not None and len(self.labels) != len(self.values):
            raise DataError(f"{len(self.labels)} labels for {len(self.values)} rows")

    @property
    def samples(self) -> torch.Tensor:
        """The tensor training batches are drawn from."""
        return self.values

    def __len__(self) -> int:
        return self.values.shape[0]

    def subset(self, n: int) -> "TableSet":
        """The first n rows (all when n <= 0 or n >= len)."""
        return self if n <= 0 or n >= len(self) else self.select(torch.arange(n))

    def select(self, idx) -> "TableSet":
        """The rows at idx (a list or an int64 tensor of row numbers), with their labels."""
        idx = torch.as_tensor(idx, dtype=torch.int64)
        labels = None if self.labels is None else self.labels[idx]
        return TableSet(self.values[idx], labels, self.classes, self.name, self.numeric_features,
                        self.cardinalities, self.assets)


def load_table(path: str | Path, label_column: str = "", categorical: str | Iterable[str] = (),
               ignore: str | Iterable[str] = (), preprocessor: TablePreprocessor | None = None,
               rows: Sequence[int] | None = None) -> tuple[TableSet, TablePreprocessor]:
    """Every row of the file, encoded by `preprocessor`, or by a new one fitted on `rows` (all rows
    when None): pass the training rows so the test rows stay unseen. label_column, categorical and
    ignore only matter when fitting."""
    columns = read_table(path)
    if preprocessor is None:
        fit_on = columns
        if rows is not None:
            n = _row_count(columns)
            bad = [i for i in rows if not 0 <= int(i) < n]
            if bad:
                raise DataError(f"row numbers {bad[:5]} lie outside the table's {n} rows")
            fit_on = {name: [cells[int(i)] for i in rows] for name, cells in columns.items()}
        preprocessor = TablePreprocessor().fit(fit_on, label_column, categorical, ignore)
    values, labels = preprocessor.transform(columns)
    table = TableSet(values, labels, list(preprocessor.classes) if labels is not None else [], Path(path).stem,
                     len(preprocessor.numeric_columns), preprocessor.cardinalities)
    return table, preprocessor


def split_rows(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed seeded split of n rows -> (train_idx, test_idx), each a sorted int64 tensor; the test
    share is max(1, floor(n * test_fraction)) rows."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    if n < 2:
        raise DataError(f"a table of {n} row(s) cannot be split into training and test rows")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(n * test_fraction))
    return order[n_test:].sort().values, order[:n_test].sort().values


def categorical_codes(values: torch.Tensor, numeric_features: int, cardinalities) -> torch.Tensor:
    """The categorical part of encoded rows as codes: values (B, F) float -> int64 (B, F - numeric_features),
    rounded; a code outside [0, cardinality) becomes 0, the missing / unknown code."""
    codes = values[:, numeric_features:].round().long()
    limits = torch.as_tensor(cardinalities, dtype=torch.int64, device=values.device)
    if codes.shape[1] != limits.numel():
        raise ValueError(f"rows have {codes.shape[1]} columns after the {numeric_features} numeric ones, but "
                         f"{limits.numel()} cardinalities were given")
    return codes.where((codes >= 0) & (codes < limits), torch.zeros_like(codes))
