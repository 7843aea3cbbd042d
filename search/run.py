"""Search ResNets and their training hyperparameters under a parameter budget.

    python -m search.run --gpus 4                      # CIFAR-10, 4 GPUs, < 5,000,000 params
    python -m search.run --gpus 0 --dataset synthetic --trials 6 --max-epochs 3 --subset 500

Optuna (TPE, define-by-run) proposes configs; each is counted exactly before it can become
a Ray Tune trial, and those at or over --param-budget are told to Optuna as infeasible and
never run. ASHA stops weak trials at its rungs. Everything lands in --storage/--name.

With --minimize params|macs|latency the search is a Pareto search: the study trades
val_acc against that cost (multi-objective TPE, the budget still a constraint), MO-ASHA
promotes by non-dominated sorting at each rung, and front.json holds the front.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from search.records import OBJECTIVES
from trainable.cli import ArgumentParser, parse_duration, run_main
from trainable.config import parse_overrides
from trainable.data import DATA_DIR_HELP, DATASETS, DataSpec, TrainArrays
from trainable.errors import UserError


if TYPE_CHECKING:
    from search.costs import Costs, Probe
    from search.searcher import BudgetedOptunaSearch

# Flags that define what is searched: a --resume that changes one would mix two searches.
SEARCH_DEFINING = ("param_budget", "space", "overrides", "max_epochs", "grace_epochs", "reduction_factor", "dataset",
                   "data_dir", "val_fraction", "subset", "seed", "warm_start", "sampler", "scheduler", "minimize",
                   "warm_from")
# Flags a --resume takes anew: the resources and the time it may run. One not given takes
# its default, not the saved value: a search begun on a CPU box and resumed on a GPU box
# uses that box's GPUs (--gpus defaults to all of them).
RESUMABLE = ("gpus", "cpus", "gpus_per_trial", "cpus_per_trial", "address", "time_budget", "max_failures",
             "compile", "checkpoint_every", "verbose", "track")
# tpe: TPE over the study (stopped trials ranked by Optuna); rungs: TPE models of every ASHA
# rung propose past the start-up (search.tune.rung_model); random: the baseline.
SAMPLERS = ("tpe", "rungs", "random")
SCHEDULERS = ("asha", "fifo")

# Why 0.25 GPU per trial by default: a 5M-param ResNet at batch 128 in bf16 needs under
# 2 GB and leaves most of an 80 GB card idle, so four trials share one GPU.
DEFAULT_GPUS_PER_TRIAL = 0.25
# Why a checkpoint every 2 epochs: a 5M-param checkpoint with AdamW state is about 60 MB,
# written with an fsync and then copied by Ray; measured on this project's CPU box at
# 0.25 s (benchmark 3), that is 5-10% of a 3-5 s GPU epoch when done every epoch and
# under 5% every second one. A trial restarted after losing its node redoes at most 2.
DEFAULT_CHECKPOINT_EVERY = 2


@dataclass
class SearchSettings:
    """Everything a search is run with; saved as settings.json in the experiment."""

    name: str = ""
    study: str = ""  # the Optuna study's name: the experiment's name when it began (a folder may be renamed)
    storage: str = "runs"
    gpus: int | None = None  # None: every GPU this machine has
    cpus: int | None = None
    gpus_per_trial: float = DEFAULT_GPUS_PER_TRIAL
    cpus_per_trial: int = 1
    address: str | None = None
    trials: int = 50
    max_epochs: int = 20
    grace_epochs: int | None = None  # None: min(2, max_epochs)
    reduction_factor: int = 3
    param_budget: int = 5_000_000
    space: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # --set KEY=VALUE: fixed for every trial
    warm_start: bool = True
    sampler: str = "tpe"  # random: the baseline the benchmarks compare against
    scheduler: str = "asha"  # fifo: every trial runs to --max-epochs
    minimize: str | None = None  # params, macs or latency: a Pareto search against val_acc
    warm_from: str | None = None  # an earlier experiment whose trials the new study starts from
    track: list[str] | None = None  # mlflow[=URI] and/or wandb (search.tracking)
    seed: int = 0
    time_budget: str | None = None
    dataset: str = "cifar10"
    data_dir: str | None = None
    val_fraction: float = 0.1
    subset: int | None = None
    compile: bool = False
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    max_failures: int = 2
    resume: bool = False
    verbose: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def remote(self) -> bool:
        """Ray keeps its state at a URI other than a local file:// one."""
        return "://" in self.storage and not self.storage.startswith("file://")

    @property
    def folder(self) -> Path:
        """This tool's files: the storage folder on this machine, or ./runs/NAME for a remote URI."""
        if self.storage.startswith("file://"):
            return Path(self.storage[len("file://"):]).resolve() / self.name
        if self.remote:
            return Path("runs").resolve() / self.name
        return Path(self.storage).resolve() / self.name

    @property
    def ray_storage(self) -> str:
        """Where Ray keeps its folders: beside this tool's files, or under the URI."""
        if self.remote:
            return f"{self.storage.rstrip('/')}/{self.name}"
        return str(self.folder)

    @property
    def grace(self) -> int:
        return self.grace_epochs if self.grace_epochs is not None else min(2, self.max_epochs)

    @property
    def data_spec(self) -> DataSpec:
        data_dir = str(Path(self.data_dir).resolve()) if self.data_dir else None
        return DataSpec(self.dataset, data_dir, self.val_fraction, self.seed, self.subset)


@dataclass
class SearchOutcome:
    folder: Path
    counts: dict[str, int]
    rejected: int
    best: dict[str, Any] | None
    wall_seconds: float
    summary: str
    complete: bool  # every requested trial ended (or the time budget was used up)


def check_settings(s: SearchSettings) -> None:
    """Refuse bad flags before anything is started or written."""
    for flag in ("trials", "max_epochs", "grace", "param_budget", "cpus_per_trial", "checkpoint_every"):
        if getattr(s, flag) <= 0:
            name = "grace_epochs" if flag == "grace" else flag
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(s, flag)}")
    if s.grace_epochs is not None and s.grace_epochs > s.max_epochs:
        raise UserError(f"--grace-epochs ({s.grace_epochs}) cannot exceed --max-epochs ({s.max_epochs})")
    if s.reduction_factor < 2:
        raise UserError(f"--reduction-factor must be at least 2, got {s.reduction_factor}")
    if s.gpus is not None and s.gpus < 0:
        raise UserError(f"--gpus must be 0 or more, got {s.gpus}")
    if s.cpus is not None and s.cpus <= 0:
        raise UserError(f"--cpus must be positive, got {s.cpus}")
    if not 0 < s.gpus_per_trial <= 1 and not (s.gpus_per_trial > 1 and float(s.gpus_per_trial).is_integer()):
        raise UserError(f"--gpus-per-trial must be a fraction in (0, 1] or a whole number, got {s.gpus_per_trial}")
    if not 0 < s.val_fraction < 1:
        raise UserError(f"--val-fraction must be in (0, 1): the search ranks trials on val, got {s.val_fraction}")
    if s.sampler not in SAMPLERS:
        raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {s.sampler!r}")
    if s.scheduler not in SCHEDULERS:
        raise UserError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {s.scheduler!r}")
    if s.minimize is not None and s.minimize not in OBJECTIVES:
        raise UserError(f"--minimize must be one of {', '.join(OBJECTIVES)}, got {s.minimize!r}")
    if s.dataset not in DATASETS:
        raise UserError(f"unknown --dataset {s.dataset!r}; choose one of {', '.join(DATASETS)}")
    if s.subset is not None and s.subset <= 0:
        raise UserError(f"--subset must be positive, got {s.subset}")
    if s.time_budget:
        parse_duration(s.time_budget)
    if s.track:
        from search.tracking import parse_track

        parse_track(s.track)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", s.name):
        raise UserError(f"--name {s.name!r} may hold only letters, digits, '.', '_' and '-'")


def check_gpus(s: SearchSettings) -> int:
    """The GPU count to use; more than the machine or cluster has is refused."""
    if s.address:
        import ray

        available = int(ray.cluster_resources().get("GPU", 0))
    else:
        import torch

        available = torch.cuda.device_count()
    if s.gpus is None:
        return available
    if s.gpus > available:
        where = "the cluster" if s.address else "this machine"
        raise UserError(f"--gpus {s.gpus} asked for, but {where} has {available} GPU(s); pass --gpus {available}")
    return s.gpus


def content_hash(path: str | Path) -> str:
    """sha256 of a file's bytes: a --space file that changed since the search began is refused."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def data_hash(data: TrainArrays) -> str:
    """A hash of the training images and labels the trials see (after any --subset is applied
    in the trials, the same arrays): a dataset whose content changed is refused on --resume."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (data.images, data.labels):
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    digest.update("\n".join(data.classes).encode())
    return digest.hexdigest()


def absolute_paths(s: SearchSettings) -> SearchSettings:
    """--data-dir and --space as absolute paths, so settings.json means the same from any folder."""
    return replace(s, data_dir=str(Path(s.data_dir).resolve()) if s.data_dir else None,
                   space=str(Path(s.space).resolve()) if s.space else None,
                   warm_from=str(Path(s.warm_from).resolve()) if s.warm_from else None)


def prepare_folder(s: SearchSettings) -> SearchSettings:
    """Check that a new search's folder is free, or load the saved settings to resume one.

    The experiment is the folder the user named (--storage/--name, from where the command
    runs): a moved or renamed experiment resumes in place, and nothing is created elsewhere.
    """
    from search.records import SETTINGS, read_settings

    s = absolute_paths(s)
    folder = s.folder
    if s.resume:
        if not (folder / SETTINGS).is_file():
            raise UserError(f"nothing to resume: {folder} is not an experiment of this tool (no {SETTINGS})")
        raw = read_settings(folder)
        known = set(SearchSettings.__dataclass_fields__)
        saved = SearchSettings(**{k: v for k, v in raw.items() if k in known})
        given = s.extra.get("given")
        changed = [k for k in SEARCH_DEFINING
                   if (given is None or k in given) and k != "grace_epochs" and getattr(s, k) != getattr(saved, k)]
        if s.grace_epochs is not None and s.grace != saved.grace:
            changed.append("grace_epochs")
        if saved.space and "space_hash" in raw:
            if not Path(saved.space).is_file():
                raise UserError(f"the search's --space file {saved.space} is gone; put it back to resume")
            if content_hash(saved.space) != raw["space_hash"]:
                changed.append("space (its file changed since the search began)")
        if changed:
            flags = ", ".join("--" + k.replace("_", "-") for k in changed)
            raise UserError(f"--resume cannot change what is searched ({flags} differ from {folder / SETTINGS})")
        # Resources and the time budget are this run's (given, or the defaults), counted from
        # now; what defines the search is the saved one; the folder is where it was found.
        defaults = SearchSettings()
        fresh = {k: getattr(s, k) if given is None or k in given else getattr(defaults, k) for k in RESUMABLE}
        return replace(saved, **fresh, trials=s.trials if given is None or "trials" in given else saved.trials,
                       name=s.name, storage=s.storage, study=saved.study or saved.name, resume=True,
                       extra={**s.extra, "data_hash": raw.get("data_hash"),
                              # made before versions were recorded: version 1 of the built-in space
                              "space_version": raw.get("space_version") or 1})
    from search.records import AUTO

    # auto.json alone is `search.auto`'s record, written before its search stage begins.
    if folder.exists() and any(path.name != AUTO for path in folder.iterdir()):
        raise UserError(f"experiment {folder} already exists; pass --resume to continue it, or choose another --name")
    if s.warm_from:
        from search.records import OPTUNA_DB

        read_settings(s.warm_from)  # UserError if it is not an experiment
        if not (Path(s.warm_from) / OPTUNA_DB).is_file():
            raise UserError(f"--warm-from {s.warm_from} has no {OPTUNA_DB}: nothing to start from")
    return replace(s, study=s.name)


def check_same_data(s: SearchSettings, data: TrainArrays) -> str:
    """The data's hash; on --resume, UserError if it differs from the one the search began with."""
    digest = data_hash(data)
    saved = s.extra.get("data_hash")
    if s.resume and saved and saved != digest:
        raise UserError(f"--resume cannot change what is searched: the dataset at {s.data_dir or s.dataset} "
                        "differs from the one the search began with")
    return digest


@dataclass
class Resources:
    """What this driver run may use: GPUs, the share of each trial, and how many run at once."""

    gpus: int
    gpus_per_trial: float
    concurrent: int
    probe: "Probe | None" = None  # where --minimize latency measures, when it does


@contextmanager
def ray_session(s: SearchSettings) -> Iterator[None]:
    """The search's Ray (`search.tune.resources.ray_started`): the caller's, or one of its own."""
    from search.tune.resources import ray_started

    with ray_started(s.address, s.cpus or os.cpu_count(), s.gpus, log_to_driver=s.verbose > 1):
        yield


def plan_resources(s: SearchSettings) -> Resources:
    """GPUs and concurrency from the resources of this run (recomputed at every --resume)."""
    import ray

    return resources_for(s, check_gpus(s), int(ray.cluster_resources().get("CPU", 1)))


def resources_for(s: SearchSettings, gpus: int, cpus: int) -> Resources:
    """The GPUs, a trial's share, the trials run at once and the latency probe's slot, for a
    run with `gpus` GPUs and `cpus` CPUs (no Ray needed: `search.auto` plans with it)."""
    share = s.gpus_per_trial if gpus > 0 else 0.0
    concurrent = max(1, int(gpus / share)) if gpus > 0 else max(1, cpus // s.cpus_per_trial)
    resources = Resources(gpus, share, concurrent)
    return latency_probe(s, resources) if s.minimize == "latency" else resources


def latency_probe(s: SearchSettings, resources: Resources) -> Resources:
    """Set one trial slot aside for the latency probe (`search.costs`), so that it times its
    passes alone on its device: a whole GPU when there are two or more, one trial's CPUs on
    a CPU search. Where none can be spared, the probe shares and its records say so."""
    from search.costs import Probe

    gpus, share, concurrent = resources.gpus, resources.gpus_per_trial, resources.concurrent
    if gpus >= 2:
        probe = Probe("cuda", {"num_gpus": 1, "num_cpus": s.cpus_per_trial}, True, s.cpus_per_trial)
        concurrent = max(1, int((gpus - 1) / share))
    elif gpus == 1:
        probe = Probe("cuda", {"num_gpus": 0, "num_cpus": 0}, False, s.cpus_per_trial)
    elif concurrent >= 2:
        probe = Probe("cpu", {"num_cpus": s.cpus_per_trial}, True, s.cpus_per_trial)
        concurrent -= 1
    else:
        probe = Probe("cpu", {"num_cpus": 0}, False, s.cpus_per_trial)
    return replace(resources, concurrent=concurrent, probe=probe)


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

    from search.budget import check_space_fits
    from search.records import optuna_url, read_trials
    from search.searcher import BudgetedOptunaSearch
    from search.space import SPACE_VERSION, built_in_space, load_space, params_of, warm_starts
    from search.tune.sampler import STARTUP_LAUNCHED, LaunchedStartup

    fixed = {**s.overrides, "epochs": s.max_epochs, "seed": s.seed}
    # The built-in space leaves fixed keys out of the search; a user's space is overridden.
    space, warm = load_space(s.space) if s.space else (
        built_in_space(s.extra.get("space_version", SPACE_VERSION), fixed, s.param_budget, num_classes, in_channels),
        warm_starts(s.param_budget, num_classes, in_channels, fixed))
    check_space_fits(space, s.param_budget, num_classes, fixed, seed=s.seed, in_channels=in_channels)
    # TPE's start-up is counted in launched trials, on its own random stream (search.tune.sampler);
    # TPE itself starts no random phase of its own.
    startup = None if s.sampler == "random" else STARTUP_LAUNCHED
    sampler = (LaunchedStartup(optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=0), startup, seed=s.seed)
               if startup else optuna.samplers.RandomSampler(seed=s.seed))
    s.folder.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(optuna_url(s.folder))
    directions = ["maximize", "minimize"] if s.minimize else ["maximize"]
    study = optuna.create_study(study_name=s.study or s.name, storage=storage, sampler=sampler,
                                directions=directions, load_if_exists=True)
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
        from search.warm import warm_start

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


def rung_model(s: SearchSettings, space: Any, directions: list[str]) -> Any:
    """A model of every ASHA rung and of the horizon (`search.tune.rung_model`)."""
    from search.records import milestones
    from search.tune.rung_model import RungModel

    rungs = [m for m in milestones(s.grace, s.max_epochs, s.reduction_factor) if m < s.max_epochs]
    return RungModel(space, rungs + [s.max_epochs], directions, seed=s.seed)


def fix_rows(folder: Path, fixed: dict[str, str]) -> None:
    """Write the statuses `BudgetedOptunaSearch.settle` found for rows the table never closed."""
    from search.records import read_trials, write_trials

    if fixed:
        write_trials(folder, [{**r, "status": fixed.get(r["trial_id"], r["status"])} for r in read_trials(folder)])


def build_scheduler(s: SearchSettings, costs: "Costs | None" = None) -> Any:
    """ASHA on epochs with the rung records of earlier driver runs (`search.rungs`), MO-ASHA
    with --minimize, or FIFO."""
    from ray.tune.schedulers import FIFOScheduler

    from search.records import config_from_row, read_history, read_trials
    from search.rungs import ParetoRungScheduler, RungScheduler

    if s.scheduler != "asha":
        return FIFOScheduler()
    if s.minimize and costs is not None:
        configs = {r["trial_id"]: config_from_row(r) for r in read_trials(s.folder)}
        return ParetoRungScheduler(s.max_epochs, s.grace, s.reduction_factor, costs.value).from_history(
            read_history(s.folder), configs)
    return RungScheduler(s.max_epochs, s.grace, s.reduction_factor).from_history(read_history(s.folder))


def build_tuner(s: SearchSettings, searcher: Any, trainable: Any, resources: Resources, remaining: int,
                table: Any, costs: "Costs | None" = None) -> Any:
    """One Ray Tune experiment (a `run-*` folder) for what is left of the search."""
    from ray import tune

    from search.tracking import parse_track, search_callbacks

    return tune.Tuner(
        tune.with_resources(trainable, {"cpu": s.cpus_per_trial, "gpu": resources.gpus_per_trial}),
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", search_alg=searcher, num_samples=remaining,
            scheduler=build_scheduler(s, costs),
            max_concurrent_trials=resources.concurrent, reuse_actors=True,
            trial_dirname_creator=trial_dirname,
            time_budget_s=parse_duration(s.time_budget) if s.time_budget else None,
        ),
        run_config=tune.RunConfig(
            name=table.driver["run"], storage_path=s.ray_storage, verbose=s.verbose,
            callbacks=[table, *search_callbacks(parse_track(s.track), s.folder, s.name)],
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
    wherever the previous driver stopped. `trial_cls` replaces `search.trial.SearchTrial` (a
    subclass of it); the fault tests use one to make a trial fail the way a GPU would.
    """
    import optuna
    from ray import tune

    from search.costs import Costs
    from search.experiment import TrialTable, summary
    from search.records import (ENDED, count_statuses, ran_seconds, read_best, read_settings, read_trials,
                                rejected_count, write_settings)
    from search.trial import SearchTrial, TrialOptions

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
    with ray_session(s):
        resources = plan_resources(s)
        if resources.probe is not None and not resources.probe.isolated:
            print(f"note: latency is measured beside the trials ({'one GPU' if resources.gpus else 'one CPU slot'}): "
                  "its figures are marked not isolated", flush=True)
        channels, size = int(data.images.shape[1]), int(data.images.shape[-1])
        costs = Costs(s.folder, num_classes, size, s.minimize, resources.probe, in_channels=channels)
        searcher = build_searcher(s, num_classes, costs, in_channels=channels)
        if not s.resume:
            from search.space import SPACE_VERSION

            saved = {k: v for k, v in asdict(s).items() if k not in ("extra", "resume")}
            warm = getattr(searcher, "warm", None)
            write_settings(s.folder, {**saved, "grace_epochs": s.grace, "gpus": resources.gpus,
                                      "gpu_share": resources.gpus_per_trial, "data_hash": digest,
                                      "space_hash": content_hash(s.space) if s.space else None,
                                      "space_version": None if s.space else s.extra.get("space_version", SPACE_VERSION),
                                      "warm_start_result": warm.describe() if warm else None})
        ended = sum(r["status"] in {e.value for e in ENDED} for r in read_trials(s.folder))
        remaining = max(0, s.trials - ended)
        options = TrialOptions(threads=s.cpus_per_trial, compile=s.compile, checkpoint_every=s.checkpoint_every,
                               gpu_share=resources.gpus_per_trial)
        trainable = tune.with_parameters(trial_cls or SearchTrial, data=data, spec=s.data_spec, options=options)
        start = time.time()
        budget = parse_duration(s.time_budget) if s.time_budget else None
        table = TrialTable(s.folder, resources.gpus_per_trial, s.max_epochs, time.strftime("run-%Y%m%d-%H%M%S"),
                           deadline=start + budget if budget else None, num_classes=num_classes, costs=costs,
                           in_channels=channels)
        if remaining:
            build_tuner(s, searcher, trainable, resources, remaining, table, costs).fit()
        wall = time.time() - start
        fix_rows(s.folder, searcher.settle(read_trials(s.folder))[1])

    rows, best = read_trials(s.folder), read_best(s.folder)
    counts = count_statuses(rows)
    ended = sum(counts.get(e.value, 0) for e in ENDED)
    deadline_hit = bool(s.time_budget) and wall >= parse_duration(s.time_budget) * 0.95
    rejected = rejected_count(s.folder) or 0
    text = summary(s.folder, rows, best, rejected, wall, ran_seconds(s.folder), resources.gpus_per_trial > 0,
                   s.trials, deadline_hit)
    warm = read_settings(s.folder).get("warm_start_result")
    if warm:
        text = text.replace("\nwall time:", f"\n{warm}\nwall time:", 1)
    return SearchOutcome(s.folder, counts, rejected, best, wall, text, ended >= s.trials or deadline_hit)


def trial_dirname(trial: Any) -> str:
    """Short trial folders (Ray's default packs every hyperparameter into the name)."""
    return f"trial_{trial.trial_id}"


def build_parser() -> ArgumentParser:
    d = SearchSettings()
    p = ArgumentParser(prog="python -m search.run", description=__doc__.split("\n\n")[0],
                       epilog="The search space is documented in README.md ('The search space').")
    g = p.add_argument_group("experiment")
    g.add_argument("--name", help="experiment name (default: a timestamp, search-YYYYmmdd-HHMMSS)")
    g.add_argument("--storage", help="folder, shared path or URI for experiments (default ./runs)")
    g.add_argument("--resume", action="store_true", default=None, help="continue the interrupted experiment --name")
    g.add_argument("--trials", type=int, help=f"trials to run, budget rejections not counted (default {d.trials})")
    g.add_argument("--time-budget", help="stop gracefully after this long, e.g. 90m, 2h (default: none)")
    g.add_argument("--seed", type=int, help=f"seed of the sampler, the split and every trial (default {d.seed})")
    g = p.add_argument_group("search space and budget")
    g.add_argument("--param-budget", type=int, help=f"trainable params must be strictly below this (default {d.param_budget:,})")
    g.add_argument("--space", help="a .py file defining space(trial) -> config, or a .yaml space (default: built-in)")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="fix a config key for every trial and take it out of the search, e.g. "
                        "--set augment_policy=trivialaugment --set cutout=16 (repeatable)")
    g.add_argument("--no-warm-start", dest="warm_start", action="store_false", default=None,
                   help="do not run the seed's configuration as the first trial")
    g.add_argument("--warm-from", metavar="runs/OLD",
                   help="start from an earlier search: its finished trials join the study when the spaces agree, "
                        "else its top configs run first (replaces the built-in warm start)")
    g.add_argument("--sampler", choices=SAMPLERS, help=f"who proposes configs (default {d.sampler}): tpe, Optuna's "
                   "TPE over the study; rungs, TPE models of every ASHA rung (README, benchmark 12); random, "
                   "the baseline. Each starts with 10 random launched trials (except random)")
    g.add_argument("--minimize", choices=OBJECTIVES,
                   help="Pareto search: trade val_acc against this cost (params; macs per image; latency at "
                        "batch 1, measured once per architecture); writes front.json (default: val_acc alone)")
    g = p.add_argument_group("early stopping (ASHA on val_acc)")
    g.add_argument("--max-epochs", type=int, help=f"epochs of a trial run to the end; the cosine horizon (default {d.max_epochs})")
    g.add_argument("--grace-epochs", type=int, help="epochs before ASHA may stop a trial (default min(2, --max-epochs))")
    g.add_argument("--reduction-factor", type=int, help=f"ASHA keeps 1 in this many at each rung (default {d.reduction_factor})")
    g.add_argument("--scheduler", choices=SCHEDULERS, help=f"trial scheduler (default {d.scheduler}; fifo runs every trial to the end)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help=f"one of {', '.join(DATASETS)} (default {d.dataset})")
    g.add_argument("--data-dir", help=DATA_DIR_HELP)
    g.add_argument("--val-fraction", type=float, help=f"share of train held out to rank trials (default {d.val_fraction})")
    g.add_argument("--subset", type=int, help="use only this many training images (quick runs)")
    g = p.add_argument_group("resources")
    g.add_argument("--gpus", type=int, help="GPUs of this machine to use; 0 runs on CPUs (default: all it has)")
    g.add_argument("--cpus", type=int, help="CPUs for Ray on this machine (default: all)")
    g.add_argument("--gpus-per-trial", type=float,
                   help=f"GPU share of one trial; 0.25 packs 4 small trials per GPU (default {d.gpus_per_trial})")
    g.add_argument("--cpus-per-trial", type=int, help=f"CPUs per trial (default {d.cpus_per_trial})")
    g.add_argument("--address", help="join a running Ray cluster: auto or HOST:PORT (uses all its GPUs)")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile each trial's model (pays only on long trials)")
    g.add_argument("--checkpoint-every", type=int,
                   help=f"epochs between trial checkpoints; a lost trial redoes at most this many (default {d.checkpoint_every})")
    g.add_argument("--max-failures", type=int,
                   help="restarts of a trial whose worker or node died, from its last checkpoint (default 2); "
                        "a trial that raises (out of memory, a bug) ends as errored and is not restarted")
    g.add_argument("--verbose", type=int, choices=[0, 1, 2, 3], help="Ray's progress output (default 1)")
    g = p.add_argument_group("tracking")
    g.add_argument("--track", action="append", metavar="mlflow[=URI]|wandb",
                   help="log every trial to MLflow (default store runs/NAME/mlflow.db; =URI for a server) or W&B "
                        "(offline without an API key); repeatable; needs pip install -e \".[track]\". TensorBoard "
                        "event files land in runs/NAME/tensorboard whenever tensorboard is installed")
    return p


def settings_from_args(argv: Sequence[str] | None) -> SearchSettings:
    return settings_from_parsed(vars(build_parser().parse_args(argv)))


def settings_from_parsed(args: dict[str, Any]) -> SearchSettings:
    """SearchSettings from `build_parser`'s parsed flags (a dict; `search.auto` adds its own).

    Every flag defaults to None, so a --resume can tell what was given from what was not.
    """
    overrides = args.pop("set")
    args["overrides"] = parse_overrides(overrides, {"epochs": "--max-epochs", "seed": "--seed"}) if overrides else None
    given = sorted(k for k, v in args.items() if v is not None)
    defaults = asdict(SearchSettings())
    values = {k: (v if v is not None else defaults[k]) for k, v in args.items()}
    values["resume"] = bool(args["resume"])
    values["name"] = args["name"] or time.strftime("search-%Y%m%d-%H%M%S")
    if args["resume"] and not args["name"]:
        raise UserError("--resume needs the --name of the experiment to continue")
    return SearchSettings(**values, extra={"given": given})


def main(argv: Sequence[str] | None = None) -> int:
    settings = settings_from_args(argv)
    outcome = run_search(settings)
    print(outcome.summary)
    return 0 if outcome.complete else 1


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
