"""The search's own progress display, through Ray Tune's public `Callback` interface.

Ray's output is off unless `--verbose 2` or more (its per-trial config and result boxes, its
table cut before val_acc, its "best trial" that is not this tool's best, its hints for
`Tuner.restore`). In its place, one line per interval from this tool's own records:

    [search 2.3 of 30.0 min] 2 running, 3 completed, 4 stopped, 0 cut, 0 errored; 12 rejected for the budget; best 0.5123 (trial 7c1e_00003, 151k params)

- `--verbose 1` (the default): that line every `INTERVAL_S` seconds while something changed;
- `--verbose 0`: no progress lines, but a stall still speaks: no launch for `STALL_S`
  seconds (a space whose configs are all over the budget, a cluster without free slots);
- the start line and the summary are printed by the driver at every verbosity.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, TextIO

from ray.tune import Callback

from search.records import Status, TrialRow
from trainable.cli import short_count

INTERVAL_S = 15.0
STALL_S = 60.0
SHOWN = (Status.COMPLETED, Status.STOPPED, Status.CUT, Status.ERRORED)


class Progress(Callback):
    """Prints the search's state now and then (module docstring).

    `rows()` gives the trial table's rows (`search.tune.experiment.TrialTable.rows`), and
    `rejected()` the configs the searcher refused for the budget so far."""

    def __init__(self, rows: Callable[[], dict[str, TrialRow]], rejected: Callable[[], int],
                 verbose: int = 1, budget_s: float | None = None, stage: str = "search",
                 interval_s: float = INTERVAL_S, stall_s: float = STALL_S, out: TextIO | None = None,
                 started: float | None = None):
        self.rows, self.rejected = rows, rejected
        self.verbose, self.budget_s, self.stage = verbose, budget_s, stage
        self.interval_s, self.stall_s = interval_s, stall_s
        self.out = out  # None: sys.stdout at the time of printing (a notebook's, pytest's)
        # The last launch or end of a trial: a stall is a while with neither and nothing running
        # (every proposal rejected, or no resources), not the last trial's long epochs.
        self.last_line = self.last_event = time.time()
        self.started = started or self.last_line  # the clock shown: the time budget's, when given
        self.shown = ""  # the last line printed: a line that says nothing new is not repeated
        self.stall_reported = False

    def line(self) -> str:
        """The state now, in one line."""
        rows = list(self.rows().values())
        counts = {status: sum(r.status == status for r in rows) for status in (Status.RUNNING, *SHOWN)}
        elapsed = (time.time() - self.started) / 60
        clock = f"{elapsed:.1f} of {self.budget_s / 60:.1f} min" if self.budget_s else f"{elapsed:.1f} min"
        scored = [r for r in rows if r.best_val_acc is not None]
        best = max(scored, key=lambda r: r.best_val_acc, default=None)
        best_text = (f"best {best.best_val_acc:.4f} (trial {best.trial_id}, "
                     f"{short_count(best.params)} params)" if best else "no epoch finished yet")
        states = ", ".join(f"{counts[s]} {s.value}" for s in (Status.RUNNING, *SHOWN))
        return f"[{self.stage} {clock}] {states}; {self.rejected()} rejected for the budget; {best_text}"

    def _print(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def __getstate__(self) -> dict[str, Any]:
        """Ray pickles the callbacks with its experiment state: the live readers of the trial
        table and the searcher, and the stream, stay with the driver's own instance."""
        return {k: v for k, v in self.__dict__.items() if k not in ("rows", "rejected", "out")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, rows=lambda: {}, rejected=lambda: 0, out=None)

    # --- Ray Tune callback hooks -------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.last_event = time.time()
        self.stall_reported = False

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.last_event = time.time()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.last_event = time.time()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.time()
        running = any(str(getattr(t, "status", "")) == "RUNNING" for t in trials)
        if not running and not self.stall_reported and now - self.last_event >= self.stall_s:
            self.stall_reported = True
            self._print(f"[{self.stage}] waiting: no trial running or launched for {now - self.last_event:.0f} s; "
                        f"{self.rejected()} configs rejected for the budget so far")
        if self.verbose >= 1 and now - self.last_line >= self.interval_s:
            self.last_line = now
            text = self.line()
            if text.split("] ", 1)[-1] != self.shown.split("] ", 1)[-1]:
                self.shown = text
                self._print(text)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.verbose >= 1:
            self._print(self.line())
