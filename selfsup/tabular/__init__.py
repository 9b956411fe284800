"""Tables: read a CSV/TSV/Parquet file, turn its columns into one float tensor of standardised
numeric columns followed by categorical codes, and the raw-column baseline.

    columns = read_table("data.csv")                              # name -> raw cells (None = missing)
    train, test = split_rows(len(next(iter(columns.values()))))
    table, pre = load_table("data.csv", label_column="y", rows=train.tolist())   # fitted on train rows only
    table.select(test)                                            # TableSet of the held-out rows
"""
from selfsup.tabular.table import (MISSING, TablePreprocessor, TableSet, categorical_codes, load_table,
                                   read_table, split_rows)
from selfsup.tabular.baselines import raw_features

__all__ = ["MISSING", "TablePreprocessor", "TableSet", "categorical_codes", "load_table", "raw_features",
           "read_table", "split_rows"]
