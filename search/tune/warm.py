"""`--warm-from runs/OLD`: start a new search from what an earlier one learned.

When the two searches define the same space (the same --space file content, or both the
built-in space with the same --set keys) and the same objectives, the old study's finished
trials (completed, stopped, and rejected for the budget) are added to the new study with
`study.add_trials`: TPE reads them as if the new search had run them, so it skips its
random start-up and samples where the old search found good configs. Otherwise (another space, another version of the built-in
space, other objectives) the old search's top configs are enqueued (`study.enqueue_trial`)
and run first: in the new built-in space's own terms, or for a user's space the parameters
it shares by name, the others sampled.

Trials taken over are marked with the user attribute `warm_from` (the old experiment's
name) and keep no Ray trial id, so nothing of this search mistakes them for its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from search.records import Status, load_study, rank, read_settings, read_trials
from trainable.errors import UserError

# How many of the old search's best configs run first when the spaces differ.
ENQUEUED = 4


@dataclass
class WarmStart:
    """What a warm start did: `added` trials taken over, or `enqueued` configs queued."""

    source: str
    added: int = 0
    enqueued: int = 0
    reason: str = ""
    rejected: int = 0  # of `added`: configs the old search rejected for the budget (never trained)

    def describe(self) -> str:
        if self.added:
            trained = self.added - self.rejected
            rejected = f" and {self.rejected} configs it rejected for the budget" if self.rejected else ""
            return (f"warm start from {self.source}: its {trained} trained trials{rejected} are in the study "
                    "(TPE learns from them)")
        return (f"warm start from {self.source}: {self.reason}; its top {self.enqueued} configs run first "
                "(the parameters this space shares by name)")


def space_signature(settings: dict[str, Any]) -> tuple:
    """What makes two searches' Optuna parameters mean the same thing (for the built-in space:
    its version, 1 where none was recorded, and the --set keys)."""
    space = settings.get("space_hash") or ("built-in", settings.get("space_version") or 1,
                                           tuple(sorted((settings.get("overrides") or {}).items())))
    return space, settings.get("minimize")


def warm_start(study: Any, old: str | Path, new_settings: dict[str, Any],
               convert: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None) -> WarmStart:
    """Take what the experiment `old` learned into `study` (module docstring). `convert`: the
    new space's parameters for a config (`search.tune.space.params_of`), for the configs queued
    when the spaces differ (another version of the built-in space names other parameters);
    without it, the old trial's parameters are queued as they are."""
    import optuna
    from optuna.trial import TrialState

    folder = Path(old)
    old_settings = read_settings(folder)  # UserError if it is not an experiment
    old_study = load_study(folder)
    if old_study is None:
        raise UserError(f"--warm-from {old}: no readable Optuna study (optuna.db) there")
    result = WarmStart(folder.name)
    if space_signature(old_settings) == space_signature(new_settings):
        taken = []
        for frozen in old_study.get_trials(deepcopy=True, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            attrs = {k: v for k, v in frozen.user_attrs.items() if k != "ray_trial_id"}
            taken.append(optuna.trial.create_trial(
                state=frozen.state, values=frozen.values, params=frozen.params, distributions=frozen.distributions,
                user_attrs={**attrs, "warm_from": folder.name}, system_attrs=frozen.system_attrs,
                intermediate_values=frozen.intermediate_values))
        study.add_trials(taken)
        result.added = len(taken)
        result.rejected = sum(t.user_attrs.get("status") == Status.REJECTED.value for t in taken)
        return result
    differs = "its space differs" if space_signature(old_settings)[0] != space_signature(new_settings)[0] else \
        "its objectives differ"
    numbers = {t.user_attrs.get("ray_trial_id"): t for t in old_study.get_trials(deepcopy=False)}
    queued = 0
    for row in rank(read_trials(folder)):
        frozen = numbers.get(row.trial_id)
        if frozen is None or row.best_val_acc is None or row.status == Status.DIVERGED:
            continue
        params = convert(row.run_config) if convert else None
        study.enqueue_trial(params or frozen.params, user_attrs={"warm_from": folder.name}, skip_if_exists=True)
        queued += 1
        if queued == ENQUEUED:
            break
    result.enqueued, result.reason = queued, differs
    return result
