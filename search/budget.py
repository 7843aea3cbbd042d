"""The parameter budget, enforced in the searcher before any trial exists.

`BudgetedOptunaSearch` is Ray Tune's `OptunaSearch` with one change to `suggest`: each
config Optuna proposes is counted exactly (meta device, no weights). One at or over the
budget never becomes a Ray trial: it is told to Optuna as an infeasible, pruned trial whose
constraint value is the number of parameters over, so TPE learns where the budget lies,
and Optuna is asked again. Trials that end before the horizon (stopped by ASHA, or diverged)
are told to Optuna as pruned, not complete.
"""

from __future__ import annotations

import logging
import math
import pickle
from typing import Any

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per study created is noise here
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from search.space import SpaceFn
from trainable.config import DEFAULTS, validate_config
from trainable.errors import ConfigError, UserError
from trainable.model import count_params

logger = logging.getLogger(__name__)

CONSTRAINT = "params_over_budget"
# Consecutive rejections after which the search gives up: the space has (almost) nothing
# under the budget, and asking further would spin forever.
MAX_REJECTIONS_IN_A_ROW = 2000


def over_budget(params: int, budget: int) -> int:
    """Constraint value: > 0 when `params` is not strictly below `budget` (Optuna: <= 0 is feasible)."""
    return params - budget + 1


def complete_config(raw: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
    """Keep the config keys of a space's output (dropping Optuna's helper params) and add `fixed`."""
    return {**{k: v for k, v in raw.items() if k in DEFAULTS}, **fixed}


class LowestSampler(optuna.samplers.BaseSampler):
    """Samples the low end of every distribution (smallest number, or first non-numeric choice).

    In a space where bigger values mean bigger models (the usual case) its one trial is the
    smallest model the space can make: the probe that tells a tight budget from an
    impossible one, which random draws cannot (the smallest corner is rarely drawn).
    """

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        if isinstance(param_distribution, optuna.distributions.CategoricalDistribution):
            choices = param_distribution.choices
            numeric = [c for c in choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
            return min(numeric) if len(numeric) == len(choices) else choices[0]
        return param_distribution.low


def check_space_fits(space: SpaceFn, budget: int, num_classes: int, fixed: dict[str, Any],
                     draws: int = 64, seed: int = 0) -> float:
    """Raise UserError, before anything starts, if no config of the space fits the budget.

    Tries the space's smallest corner (`LowestSampler`) and `draws` configs from Optuna's
    RandomSampler. Returns the share of the random draws under the budget (what
    `startup_trials` needs). A space where none fits (e.g. --param-budget 1000) is reported
    with the smallest count seen.
    """
    samplers = [LowestSampler()] + [optuna.samplers.RandomSampler(seed=seed)] * draws
    counts = []
    for sampler in samplers:
        trial = optuna.create_study(sampler=sampler).ask()
        try:
            config = validate_config(complete_config(space(trial), fixed))
        except ConfigError as exc:
            raise UserError(f"the search space produced a bad config: {exc}") from None
        counts.append(count_params(config, num_classes))
    if min(counts) >= budget:
        raise UserError(
            f"no config in the search space fits under --param-budget {budget:,} "
            f"(the smallest found has {min(counts):,} params); raise the budget or shrink the space"
        )
    return sum(count < budget for count in counts[1:]) / draws


def startup_trials(feasible_share: float, launched: int = 10) -> int:
    """TPE's n_startup_trials so that about `launched` random configs actually run.

    Rejected configs are Optuna trials too (pruned, infeasible) and count toward TPE's
    random start-up; under a tight budget they would use it up before any trial ran (a
    CPU search at 500,000 params launched only AdamW configs that way). Capped at 100:
    past that, TPE's model of the infeasible region is what finds the feasible one.
    """
    return min(100, math.ceil(launched / max(feasible_share, 0.02)))


class BudgetedOptunaSearch(OptunaSearch):
    """OptunaSearch that never launches a config at or over `budget` trainable parameters."""

    def __init__(
        self,
        space: SpaceFn,
        budget: int,
        num_classes: int,
        fixed: dict[str, Any],
        horizon: int,
        **kwargs: Any,
    ):
        super().__init__(space=space, **kwargs)
        self.budget = budget
        self.num_classes = num_classes
        self.fixed = fixed
        self.horizon = horizon
        self.rejected = 0
        self.exhausted = False

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        for _ in range(MAX_REJECTIONS_IN_A_ROW):
            config = validate_config(complete_config(super().suggest(trial_id), self.fixed))
            params = count_params(config, self.num_classes)
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_constraint(CONSTRAINT, over_budget(params, self.budget))
            ot_trial.set_user_attr("params", params)
            if params < self.budget:
                ot_trial.set_user_attr("ray_trial_id", trial_id)
                return config
            # Over the budget: infeasible (constraint > 0) and pruned, which TPE learns from;
            # a FAIL state would teach it nothing. Then ask Optuna for another config.
            ot_trial.set_user_attr("rejected", "over_budget")
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            del self._ot_trials[trial_id]
            self.rejected += 1
        logger.warning("%d configs in a row were over the budget; ending the search", MAX_REJECTIONS_IN_A_ROW)
        self.exhausted = True
        return self.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        if result and not error:
            status = result.get("status", "ok")
            finished = result.get("epoch", 0) >= self.horizon and status == "ok"
            try:
                ot_trial.set_user_attr("status", "completed" if finished else
                                       ("diverged" if status == "diverged" else "stopped"))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
            if not finished:
                # Stopped by ASHA (or diverged, or cut by the time budget): Optuna keeps the
                # intermediate values reported each epoch and ranks it as pruned.
                self._tell(ot_trial, state=TrialState.PRUNED)
                self._completed_trials.add(trial_id)
                return
        elif error:
            try:
                ot_trial.set_user_attr("status", "errored")
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
        super().on_trial_complete(trial_id, result=result, error=error)  # it logs a failed tell

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # see _tell

    def _tell(self, ot_trial: optuna.Trial, **kwargs: Any) -> None:
        # After a driver was killed, optuna.db (written at once) can be ahead of the searcher
        # state Ray restored (a snapshot): a trial it thinks open may already be told.
        try:
            self._ot_study.tell(ot_trial, **kwargs)
        except optuna.exceptions.UpdateFinishedTrialError:
            logger.info("trial %s was already finished in the Optuna study", ot_trial.number)

    # Ray pickles the searcher's __dict__ with plain pickle. A user's space (a function from a
    # file, a YAML spec) may not pickle that way and is rebuilt on resume, so it stays out.
    def save(self, checkpoint_path: str) -> None:
        state = {k: v for k, v in self.__dict__.items() if k != "_space"}
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(state, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            state = pickle.load(handle)
        if not isinstance(state, dict):
            raise UserError(f"searcher state {checkpoint_path} is not from this tool")
        self.__dict__.update(state)
        # A driver killed between asking Optuna and Ray's next snapshot leaves trials RUNNING
        # in optuna.db that no Ray trial will ever report to: close them as failed.
        known = {t.number for t in self._ot_trials.values()}
        for trial in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in known:
                self._ot_study.tell(trial.number, state=TrialState.FAIL)
