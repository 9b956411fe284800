"""Files decoded once and mapped from disk (a text corpus's token stream, sound's clips): each is
vouched for by a sidecar `<file>.json`, written after the file is complete, naming what made it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


def sidecar_of(cache_file: Path) -> Path:
    return cache_file.with_name(cache_file.name + ".json")


def trusted_sidecar(cache_file: Path, identity: dict, expected_bytes: Callable[[dict], int]) -> dict | None:
    """The sidecar of a finished cache file made as `identity` says (every key of it with the same
    value) whose size is expected_bytes(sidecar), or None: the file must be made again."""
    try:
        meta = json.loads(sidecar_of(cache_file).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in identity.items()):
        return None
    if not cache_file.is_file() or cache_file.stat().st_size != expected_bytes(meta):
        return None
    return meta
