"""The search's settings: its flags, their checks, and the rules of a resume.

`SearchSettings` is everything a search runs with (saved as settings.json in the
experiment); `build_parser` and `settings_from_parsed` make it from the command line (every
flag defaults to None, so a --resume can tell what was given from what was not);
`check_settings` refuses bad flags before anything starts; `prepare_folder` checks that a
new experiment's folder is free, or loads the saved settings to resume one.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from search.records import OBJECTIVES
from trainable.checkpoint import remove_temp_files
from trainable.cli import ArgumentParser, param_count, parse_duration
from trainable.config import parse_overrides
from trainable.data import DATA_DIR_HELP, DATASETS, DataSpec, TrainArrays
from trainable.errors import UserError
from trainable.zoo import PARAM_BUDGET

DESCRIPTION = "Search ResNets and their training hyperparameters under a parameter budget."

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
    param_budget: int = PARAM_BUDGET
    space: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # --set KEY=VALUE: fixed for every trial
    warm_start: bool = True
    sampler: str = "tpe"  # random: the baseline the benchmarks compare against
    scheduler: str = "asha"  # fifo: every trial runs to --max-epochs
    minimize: str | None = None  # params, macs or latency: a Pareto search against val_acc
    warm_from: str | None = None  # an earlier experiment whose trials the new study starts from
    track: list[str] | None = None  # mlflow[=URI] and/or wandb (search.tune.tracking)
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
        from search.tune.tracking import parse_track

        parse_track(s.track)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", s.name):
        raise UserError(f"--name {s.name!r} may hold only letters, digits, '.', '_' and '-'")


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
        # What was given and differs: "--flag OLD -> NEW", so the user sees what to put back.
        changed = [f"--{k.replace('_', '-')} {getattr(saved, k)!r} -> {getattr(s, k)!r}" for k in SEARCH_DEFINING
                   if (given is None or k in given) and k != "grace_epochs" and getattr(s, k) != getattr(saved, k)]
        if s.grace_epochs is not None and s.grace != saved.grace:
            changed.append(f"--grace-epochs {saved.grace} -> {s.grace}")
        if saved.space and "space_hash" in raw:
            if not Path(saved.space).is_file():
                raise UserError(f"the search's --space file {saved.space} is gone; put it back to resume")
            if content_hash(saved.space) != raw["space_hash"]:
                changed.append("--space (its file changed since the search began)")
        if changed:
            raise UserError(f"--resume cannot change what is searched ({'; '.join(changed)}; the saved settings are "
                            f"in {folder / SETTINGS})")
        remove_temp_files(folder)  # what the stopped run's killed writes left half-done
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


def build_parser(time_budget_help: str = "end within this long of the command's start, e.g. 90m, 2h: running "
                 "trials stop one epoch before it (as 'cut'; --resume continues them) and none starts that could "
                 "not train an epoch (default: none)") -> ArgumentParser:
    d = SearchSettings()
    p = ArgumentParser(prog="python -m search.run", description=DESCRIPTION,
                       epilog="The search space is documented in README.md ('The search space').")
    g = p.add_argument_group("experiment")
    g.add_argument("--name", help="experiment name (default: a timestamp, search-YYYYmmdd-HHMMSS)")
    g.add_argument("--storage", help="folder, shared path or URI for experiments (default ./runs)")
    g.add_argument("--resume", action="store_true", default=None, help="continue the interrupted experiment --name")
    g.add_argument("--trials", type=int, help=f"trials to run, budget rejections not counted (default {d.trials})")
    g.add_argument("--time-budget", help=time_budget_help)
    g.add_argument("--seed", type=int, help=f"seed of the sampler, the split and every trial (default {d.seed})")
    g = p.add_argument_group("search space and budget")
    g.add_argument("--param-budget", type=param_count, help="trainable params must be strictly below this: 5M, 500k "
                   f"or 200000 (default {d.param_budget:,})")
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
    g.add_argument("--verbose", type=int, choices=[0, 1, 2, 3],
                   help="0: the start, stall warnings and the summary; 1: and a progress line every 15 s (default); "
                        "2 and 3: and Ray's own output, for debugging")
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
