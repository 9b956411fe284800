"""JSON Lines files (one JSON object a line), read with errors that name the file, the line and the fix."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from selfsup.errors import DataError


def json_objects(path: str | Path, what: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; bytes that are not UTF-8 are replaced (U+FFFD).
    `what` says what each object should hold, for the error on a line that is not an object."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {number} is not valid JSON ({e.msg}); a .jsonl file holds one "
                                f"JSON object per line") from e
            if not isinstance(record, dict):
                raise DataError(f"{path} line {number} is a JSON {type(record).__name__}, not an object with {what}")
            yield number, record
