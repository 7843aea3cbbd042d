"""ASHA counted in epochs, keyed by the tool's own trial ids, with rungs that survive a resume.

Why not Ray's `ASHAScheduler` as it is: it keys its rung records by Ray's trial id and
keeps them only in Ray's experiment snapshot. This tool runs each driver run as a fresh
Ray experiment and continues an interrupted trial under a new Ray id, so after a resume
Ray's ASHA would start with empty rungs (the first trials after it passed every rung) and
would judge a continued trial again at rungs it had already passed. Its clock was also
`training_iteration`, which restarts at 1 in a continued trial whose epoch is k+1.

`RungScheduler` is a Ray `FIFOScheduler` (Ray's public scheduler interface) that applies
ASHA's rule exactly as Ray's `AsyncHyperBandScheduler` does with one bracket:

- rungs at grace x rf^k epochs below the horizon;
- the first result of a trial at or past a rung it has no record at is judged there: it
  is stopped if its value is below the (1 - 1/rf) quantile of the values already recorded
  at that rung, and its value is recorded either way;
- a trial that reaches the horizon is stopped (it has finished).

Its records are keyed by the trial's row id in trials.csv (a continued trial keeps it),
counted in epochs, and rebuilt on --resume from history.csv (`from_history`), where every
epoch's figure is kept: the rungs are derived from the tool's own files, not saved twice.
The rule itself is `judge`, a pure function.

`ParetoRungScheduler` is MO-ASHA (Schmucker et al., 2021) on the same rungs: a trial's
record at a rung is the point (val_acc, -cost), and the rule is `search.pareto.promote`
(the top 1/rf of the rung by non-dominated sorting, then crowding distance). The cost of a
trial comes from its config (`search.tune.costs.Costs.value`), so the records rebuilt on
--resume from history.csv and trials.csv are the ones the killed driver held.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from search.pareto import promote
from search.records import CONTINUES, milestones, row_id


def judge(recorded: dict[str, float], value: float, reduction_factor: int) -> bool:
    """ASHA's rule at one rung: True to promote `value` given the values already `recorded`.

    >>> judge({}, 0.1, 3), judge({"a": 0.5, "b": 0.6, "c": 0.7}, 0.62, 3), judge({"a": 0.5, "b": 0.6}, 0.59, 2)
    (True, False, True)
    """
    if not recorded:
        return True
    return not value < np.nanpercentile(list(recorded.values()), (1 - 1 / reduction_factor) * 100)


class RungScheduler(FIFOScheduler):
    """Asynchronous successive halving on `epoch`, with rung records that outlive a driver run."""

    def __init__(self, horizon: int, grace: int, reduction_factor: int, metric: str = "val_acc",
                 mode: str = "max", time_attr: str = "epoch"):
        super().__init__()
        self._metric, self._mode = metric, mode
        self.horizon, self.reduction_factor, self.time_attr = horizon, reduction_factor, time_attr
        self.sign = 1.0 if mode == "max" else -1.0
        # Ascending milestones, each with {row id: signed value recorded there}.
        self.rungs: list[tuple[int, dict[str, float]]] = [(m, {}) for m in milestones(grace, horizon,
                                                                                       reduction_factor)]
        self.stopped: set[str] = set()  # row ids this scheduler stopped early

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # fixed at construction; Tune's metric and mode are the same ones

    def from_history(self, rows: Iterable[dict[str, Any]],
                     configs: dict[str, dict[str, Any]] | None = None) -> "RungScheduler":
        """Rebuild the rung records from history.csv's rows (`search.records.read_history`).

        A trial's record at a rung is its figure at that rung's epoch: the epoch at which an
        uninterrupted run judged it. An epoch trained again keeps its newest figure.
        `configs` (row id -> config, from trials.csv) give the costs of a Pareto scheduler.
        """
        for row in rows:
            value = row.get(self._metric)
            if value is None or row.get("status") == "errored":
                continue
            for milestone, recorded in self.rungs:
                if int(row["epoch"]) == milestone < self.horizon:  # the horizon judges nothing
                    recorded[row["trial_id"]] = self.point(float(value), (configs or {}).get(row["trial_id"]))
        return self

    def point(self, value: float, config: dict[str, Any] | None) -> Any:
        """What is recorded at a rung: the signed value (a Pareto scheduler adds the cost)."""
        return self.sign * value

    def promotes(self, recorded: dict[str, Any], key: str, point: Any) -> bool:
        return judge(recorded, point, self.reduction_factor)

    def decide(self, key: str, epoch: int, value: float | None, config: dict[str, Any] | None = None) -> str:
        """STOP or CONTINUE for trial `key` reporting `value` at `epoch` (records it as it goes)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return TrialScheduler.CONTINUE
        if epoch >= self.horizon:
            return TrialScheduler.STOP  # finished; nothing to judge
        signed = self.point(float(value), config)
        # The highest rung reached that has no record of this trial judges it (as Ray's
        # ASHA walks its rungs from the top); lower rungs were passed before.
        for milestone, recorded in reversed(self.rungs):
            if epoch < milestone:
                continue
            if key in recorded:
                if epoch == milestone:
                    recorded[key] = signed  # the same epoch trained again: its newest figure
                return TrialScheduler.CONTINUE
            promoted = self.promotes(recorded, key, signed)
            recorded[key] = signed
            if not promoted:
                self.stopped.add(key)
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE
        return TrialScheduler.CONTINUE

    # --- Ray's TrialScheduler interface -----------------------------------------------------
    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if self.time_attr not in result or result.get("status") == "errored":
            return TrialScheduler.CONTINUE
        config = {k: v for k, v in trial.config.items() if k != CONTINUES}
        return self.decide(row_id(trial), int(result[self.time_attr]), result.get(self._metric), config)

    def debug_string(self) -> str:
        return "ASHA on epochs: " + " | ".join(f"epoch {m}: {len(r)} recorded" for m, r in self.rungs)


class ParetoRungScheduler(RungScheduler):
    """MO-ASHA: promotes by non-dominated sorting of (val_acc, -cost) at each rung.

    `cost(config)` is the objective to minimise (`search.tune.costs.Costs.value`).
    """

    def __init__(self, horizon: int, grace: int, reduction_factor: int, cost: Callable[[dict[str, Any]], float],
                 metric: str = "val_acc", mode: str = "max", time_attr: str = "epoch"):
        super().__init__(horizon, grace, reduction_factor, metric, mode, time_attr)
        self.cost = cost

    def point(self, value: float, config: dict[str, Any] | None) -> tuple[float, float]:
        if config is None:
            raise ValueError("a Pareto rung needs the trial's config for its cost")
        return (self.sign * value, -float(self.cost(config)))

    def promotes(self, recorded: dict[str, Any], key: str, point: Any) -> bool:
        return promote(recorded, key, point, self.reduction_factor)

    def debug_string(self) -> str:
        return "MO-ASHA on epochs: " + " | ".join(f"epoch {m}: {len(r)} recorded" for m, r in self.rungs)
