"""TPE's start-up counted in launched trials, on a random stream of its own.

Optuna's TPE samples at random until `n_startup_trials` trials have finished, counting every
trial in the study. A search whose space proposes configs over the parameter budget tells
those to Optuna too (pruned, infeasible), and under a tight budget they used up the whole
start-up before a single trial ran. `LaunchedStartup` wraps the model sampler (TPE, or its
multi-objective form) and routes each new trial:

- to random draws while fewer than `startup` trials have been launched (or taken over from
  an earlier search by `--warm-from`): rejections do not count;
- to the model from then on: from the 11th launch on (at the default 10), the model proposes.

The random draws of trial number n come from a sampler seeded by (seed, n), not by the seed
alone: the random-search baseline with the same seed (`RandomSampler(seed)`) draws other
configs, and a resumed search does not replay the draws it already made.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

STARTUP_LAUNCHED = 10  # random proposals launched before the model proposes
LAUNCHED = "ray_trial_id"  # the user attribute a trial gets when it is launched (search.tune.searcher)
TAKEN_OVER = "warm_from"  # the user attribute of a trial taken over from an earlier search
REJECTED = "rejected"  # its status attribute when the budget refused it (`search.records.Status`)
STREAM = 0x57A27  # tells the start-up's seeds apart from a RandomSampler's with the same seed


def launched(study: optuna.Study) -> int:
    """Trials of `study` that were launched, or that an earlier search trained and `--warm-from`
    took over (not the configs it rejected for the budget: they never trained)."""
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    return sum(1 for t in study.get_trials(deepcopy=False)
               if LAUNCHED in t.user_attrs or (TAKEN_OVER in t.user_attrs and t.state in finished
                                               and t.user_attrs.get("status") != REJECTED))


def stream_seed(seed: int | None, number: int, stream: int = STREAM) -> int | None:
    """The seed of trial `number`'s random draws: distinct per trial, and from `seed`'s own
    `stream` (other parts of the search draw from streams of their own).

    >>> stream_seed(0, 0) != stream_seed(0, 1) != stream_seed(1, 0), stream_seed(None, 3)
    (True, None)
    """
    if seed is None:
        return None
    return int(np.random.SeedSequence([stream, seed, number]).generate_state(1)[0])


class LaunchedStartup(BaseSampler):
    """`model` proposes once `startup` trials are launched; before, random draws (module docstring).

    >>> study = optuna.create_study(sampler=LaunchedStartup(optuna.samplers.TPESampler(seed=0), seed=0))
    >>> study.sampler.in_startup(study)
    True
    """

    def __init__(self, model: BaseSampler, startup: int = STARTUP_LAUNCHED, seed: int | None = None):
        self.model = model
        self.startup = startup
        self.seed = seed
        self._random: dict[int, RandomSampler] = {}  # trial number -> its start-up sampler

    def in_startup(self, study: optuna.Study) -> bool:
        """Whether the next trial is a start-up draw."""
        return launched(study) < self.startup

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # Optuna calls this for every handle on a trial (the searcher's reports make some);
        # only a trial with nothing sampled yet is a new proposal.
        if not trial.params and self.in_startup(study):
            self._random[trial.number] = RandomSampler(seed=stream_seed(self.seed, trial.number))
        self.model.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if trial.number in self._random:
            return {}
        return self.model.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if trial.number in self._random:
            return {}
        return self.model.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        random = self._random.get(trial.number)
        if random is not None:
            return random.sample_independent(study, trial, param_name, param_distribution)
        return self.model.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._random.pop(trial.number, None)
        self.model.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.model.reseed_rng()
