"""train.loggers: every metrics row reaches TensorBoard, MLflow and W&B at its step, a resumed run
continues the curves without repeating the steps its lost attempt logged after its checkpoint, and
the evaluations after pretraining land at the last step. Each tracker's own files are read back."""
import json
import struct
import sys
import time

import pytest

import selfsup.run_folder
from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.pipeline import pretrain_and_evaluate
from selfsup.train import pretrain

from resume import Killed
from small_data import write_interactions


SMALL = ["method.name=nextitem", "interactions.max_length=8", "backbone.dim=16", "backbone.heads=2",
         "train.batch_size=16", "train.precision=fp32", "optim.warmup_epochs=0", "eval.online_every=0",
         "train.threads=1", "train.log_every=1", "eval.report=false"]


def tensorboard_points(run_dir, name: str) -> list[tuple[int, float]]:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(name)]


def mlflow_points(run_dir, name: str) -> list[tuple[int, float]]:
    mlflow = pytest.importorskip("mlflow")
    run_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    client = mlflow.MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))


def wandb_records(path):
    """The protobuf records of an offline .wandb file: a 7-byte header, then LevelDB's log format
    (32 KiB blocks of chunks: crc32c 4 bytes, length 2, type 1 = full, 2 first, 3 middle, 4 last)."""
    from wandb.proto.wandb_internal_pb2 import Record
    data, block, pos, pending = path.read_bytes(), 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:                # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            yield record


def wandb_points(run_dir, name: str) -> list[tuple[int, float]]:
    pytest.importorskip("wandb")
    points = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/*.wandb")):
        for record in wandb_records(path):
            if record.WhichOneof("record_type") == "history":
                items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
                if name in items:
                    points.append((record.history.step.num, json.loads(items[name])))
    return sorted(points)


POINTS = {"tensorboard": tensorboard_points, "mlflow": mlflow_points, "wandb": wandb_points}
# TensorBoard writes each row at once and purges on resume; MLflow and W&B get rows once a checkpoint covers them.
LOGGED_BEFORE_THE_KILL = {"tensorboard": [1, 2, 3], "mlflow": [1, 2], "wandb": [1, 2]}


def arrived(read, expected, seconds: float = 20.0):
    """read() once it returns `expected`, or what it returns after `seconds`."""
    deadline = time.monotonic() + seconds
    got = read()
    while got != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        got = read()
    return got


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("tracker", list(POINTS))
def test_every_row_arrives_once_and_a_resume_does_not_repeat_steps(tracker, tmp_path, monkeypatch):
    points = POINTS[tracker]
    log = write_interactions(tmp_path / "log")
    settings = [f"data.source={log}", *SMALL, f"train.loggers=[{tracker}]", "train.steps=5",
                "train.checkpoint_every=2"]
    real_write = selfsup.run_folder.MetricsWriter.__call__

    def write_then_die(self, row):          # dies after logging step 3, whose checkpoint (2) is behind it
        real_write(self, row)
        if row.get("step") == 3 and "loss" in row:
            raise Killed
    with monkeypatch.context() as patch:
        patch.setattr(selfsup.run_folder.MetricsWriter, "__call__", write_then_die)
        with pytest.raises(Killed):
            pretrain(load_config(overrides=settings), tmp_path / "run", progress=False)
    # W&B's offline writer is a process of its own: what the run handed it reaches the file a moment later.
    assert arrived(lambda: [step for step, _ in points(tmp_path / "run", "loss")],
                   LOGGED_BEFORE_THE_KILL[tracker]) == LOGGED_BEFORE_THE_KILL[tracker]
    pretrain(load_config(tmp_path / "run" / "config.yaml"), tmp_path / "run", resume=True, progress=False)
    assert arrived(lambda: [step for step, _ in points(tmp_path / "run", "loss")], [1, 2, 3, 4, 5]) == [1, 2, 3, 4, 5]
    logged = points(tmp_path / "run", "loss")
    expected = {r["step"]: r["loss"] for r in rows(tmp_path / "run") if "loss" in r}
    assert [value for _, value in logged] == pytest.approx([expected[step] for step in range(1, 6)])


def test_the_evaluations_after_pretraining_reach_every_tracker_at_the_last_step(tmp_path):
    log = write_interactions(tmp_path / "log")
    for name in POINTS:                     # each test above skips when its tracker is not installed
        pytest.importorskip(name)
    result = pretrain_and_evaluate(load_config(overrides=[f"data.source={log}", *SMALL, "train.steps=3",
                                                          "train.loggers=[tensorboard,mlflow,wandb]"]),
                                   tmp_path / "run", progress=False)
    for points in POINTS.values():
        [(step, value)] = points(tmp_path / "run", "evaluation/model_ndcg10")
        assert step == 3 and value == pytest.approx(result.ranking["model"]["ndcg"])
        assert points(tmp_path / "run", "evaluation/item_knn_hr10")[0][0] == 3
        assert [step for step, _ in points(tmp_path / "run", "loss")] == [1, 2, 3]


def test_an_unknown_tracker_is_a_config_error_listing_the_known_ones():
    with pytest.raises(ConfigError, match="unknown tracker.*comet; choose from tensorboard, mlflow, wandb"):
        load_config(overrides=["train.loggers=[comet]"])


def test_mlflow_gets_the_resolved_config_as_parameters(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    log = write_interactions(tmp_path / "log")
    pretrain(load_config(overrides=[f"data.source={log}", *SMALL, "train.steps=2", "optim.lr=0.0042",
                                    "train.loggers=[mlflow]"]), tmp_path / "run", progress=False)
    run_id = json.loads((tmp_path / "run" / "trackers.json").read_text())["mlflow"]
    client = mlflow.MlflowClient(tracking_uri=(tmp_path / "run" / "mlruns").resolve().as_uri())
    run = client.get_run(run_id)
    assert run.data.params["optim.lr"] == "0.0042" and run.data.params["method.name"] == "nextitem"
    assert run.info.status == "FINISHED" and run.info.run_name == "run"


@pytest.mark.parametrize("tracker,module", [("tensorboard", "torch.utils.tensorboard"), ("mlflow", "mlflow"),
                                            ("wandb", "wandb")])
def test_a_tracker_whose_package_is_missing_is_a_one_line_error_naming_the_extra(tracker, module, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)            # `import module` now raises ImportError
    log = write_interactions(tmp_path / "log")
    cfg = load_config(overrides=[f"data.source={log}", *SMALL, "train.steps=1", f"train.loggers=[{tracker}]"])
    with pytest.raises(ConfigError, match=rf"needs the {tracker} package: pip install 'selfsup\[{tracker}\]'"):
        pretrain(cfg, tmp_path / "run", progress=False)
