"""train.loggers: every metrics row reaches TensorBoard at its step, a resumed run continues the curves
without repeating the steps its lost attempt logged after its checkpoint, and the evaluations after
pretraining land at the last step."""
import json

import pytest

import selfsup.run_folder
from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.pipeline import pretrain_and_evaluate
from selfsup.train import pretrain

from resume import Killed
from small_data import write_interactions

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

SMALL = ["method.name=nextitem", "interactions.max_length=8", "backbone.dim=16", "backbone.heads=2",
         "train.batch_size=16", "train.precision=fp32", "optim.warmup_epochs=0", "eval.online_every=0",
         "train.threads=1", "train.log_every=1", "train.loggers=[tensorboard]", "eval.report=false"]


def scalars(run_dir, name: str) -> list[tuple[int, float]]:
    events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(name)]


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_gets_every_row_and_a_resume_does_not_repeat_steps(tmp_path, monkeypatch):
    log = write_interactions(tmp_path / "log")
    settings = [f"data.source={log}", *SMALL, "train.steps=5", "train.checkpoint_every=2"]
    real_write = selfsup.run_folder.MetricsWriter.__call__

    def write_then_die(self, row):          # dies after logging step 3, whose checkpoint (2) is behind it
        real_write(self, row)
        if row.get("step") == 3 and "loss" in row:
            raise Killed
    with monkeypatch.context() as patch:
        patch.setattr(selfsup.run_folder.MetricsWriter, "__call__", write_then_die)
        with pytest.raises(Killed):
            pretrain(load_config(overrides=settings), tmp_path / "run", progress=False)
    assert [step for step, _ in scalars(tmp_path / "run", "loss")] == [1, 2, 3]
    pretrain(load_config(tmp_path / "run" / "config.yaml"), tmp_path / "run", resume=True, progress=False)
    logged = scalars(tmp_path / "run", "loss")
    assert [step for step, _ in logged] == [1, 2, 3, 4, 5]
    expected = {r["step"]: r["loss"] for r in rows(tmp_path / "run") if "loss" in r}
    assert [value for _, value in logged] == pytest.approx([expected[step] for step in range(1, 6)])


def test_the_evaluations_after_pretraining_reach_tensorboard_at_the_last_step(tmp_path):
    log = write_interactions(tmp_path / "log")
    result = pretrain_and_evaluate(load_config(overrides=[f"data.source={log}", *SMALL, "train.steps=3"]),
                                   tmp_path / "run", progress=False)
    [(step, value)] = scalars(tmp_path / "run", "evaluation/model_ndcg10")
    assert step == 3 and value == pytest.approx(result.ranking["model"]["ndcg"])
    assert scalars(tmp_path / "run", "evaluation/item_knn_hr10")[0][0] == 3


def test_an_unknown_tracker_is_a_config_error_listing_the_known_ones():
    with pytest.raises(ConfigError, match="unknown tracker.*mlflow; choose from tensorboard"):
        load_config(overrides=["train.loggers=[mlflow]"])
