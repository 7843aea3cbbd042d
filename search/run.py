"""Search ResNets and their training hyperparameters under a parameter budget.

    python -m search.run --gpus 4                      # CIFAR-10, 4 GPUs, < 5,000,000 params
    python -m search.run --gpus 0 --dataset synthetic --trials 6 --max-epochs 3 --subset 500

Optuna (TPE, define-by-run) proposes configs; each is counted exactly before it can become
a Ray Tune trial. The built-in space solves its widths into --param-budget; a --space that
names its widths may propose configs over it, which are told to Optuna as infeasible and
never run. ASHA stops weak trials at its rungs. Everything lands in --storage/--name.

With --minimize params|macs|latency the search is a Pareto search: the study trades
val_acc against that cost (multi-objective TPE, the budget still a constraint), MO-ASHA
promotes by non-dominated sorting at each rung, and front.json holds the front.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from search.settings import (SearchSettings, check_same_data, check_settings, content_hash, prepare_folder,
                             settings_from_args)
from search.tune.resources import Resources, check_gpus, muted, plan_resources, ray_session
from trainable.cli import parse_duration, run_main
from trainable.data import TrainArrays
from trainable.errors import UserError

if TYPE_CHECKING:
    from search.tune.costs import Costs
    from search.tune.deadline import DeadlineStopper
    from search.tune.searcher import BudgetedOptunaSearch


@dataclass
class SearchOutcome:
    folder: Path
    counts: dict[str, int]
    rejected: int
    best: dict[str, Any] | None
    wall_seconds: float
    summary: str
    complete: bool  # every requested trial ended (or the time budget was used up)


def load_search_data(s: SearchSettings) -> tuple[TrainArrays, int]:
    """Load the dataset once, on the driver: (training arrays for the trials, number of classes).

    The arrays' shape, (N, channels, height, width), gives the rest of what the exact
    counts need."""
    if s.data_dir and not Path(s.data_dir).exists():
        raise UserError(f"--data-dir {s.data_dir} does not exist")
    dataset = s.data_spec.load(download=True)  # fails here, once, not in every trial
    return TrainArrays.of(dataset), dataset.num_classes


def build_searcher(s: SearchSettings, num_classes: int, costs: "Costs | None" = None,
                   in_channels: int = 3) -> "BudgetedOptunaSearch":
    """The searcher over this experiment's Optuna study: created, or reloaded to resume."""
    import optuna

    from search.records import optuna_url, read_trials
    from search.tune.searcher import BudgetedOptunaSearch
    from search.tune.space import SPACE_VERSION, params_of
    from search.tune.sampler import STARTUP_LAUNCHED, LaunchedStartup, tpe_sampler

    fixed, space, warm = search_space(s, num_classes, in_channels)
    directions = ["maximize", "minimize"] if s.minimize else ["maximize"]
    # TPE's start-up is counted in launched trials, on its own random stream, and its good set
    # in trials that trained (search.tune.sampler); TPE itself starts no random phase of its own.
    startup = None if s.sampler == "random" else STARTUP_LAUNCHED
    tpe, gamma = tpe_sampler(s.seed, len(directions))
    sampler = LaunchedStartup(tpe, startup, seed=s.seed) if startup else optuna.samplers.RandomSampler(seed=s.seed)
    s.folder.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(optuna_url(s.folder))
    study = optuna.create_study(study_name=s.study or s.name, storage=storage, sampler=sampler,
                                directions=directions, load_if_exists=True)
    gamma.study = study
    model = rung_model(s, space, directions) if s.sampler == "rungs" else None
    searcher = BudgetedOptunaSearch(study, storage, space, s.param_budget, num_classes, fixed, s.max_epochs,
                                    startup=startup, costs=costs, in_channels=in_channels, rung_model=model)
    if model is not None and s.resume:  # the rung models learn again what history.csv holds
        from search.records import read_history

        model.rebuild(study, read_history(s.folder), searcher.cost_of if s.minimize else None)
    if s.resume:
        queued, fixed = searcher.continue_interrupted(read_trials(s.folder))
        fix_rows(s.folder, fixed)
        if queued:
            print(f"resuming {s.name}: {queued} interrupted or cut trial(s) continue from their last checkpoint",
                  flush=True)
    elif s.warm_from:
        from search.tune.warm import warm_start

        convert = None if s.space else functools.partial(params_of, fixed=fixed, budget=s.param_budget,
                                                         num_classes=num_classes, in_channels=in_channels, exact=False)
        searcher.warm = warm_start(study, s.warm_from, {"space_hash": content_hash(s.space) if s.space else None,
                                                        "space_version": None if s.space else SPACE_VERSION,
                                                        "overrides": s.overrides, "minimize": s.minimize}, convert)
        print(searcher.warm.describe(), flush=True)
    elif s.warm_start and (warm or s.extra.get("warm_configs")):
        # Configs a caller wants weighed first (search.auto's fixed recipe in the budget), where
        # the built-in space can build them, then the space's own warm starts.
        first = [] if s.space else [p for p in (params_of(c, fixed, s.param_budget, num_classes, in_channels)
                                                for c in s.extra.get("warm_configs", [])) if p]
        for params in first + (warm if isinstance(warm, list) else [warm] if warm else []):
            study.enqueue_trial(params)
    return searcher


def search_space(s: SearchSettings, num_classes: int, in_channels: int, check: bool = False) -> tuple[Any, Any, Any]:
    """(the fixed keys, the space, its warm starts) of this search: `--space`'s, or the built-in
    space of the experiment's version with the --set keys left out of it. With `check`, a
    budget that no config of the space fits is refused (UserError)."""
    from search.tune.budget import check_space_fits
    from search.tune.space import SPACE_VERSION, built_in_space, warm_starts
    from search.tune.space_files import load_space

    fixed = {**s.overrides, "epochs": s.max_epochs, "seed": s.seed}
    # The built-in space leaves fixed keys out of the search; a user's space is overridden.
    space, warm = load_space(s.space) if s.space else (
        built_in_space(s.extra.get("space_version", SPACE_VERSION), fixed, s.param_budget, num_classes, in_channels),
        warm_starts(s.param_budget, num_classes, in_channels, fixed))
    if check:
        check_space_fits(space, s.param_budget, num_classes, fixed, seed=s.seed, in_channels=in_channels)
    return fixed, space, warm


def rung_model(s: SearchSettings, space: Any, directions: list[str]) -> Any:
    """A model of every ASHA rung and of the horizon (`search.tune.rung_model`)."""
    from search.records import milestones
    from search.tune.rung_model import RungModel

    rungs = [m for m in milestones(s.grace, s.max_epochs, s.reduction_factor) if m < s.max_epochs]
    return RungModel(space, rungs + [s.max_epochs], directions, seed=s.seed)


def fix_rows(folder: Path, fixed: dict[str, str]) -> None:
    """Write the statuses `BudgetedOptunaSearch.settle` found for rows the table never closed."""
    from search.records import Status, read_trials, write_trials

    if fixed:
        write_trials(folder, [replace(r, status=Status(fixed.get(r.trial_id, r.status))) for r in read_trials(folder)])


def build_scheduler(s: SearchSettings, costs: "Costs | None" = None) -> Any:
    """ASHA on epochs with the rung records of earlier driver runs (`search.tune.rungs`), MO-ASHA
    with --minimize, or FIFO."""
    from ray.tune.schedulers import FIFOScheduler

    from search.records import read_history, read_trials
    from search.tune.rungs import ParetoRungScheduler, RungScheduler

    if s.scheduler != "asha":
        return FIFOScheduler()
    if s.minimize and costs is not None:
        configs = {r.trial_id: r.run_config for r in read_trials(s.folder)}
        return ParetoRungScheduler(s.max_epochs, s.grace, s.reduction_factor, costs.value).from_history(
            read_history(s.folder), configs)
    return RungScheduler(s.max_epochs, s.grace, s.reduction_factor).from_history(read_history(s.folder))


def build_tuner(s: SearchSettings, searcher: Any, trainable: Any, resources: Resources, remaining: int,
                table: Any, costs: "Costs | None" = None, stopper: "DeadlineStopper | None" = None) -> Any:
    """One Ray Tune experiment (a `run-*` folder) for what is left of the search; `stopper`
    ends it at the time budget's deadline."""
    from ray import tune

    from search.tune.progress import Progress
    from search.tune.tracking import parse_track, search_callbacks

    # Its clock is the time budget's, which started with the driver run.
    progress = Progress(lambda: table.rows, lambda: searcher.rejected, s.verbose,
                        stopper.budget_s if stopper else None, stage=s.extra.get("stage", "search"),
                        started=stopper.started if stopper else None)

    return tune.Tuner(
        tune.with_resources(trainable, {"cpu": s.cpus_per_trial, "gpu": resources.gpus_per_trial}),
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", search_alg=searcher, num_samples=remaining,
            scheduler=build_scheduler(s, costs),
            max_concurrent_trials=resources.concurrent, reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            # Ray's own output only for debugging (--verbose 2 and up); this tool's is `progress`.
            name=table.driver["run"], storage_path=s.ray_storage, verbose=s.verbose if s.verbose >= 2 else 0,
            stop=stopper,
            callbacks=[table, progress, *search_callbacks(parse_track(s.track), s.folder, s.name)],
            # Two per trial: trials.csv names the newest, and the one before stays until a
            # newer one is on record, so a driver killed at any moment finds one to continue.
            # None at the end: nothing is left to continue after the last epoch (a class
            # trainable would otherwise save a 60 MB state there).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_at_end=False),
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
        ),
    )


def run_search(s: SearchSettings, trial_cls: type | None = None) -> SearchOutcome:
    """Run (or resume) a search to the end and return its outcome; the CLI only prints it.

    Steps: settings -> data -> searcher -> tuner -> summary. Every driver run is a fresh Ray
    Tune experiment; what a resume carries on from is this tool's own files (settings.json,
    optuna.db, trials.csv with each trial's last checkpoint, history.csv), so it works
    wherever the previous driver stopped. `trial_cls` replaces `search.tune.trial.SearchTrial` (a
    subclass of it); the fault tests use one to make a trial fail the way a GPU would.
    """
    import optuna
    from ray import tune

    from search.tune.costs import Costs
    from search.tune.experiment import TrialTable, summary
    from search.records import (ENDED, count_statuses, ran_seconds, read_best, read_settings, read_trials,
                                rejected_count, write_settings)
    from search.tune.deadline import DeadlineStopper
    from search.tune.trial import SearchTrial, TrialOptions

    # The time budget counts from here: the data, Ray's start and Tune's set-up take from it.
    start = time.time()
    budget = parse_duration(s.time_budget) if s.time_budget else None
    stopper = DeadlineStopper(start + budget) if budget else None
    check_settings(s)
    if not s.address and os.environ.get("RAY_ADDRESS"):
        # Ray itself would connect there anyway (e.g. on a node started with `ray start`).
        s = replace(s, address=os.environ["RAY_ADDRESS"])
    s = prepare_folder(s)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per study is noise in a search
    data, num_classes = load_search_data(s)
    digest = check_same_data(s, data)
    if s.address is None:
        check_gpus(s)  # refuse --gpus 64 before starting anything
    # A budget no config fits is refused before Ray starts (the space is cheap to build).
    search_space(s, num_classes, int(data.images.shape[1]), check=True)
    with ray_session(s):
        resources = plan_resources(s)
        if resources.probe is not None and not resources.probe.isolated:
            print(f"note: latency is measured beside the trials ({'one GPU' if resources.gpus else 'one CPU slot'}): "
                  "its figures are marked not isolated", flush=True)
        channels, size = int(data.images.shape[1]), int(data.images.shape[-1])
        costs = Costs(s.folder, num_classes, size, s.minimize, resources.probe, in_channels=channels)
        searcher = build_searcher(s, num_classes, costs, in_channels=channels)
        searcher.launch_open = stopper.can_launch if stopper else None
        if not s.resume:
            from search.tune.space import SPACE_VERSION

            saved = {k: v for k, v in asdict(s).items() if k not in ("extra", "resume")}
            warm = getattr(searcher, "warm", None)
            write_settings(s.folder, {**saved, "grace_epochs": s.grace, "gpus": resources.gpus,
                                      "gpu_share": resources.gpus_per_trial, "data_hash": digest,
                                      "space_hash": content_hash(s.space) if s.space else None,
                                      "space_version": None if s.space else s.extra.get("space_version", SPACE_VERSION),
                                      "warm_start_result": warm.describe() if warm else None})
        ended = sum(r.status in ENDED for r in read_trials(s.folder))
        remaining = max(0, s.trials - ended)
        options = TrialOptions(threads=s.cpus_per_trial, compile=s.compile, checkpoint_every=s.checkpoint_every,
                               gpu_share=resources.gpus_per_trial)
        trainable = tune.with_parameters(trial_cls or SearchTrial, data=data, spec=s.data_spec, options=options)
        table = TrialTable(s.folder, resources.gpus_per_trial, s.max_epochs, time.strftime("run-%Y%m%d-%H%M%S"),
                           stopper=stopper, num_classes=num_classes, costs=costs, in_channels=channels)
        if remaining:
            print(f"{s.extra.get('stage', 'search')} {s.name}: {remaining} trial(s) to run, {resources.concurrent} at "
                  f"once, under {s.param_budget:,} params, "
                  + (f"ASHA to {s.max_epochs} epochs" if s.scheduler == "asha" else f"each to {s.max_epochs} epochs")
                  + (f", for at most {s.time_budget}" if s.time_budget else "") + f" -> {s.folder}", flush=True)
            with quiet_ray(s.verbose):
                build_tuner(s, searcher, trainable, resources, remaining, table, costs, stopper).fit()
        wall = time.time() - start
        fix_rows(s.folder, searcher.settle(read_trials(s.folder))[1])

    rows, best = read_trials(s.folder), read_best(s.folder)
    counts = count_statuses(rows)
    ended = sum(counts.get(e.value, 0) for e in ENDED)
    deadline_hit = stopper is not None and stopper.reached
    rejected = rejected_count(s.folder) or 0
    text = summary(s.folder, rows, best, rejected, wall, ran_seconds(s.folder), resources.gpus_per_trial > 0,
                   s.trials, deadline_hit)
    warm = read_settings(s.folder).get("warm_start_result")
    if warm:
        text = text.replace("\nwall time:", f"\n{warm}\nwall time:", 1)
    return SearchOutcome(s.folder, counts, rejected, best, wall, text, ended >= s.trials or deadline_hit)


@contextmanager
def quiet_ray(verbose: int) -> Iterator[None]:
    """Below --verbose 2, Tune's output engine prints its experiment box and hints even at
    verbosity 0; its older reporter (RAY_AIR_NEW_OUTPUT=0, Tune's own switch) prints nothing
    there. Set for this fit only, so a notebook's own Ray use is left as it was. After a
    Ctrl-C, Tune advises `Tuner.restore(...)`, which is not how a search resumes: the
    summary's `--resume` line says how. At the end, Tune warns "Failed to fetch metrics" for
    each trial the deadline cut before its first report; the trial table records those. Its
    notice that the experiment's state was saved often (a trial checkpointing every epoch or
    two does that) is about Tune's own files, with nothing for a user to do; so are its
    notices that an operation "may be a performance bottleneck" (one slow result on a busy
    machine, half a second, prints three of them)."""
    if verbose >= 2:
        yield
        return
    before = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        with muted("ray.tune.tune"), muted("ray.tune.analysis.experiment_analysis"), \
                muted("ray.tune.execution.experiment_state"), muted("ray.tune.utils.util"):
            yield
    finally:
        if before is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = before


def trial_dirname(trial: Any) -> str:
    """Short trial folders (Ray's default packs every hyperparameter into the name)."""
    return f"trial_{trial.trial_id}"


def main(argv: Sequence[str] | None = None) -> int:
    settings = settings_from_args(argv)
    outcome = run_search(settings)
    print(outcome.summary)
    return 0 if outcome.complete else 1


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
