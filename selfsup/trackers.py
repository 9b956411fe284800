"""Experiment trackers (train.loggers): every metrics.jsonl row also goes to the tools people watch runs
in. Each is an optional extra imported only when asked for; rank 0 alone writes.

    tensorboard   RUN_DIR/tensorboard/ event files (pip install 'selfsup[tensorboard]'); view with
                  `tensorboard --logdir runs/`

A resumed run purges the steps after its checkpoint, so the curves continue without repeats.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from selfsup.errors import ConfigError

TRACKERS = ("tensorboard",)


class TensorBoardTracker:
    """Scalars of each row at its step (a nested dict as `name/key`); the config as text at the start."""

    def __init__(self, log_dir: Path, start_step: int, config: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ConfigError("train.loggers=[tensorboard] needs the tensorboard package: "
                              "pip install 'selfsup[tensorboard]'") from e
        # Rows logged after the checkpoint a resumed run starts from belong to the lost attempt.
        self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)
        if not start_step:
            self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)

    def __call__(self, row: dict) -> None:
        step = row["step"]
        for name, value in _scalars(row):
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _scalars(row: dict, prefix: str = ""):
    for key, value in row.items():
        if key == "step" and not prefix:
            continue
        if isinstance(value, dict):
            yield from _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield prefix + key, float(value)


def open_trackers(names: list[str], run_dir: Path, start_step: int, config: dict) -> list:
    """The trackers train.loggers names, ready for rows from start_step on."""
    makers = {"tensorboard": lambda: TensorBoardTracker(run_dir / "tensorboard", start_step, config)}
    return [makers[name]() for name in names]
