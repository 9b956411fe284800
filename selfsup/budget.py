"""The time budget (train.minutes): how many training steps fit in it, planned twice.

First from a short timed trial, before the run; then again from the loop's own pace at the end of the
learning-rate warm-up, where the schedule does not yet depend on the step count, so the count can
change without changing any step that has run. The pace is read over the second half of the steps
before the re-plan: the first steps of a run are slower than the rest on a GPU (kernel selection,
compilation, memory pools, clocks), and a pace that counts them under-fills the budget.

Time spent in online evaluations and checkpoints is counted apart from the steps, at its own
measured cost, because those come once an epoch or every few hundred steps and the window the pace
is read over may hold none of them. Online evaluations are spaced out when they would take more than
ONLINE_SHARE of the budget (a large encoder on a small data set: an evaluation of a spectrogram
transformer took 15 steps' time and came every 13 steps, half of a 10-minute budget).

A step time can also change later (a CPU process that slows as it ages was measured at 0.50 -> 0.82 s
a step over a 15-minute BART run, docs/summaries.md), so the count is checked twice more, halfway and
three quarters of the way from the first re-plan to the planned end, each from the pace over the
second half of the steps since the one before (a slowdown that began in between is then read at its
new pace, not averaged with the old); a change of more than LATE_TOLERANCE of the steps re-plans. From then on the step count shapes
the decay, so the loop keeps the learning rate continuous through a knot (selfsup.optim.schedule_progress).
These checks fall on steps fixed by the agreed plan, so every rank of a distributed run makes them
together.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable

LATE_CHECKS = (0.5, 0.75)      # shares of the way from the first re-plan to the planned end
LATE_TOLERANCE = 0.02          # a late check that moves the end by at most this share of the steps keeps the plan
ONLINE_SHARE = 0.1             # online evaluations take at most about this share of a time budget


@dataclass(frozen=True)
class Replan:
    """A new total step count, the metrics row that explains it, and whether the decay had begun."""
    total_steps: int
    row: dict
    late: bool = False


@dataclass(frozen=True)
class Costs:
    """Seconds one training step, one online evaluation and one checkpoint take."""
    step: float
    evaluation: float = 0.0
    checkpoint: float = 0.0


@dataclass(frozen=True)
class Cadence:
    """Every how many steps, on average, an online evaluation and a checkpoint come (0 = never)."""
    evaluation: float = 0
    checkpoint: float = 0


def mean_steps_between(*periods: int, horizon_periods: int = 100) -> float:
    """The mean number of steps between events that come every p steps for each period p (several
    falling on one step count once): a checkpoint every train.checkpoint_every steps, at every epoch's
    end and at every online evaluation."""
    periods = [p for p in periods if p > 0]
    horizon = horizon_periods * max(periods)
    events = set()
    for p in periods:
        events.update(range(p, horizon + 1, p))
    return horizon / len(events)


def online_spacing(costs: Costs, requested: int) -> int:
    """Steps between online evaluations: the requested spacing (0: none), or more when evaluating that
    often would take over ONLINE_SHARE of the time (one every s steps takes evaluation / (s x step) of it)."""
    if not requested or not costs.evaluation:
        return requested
    return max(requested, math.ceil(costs.evaluation / (ONLINE_SHARE * costs.step)))


def steps_in_budget(seconds_left: float, costs: Costs, cadence: Cadence = Cadence()) -> int:
    """How many more steps (at least one) `seconds_left` holds when an online evaluation comes every
    cadence.evaluation steps and a checkpoint every cadence.checkpoint steps, each once more at the
    last step."""
    per_step, at_the_end = costs.step, 0.0
    if cadence.evaluation:
        per_step += costs.evaluation / cadence.evaluation
        at_the_end += costs.evaluation
    if cadence.checkpoint:
        per_step += costs.checkpoint / cadence.checkpoint
        at_the_end += costs.checkpoint
    return max(1, int((seconds_left - at_the_end) / per_step))


class Budget:
    """A wall-clock budget for the training loop, and the pace the loop keeps in it.

    The loop says from which step on to read its pace (`open_window`) and how long each evaluation or
    checkpoint took (`spent_apart`); `steps_left` answers from the latest costs. `clock` is replaceable so that
    a test can play a run whose steps get faster after warm-up.
    """

    def __init__(self, seconds: float, cadence: Cadence, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.started = clock()
        self.deadline = self.started + seconds
        self.cadence = cadence
        self.costs: Costs | None = None
        self._window_start: tuple[int, float, float] | None = None     # (step, time, seconds apart)
        self._loop_start: tuple[int, float] | None = None               # (step, time) of the first window
        self._apart = {"evaluation": [0.0, 0], "checkpoint": [0.0, 0]}  # seconds, count since the trial
        self._apart_total = 0.0

    def elapsed(self) -> float:
        return self.clock() - self.started

    def seconds_left(self) -> float:
        return self.deadline - self.clock()

    def steps_left(self) -> int:
        return steps_in_budget(self.seconds_left(), self.costs, self.cadence)

    def planned_from_trial(self, costs: Costs) -> None:
        """The first plan's costs, from a timed trial."""
        self.costs = costs

    def open_window(self, step: int) -> None:
        """Read the pace from the end of step `step` on (the latest call wins)."""
        self._window_start = (step, self.clock(), self._apart_total)
        self._loop_start = self._loop_start or self._window_start[:2]

    def spent_apart(self, kind: str, seconds: float) -> None:
        """An online evaluation ("evaluation") or a checkpoint ("checkpoint") took `seconds` in the loop."""
        self._apart[kind][0] += seconds
        self._apart[kind][1] += 1
        self._apart_total += seconds

    def replan(self, step: int) -> Costs:
        """The costs re-measured at `step`: the pace since the window opened, the evaluations' and
        checkpoints' own average costs where the loop has had any (else the trial's)."""
        measured = {"step": self.costs.step}
        if self._window_start is not None and step > self._window_start[0]:
            start_step, start_time, apart_before = self._window_start
            loop_seconds = self.clock() - start_time - (self._apart_total - apart_before)
            measured["step"] = loop_seconds / (step - start_step)
        for kind, (seconds, count) in self._apart.items():
            if count:
                measured[kind] = seconds / count
        self.costs = replace(self.costs, **measured)
        return self.costs

    def measured(self, step: int) -> dict[str, float]:
        """The loop's own averages from its first window to `step`: seconds a step (evaluations and
        checkpoints apart), an evaluation and a checkpoint, each where there was one."""
        out = {kind: seconds / count for kind, (seconds, count) in self._apart.items() if count}
        if self._loop_start is not None and step > self._loop_start[0]:
            out["step"] = (self.clock() - self._loop_start[1] - self._apart_total) / (step - self._loop_start[0])
        return out


class StepPlanner:
    """train.minutes turned into a step count for the training loop: first from a timed trial
    (`first_plan`), then from the loop's pace at the warm-up's end and at the late checks that find the
    end moved (`after_step` returns a Replan at the step it re-plans). `agree` makes the ranks of a
    distributed run agree on a count (the fewest)."""

    def __init__(self, seconds: float, cadence: Cadence, agree: Callable[[int], int] = lambda steps: steps,
                 clock: Callable[[], float] = time.perf_counter):
        self.seconds = seconds
        self.budget = Budget(seconds, cadence, clock)
        self.agree = agree
        self.pace_from: int | None = None
        self.replan_at: int | None = None
        self.late_checks: list[tuple[int, int]] = []      # (step the pace is read from, step of the check)

    def first_plan(self, costs: Costs, start_step: int) -> int:
        """The total step count the trial's costs give."""
        self.budget.planned_from_trial(costs)
        return start_step + self.agree(self.budget.steps_left())

    def start_loop(self, start_step: int, warmup_steps: int, total_steps: int) -> None:
        """The loop starts at start_step. Up to the warm-up's last step and the cosine's first (factor 1)
        the learning rates do not depend on the step count, so the count is fixed again there, from the
        pace of the second half of the steps before it; without a warm-up left, 10 steps give the pace."""
        count_free_steps = warmup_steps + 1 if warmup_steps > start_step else start_step + 10
        self.replan_at = min(count_free_steps, total_steps - 1)
        self.pace_from = start_step + (self.replan_at - start_step) // 2
        self.total_steps = total_steps
        self.budget.open_window(start_step)

    def after_step(self, step: int) -> Replan | None:
        """At the re-plan step, and at a late check that finds the end moved: the new plan; else None."""
        if step == self.pace_from:
            self.budget.open_window(step)
        if step == self.replan_at:
            replan = self._replan(step)
            self.total_steps = replan.total_steps
            checks = [step] + [round(step + share * (replan.total_steps - step)) for share in LATE_CHECKS]
            self.late_checks = [(before + (check - before) // 2, check) for before, check in zip(checks, checks[1:])]
            self._drop_checks_past(replan.total_steps)
            return replan
        if self.late_checks and step == self.late_checks[0][0]:
            self.budget.open_window(step)
        if not self.late_checks or step != self.late_checks[0][1]:
            return None
        self.late_checks.pop(0)
        replan = self._replan(step, late=True)
        if abs(replan.total_steps - self.total_steps) <= LATE_TOLERANCE * self.total_steps:
            return None
        self.total_steps = replan.total_steps
        self._drop_checks_past(replan.total_steps)
        return replan

    def _drop_checks_past(self, total_steps: int) -> None:
        """A check at or after the second-to-last step could only move an end the decay has about reached
        (a short run's checks can round onto it); those are dropped, as are checks that fell together."""
        kept, seen = [], set()
        for window, check in self.late_checks:
            if check < total_steps - 1 and check not in seen and check > (self.replan_at or 0):
                kept.append((window, check))
                seen.add(check)
        self.late_checks = kept

    def _replan(self, step: int, late: bool = False) -> Replan:
        """The count from the pace since the last window opened."""
        costs = self.budget.replan(step)
        total_steps = step + self.agree(self.budget.steps_left())
        return Replan(total_steps, {"step": step, "budget": {
            "planned_steps": total_steps, "seconds_left": round(self.budget.seconds_left(), 2), "late": late,
            **{f"{kind}_seconds": round(seconds, 5) for kind, seconds in vars(costs).items()}}}, late)

    def spent_apart(self, kind: str, seconds: float) -> None:
        self.budget.spent_apart(kind, seconds)

    def closing_row(self, step: int) -> dict:
        """What the loop really spent, against what the plan assumed."""
        return {"step": step, "budget": {
            "used_seconds": round(self.budget.elapsed(), 2), "budget_seconds": self.seconds,
            **{f"measured_{kind}_seconds": round(v, 5) for kind, v in self.budget.measured(step).items()}}}

    def use(self) -> tuple[float, float]:
        """(seconds from the budget's start to now, the budget's seconds)."""
        return self.budget.elapsed(), self.seconds
