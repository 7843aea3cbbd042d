"""The time budget of one driver run, held against the wall clock.

Tune's own `time_budget_s` starts its clock at its first check, after Tune has set itself up,
and stops trials only then: a running trial finishes the epoch it is in, so a search ended
there overran by Tune's set-up and up to one epoch (3-4 s of a 10 s budget here, and 10-13 s
per stage of `search.auto` on a machine two other processes slowed down). This stopper's
deadline is a time on the clock, set when the driver run starts (Ray's start counts), and it
stops the trials one epoch (the longest recent one) before it, so that the epochs running
then end by the deadline.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable

from ray.tune import Stopper

RECENT_EPOCHS = 8  # the epochs whose longest is the margin: a slowdown shows within a few


class DeadlineStopper(Stopper):
    """Stops every trial once the wall clock (`clock`, time.time() by default) is within one
    epoch of `deadline`; `fired` says whether it did (the trials it ended were cut by the time
    budget, not finished), and `reached` whether the budget ended the run, by that or by
    closing the launches (`can_launch`).

    >>> stopper = DeadlineStopper(deadline=100.0, clock=lambda: 90.0)
    >>> stopper.stop_all()
    False
    >>> stopper("trial", {"time_this_iter_s": 12.0})  # a 12 s epoch started now would end late
    False
    >>> stopper.can_launch()  # nor could a trial launched now train an epoch in time
    False
    >>> stopper.fired, stopper.reached
    (False, True)
    >>> stopper.stop_all(), stopper.fired
    (True, True)
    """

    def __init__(self, deadline: float, clock: Callable[[], float] = time.time):
        self.deadline, self.clock = deadline, clock
        self.started = clock()  # made when the driver run starts: its budget counts from here
        self.recent: deque[float] = deque(maxlen=RECENT_EPOCHS)
        self.fired = False
        self.closed = False  # can_launch has said no

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        took = result.get("time_this_iter_s")
        if took:
            self.recent.append(float(took))
        return False  # no single trial is stopped for the time: all of them are, together

    @property
    def budget_s(self) -> float:
        return self.deadline - self.started

    def margin(self) -> float:
        """Seconds before the deadline at which the trials are stopped: the longest recent epoch."""
        return max(self.recent, default=0.0)

    def can_launch(self) -> bool:
        """Whether a trial launched now could still train an epoch before the trials are
        stopped: its worker is set up for it first (a reused one frees the last trial's
        model), which took as long as an epoch on a busy machine. One launched later would
        be cut with nothing trained, and Tune would wait for its set-up at the end."""
        if self.clock() + 2 * self.margin() >= self.deadline - self.margin():
            self.closed = True
        return not self.closed

    @property
    def reached(self) -> bool:
        """Whether the time budget ended this run: it stopped the trials or the launches."""
        return self.fired or self.closed

    def stop_all(self) -> bool:
        if not self.fired and self.clock() + self.margin() >= self.deadline:
            self.fired = True
        return self.fired
