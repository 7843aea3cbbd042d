"""The parameter budget: the pieces `search.tune.searcher` and the driver use before any trial exists.

Each config Optuna proposes is counted exactly (in closed form) by the searcher; this module
holds the constraint value and the probe that refuses an impossible budget before Ray starts.
The built-in space solves its widths into the budget, so it never meets the constraint; a
user's space that names widths is checked against it.
"""

from __future__ import annotations

from typing import Any

import optuna

from search.tune.space import SpaceFn
from trainable.config import DEFAULTS, validate_config
from trainable.errors import ConfigError, UserError
from trainable.model import count_params


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
                     draws: int = 64, seed: int = 0, in_channels: int = 3) -> float:
    """Raise UserError, before anything starts, if no config of the space fits the budget.

    Tries the space's smallest corner (`LowestSampler`) and `draws` configs from Optuna's
    RandomSampler. Returns the share of the random draws under the budget. A space where
    none fits (e.g. --param-budget 1000) is reported with the smallest count seen.
    """
    lowest = _ask_configs(space, fixed, LowestSampler(), 1)
    counts = [count_params(c, num_classes, in_channels) for c in lowest + _ask_configs(
        space, fixed, optuna.samplers.RandomSampler(seed=seed), draws)]
    if min(counts) >= budget:
        raise UserError(
            f"no config in the search space fits under --param-budget {budget:,} "
            f"(the smallest found has {min(counts):,} params); raise the budget or shrink the space"
        )
    return sum(count < budget for count in counts[1:]) / draws


def draw_configs(space: SpaceFn, fixed: dict[str, Any], draws: int, seed: int | None, budget: int,
                 num_classes: int = 10, in_channels: int = 3) -> list[dict[str, Any]]:
    """`draws` configs of the space from Optuna's RandomSampler (what the search's start-up
    launches), the ones over `budget` left out.

    >>> from search.tune.space import default_space
    >>> configs = draw_configs(default_space, {"epochs": 4}, 3, 0, 5_000_000)
    >>> len(configs), all(count_params(c) < 5_000_000 for c in configs)
    (3, True)
    """
    configs = _ask_configs(space, fixed, optuna.samplers.RandomSampler(seed=seed), draws)
    return [c for c in configs if count_params(c, num_classes, in_channels) < budget]


def _ask_configs(space: SpaceFn, fixed: dict[str, Any], sampler: optuna.samplers.BaseSampler,
                 draws: int) -> list[dict[str, Any]]:
    """`draws` checked configs of the space, asked of one in-memory study with `sampler`."""
    quiet = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per probe study is noise
    try:
        study = optuna.create_study(sampler=sampler)
        return [validate_config(complete_config(space(study.ask()), fixed)) for _ in range(draws)]
    except ConfigError as exc:
        raise UserError(f"the search space produced a bad config: {exc}") from None
    finally:
        optuna.logging.set_verbosity(quiet)
