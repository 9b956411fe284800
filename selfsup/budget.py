"""The time budget (train.minutes): how many training steps fit in it, planned twice.

First from a short timed trial, before the run; then again from the loop's own pace at the end of the
learning-rate warm-up, where the schedule does not yet depend on the step count, so the count can
change without changing any step that has run. The pace is read over the second half of the steps
before the re-plan: the first steps of a run are slower than the rest on a GPU (kernel selection,
compilation, memory pools, clocks), and a pace that counts them under-fills the budget.

Time spent in online evaluations and checkpoints is counted apart from the steps, at its own
measured cost, because those come once an epoch or every few hundred steps and the window the pace
is read over may hold none of them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable


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
