"""The training loop: it learns, resumes exactly, stops cleanly on a NaN loss, keeps checkpoints."""
import dataclasses
import json
import math
import signal

import pytest
import torch

from selfsup.budget import Budget, Costs, online_spacing
from selfsup.checkpoint import list_checkpoints
from selfsup.config import load_config
from selfsup.data import DataError, load_images
from selfsup.run import knn_report, labelled_eval_sets, load_run
from selfsup import train as train_module
from selfsup.errors import TrainingError
from selfsup.train import pretrain

from resume import assert_bitwise_equal, model_tensors, straight_and_resumed
from training import corrupt_loss_at_call

SMALL = ["backbone.width=0.125", "train.batch_size=32", "train.precision=fp32", "train.log_every=1",
         "optim.warmup_epochs=0", "eval.batch_size=256"]


def small_config(*extra):
    return load_config(overrides=SMALL + list(extra))


def test_resume_gives_bitwise_the_weights_of_an_unbroken_run(tiny_fashion, tmp_path, monkeypatch):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    make = lambda: small_config("train.steps=6", "train.checkpoint_every=3")  # noqa: E731
    straight, resumed = straight_and_resumed(make, data, tmp_path, 3, monkeypatch)
    assert_bitwise_equal(straight, resumed)
    rows = [json.loads(line) for line in (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3, 4, 5, 6]
    assert [row["step"] for row in rows if "rankme" in row] == [6]     # label-free monitoring, once per epoch


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_fashion, tmp_path, monkeypatch):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    corrupt_loss_at_call(monkeypatch, 4, float("nan"))
    with pytest.raises(TrainingError) as e:
        pretrain(small_config("train.steps=10", "train.checkpoint_every=2"), tmp_path / "run", data=data,
                 progress=False)
    message = str(e.value)
    assert "at step 3" in message and "step-0000002" in message
    run = load_run(tmp_path / "run")
    assert run.step == 2
    assert all(torch.isfinite(p).all() for p in run.method.parameters())


@pytest.mark.parametrize("lag", [0, 1])
def test_a_step_reads_its_finiteness_check_a_step_late_and_a_nan_never_reaches_a_checkpoint(lag, tiny_fashion,
                                                                                             tmp_path, monkeypatch):
    """With the default lag of 1 the NaN's step returns (its update queued, its check unread) and the next
    one stops the run, naming the NaN's step; with lag 0 the NaN's step stops before its update."""
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    corrupt_loss_at_call(monkeypatch, 3, float("nan"))              # step 2
    returned, real_init = [], train_module.TrainStep.__init__

    def with_lag(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.checks.lag = lag
    monkeypatch.setattr(train_module.TrainStep, "__init__", with_lag)
    real_step = train_module.TrainStep.__call__
    monkeypatch.setattr(train_module.TrainStep, "__call__",
                        lambda self, step, total: (real_step(self, step, total), returned.append(step))[0])
    with pytest.raises(TrainingError, match="the loss became nan at step 2; training stopped before any checkpoint"):
        pretrain(small_config("train.steps=10", "train.checkpoint_every=2"), tmp_path / "run", data=data,
                 progress=False)
    assert returned == [0, 1, 2][:2 + lag]
    run = load_run(tmp_path / "run")
    assert run.step == 2 and all(torch.isfinite(p).all() for p in run.method.parameters())


def test_an_online_evaluation_after_a_nan_is_skipped_and_the_next_step_stops_the_run(tiny_fashion, tmp_path,
                                                                                     monkeypatch):
    """The monitor never scores weights a NaN reached; the run stops where every rank reads the check."""
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    corrupt_loss_at_call(monkeypatch, 3, float("nan"))              # step 2
    with pytest.raises(TrainingError, match="the loss became nan at step 2; .* No checkpoint was written yet"):
        pretrain(small_config("train.steps=10", "train.checkpoint_every=100", f"eval.online_every={1 / 11}"),
                 tmp_path / "run", data=data, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "rankme" in row] == [1, 2]


def test_a_stop_requested_at_a_nan_step_saves_nothing_of_it(tiny_fashion, tmp_path, monkeypatch):
    """Ctrl-C during the NaN's step: the stop's checkpoint reads the check first."""
    from selfsup.methods.simclr import SimCLR
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    real_loss, calls = SimCLR.loss, []

    def nan_and_stop_at_step_2(self, views):
        calls.append(1)
        loss, logs = real_loss(self, views)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)                        # the loop finishes the step, then stops
            return loss * float("nan"), logs
        return loss, logs
    monkeypatch.setattr(SimCLR, "loss", nan_and_stop_at_step_2)
    with pytest.raises(TrainingError, match="the loss became nan at step 2"):
        pretrain(small_config("train.steps=10", "train.checkpoint_every=2"), tmp_path / "run", data=data,
                 progress=False)
    assert [c.stem for c in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step-0000002"]


def test_late_checks_read_all_but_the_newest_and_report_the_first_failure():
    checks = train_module.LateChecks(lag=1)
    checks.queue(0, {"loss": torch.tensor(1.0)})
    checks.queue(1, {"loss": torch.tensor(float("nan")), "gradient norm": torch.tensor(2.0)})
    assert checks.first_failure(keep=1) is None                      # step 0 read, step 1 not yet
    checks.queue(2, {"loss": torch.tensor(float("inf"))})
    for _ in range(2):                                               # a look that leaves the checks queued
        step, values = checks.first_failure(keep=0, consume=False)
        assert step == 1 and list(values) == ["loss", "gradient norm"]
        assert math.isnan(values["loss"]) and values["gradient norm"] == 2.0
    assert checks.first_failure(keep=0)[0] == 1
    assert checks.first_failure(keep=0) is None                      # a failure ends the run: nothing is left


def test_existing_run_is_not_overwritten_without_resume(tiny_fashion, tmp_path):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    pretrain(small_config("train.steps=1"), tmp_path / "run", data=data, progress=False)
    with pytest.raises(TrainingError, match="--resume"):
        pretrain(small_config("train.steps=1"), tmp_path / "run", data=data, progress=False)


def test_batch_larger_than_data_is_a_clear_error(tiny_fashion, tmp_path):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    with pytest.raises(DataError, match="larger than the data set"):
        pretrain(small_config("train.batch_size=1000"), tmp_path / "run", data=data, progress=False)


def test_resume_falls_back_when_the_newest_checkpoint_is_damaged(tiny_fashion, tmp_path, capsys):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    pretrain(small_config("train.steps=4", "train.checkpoint_every=2"), tmp_path / "run", data=data, progress=False)
    newest = list_checkpoints(tmp_path / "run" / "checkpoints")[-1].with_suffix(".safetensors")
    newest.write_bytes(newest.read_bytes()[:100])
    cfg = load_config(tmp_path / "run" / "config.yaml", ["train.steps=5"])
    result = pretrain(cfg, tmp_path / "run", data=data, resume=True, progress=False)
    assert result.steps == 5
    assert "step-0000004" in capsys.readouterr().err


def test_short_training_beats_random_init_on_knn(tiny_fashion, tmp_path):
    """Separable synthetic classes: a few SimCLR epochs must move kNN above the untrained backbone."""
    cfg = small_config("train.epochs=8", "optim.lr=1.0", f"data.data_dir={tiny_fashion}",
                       "augment.crop_scale=[0.6,1.0]", "augment.flip_p=0.0")
    result = pretrain(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    train, test = labelled_eval_sets(run.config)
    report = knn_report(run, train, test, k=20, progress=False)
    assert result.final_loss < 4.0
    assert report["knn_top1"] > report["knn_top1_random_init"]


def assert_replays_from_its_config(budget, data, tmp_path):
    """The budget run (in tmp_path/budget) replayed from its config.yaml, which holds train.steps and any
    warm-up the first plan shortened, gives bitwise the same weights."""
    fixed = pretrain(load_config(tmp_path / "budget" / "config.yaml"), tmp_path / "fixed", data=data, progress=False)
    assert fixed.steps == budget.steps
    assert_bitwise_equal(model_tensors(tmp_path / "budget"), model_tensors(tmp_path / "fixed"))


@pytest.mark.parametrize("method,online_every", [("simclr", 0), ("moco2", 0), ("simclr", 0.5)])
def test_a_time_budget_fixes_the_step_count_and_the_timing_trial_leaves_no_trace(method, online_every, tiny_fashion,
                                                                                  tmp_path, monkeypatch):
    """train.minutes: the timed trial steps (and the timed online evaluation) run on the real model and
    are then undone, and the count is fixed again at the end of warm-up, whose learning rates do not
    depend on it; so the run is bitwise the run its config.yaml replays with the N it chose (for
    methods whose updates do not follow the schedule's progress)."""
    real_trial = train_module._timed_trial

    def trial_planning_60_steps(*args, budget_seconds, **kwargs):
        # The trial runs for real (what it must not leave behind is the point), but its pace is fixed: a
        # busy machine's would plan fewer steps than the 12-step warm-up and test another path.
        costs = real_trial(*args, budget_seconds=budget_seconds, **kwargs)
        return dataclasses.replace(costs, step=budget_seconds / 60, evaluation=0.0, checkpoint=0.0)
    monkeypatch.setattr(train_module, "_timed_trial", trial_planning_60_steps)
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))        # 12 steps an epoch
    settings = [f"method.name={method}", "optim.warmup_epochs=1", f"eval.online_every={online_every}"]
    # 9 s, with an evaluation every 6 steps; the re-plan after the warm-up adds at least one step
    budget = pretrain(small_config(*settings, "train.minutes=0.15"), tmp_path / "budget", data=data, progress=False)
    recorded = load_config(tmp_path / "budget" / "config.yaml").train
    assert recorded.steps == budget.steps > 12 and (recorded.epochs, recorded.minutes) == (0, 0.15)  # past warm-up
    assert not (tmp_path / "budget" / ".budget-trial").exists()         # the timed checkpoint is cleared away
    used, seconds = budget.budget_use
    assert seconds == 9 and 0 < used
    assert_replays_from_its_config(budget, data, tmp_path)


def test_online_evaluations_that_would_take_over_a_tenth_of_the_budget_are_spaced_out(tiny_fashion, tmp_path,
                                                                                       monkeypatch, capsys):
    """An evaluation as long as a step, asked for every 6 steps, would take a seventh of the time: the
    plan spaces them 10 steps apart (a tenth), says so, and config.yaml replays that spacing."""
    real_trial = train_module._timed_trial

    def trial_with_a_slow_evaluation(*args, budget_seconds, **kwargs):
        costs = real_trial(*args, budget_seconds=budget_seconds, **kwargs)
        return dataclasses.replace(costs, step=budget_seconds / 60, evaluation=budget_seconds / 60, checkpoint=0.0)
    monkeypatch.setattr(train_module, "_timed_trial", trial_with_a_slow_evaluation)
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))        # 12 steps an epoch
    labelled = (data.subset(64), data.subset(32))
    budget = pretrain(small_config("optim.warmup_epochs=1", "eval.online_every=0.5", "train.minutes=0.15"),
                      tmp_path / "budget", data=data, progress=False, labelled=labelled)
    assert "evaluating every 10 steps instead of every 6" in capsys.readouterr().err
    assert load_config(tmp_path / "budget" / "config.yaml").eval.online_every == pytest.approx(10 / 12)
    rows = [json.loads(line) for line in (tmp_path / "budget" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r["step"] for r in rows if "rankme" in r]
    assert evaluated == [s for s in range(10, budget.steps + 1, 10)] + ([budget.steps] if budget.steps % 10 else [])
    assert online_spacing(Costs(step=1.0, evaluation=0.5), 6) == 6 and online_spacing(Costs(step=1.0), 6) == 6
    assert online_spacing(Costs(step=0.5, evaluation=20.0), 13) == 400 and online_spacing(Costs(step=1.0), 0) == 0


def test_a_budget_whose_first_plan_shortened_the_warm_up_replays_from_its_config(tiny_fashion, tmp_path,
                                                                                  monkeypatch):
    """On a slow CI machine the trial's pace planned 14 steps, so a 12-step warm-up was cut to 7; the re-plan
    then found room for 28. config.yaml must hold the 7, or its replay warms up over 12 and differs."""
    real_trial = train_module._timed_trial

    def pessimistic_trial(*args, budget_seconds, **kwargs):      # a pace that plans at most 14 steps
        costs = real_trial(*args, budget_seconds=budget_seconds, **kwargs)
        return dataclasses.replace(costs, step=budget_seconds / 14)
    monkeypatch.setattr(train_module, "_timed_trial", pessimistic_trial)
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))        # 12 steps an epoch
    budget = pretrain(small_config("optim.warmup_epochs=1", "train.minutes=0.1"), tmp_path / "budget", data=data,
                      progress=False)
    recorded = load_config(tmp_path / "budget" / "config.yaml")
    assert recorded.optim.warmup_epochs < 1 and budget.steps > 2 * round(12 * recorded.optim.warmup_epochs)
    assert_replays_from_its_config(budget, data, tmp_path)



def test_a_budget_whose_re_plan_left_fewer_steps_than_twice_the_warm_up_replays_from_its_config(tiny_fashion,
                                                                                             tmp_path, monkeypatch):
    """The trial planned many steps, so the 12-step warm-up ran whole; at its end the re-plan found room for
    a few more. The replay of that count must not cut the warm-up it never cut, or it differs from step 1."""
    real_trial, real_replan = train_module._timed_trial, Budget.replan

    def optimistic_trial(*args, budget_seconds, **kwargs):
        costs = real_trial(*args, budget_seconds=budget_seconds, **kwargs)
        return dataclasses.replace(costs, step=budget_seconds / 200, evaluation=0.0, checkpoint=0.0)

    def slow_loop(budget, step):                                   # the loop's pace leaves 3 more steps
        costs = real_replan(budget, step)
        budget.costs = dataclasses.replace(costs, step=budget.seconds_left() / 3.5)
        return budget.costs
    monkeypatch.setattr(train_module, "_timed_trial", optimistic_trial)
    monkeypatch.setattr(Budget, "replan", slow_loop)
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))        # 12 steps an epoch
    # 30 s, so that what the real trial took on a busy machine still leaves the plan far past the warm-up;
    # the run itself is as long as the re-plan makes it.
    budget = pretrain(small_config("optim.warmup_epochs=1", "train.minutes=0.5"), tmp_path / "budget", data=data,
                      progress=False)
    recorded = load_config(tmp_path / "budget" / "config.yaml")
    assert recorded.optim.warmup_epochs == 1 and 13 < budget.steps < 2 * 12
    # Each late check finds 3 more steps again, so the count moves after the decay began: a knot keeps the
    # rate continuous, config.yaml records it, and the replay follows it.
    assert recorded.train.schedule_knots and recorded.train.schedule_knots[0][0] > 13
    assert_replays_from_its_config(budget, data, tmp_path)
