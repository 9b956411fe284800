"""A run folder as an object: its layout and its life.

Every file name a run folder holds is spelled here and nowhere else:

    runs/<name>/
      config.yaml            the resolved config (replays the run; a time budget's step count included)
      metrics.jsonl          one JSON row per logged step, online evaluation and budget re-plan
      checkpoints/           step-*.safetensors + step-*.json, the `latest` and `best` pointers
      train_summary.json     steps, time, images/s, memory of the pretraining
      eval/                  knn.json, perplexity.json, results.jsonl, features/ (cached features)
      report.html, report/   the report and its figures
      tensorboard/, mlruns/, wandb/, trackers.json
                             what train.loggers writes, and the MLflow / W&B run ids
      tokenizer.json, ...    assets a modality saves to read data again as training did

A checkpoint holds everything a resumed run needs: weights, optimizer, loss scale, and the state of
every random generator (torch, CUDA, Python, numpy).
"""
from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import IO

import numpy as np
import torch
import yaml

from selfsup import distributed
from selfsup.checkpoint import (atomic_write, latest_checkpoint, list_checkpoints, load_checkpoint, mark_best,
                                optimizer_state, read_pointer, restore_optimizer, save_checkpoint, set_aside_newer)
from selfsup.errors import CheckpointError, TrainingError


MODEL_PREFIX = "model."          # a checkpoint's method weights; the optimizer's are "optimizer."


def method_weights(tensors: dict[str, torch.Tensor], module: str = "") -> dict[str, torch.Tensor]:
    """The method's weights among a checkpoint's tensors; with a module name ('backbone'), that module's."""
    prefix = MODEL_PREFIX + (f"{module}." if module else "")
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------------------ layout

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def budget_trial(self) -> Path:
        """Scratch space for the time budget's trial checkpoints; removed after the trial."""
        return self.path / ".budget-trial"

    @property
    def summary_file(self) -> Path:
        return self.path / "train_summary.json"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def results_file(self) -> Path:
        return self.eval_dir / "results.jsonl"

    @property
    def features_dir(self) -> Path:
        return self.eval_dir / "features"

    @property
    def report_page(self) -> Path:
        return self.path / "report.html"

    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    def tracker_dir(self, tracker: str) -> Path:
        """Where a tracker of train.loggers writes: tensorboard/, mlruns/ (MLflow's file store), wandb/."""
        return self.path / {"mlflow": "mlruns"}.get(tracker, tracker)

    @property
    def tracker_ids_file(self) -> Path:
        return self.path / "trackers.json"

    def eval_file(self, name: str) -> Path:
        """eval/<name>.json: the latest result of one evaluation (knn, perplexity)."""
        return self.eval_dir / f"{name}.json"

    def asset(self, name: str) -> Path:
        """A file a modality keeps with the run (tokenizer.json, table.json)."""
        return self.path / name

    # ------------------------------------------------------------------------------ life

    def is_run(self) -> bool:
        return self.config_file.is_file()

    def why_not_a_run(self) -> str:
        """'does not exist' or 'has no config.yaml'."""
        return "does not exist" if not self.path.exists() else f"has no {self.config_file.name}"

    def create(self) -> None:
        if not self.path.is_dir():
            print(f"run folder: {self.path}", file=sys.stderr)
        self.path.mkdir(parents=True, exist_ok=True)

    def save_config(self, cfg) -> None:
        cfg.save(self.config_file)

    def changed_model_settings(self, cfg) -> str:
        """'backbone.width 0.25 -> 0.5, ...': the backbone and method settings of `cfg` that differ from
        the run's config.yaml as it was saved (empty when there is none)."""
        if not self.is_run():
            return ""
        saved = yaml.safe_load(self.config_file.read_text()) or {}
        now = cfg.to_dict()
        return ", ".join(f"{section}.{key} {value} -> {now[section].get(key)}"
                         for section in ("backbone", "method") for key, value in (saved.get(section) or {}).items()
                         if now[section].get(key) != value)

    def keep_metrics_until(self, step: int) -> None:
        """Drop metric rows after `step` (all rows for a fresh run), so a resumed run does not repeat them."""
        if not self.metrics_file.exists():
            return
        rows = [line for line in self.metrics_file.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        atomic_write(self.metrics_file, "".join(row + "\n" for row in rows).encode())

    def metrics_writer(self, write: bool = True, trackers: list | None = None) -> "MetricsWriter":
        """Appends rows to metrics.jsonl and hands them to the trackers (train.loggers); with write=False
        (a rank other than 0) it discards them."""
        return MetricsWriter(open(self.metrics_file if write else os.devnull, "a"), trackers or [])

    def read_metrics(self) -> list[dict]:
        return _read_jsonl(self.metrics_file)

    def write_summary(self, summary: dict) -> Path:
        atomic_write(self.summary_file, json.dumps(summary, indent=1).encode())
        return self.summary_file

    def read_summary(self) -> dict | None:
        return _read_json(self.summary_file)

    def write_eval(self, name: str, result: dict) -> Path:
        path = self.eval_file(name)
        atomic_write(path, json.dumps(result, indent=1).encode())
        return path

    def read_eval(self, name: str) -> dict | None:
        return _read_json(self.eval_file(name))

    @property
    def dense_results_file(self) -> Path:
        """eval/dense.jsonl: segmentation and detection results (selfsup evaluate segment)."""
        return self.eval_dir / "dense.jsonl"

    @property
    def summaries_results_file(self) -> Path:
        """eval/summaries.jsonl: ROUGE of fine-tuned summarizers and the lead baseline (finetune-seq2seq)."""
        return self.eval_dir / "summaries.jsonl"

    @property
    def ctc_results_file(self) -> Path:
        """eval/ctc.jsonl: word and character error rates of CTC fine-tuning (finetune-ctc)."""
        return self.eval_dir / "ctc.jsonl"

    @property
    def summarizer_file(self) -> Path:
        """summarizer.safetensors: the encoder-decoder fine-tuned on summaries that `summarize` uses."""
        return self.path / "summarizer.safetensors"

    def append_result(self, row: dict, to: Path | None = None) -> None:
        """Add one row to eval/results.jsonl (or `to`); a kill mid-write leaves the file as it was."""
        path = to or self.results_file
        previous = path.read_bytes() if path.exists() else b""
        atomic_write(path, previous + (json.dumps(row) + "\n").encode())

    def read_results(self) -> list[dict]:
        return _read_jsonl(self.results_file)

    # ------------------------------------------------------------------------------ checkpoints

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.checkpoints)

    def list_checkpoints(self) -> list[Path]:
        return list_checkpoints(self.checkpoints)

    def checkpoint_to_load(self, checkpoint: str | Path | None = None) -> Path:
        """The stem of `checkpoint`, else of the newest one; CheckpointError when there is none."""
        stem = Path(checkpoint).with_suffix("") if checkpoint else self.latest_checkpoint()
        if stem is None:
            raise CheckpointError(f"{self.path} has no checkpoint yet; was pretraining stopped before its first save?")
        return stem

    def load_checkpoint(self, checkpoint: str | Path | None = None) -> tuple[dict[str, torch.Tensor], dict]:
        """The tensors and metadata of `checkpoint` (default: the newest). When the newest cannot be read,
        the error names the older ones to pass instead."""
        stem = self.checkpoint_to_load(checkpoint)
        try:
            return load_checkpoint(stem)
        except CheckpointError as e:
            older = [s.name for s in self.list_checkpoints() if s.name < stem.name]
            if checkpoint or not older:
                raise
            raise CheckpointError(f"{e}; pass --checkpoint {self.checkpoints / older[-1]}.safetensors "
                                  f"(or another of: {', '.join(older)})") from e

    def load_backbone_into(self, method) -> None:
        """Start `method` from the trained backbone of this run's newest checkpoint (train.init_from); the
        backbones must have the same weights' names and shapes (the heads may differ)."""
        tensors, _ = self.load_checkpoint()
        weights = method_weights(tensors, "backbone")
        try:
            method.backbone.load_state_dict(weights)
        except RuntimeError as e:
            raise CheckpointError(f"train.init_from={self.path}: its backbone does not fit this run's "
                                  f"({type(method.backbone).__name__}); use the same backbone sizes and data "
                                  f"({str(e).splitlines()[0]})") from e

    def best_score(self) -> float | None:
        """The online kNN of the checkpoint the `best` pointer names (None when there is none)."""
        best = read_pointer(self.checkpoints, "best")
        if best is None:
            return None
        try:
            return json.loads(best.with_suffix(".json").read_text()).get("online_knn")
        except (OSError, ValueError):
            return None

    def mark_best(self, saved: Path) -> None:
        mark_best(self.checkpoints, saved.with_suffix(""))

    def save_training_state(self, step: int, method: torch.nn.Module, optimizer, scaler, device: torch.device, *,
                            epoch: float, identity: dict, online_knn: float | None, config: dict, keep: int,
                            write: bool, into: Path | None = None) -> Path | None:
        """Checkpoint the training state of `step`: weights, optimizer, loss scale and random generators,
        with the run's identity (what a resume must match), its online kNN and config. Every rank calls
        it (sharded weights are gathered whole); the one with write=True writes, into the checkpoints
        folder or `into`. Returns the .safetensors path written."""
        tensors = {f"{MODEL_PREFIX}{k}": v for k, v in distributed.full_tensors(method.state_dict()).items()}
        optimizer_tensors, optimizer_meta = optimizer_state(optimizer)
        tensors.update(distributed.full_tensors(optimizer_tensors))
        if not write:
            return None
        tensors["rng.torch"] = torch.get_rng_state()
        if device.type == "cuda":            # dropout (SimCSE's augmentation) draws from the device's generator
            tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
        meta = {"epoch": epoch, "optimizer": optimizer_meta, **identity, "online_knn": online_knn,
                "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "rng": {"python": _jsonable(random.getstate()), "numpy": _jsonable(np.random.get_state())},
                "config": config}
        folder = into or self.checkpoints
        try:
            return save_checkpoint(folder, step, tensors, meta, keep=keep)
        except OSError as e:
            kept = self.latest_checkpoint()
            raise TrainingError(
                f"could not write the checkpoint of step {step} in {folder} ({e.strerror or e}); training stopped. "
                + (f"The previous checkpoint {kept.name} is intact; " if kept else "No earlier checkpoint exists; ")
                + f"free some disk space, then continue with: selfsup pretrain --resume {self.path}") from e

    def resume(self, method: torch.nn.Module, optimizer, scaler, device: torch.device, identity: dict,
               may_write: bool = True, changed_settings: str = "") -> int:
        """Load the newest checkpoint that reads cleanly into method, optimizer, loss scale and random
        generators, falling back to older ones; return its step.

        Every complete checkpoint is a candidate, also one newer than the `latest` pointer (a kill between
        a checkpoint's last file and the pointer's rename leaves it whole); only those that fail to load
        are set aside as damaged. A run whose settings (`identity`, the tensors' shapes) changed fails at
        once, for every checkpoint alike. Temporary files of interrupted writes are cleared."""
        if may_write:
            for leftover in [*self.checkpoints.glob(".*.tmp"), *self.path.glob(".*.tmp")]:
                leftover.unlink(missing_ok=True)
        candidates = self.list_checkpoints()
        if not candidates:
            raise TrainingError(f"--resume: no checkpoint in {self.checkpoints}; start the run without --resume")
        errors = []
        for stem in reversed(candidates):
            try:
                tensors, meta = load_checkpoint(stem)
                _check_same_run(meta, identity, stem)
                model_state = method_weights(tensors)
                _check_same_shapes(model_state, method.state_dict(), stem, changed_settings)
                method.load_state_dict(distributed.shaped_like(model_state, method.state_dict()))
                parameters = [p for group in optimizer.param_groups for p in group["params"]]
                tensors = distributed.shaped_like(tensors, {k: parameters[int(k.split(".")[1])] for k in tensors
                                                            if k.startswith("optimizer.")})
                restore_optimizer(optimizer, tensors, meta["optimizer"])
                if scaler.is_enabled() and meta.get("grad_scaler"):     # a run resumed in fp16 keeps its loss scale
                    scaler.load_state_dict(meta["grad_scaler"])
                rng_states = (tensors["rng.torch"], _python_rng(meta["rng"]["python"]),
                              _numpy_rng(meta["rng"]["numpy"]))
                step = int(meta["step"])
            except TrainingError:              # the settings changed: every checkpoint would fail the same way
                raise
            except (CheckpointError, RuntimeError, KeyError, ValueError, TypeError) as e:
                errors.append(f"{stem.name}: {e}")
                print(f"warning: cannot resume from {stem}: {e}; trying an older checkpoint", file=sys.stderr)
                continue
            torch.set_rng_state(rng_states[0])
            if device.type == "cuda" and "rng.cuda" in tensors:
                torch.cuda.set_rng_state(tensors["rng.cuda"], device)
            random.setstate(rng_states[1])
            np.random.set_state(rng_states[2])
            method.to(device)
            for damaged in set_aside_newer(self.checkpoints, stem) if may_write else []:
                print(f"warning: set aside {damaged.name} (could not be loaded) as *.damaged", file=sys.stderr)
            print(f"resuming from {stem.name} (step {step})", file=sys.stderr)
            return step
        raise TrainingError("--resume: no checkpoint could be loaded:\n  " + "\n  ".join(errors))


class MetricsWriter:
    """metrics.jsonl open for appending: one JSON row per call, flushed so a killed run keeps it, and
    the same row to each tracker."""

    def __init__(self, file: IO[str], trackers: list | None = None):
        self.file, self.trackers = file, trackers or []

    def __call__(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        for tracker in self.trackers:
            tracker(row)

    def __enter__(self) -> "MetricsWriter":
        return self

    def checkpointed(self, step: int) -> None:
        """A checkpoint now covers the rows up to `step`: trackers that cannot take a point back send them."""
        for tracker in self.trackers:
            tracker.checkpointed(step)

    def __exit__(self, exc_type, *exc) -> None:
        self.file.close()
        for tracker in self.trackers:
            tracker.close(completed=exc_type is None)


def _check_same_shapes(saved: dict, built: dict, stem: Path, changed_settings: str) -> None:
    """TrainingError naming the first tensor whose shape differs between the checkpoint and the model the
    config builds (a sharded tensor reports its whole shape)."""
    for name, tensor in saved.items():
        if name not in built or built[name].shape == tensor.shape:
            continue
        raise TrainingError(f"cannot resume {stem.name}: its {name} has shape {tuple(tensor.shape)} but the config "
                            f"builds {tuple(built[name].shape)}"
                            + (f" ({changed_settings} since the run was saved)" if changed_settings else "")
                            + "; resume with the original settings or start a new run")


def _check_same_run(meta: dict, identity: dict, stem: Path) -> None:
    changed = {k: (meta[k], v) for k, v in identity.items() if k in meta and meta[k] != v}
    if changed:
        what = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in changed.items())
        raise TrainingError(f"cannot resume {stem.name}: the run's {what} changed since it was saved; "
                            "resume with the original settings or start a new run")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _jsonable(state):
    if isinstance(state, np.ndarray):
        return state.tolist()
    if isinstance(state, (tuple, list)):
        return [_jsonable(s) for s in state]
    return state


def _python_rng(state):
    return (state[0], tuple(state[1]), state[2])


def _numpy_rng(state):
    return (state[0], np.array(state[1], dtype=np.uint32), state[2], state[3], state[4])
