"""The searcher: Optuna's ask/tell behind Ray Tune's public `Searcher` interface.

Why a `Searcher` of our own rather than Ray's `OptunaSearch`: the budget check has to act
between Optuna's ask and Ray's launch (count the config, tell an over-budget one to Optuna
as infeasible and ask again), and the search has to resume from the SQLite study alone.
`OptunaSearch` offers neither through public methods; its private trial maps change between
Ray releases. Here the SQLite study is the whole state:

- a config at or over `budget` trainable params is told to Optuna as PRUNED with the
  `params_over_budget` constraint (> 0: infeasible), so TPE learns where the budget lies,
  and is never launched;
- every epoch of a launched trial is an intermediate value (step = epoch), the stopping
  epoch included (Ray skips the searcher's report of the result ASHA stops a trial on;
  `on_trial_complete` adds it);
- trials that reach the horizon are COMPLETE with their last val_acc; ASHA-stopped and
  diverged ones are PRUNED (TPE ranks them by their last value); errored ones FAIL;
- warm-start configs are `study.enqueue_trial` entries of a new study;
- on --resume the study is reloaded and reconciled with trials.csv (`settle`): trials
  still RUNNING that were launched (interrupted, or cut by the deadline) are continued
  (`continue_interrupted`), ones never launched are closed as FAIL, and rows the table
  never closed take the state Optuna has;
- an epoch trained again after a continue replaces its old intermediate value: the
  newest figure of an epoch is the one that counts, everywhere.

With --minimize the study has two directions (val_acc up, the cost down) and TPE is
Optuna's multi-objective TPE; the budget stays a constraint. A trial that reaches the
horizon is told (val_acc, cost); stopped ones are PRUNED as before. Optuna refuses
`Trial.report` in a multi-objective study, and its TPE (5.0) fails on a PRUNED trial with
intermediate values there (it ranks pruned trials by `study.direction`), so each epoch's
val_acc is kept as the user attribute `val_acc_epoch_<k>` instead.

Ray trial ids map to Optuna trial numbers; that map is the only state of our own.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any, Callable

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from search.tune.budget import complete_config, over_budget
from search.tune.costs import Costs
from search.records import CONTINUABLE, CONTINUES, ENDED, Status, TrialRow, ended_status
from search.tune.space import SpaceFn
from search.tune.rung_model import RungModel
from search.tune.sampler import launched
from trainable.config import validate_config
from trainable.errors import UserError
from trainable.model import count_params

logger = logging.getLogger(__name__)

CONSTRAINT = "params_over_budget"
# What a finished Optuna trial's state means for its row, when the searcher recorded no status.
FINISHED_AS = {TrialState.COMPLETE: Status.COMPLETED, TrialState.PRUNED: Status.STOPPED, TrialState.FAIL: Status.ERRORED}
EPOCH_ATTR = "val_acc_epoch_{}"  # a multi-objective study's per-epoch figure (user attribute)
# Consecutive rejections after which the search gives up: the space has (almost) nothing
# under the budget, and asking further would spin forever.
MAX_REJECTIONS_IN_A_ROW = 2000


class BudgetedOptunaSearch(Searcher):
    """Proposes configs from an Optuna study; never launches one at or over `budget` params.

    >>> storage = optuna.storages.InMemoryStorage()
    >>> study = optuna.create_study(storage=storage, direction="maximize")
    >>> from search.tune.space import default_space
    >>> searcher = BudgetedOptunaSearch(study, storage, default_space, 5_000_000, 10, {"epochs": 20, "seed": 0}, 20)
    >>> config = searcher.suggest("t1")
    >>> config["blocks"] is not None and searcher.numbers["t1"] >= 0
    True
    """

    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage, space: SpaceFn, budget: int,
                 num_classes: int, fixed: dict[str, Any], horizon: int, metric: str = "val_acc", mode: str = "max",
                 startup: int | None = None, costs: Costs | None = None, in_channels: int = 3,
                 rung_model: RungModel | None = None):
        super().__init__(metric=metric, mode=mode)
        self.rung_model = rung_model  # proposes past the start-up from what each rung scored
        self.costs = costs  # records MACs (and latency) per trial; the second objective with --minimize
        self.multi = len(study.directions) > 1
        self.startup = startup  # launched trials before TPE proposes, to record who proposed each config
        self.study = study
        self.storage = storage  # the one `study` was created with: trials are looked up by number there
        self.space = space
        self.budget = budget
        self.num_classes, self.in_channels = num_classes, in_channels  # what the exact count needs of the data
        self.fixed = fixed
        self.horizon = horizon
        self.numbers: dict[str, int] = {}  # Ray trial id -> Optuna trial number
        self.reported: dict[str, set[int]] = {}  # epochs already told, per Ray trial
        self.pending: list[tuple[int, str, str | None]] = []  # (number, original id, checkpoint) to continue
        self.rejected = 0
        self.exhausted = False
        # With a time budget: whether a trial launched now could still train an epoch
        # (`search.tune.deadline.DeadlineStopper.can_launch`); none is launched after that.
        self.launch_open: Callable[[], bool] | None = None

    def _trial(self, number: int) -> optuna.Trial:
        """A live handle on trial `number`, through the storage's public lookups."""
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        return optuna.trial.Trial(self.study, self.storage.get_trial_id_from_study_id_trial_number(study_id, number))

    # --- Ray's Searcher interface ----------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.exhausted:
            return Searcher.FINISHED
        if self.launch_open is not None and not self.launch_open():
            # Too close to the time budget's end for a trial to train, now and later in this
            # driver run. Finished, not None: with no trial running, Tune would wait for a
            # suggestion (up to 10 minutes) without asking the stopper. A resume launches again.
            return Searcher.FINISHED
        if self.pending:
            number, original, checkpoint = self.pending.pop(0)
            self.numbers[trial_id] = number
            frozen = self.study.get_trials(deepcopy=False)[number]
            self.reported[trial_id] = set(frozen.intermediate_values)
            config = self._config(optuna.trial.FixedTrial(frozen.params, number))
            return {**config, CONTINUES: {"trial_id": original, "checkpoint": checkpoint}}
        for _ in range(MAX_REJECTIONS_IN_A_ROW):
            proposer = self._proposer()
            if proposer == "tpe" and self.rung_model is not None:
                proposal = self.rung_model.propose()
                if proposal is not None:  # queued, so that the main study holds it as its own trial
                    params, proposer = proposal
                    self.study.enqueue_trial(params)
            trial = self.study.ask()
            trial.set_user_attr("proposed_by", proposer)
            config = self._config(trial)
            params = count_params(config, self.num_classes, self.in_channels)
            trial.set_constraint(CONSTRAINT, over_budget(params, self.budget))
            trial.set_user_attr("params", params)
            if params < self.budget:
                if self.costs is not None:
                    trial.set_user_attr("macs", self.costs.counts(config)["macs"])
                    self.costs.request_latency(config)  # measured while the trial trains
                trial.set_user_attr("ray_trial_id", trial_id)
                self.numbers[trial_id] = trial.number
                self.reported[trial_id] = set()
                return config
            # Over the budget: infeasible and pruned, which TPE learns from (a FAIL state
            # would teach it nothing). Then ask Optuna for another config.
            trial.set_user_attr("status", Status.REJECTED.value)
            self.study.tell(trial, state=TrialState.PRUNED)
            self.rejected += 1
        logger.warning("%d configs in a row were over the budget; ending the search", MAX_REJECTIONS_IN_A_ROW)
        self.exhausted = True
        return Searcher.FINISHED

    def _proposer(self) -> str:
        """Who will propose the next config: a warm start, the random start-up, or TPE.

        The start-up lasts until `startup` trials were launched (`search.tune.sampler`);
        the benchmarks report how many launched configs TPE itself chose.
        """
        if self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return "warm_start"
        if self.startup is None:
            return "random"
        return "tpe" if launched(self.study) >= self.startup else "startup"

    def _config(self, trial: optuna.Trial | optuna.trial.FixedTrial) -> dict[str, Any]:
        try:
            return validate_config(complete_config(self.space(trial), self.fixed))
        except UserError as exc:
            raise UserError(f"the search space produced a bad config: {exc}") from None

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict[str, Any]) -> None:
        number = self.numbers.get(trial_id)
        epoch, value = result.get("epoch"), result.get(self.metric)
        if number is None or epoch is None or value is None:
            return
        self._feed_rungs(number, int(epoch), float(value))
        if self.multi:  # the study takes no intermediate values (module docstring)
            self._trial(number).set_user_attr(EPOCH_ATTR.format(int(epoch)), float(value))
            self.reported[trial_id].add(int(epoch))
            return
        if int(epoch) in self.reported[trial_id]:
            # An epoch trained again (the trial continued from an older checkpoint): its new
            # figure replaces the old one, as in history.csv and trials.csv. Optuna's
            # Trial.report keeps the first value of a step, so this goes through the storage.
            study_id = self.storage.get_study_id_from_name(self.study.study_name)
            internal = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
            self.storage.set_trial_intermediate_value(internal, int(epoch), float(value))
            return
        self._trial(number).report(float(value), int(epoch))
        self.reported[trial_id].add(int(epoch))

    def _feed_rungs(self, number: int, epoch: int, value: float) -> None:
        """A figure at a rung's epoch (or the horizon) goes to that rung's model."""
        if self.rung_model is None or epoch not in self.rung_model.studies:
            return
        frozen = self.study.get_trials(deepcopy=False)[number]
        self.rung_model.record(epoch, frozen, [value, self.cost_of(frozen)] if self.multi else value)

    def cost_of(self, frozen: optuna.trial.FrozenTrial) -> float:
        """A trial's second objective (multi-objective searches), from its config."""
        return self.costs.value(self._config(optuna.trial.FixedTrial(frozen.params, frozen.number)))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        number = self.numbers.pop(trial_id, None)
        if number is None:
            return
        if result:
            self.numbers[trial_id] = number
            self._report(trial_id, result)  # the epoch ASHA stopped it on
            del self.numbers[trial_id]
        self.reported.pop(trial_id, None)
        if error or not result:
            # Errored, or removed before its first result: nothing for TPE to learn.
            self._close(number, Status.ERRORED if error else Status.STOPPED, None)
            return
        if result.get("status") == Status.ERRORED:  # it raised inside the trial (search.tune.trial)
            self._close(number, Status.ERRORED, None)
            return
        status = ended_status(int(result.get("epoch") or 0), self.horizon, str(result.get("status", "ok")))
        self._close(number, status, result.get(self.metric))

    def _close(self, number: int, status: Status, value: float | None) -> None:
        trial = self._trial(number)
        try:
            trial.set_user_attr("status", status.value)
            if status is Status.COMPLETED and value is not None:
                self.study.tell(number, self._values(number, float(value)))
            else:
                self.study.tell(number, state=TrialState.FAIL if status is Status.ERRORED else TrialState.PRUNED)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError) as exc:
            logger.info("trial %s was already finished in the Optuna study (%s)", number, exc)

    def _values(self, number: int, value: float) -> float | list[float]:
        """What a completed trial is told: val_acc, and its cost in a multi-objective study."""
        if not self.multi:
            return value
        cost = self.cost_of(self.study.get_trials(deepcopy=False)[number])
        if self.costs.objective == "latency":
            self._trial(number).set_user_attr("latency_ms", cost)
        return [value, cost]

    # --- resuming --------------------------------------------------------------------------
    def settle(self, rows: list[TrialRow]) -> tuple[list[tuple[int, str, str | None]], dict[str, str]]:
        """Reconcile the Optuna study with the trial table (trials.csv's `rows`), both ways.

        Ray tells the searcher that a trial ended before it tells the trial table, and the
        deadline ends trials without telling either; a driver killed in between leaves the
        two disagreeing. Returns (interrupted, fixed):

        - a RUNNING Optuna trial that was never launched (asked, then the driver stopped) is
          closed as FAIL; one whose row ended (the driver stopped before telling Optuna) is
          closed as its row says; the rest (rows running, interrupted or cut) are
          `interrupted`: (number, trial id, last checkpoint or None), to be continued;
        - a row still running, interrupted or cut whose Optuna trial is finished (Optuna was
          told, the table was not) gets the status Optuna recorded: `fixed` maps its trial
          id to that status, for the caller to write.
        """
        by_id = {r.trial_id: r for r in rows}
        interrupted = []
        fixed: dict[str, str] = {}
        for frozen in self.study.get_trials(deepcopy=False):
            original = frozen.user_attrs.get("ray_trial_id")
            row = by_id.get(original) if original else None
            if frozen.state == TrialState.RUNNING:
                if original is None:
                    self._close(frozen.number, Status.ERRORED, None)
                elif row is not None and row.status in ENDED:
                    self._close(frozen.number, Status(row.status), row.last_val_acc)
                else:
                    interrupted.append((frozen.number, original, (row.checkpoint or None) if row else None))
            elif row is not None and row.status in CONTINUABLE and frozen.state != TrialState.WAITING:
                fixed[original] = frozen.user_attrs.get("status") or FINISHED_AS[frozen.state].value
        return interrupted, fixed

    def continue_interrupted(self, rows: list[TrialRow]) -> tuple[int, dict[str, str]]:
        """After a driver stopped: settle the study, and queue the interrupted and cut trials
        so the next launches continue them (same Optuna trial, same row) from their
        checkpoints. Returns (how many were queued, the rows `settle` fixed)."""
        interrupted, fixed = self.settle(rows)
        self.pending.extend(interrupted)
        return len(interrupted), fixed

    # Ray saves the searcher with each experiment snapshot. The study is in SQLite already;
    # the map from Ray ids to Optuna numbers is all there is to keep.
    STATE = ("numbers", "reported", "pending", "rejected", "exhausted")

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump({key: getattr(self, key) for key in self.STATE}, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            state = pickle.load(handle)
        for key in self.STATE:
            setattr(self, key, state[key])
