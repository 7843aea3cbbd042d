"""A model of every rung: TPE fitted to what the trials scored at each ASHA rung.

Under ASHA most trials are stopped early. Optuna's TPE fits one model over all fidelities
(completed trials first, then pruned ones by the step they reached), so its "good" set is
the few trials that finished; in a multi-objective study stopped trials carry no values at
all and tie. `RungModel` keeps, beside the study that stays the record, one in-memory Optuna
study per rung (and one for the horizon): every trial that reaches a rung is added there
with its figure at that rung (and its cost, in a two-objective search). A new proposal comes
from the highest rung that has `min_points` trials (BOHB's rule), by asking that study's TPE
and running the space on its trial; a share `random_share` of proposals stays random. The
searcher queues the proposal in the main study (`study.enqueue_trial`), so the main study
still holds every trial, and the user attribute `proposed_by` says which rung proposed it.

On --resume the rung studies are rebuilt from history.csv (`rebuild`), as ASHA's rung
records are.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search.tune.sampler import stream_seed

MIN_POINTS = 10  # a rung proposes once this many trials reached it
RANDOM_SHARE = 0.2  # of the model's proposals, drawn at random instead (BOHB keeps a share too)
STREAM = 0x2A9C  # the rung models' random streams, apart from the start-up's


class RungModel:
    """Per-rung TPE models over `milestones` (ASHA's rungs and the horizon)."""

    def __init__(self, space: Callable[[optuna.Trial], Any], milestones: Sequence[int], directions: Sequence[str],
                 seed: int | None = None, min_points: int = MIN_POINTS, random_share: float = RANDOM_SHARE):
        self.space = space
        self.directions = list(directions)
        self.min_points = min_points
        self.random_share = random_share
        self.seed = seed
        self.rng = np.random.default_rng(stream_seed(seed, 0, STREAM))
        quiet = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per in-memory study is noise
        try:
            self.studies = {m: optuna.create_study(directions=self.directions, sampler=optuna.samplers.TPESampler(
                seed=stream_seed(seed, 1000 + m, STREAM), n_startup_trials=0)) for m in sorted(set(milestones))}
            self.random = optuna.create_study(directions=self.directions,
                                              sampler=optuna.samplers.RandomSampler(seed=stream_seed(seed, 1, STREAM)))
        finally:
            optuna.logging.set_verbosity(quiet)
        self.recorded: dict[int, set[int]] = {m: set() for m in self.studies}  # trial numbers per rung

    def record(self, milestone: int, trial: FrozenTrial, values: float | Sequence[float]) -> None:
        """What `trial` (of the main study) scored at `milestone`; a figure recorded again
        (an epoch trained again after a continue) is not added twice."""
        if milestone not in self.studies or trial.number in self.recorded[milestone] or not trial.params:
            return
        values = [float(values)] if np.isscalar(values) else [float(v) for v in values]
        self.studies[milestone].add_trial(optuna.trial.create_trial(
            params=trial.params, distributions=trial.distributions, values=values,
            user_attrs={"number": trial.number}))
        self.recorded[milestone].add(trial.number)

    def points(self, milestone: int) -> int:
        return len(self.recorded.get(milestone, ()))

    def proposing_rung(self) -> int | None:
        """The highest rung with enough points to propose, or None."""
        ready = [m for m in self.studies if self.points(m) >= self.min_points]
        return max(ready) if ready else None

    def propose(self) -> tuple[dict[str, Any], str] | None:
        """(parameters, who proposed them) from the highest ready rung, a random draw now and
        then, or None while no rung has enough points (the main study's sampler proposes)."""
        rung = self.proposing_rung()
        if rung is None:
            return None
        study, who = (self.random, "random") if self.rng.random() < self.random_share else \
            (self.studies[rung], f"rung_{rung}")
        trial = study.ask()
        self.space(trial)
        params = dict(trial.params)
        # The draw was only a proposal: told as failed, it teaches the rung's TPE nothing.
        study.tell(trial, state=TrialState.FAIL)
        return params, who

    def rebuild(self, study: optuna.Study, history: Iterable[dict[str, Any]], cost: Callable[[FrozenTrial], float]
                | None = None, metric: str = "val_acc") -> "RungModel":
        """Feed the rungs from history.csv's rows (a resumed search): each launched trial's
        figure at each rung's epoch; `cost(trial)` adds the second objective."""
        by_id = {t.user_attrs["ray_trial_id"]: t for t in study.get_trials(deepcopy=False)
                 if "ray_trial_id" in t.user_attrs}
        for row in history:
            trial = by_id.get(row["trial_id"])
            value = row.get(metric)
            if trial is None or value is None or row.get("status") == "errored":
                continue
            epoch = int(row["epoch"])
            if epoch in self.studies:
                self.record(epoch, trial, [float(value), cost(trial)] if cost else float(value))
        return self
