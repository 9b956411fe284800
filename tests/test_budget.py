"""The time budget's planner (selfsup/budget.py), played with a simulated clock, and the timing trial that
feeds it its costs."""
import pytest
import torch

import selfsup.budget
from selfsup.budget import Budget, Cadence, Costs, StepPlanner, mean_steps_between, steps_in_budget
from selfsup.optim import lr_factor
from selfsup.precision import grad_scaler
from selfsup.train import _timed_trial


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def test_steps_in_budget_counts_evaluations_and_checkpoints_at_their_own_cost():
    # 100 s left at 0.5 s a step: 200 steps without evaluations. With a 4 s evaluation every 10 steps
    # and one at the end: (100 - 4) / (0.5 + 0.4) = 106.7 steps.
    assert steps_in_budget(100, Costs(0.5)) == 200
    assert steps_in_budget(100, Costs(0.5, evaluation=4), Cadence(evaluation=10)) == 106
    assert steps_in_budget(100, Costs(0.5, evaluation=4), Cadence(evaluation=1000)) == 190
    # a 2 s checkpoint every 20 steps and one at the end: (100 - 2) / (0.5 + 0.1) = 163.3
    assert steps_in_budget(100, Costs(0.5, checkpoint=2), Cadence(checkpoint=20)) == 163
    # both: (100 - 6) / (0.5 + 0.4 + 0.1) = 94
    assert steps_in_budget(100, Costs(0.5, 4, 2), Cadence(10, 20)) == 94
    assert steps_in_budget(1, Costs(0.5, evaluation=4), Cadence(evaluation=10)) == 1     # always one step


def play(seconds, step_seconds, warm_steps, slow_factor, warmup, evaluation=0.0, checkpoint=0.0,
         cadence=Cadence()):
    """A run as the trainer drives its budget: a trial that sees only slow steps, a first plan, the pace
    window opened halfway to the re-plan at the end of warm-up, evaluations and checkpoints timed apart.
    The first `warm_steps` steps take slow_factor times as long (a GPU's kernel selection and clocks).
    Returns the seconds the loop took and the steps it ran."""
    clock = FakeClock()
    budget = Budget(seconds, cadence, clock)
    clock.advance(12 * slow_factor * step_seconds)                    # the trial's own steps
    # The trial's steps are all cold; its evaluation and checkpoint are timed a second time, warm.
    budget.planned_from_trial(Costs(slow_factor * step_seconds, evaluation, checkpoint))
    total = budget.steps_left()
    start = clock.now - 12 * slow_factor * step_seconds
    replan_at = warmup + 1
    budget.open_window(0)
    step = 0
    while step < total:
        clock.advance(step_seconds * (slow_factor if step < warm_steps else 1))
        step += 1
        if step == replan_at // 2:
            budget.open_window(step)
        if cadence.evaluation and (step % cadence.evaluation == 0 or step == total):
            clock.advance(evaluation)
            budget.spent_apart("evaluation", evaluation)
        if cadence.checkpoint and (step % cadence.checkpoint == 0 or step == total):
            clock.advance(checkpoint)
            budget.spent_apart("checkpoint", checkpoint)
        if step == replan_at:
            budget.replan(step)
            total = step + budget.steps_left()
    return clock.now - start, total


@pytest.mark.parametrize("evaluation,checkpoint", [(0.0, 0.0), (2.0, 0.5)])
def test_a_run_whose_steps_get_faster_after_warm_up_fills_its_budget_within_5_percent(evaluation, checkpoint):
    # 75 s, 15 ms steps, the first 20 steps (and the trial) 4x slower, evaluations and checkpoints every
    # 234 steps, the warm-up 117 steps: the case of the default recipe on a GPU.
    took, steps = play(75, 0.015, warm_steps=20, slow_factor=4, warmup=117, evaluation=evaluation,
                       checkpoint=checkpoint, cadence=Cadence(234 if evaluation else 0, 234 if checkpoint else 0))
    assert 0.95 * 75 <= took <= 1.05 * 75, (took, steps)


@pytest.mark.parametrize("window_from", [0, 58])
def test_reading_the_pace_from_the_first_step_would_under_fill_the_budget(window_from):
    """The planner's reason to exist: with the window opened at step 0 the slow steps count, and the
    run stops well short of its budget (the 46 s of 75 seen on an H200); from halfway they do not."""
    clock = FakeClock()
    budget = Budget(75, Cadence(), clock)
    budget.planned_from_trial(Costs(0.06))
    budget.open_window(0)
    for step in range(1, 118):
        clock.advance(0.06 if step <= 40 else 0.015)
        if step == window_from:
            budget.open_window(step)
    pace = budget.replan(117).step
    if window_from == 0:
        assert pace == pytest.approx((40 * 0.06 + 77 * 0.015) / 117)     # the average: twice the real pace
    else:
        assert pace == pytest.approx(0.015)


def test_replan_keeps_the_trial_costs_until_the_loop_has_measured_its_own():
    clock = FakeClock()
    budget = Budget(100, Cadence(10, 10), clock)
    budget.planned_from_trial(Costs(0.5, evaluation=4, checkpoint=1))
    budget.open_window(0)
    clock.advance(3.0)
    assert budget.replan(10) == Costs(0.3, 4, 1)
    budget.open_window(10)
    clock.advance(2.0 + 1.5)
    budget.spent_apart("evaluation", 1.5)
    clock.advance(0.25)
    budget.spent_apart("checkpoint", 0.25)
    assert budget.replan(20) == Costs(0.2, 1.5, 0.25)        # time spent apart is not counted as steps


def test_checkpoints_come_at_every_epoch_end_every_n_steps_and_every_evaluation_counted_once():
    # every 500 steps and every 234 (epoch ends and evaluations together): 40 in 6439 steps, as a GPU run had
    assert 6439 / mean_steps_between(500, 234, 234) == pytest.approx(40, abs=1)
    assert mean_steps_between(10, 10) == 10 and mean_steps_between(12, 6) == 6
    assert mean_steps_between(4, 6) == pytest.approx(12 / 4)      # 4, 6, 8, 12 in every 12 steps
    assert mean_steps_between(500, 12, 0) == pytest.approx(1500 / (125 + 3 - 1), rel=1e-3)   # in every 1500 steps


def play_planner(seconds, step_seconds, slow_after, slow_factor, warmup):
    """A run driven by StepPlanner as the loop drives it, whose steps slow down by slow_factor after
    `slow_after` seconds (a CPU process that ages). Returns (seconds taken, steps, the rows, the knots the
    loop would have written, the learning-rate factors of every step)."""
    clock = FakeClock()
    planner = StepPlanner(seconds, Cadence(), clock=clock)
    total = planner.first_plan(Costs(step_seconds), 0)
    planner.start_loop(0, warmup, total)
    start, step, rows, knots, factors = clock.now, 0, [], [], []
    while step < total:
        factors.append(lr_factor(step, total, warmup, knots=knots))
        clock.advance(step_seconds * (slow_factor if clock.now - start > slow_after else 1))
        step += 1
        replan = planner.after_step(step)
        if replan is not None:
            if replan.late:
                knots.append([step, selfsup.optim.schedule_progress(step, total, warmup, knots)])
            total = replan.total_steps
            rows.append(replan.row)
    return clock.now - start, total, rows, knots, factors


def test_a_run_that_slows_down_after_the_warm_up_still_ends_within_5_percent_of_its_budget(monkeypatch):
    # The BART run of docs/summaries.md: 900 s, 0.5 s steps turning 0.8 s after 300 s, a 220-step warm-up.
    took, steps, rows, knots, factors = play_planner(900, 0.5, slow_after=300, slow_factor=1.6, warmup=220)
    assert 0.95 * 900 <= took <= 1.05 * 900, (took, steps, rows)
    assert knots and all(row["budget"]["late"] for row in rows[1:])
    jumps = [abs(b - a) for a, b in zip(factors, factors[1:])]
    assert max(jumps) < 0.01                                     # the learning rate never jumps at a re-plan
    assert factors[-1] < 0.001                                   # and the decay still ends at the last step
    monkeypatch.setattr(selfsup.budget, "LATE_CHECKS", ())
    took, *_ = play_planner(900, 0.5, slow_after=300, slow_factor=1.6, warmup=220)
    assert took > 1.15 * 900                                     # the one re-plan at the warm-up's end overran


def test_a_steady_run_is_not_re_planned_late():
    took, steps, rows, knots, _ = play_planner(300, 0.5, slow_after=10 ** 6, slow_factor=1.0, warmup=50)
    assert len(rows) == 1 and not knots and abs(took - 300) <= 1.0


@pytest.mark.parametrize("step_seconds", [9 / 14, 9 / 16, 9 / 40])
def test_late_checks_never_fall_on_the_last_steps_of_a_short_run(step_seconds):
    """A busy machine's re-plan left only a step or three after the warm-up: a check rounded onto the
    last step would move an end the decay has reached (a knot at progress 1)."""
    clock = FakeClock()
    planner = StepPlanner(9, Cadence(), clock=clock)
    total = planner.first_plan(Costs(9 / 60), 0)
    planner.start_loop(0, 12, total)
    step, knots = 0, []
    while step < total:
        clock.advance(step_seconds)
        step += 1
        replan = planner.after_step(step)
        if replan is not None:
            if replan.late:
                knots.append(selfsup.optim.schedule_progress(step, total, 12))
            total = replan.total_steps
            assert all(planner.replan_at < check < total - 1 for _, check in planner.late_checks)
    assert all(progress < 1 for progress in knots)


def play_h200_run(trial_seconds=8.0, trial_checkpoint=0.146):
    """The default recipe's run 4 on the H200 (docs/scale.md): 75 s, the trial's costs (13.71 ms a step,
    0.092 s an evaluation, 0.146 s a checkpoint, written then without the optimizer's state) against the
    loop's (13.93 ms, 0.107 s, and checkpoints twice as slow, 0.289 s), an evaluation every 234 steps (an
    epoch) and a checkpoint at every epoch end and every 500 steps, the warm-up 117 steps. Returns
    (seconds from the budget's start, steps)."""
    clock = FakeClock()
    started = clock.now
    planner = StepPlanner(75, Cadence(234, mean_steps_between(500, 234, 234)), clock=clock)
    clock.advance(trial_seconds)
    total = planner.first_plan(Costs(0.01371, 0.092, trial_checkpoint), 0)
    planner.start_loop(0, 117, total)
    step = 0
    while step < total:
        clock.advance(0.01393)
        step += 1
        replan = planner.after_step(step)
        if replan is not None:
            total = replan.total_steps
        if step % 234 == 0 or step == total:
            clock.advance(0.107)
            planner.spent_apart("evaluation", 0.107)
        if step % 500 == 0 or step % 234 == 0 or step == total:
            clock.advance(0.289)
            planner.spent_apart("checkpoint", 0.289)
    return clock.now - started, total


def test_checkpoints_slower_in_the_loop_than_in_the_trial_are_caught_by_the_late_checks(monkeypatch):
    """The H200's budget overran by 6% with the warm-up's re-plan alone, which still knew only the trial's
    checkpoint cost (the loop's first checkpoint comes after it); the late checks read the loop's own."""
    took, steps = play_h200_run()
    assert 0.95 * 75 <= took <= 1.05 * 75, (took, steps)
    monkeypatch.setattr(selfsup.budget, "LATE_CHECKS", ())
    took_without, steps_without = play_h200_run()
    assert took_without > 1.05 * 75 and steps_without > steps, (took_without, steps_without)
    # A trial that times the loop's checkpoint (with the optimizer's state, as it now writes them) plans
    # the run right from the start, late checks or not.
    took_right, _ = play_h200_run(trial_checkpoint=0.289)
    assert 0.95 * 75 <= took_right <= 1.05 * 75, took_right


def test_the_trial_times_its_checkpoints_with_the_optimizer_state_the_loop_saves():
    """A fresh run's optimizer holds no state until its first step, and a checkpoint without LARS's or
    SGD's momentum is half the size of the loop's (the H200's trial timed 0.146 s a checkpoint, the loop
    0.289 s). So the trial writes its checkpoints after its steps, with the state they made, and only
    then puts the state back as it found it."""
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    def train_step(step, total_steps):
        loss = model(torch.ones(3, 4)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss, {}, 0.1

    states_at_checkpoints = []
    costs = _timed_trial(train_step, model, optimizer, grad_scaler("cpu", "fp32"), torch.device("cpu"), 0, 100.0,
                         checkpoint=lambda step: states_at_checkpoints.append(len(optimizer.state)),
                         untimed=1, timed=2)
    assert states_at_checkpoints == [2, 2, 2]          # momentum of the weight and of the bias, at each write
    assert costs.checkpoint > 0 and costs.step > 0
    assert len(optimizer.state) == 0                   # put back as the run's start had it
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
