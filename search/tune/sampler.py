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

`TrainedGamma` sizes TPE's "good" set the same way, over the trials that trained: Optuna's
default (10% of every finished trial in the study, at most 25) counts the rejections too,
and where they are many it put every trained trial in the good set whatever it scored, so
TPE learnt where the budget's edge lies and not what is accurate. The rejections stay in
the study, infeasible by their constraint, on the "bad" side.
"""

from __future__ import annotations

import math
import warnings
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


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _trains(trial: FrozenTrial) -> bool:
    """Launched by this search, or trained by an earlier one that `--warm-from` took over (not
    the configs that search rejected for the budget: they never trained)."""
    attrs = trial.user_attrs
    return LAUNCHED in attrs or (TAKEN_OVER in attrs and trial.state in FINISHED and attrs.get("status") != REJECTED)


def launched(study: optuna.Study) -> int:
    """Trials of `study` that were launched, or that an earlier search trained and `--warm-from`
    took over."""
    return sum(map(_trains, study.get_trials(deepcopy=False)))


def trained(study: optuna.Study) -> int:
    """Finished trials of `study` that trained (`launched` less those still running)."""
    return sum(map(_trains, study.get_trials(deepcopy=False, states=FINISHED)))


class TrainedGamma:
    """TPE's `gamma`: the size of its good set, 10% of the trials that trained (module
    docstring); at most 25 with one objective, as Optuna's defaults. `study` is set once the
    study exists (the sampler is made first); until then, Optuna's own count.

    >>> gamma = TrainedGamma()
    >>> gamma(170), gamma(0)  # no study yet: 10% of every finished trial
    (17, 0)
    """

    def __init__(self, objectives: int = 1):
        self.study: optuna.Study | None = None
        self.cap = 25 if objectives == 1 else None

    def __call__(self, finished: int) -> int:
        if finished == 0:
            return 0
        # At least one: with nothing trained yet, the least infeasible rejection leads TPE
        # towards the budget, as before.
        count = finished if self.study is None else min(finished, trained(self.study))
        size = max(1, math.ceil(0.1 * count))
        return size if self.cap is None else min(size, self.cap)


def tpe_sampler(seed: int | None, objectives: int = 1) -> tuple[optuna.samplers.TPESampler, TrainedGamma]:
    """TPE with no random phase of its own (`LaunchedStartup` makes the start-up) and its good
    set sized by `TrainedGamma` (set its `study` once the study exists).

    Optuna marks `gamma` deprecated since 4.9, to go in 6.0; the project pins optuna below 6,
    and the FutureWarning says nothing a user could act on, so it is not shown.
    """
    gamma = TrainedGamma(objectives)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*gamma.*", category=FutureWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=0, gamma=gamma), gamma


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
