"""What every benchmark does with a result: one JSON line on stdout, appended to --out when given."""
from __future__ import annotations

import json


def emit(record: dict, out: str = "") -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
