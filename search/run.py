"""Search ResNets and their training hyperparameters under a parameter budget.

    python -m search.run --gpus 4                      # CIFAR-10, 4 GPUs, < 5,000,000 params
    python -m search.run --gpus 0 --dataset synthetic --trials 6 --max-epochs 3 --subset 500

Optuna (TPE, define-by-run) proposes configs; each is counted exactly before it can become
a Ray Tune trial, and those at or over --param-budget are told to Optuna as infeasible and
never run. ASHA stops weak trials at its rungs. Everything lands in --storage/--name.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

# Ray snapshots the experiment whenever a trial has checkpointed num_to_keep times; that is
# what makes --resume exact, so its warning about snapshot frequency is only noise here.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# Snapshot the experiment at most every 2 s (Ray's "auto" waits 10 s or more): a killed
# driver then loses at most the last seconds of bookkeeping, never a finished trial older
# than that. A snapshot is a small JSON and pickle per trial; cheap next to an epoch.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")

from trainable.cli import ArgumentParser, read_json, run_main
from trainable.data import DATASETS, load_dataset
from trainable.errors import UserError

# Flags that define what is searched: a --resume that changes one would mix two searches.
SEARCH_DEFINING = ("param_budget", "space", "max_epochs", "grace_epochs", "reduction_factor", "dataset",
                   "data_dir", "val_fraction", "subset", "seed", "warm_start", "sampler", "scheduler")
SAMPLERS = ("tpe", "random")
SCHEDULERS = ("asha", "fifo")

# Why 0.25 GPU per trial by default: a 5M-param ResNet at batch 128 in bf16 needs under
# 2 GB and leaves most of an 80 GB card idle, so four trials share one GPU.
DEFAULT_GPUS_PER_TRIAL = 0.25


@dataclass
class SearchSettings:
    """Everything a search is run with; saved as settings.json in the experiment."""

    name: str = ""
    storage: str = "runs"
    gpus: int | None = None  # None: every GPU this machine has
    cpus: int | None = None
    gpus_per_trial: float = DEFAULT_GPUS_PER_TRIAL
    cpus_per_trial: int = 1
    address: str | None = None
    trials: int = 50
    max_epochs: int = 20
    grace_epochs: int = 2
    reduction_factor: int = 3
    param_budget: int = 5_000_000
    space: str | None = None
    warm_start: bool = True
    sampler: str = "tpe"  # random: the baseline the benchmarks compare against
    scheduler: str = "asha"  # fifo: every trial runs to --max-epochs
    seed: int = 0
    time_budget: str | None = None
    dataset: str = "cifar10"
    data_dir: str | None = None
    val_fraction: float = 0.1
    subset: int | None = None
    compile: bool = False
    max_failures: int = 2
    resume: bool = False
    verbose: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        # Ray may keep its state at a URI (s3://, gs://); this tool's own files need a
        # filesystem path, so with a URI they stay in ./runs/NAME on the driver.
        if "://" in self.storage:
            return Path("runs").resolve() / self.name
        return Path(self.storage).resolve() / self.name


@dataclass
class SearchOutcome:
    folder: Path
    counts: dict[str, int]
    rejected: int
    best: dict[str, Any] | None
    wall_seconds: float
    summary: str


def parse_duration(text: str) -> float:
    """'90m', '2h', '1h30m', '45s' or plain seconds -> seconds."""
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not match or not any(match.groups()):
        raise UserError(f"--time-budget {text!r} is not a duration like 90m, 2h or 1h30m")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise UserError("--time-budget must be positive")
    return total


def check_settings(s: SearchSettings) -> None:
    """Refuse bad flags before anything is started or written."""
    for flag in ("trials", "max_epochs", "grace_epochs", "param_budget", "cpus_per_trial"):
        if getattr(s, flag) <= 0:
            raise UserError(f"--{flag.replace('_', '-')} must be positive, got {getattr(s, flag)}")
    if s.grace_epochs > s.max_epochs:
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
    if s.dataset not in DATASETS:
        raise UserError(f"unknown --dataset {s.dataset!r}; choose one of {', '.join(DATASETS)}")
    if s.subset is not None and s.subset <= 0:
        raise UserError(f"--subset must be positive, got {s.subset}")
    if s.time_budget:
        parse_duration(s.time_budget)
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


def prepare_folder(s: SearchSettings) -> SearchSettings:
    """Create the experiment folder for a new search, or load the saved settings to resume one."""
    from search.experiment import SETTINGS

    folder = s.folder
    if s.resume:
        if not (folder / SETTINGS).is_file():
            raise UserError(f"nothing to resume: {folder} is not an experiment of this tool (no {SETTINGS})")
        known = set(SearchSettings.__dataclass_fields__)
        saved = SearchSettings(**{k: v for k, v in read_json(folder / SETTINGS, "settings file").items() if k in known})
        changed = [k for k in SEARCH_DEFINING if k in s.extra.get("given", ()) and getattr(s, k) != getattr(saved, k)]
        if changed:
            flags = ", ".join("--" + k.replace("_", "-") for k in changed)
            raise UserError(f"--resume cannot change what is searched ({flags} differ from {folder / SETTINGS})")
        keep = {k: getattr(s, k) for k in ("gpus", "cpus", "address", "verbose", "resume", "time_budget")}
        return SearchSettings(**{**asdict(saved), **keep, "extra": s.extra})
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"experiment {folder} already exists; pass --resume to continue it, or choose another --name")
    return s


def run_search(s: SearchSettings, trial_fn: Callable[..., None] | None = None) -> SearchOutcome:
    """Run (or resume) a search to the end and return its outcome; the CLI only prints it.

    Uses the Ray session already initialised by the caller if there is one. `trial_fn`
    replaces `search.trial.run_trial` (same signature); the fault tests use it to make a
    trial fail the way a GPU would.
    """
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from search.budget import BudgetedOptunaSearch, check_space_fits, startup_trials
    from search.experiment import (OPTUNA_DB, SETTINGS, TrialTable, count_statuses, prune_checkpoints, read_best,
                                   read_trials, summary)
    from search.space import WARM_START, default_space, load_space
    from search.trial import run_trial
    from trainable.checkpoint import write_json

    check_settings(s)
    if not s.address and os.environ.get("RAY_ADDRESS"):
        # Ray itself would connect there anyway (e.g. on a node started with `ray start`).
        s = SearchSettings(**{**asdict(s), "address": os.environ["RAY_ADDRESS"]})
    s = prepare_folder(s)
    space, warm = (load_space(s.space) if s.space else (default_space, WARM_START))
    if s.data_dir and not Path(s.data_dir).exists():
        raise UserError(f"--data-dir {s.data_dir} does not exist")
    dataset = load_dataset(s.dataset, s.data_dir, download=True)  # fails here, not in every trial
    fixed = {"epochs": s.max_epochs, "seed": s.seed}
    feasible = check_space_fits(space, s.param_budget, dataset.num_classes, fixed, seed=s.seed)

    gpus = None if s.address else check_gpus(s)  # before starting anything
    started_ray = False
    if not ray.is_initialized():
        ray.init(address=s.address, num_cpus=None if s.address else s.cpus or os.cpu_count(),
                 num_gpus=None if s.address else (s.gpus if s.gpus is not None else None),
                 include_dashboard=False, configure_logging=False, log_to_driver=s.verbose > 1)
        started_ray = True
    try:
        gpus = check_gpus(s) if gpus is None else gpus
        gpus_per_trial = s.gpus_per_trial if gpus > 0 else 0
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if gpus > 0:
            concurrent = max(1, int(gpus / gpus_per_trial))
        else:
            concurrent = max(1, cpus // s.cpus_per_trial)
        folder = s.folder
        folder.mkdir(parents=True, exist_ok=True)
        if not s.resume:
            saved = {k: v for k, v in asdict(s).items() if k not in ("extra", "resume")}
            write_json(folder / SETTINGS, {**saved, "gpus": gpus, "gpu_share": gpus_per_trial})
        data_spec = {
            "dataset": s.dataset, "data_dir": str(Path(s.data_dir).resolve()) if s.data_dir else None,
            "val_fraction": s.val_fraction, "split_seed": s.seed, "subset": s.subset,
            "threads": s.cpus_per_trial, "compile": s.compile,
        }
        trainable = tune.with_resources(
            tune.with_parameters(trial_fn or run_trial, data_spec=data_spec), {"cpu": s.cpus_per_trial, "gpu": gpus_per_trial}
        )
        storage_path = s.storage if "://" in s.storage else str(Path(s.storage).resolve())
        start = time.time()
        if s.resume:
            tuner = tune.Tuner.restore(str(folder) if "://" not in s.storage else f"{s.storage}/{s.name}",
                                       trainable=trainable, resume_unfinished=True)
        else:
            remote = "://" in s.storage
            table = TrialTable(folder, gpus_per_trial, s.max_epochs)
            table.prune = not remote
            searcher = BudgetedOptunaSearch(
                space=space, budget=s.param_budget, num_classes=dataset.num_classes, fixed=fixed,
                horizon=s.max_epochs, metric="val_acc", mode="max",
                points_to_evaluate=(warm if isinstance(warm, list) else [warm]) if (s.warm_start and warm) else None,
                sampler=(optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=startup_trials(feasible))
                         if s.sampler == "tpe"
                         else optuna.samplers.RandomSampler(seed=s.seed)),
                study_name=s.name, storage=optuna.storages.RDBStorage(f"sqlite:///{folder / OPTUNA_DB}"),
            )
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    metric="val_acc", mode="max", search_alg=searcher, num_samples=s.trials,
                    scheduler=(ASHAScheduler(max_t=s.max_epochs, grace_period=s.grace_epochs,
                                             reduction_factor=s.reduction_factor) if s.scheduler == "asha"
                               else FIFOScheduler()),
                    max_concurrent_trials=concurrent, reuse_actors=True,
                    trial_dirname_creator=trial_dirname,
                    time_budget_s=parse_duration(s.time_budget) if s.time_budget else None,
                ),
                run_config=tune.RunConfig(
                    name=s.name, storage_path=storage_path, verbose=s.verbose,
                    callbacks=[table],
                    # On a filesystem, TrialTable prunes checkpoints behind Ray's snapshots
                    # (prune_checkpoints says why); at a URI, Ray's rotation keeps 2.
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2 if remote else None),
                    failure_config=tune.FailureConfig(max_failures=s.max_failures),
                ),
            )
        tuner.fit()
        wall = time.time() - start
        if "://" not in s.storage:
            prune_checkpoints(folder, final=True)
    finally:
        if started_ray:
            ray.shutdown()

    study = optuna.load_study(study_name=s.name, storage=f"sqlite:///{folder / OPTUNA_DB}")
    rejected = sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("rejected"))
    rows, best = read_trials(folder), read_best(folder)
    text = summary(folder, rows, best, rejected, wall, gpus_per_trial > 0)
    return SearchOutcome(folder, count_statuses(rows), rejected, best, wall, text)


def trial_dirname(trial: Any) -> str:
    """Short trial folders (Ray's default packs every hyperparameter into the name)."""
    return f"trial_{trial.trial_id}"


def build_parser() -> ArgumentParser:
    d = SearchSettings()
    p = ArgumentParser(prog="python -m search.run", description=__doc__.split("\n\n")[0],
                       epilog="The search space is documented in README.md ('The search space').")
    g = p.add_argument_group("experiment")
    g.add_argument("--name", help="experiment name (default: a timestamp, search-YYYYmmdd-HHMMSS)")
    g.add_argument("--storage", default=d.storage, help="folder, shared path or URI for experiments (default ./runs)")
    g.add_argument("--resume", action="store_true", help="continue the interrupted experiment --name")
    g.add_argument("--trials", type=int, help=f"trials to run, budget rejections not counted (default {d.trials})")
    g.add_argument("--time-budget", help="stop gracefully after this long, e.g. 90m, 2h (default: none)")
    g.add_argument("--seed", type=int, help=f"seed of the sampler, the split and every trial (default {d.seed})")
    g = p.add_argument_group("search space and budget")
    g.add_argument("--param-budget", type=int, help=f"trainable params must be strictly below this (default {d.param_budget:,})")
    g.add_argument("--space", help="a .py file defining space(trial) -> config, or a .yaml space (default: built-in)")
    g.add_argument("--no-warm-start", dest="warm_start", action="store_false", default=None,
                   help="do not run the seed's configuration as the first trial")
    g.add_argument("--sampler", choices=SAMPLERS, help=f"Optuna sampler (default {d.sampler}; random is a baseline)")
    g = p.add_argument_group("early stopping (ASHA on val_acc)")
    g.add_argument("--max-epochs", type=int, help=f"epochs of a trial run to the end; the cosine horizon (default {d.max_epochs})")
    g.add_argument("--grace-epochs", type=int, help=f"epochs before ASHA may stop a trial (default {d.grace_epochs})")
    g.add_argument("--reduction-factor", type=int, help=f"ASHA keeps 1 in this many at each rung (default {d.reduction_factor})")
    g.add_argument("--scheduler", choices=SCHEDULERS, help=f"trial scheduler (default {d.scheduler}; fifo runs every trial to the end)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help=f"one of {', '.join(DATASETS)} (default {d.dataset})")
    g.add_argument("--data-dir", help="CIFAR-10 download folder, or ImageFolder root with train/ and test/")
    g.add_argument("--val-fraction", type=float, help=f"share of train held out to rank trials (default {d.val_fraction})")
    g.add_argument("--subset", type=int, help="use only this many training images (quick runs)")
    g = p.add_argument_group("resources")
    g.add_argument("--gpus", type=int, help="GPUs of this machine to use; 0 runs on CPUs (default: all it has)")
    g.add_argument("--cpus", type=int, help="CPUs for Ray on this machine (default: all)")
    g.add_argument("--gpus-per-trial", type=float, default=d.gpus_per_trial,
                   help=f"GPU share of one trial; 0.25 packs 4 small trials per GPU (default {d.gpus_per_trial})")
    g.add_argument("--cpus-per-trial", type=int, default=d.cpus_per_trial, help=f"CPUs per trial (default {d.cpus_per_trial})")
    g.add_argument("--address", help="join a running Ray cluster: auto or HOST:PORT (uses all its GPUs)")
    g.add_argument("--compile", action="store_true", help="torch.compile each trial's model (pays only on long trials)")
    g.add_argument("--max-failures", type=int, default=d.max_failures, help="restarts of a trial whose worker died (default 2)")
    g.add_argument("--verbose", type=int, default=d.verbose, choices=[0, 1, 2, 3], help="Ray's progress output (default 1)")
    return p


def settings_from_args(argv: Sequence[str] | None) -> SearchSettings:
    args = vars(build_parser().parse_args(argv))
    given = [k for k, v in args.items() if v is not None and k in SEARCH_DEFINING]
    defaults = asdict(SearchSettings())
    values = {k: (v if v is not None else defaults[k]) for k, v in args.items()}
    values["name"] = args["name"] or time.strftime("search-%Y%m%d-%H%M%S")
    if args["resume"] and not args["name"]:
        raise UserError("--resume needs the --name of the experiment to continue")
    return SearchSettings(**values, extra={"given": given})


def main(argv: Sequence[str] | None = None) -> int:
    settings = settings_from_args(argv)
    outcome = run_search(settings)
    print(outcome.summary)
    return 0


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
