"""Experiment trackers (train.loggers): every metrics.jsonl row also goes to the tools people watch runs
in. Each is an optional extra imported only when asked for; rank 0 alone writes.

    tensorboard   RUN_DIR/tensorboard/ event files (pip install 'selfsup[tensorboard]'); view with
                  `tensorboard --logdir runs/`
    mlflow        an MLflow run in RUN_DIR/mlruns/, or at $MLFLOW_TRACKING_URI when set (experiment
                  $MLFLOW_EXPERIMENT_NAME, default "selfsup"); pip install 'selfsup[mlflow]'
    wandb         a Weights & Biases run, offline in RUN_DIR/wandb/ unless $WANDB_MODE says otherwise
                  (project $WANDB_PROJECT, default "selfsup"); `wandb sync RUN_DIR/wandb/offline-run-*`
                  uploads it; pip install 'selfsup[wandb]'

A resumed run continues the same curves without repeats. TensorBoard purges the steps after the
checkpoint the run resumes from; MLflow and W&B cannot take a point back, so they receive rows only
once a checkpoint covers them (and the rest when the run ends cleanly): a killed attempt never sent
the rows its resume logs again. The tracker's run id is kept in RUN_DIR/trackers.json, so the resume
and the evaluations after pretraining land in the same tracker run.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

import yaml

from selfsup.errors import ConfigError
from selfsup.run_folder import RunFolder

TRACKERS = ("tensorboard", "mlflow", "wandb")


def _import(module: str, tracker: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise ConfigError(f"train.loggers=[{tracker}] needs the {tracker} package: "
                          f"pip install 'selfsup[{tracker}]'") from e


def scalars(row: dict, prefix: str = ""):
    """(name, float) for each number of a metrics row except its step; a nested dict as `name/key`."""
    for key, value in row.items():
        if key == "step" and not prefix:
            continue
        if isinstance(value, dict):
            yield from scalars(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield prefix + key, float(value)


def flat_config(config: dict, prefix: str = "") -> dict[str, str]:
    """The resolved config as dotted keys (`optim.lr`), the form the config's overrides take."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


class TrackerIds:
    """RUN_DIR/trackers.json: which tracker run this run folder writes to."""

    def __init__(self, folder: RunFolder):
        self.file = folder.tracker_ids_file

    def get(self, tracker: str) -> str | None:
        return json.loads(self.file.read_text()).get(tracker) if self.file.is_file() else None

    def set(self, tracker: str, run_id: str) -> None:
        ids = json.loads(self.file.read_text()) if self.file.is_file() else {}
        self.file.write_text(json.dumps({**ids, tracker: run_id}, indent=1) + "\n")


class TensorBoardTracker:
    """Scalars of each row at its step; the config as text at the start."""

    def __init__(self, log_dir: Path, start_step: int, config: dict):
        SummaryWriter = _import("torch.utils.tensorboard", "tensorboard").SummaryWriter
        # Rows logged after the checkpoint a resumed run starts from belong to the lost attempt.
        self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)
        if not start_step:
            self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)

    def __call__(self, row: dict) -> None:
        step = row["step"]
        for name, value in scalars(row):
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def checkpointed(self, step: int) -> None:
        pass

    def close(self, completed: bool = True) -> None:
        self.writer.close()


class HeldRows:
    """For trackers that cannot take a point back: rows wait until a checkpoint covers them, are sent
    at a clean end, and are dropped when the run dies (its resume logs them again)."""

    def __init__(self):
        self.rows: list[dict] = []

    def __call__(self, row: dict) -> None:
        self.rows.append(row)

    def checkpointed(self, step: int) -> None:
        due = [row for row in self.rows if row["step"] <= step]
        self.rows = [row for row in self.rows if row["step"] > step]
        if due:
            self.send(due)

    def close(self, completed: bool = True) -> None:
        if completed and self.rows:
            self.send(self.rows)
        self.rows = []
        self.finish(completed)

    def send(self, rows: list[dict]) -> None:
        raise NotImplementedError

    def finish(self, completed: bool) -> None:
        pass


class MLflowTracker(HeldRows):
    """An MLflow run: the config's dotted keys as parameters, each row's numbers as metrics at its step."""

    BATCH = 1000           # the most metrics MLflow takes in one log_batch call

    def __init__(self, folder: RunFolder, start_step: int, config: dict):
        super().__init__()
        mlflow = _import("mlflow", "mlflow")
        from mlflow.entities import Metric, Param
        self.Metric = Metric
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            # A folder in the run needs no server or database. MLflow 3 keeps its file store working but
            # refuses it unless told that this is wanted.
            uri = folder.tracker_dir("mlflow").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        ids = TrackerIds(folder)
        self.run_id = ids.get("mlflow")
        if self.run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "selfsup")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            self.run_id = self.client.create_run(experiment_id, run_name=folder.path.name).info.run_id
            ids.set("mlflow", self.run_id)
            params = [Param(key, value[:6000]) for key, value in flat_config(config).items()]
            for first in range(0, len(params), 100):     # MLflow's limit of parameters in one call
                self.client.log_batch(self.run_id, params=params[first:first + 100])
        else:
            self.client.update_run(self.run_id, status="RUNNING")

    def send(self, rows: list[dict]) -> None:
        now = int(time.time() * 1000)
        metrics = [self.Metric(name, value, now, row["step"]) for row in rows for name, value in scalars(row)]
        for first in range(0, len(metrics), self.BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[first:first + self.BATCH])

    def finish(self, completed: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if completed else "KILLED")


class WandbTracker(HeldRows):
    """A W&B run: the resolved config as its config, each row's numbers logged at its step."""

    def __init__(self, folder: RunFolder, start_step: int, config: dict):
        super().__init__()
        wandb = _import("wandb", "wandb")
        ids = TrackerIds(folder)
        run_id = ids.get("wandb")
        if run_id is None:
            run_id = secrets.token_hex(4)          # W&B run ids: lower-case letters and digits
            ids.set("wandb", run_id)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "selfsup"), name=folder.path.name, id=run_id,
                              dir=str(folder.tracker_dir("wandb").parent),        # W&B adds the wandb/ itself
                              mode=os.environ.get("WANDB_MODE", "offline"), resume="allow", config=config,
                              settings=wandb.Settings(silent=True, console="off"))

    def send(self, rows: list[dict]) -> None:
        for row in rows:
            self.run.log(dict(scalars(row)), step=row["step"])

    def finish(self, completed: bool) -> None:
        self.run.finish(exit_code=0 if completed else 1)


def open_trackers(names: list[str], run_dir: Path, start_step: int, config: dict) -> list:
    """The trackers train.loggers names, ready for rows from start_step on."""
    folder = RunFolder(run_dir)
    makers = {"tensorboard": lambda: TensorBoardTracker(folder.tracker_dir("tensorboard"), start_step, config),
              "mlflow": lambda: MLflowTracker(folder, start_step, config),
              "wandb": lambda: WandbTracker(folder, start_step, config)}
    return [makers[name]() for name in names]
