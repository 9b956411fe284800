"""Checkpoints: tensors in safetensors, everything else in JSON; never pickle.

A checkpoint is a pair ``step-0000500.safetensors`` + ``step-0000500.json`` in
``<run>/checkpoints/``. Each file is written to a temporary name in the same folder,
fsynced and atomically renamed, the JSON last and the ``latest`` pointer after both, so
a kill at any moment leaves the previous checkpoint whole and pointed to.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from selfsup.errors import CheckpointError

FORMAT = "selfsup-checkpoint"
VERSION = 1


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)       # the rename itself must reach the disk before we rely on it
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:                      # e.g. platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(folder: str | Path, step: int, tensors: dict[str, torch.Tensor], meta: dict,
                    keep: int = 2) -> Path:
    """Write tensors + meta as the checkpoint of `step`, point `latest` at it, keep the newest `keep`
    (and the one the `best` pointer names, if any)."""
    folder = Path(folder)
    stem = folder / f"step-{step:07d}"
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write(stem.with_suffix(".safetensors"), save_safetensors_bytes(flat))
    record = {"format": FORMAT, "version": VERSION, "step": step, **meta}
    atomic_write(stem.with_suffix(".json"), json.dumps(record, indent=1).encode())
    atomic_write(folder / "latest", stem.name.encode())
    best = read_pointer(folder, "best")
    older = [s for s in list_checkpoints(folder) if s.name < stem.name and s != best]
    for old in older[:max(0, len(older) - (keep - 1))]:
        for suffix in (".safetensors", ".json"):
            old.with_suffix(suffix).unlink(missing_ok=True)
    return stem.with_suffix(".safetensors")


def set_aside_newer(folder: str | Path, stem: Path) -> list[Path]:
    """Rename checkpoints newer than `stem` (ones a resume could not load) to *.damaged, so the
    resumed run's own checkpoints are not mistaken for or pruned in favour of them."""
    moved = []
    for newer in (s for s in list_checkpoints(folder) if s.name > stem.name):
        for suffix in (".safetensors", ".json"):
            path = newer.with_suffix(suffix)
            if path.exists():
                path.rename(path.with_name(path.name + ".damaged"))
        moved.append(newer)
    return moved


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Checkpoint stems (without suffix) in step order, oldest first."""
    folder = Path(folder)
    return sorted(p.with_suffix("") for p in folder.glob("step-*.json"))


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint given its .safetensors or .json path (or the stem)."""
    stem = Path(path).with_suffix("")
    tensor_path, meta_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    for p in (tensor_path, meta_path):
        if not p.is_file():
            raise CheckpointError(f"checkpoint file {p} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint metadata {meta_path} is not valid JSON ({e}); the file is damaged") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a selfsup checkpoint (format={meta.get('format')!r})")
    try:
        # In name order: safetensors hands them out in an order that differs from process to process,
        # and the ranks of a sharded run must gather and scatter them in one order.
        tensors = dict(sorted(load_safetensors_bytes(tensor_path.read_bytes()).items()))
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"checkpoint tensors {tensor_path} cannot be read ({e}); the file is truncated or damaged") from e
    return tensors, meta


def read_pointer(folder: str | Path, name: str) -> Path | None:
    """The checkpoint stem a pointer file (`latest`, `best`) names, if the pointer and both files exist."""
    folder = Path(folder)
    pointer = folder / name
    if pointer.is_file():
        stem = folder / pointer.read_text().strip()
        if stem.with_suffix(".json").is_file() and stem.with_suffix(".safetensors").is_file():
            return stem
    return None


def mark_best(folder: str | Path, stem: Path) -> None:
    """Point `best` at stem (kept by pruning from then on); the checkpoint it named before may go."""
    atomic_write(Path(folder) / "best", stem.name.encode())


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The stem the `latest` pointer names, or else the newest complete checkpoint; None if there is none."""
    pointed = read_pointer(folder, "latest")
    if pointed is not None:
        return pointed
    complete = [s for s in list_checkpoints(folder) if s.with_suffix(".safetensors").is_file()]
    return complete[-1] if complete else None


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state_dict into tensors (for safetensors) and JSON-able rest."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": dict(sorted(state.items())), "param_groups": meta["param_groups"]})
