"""The experiment folder's format, in one Ray-free place that `search/` and `analysis/` share.

    runs/NAME/
      settings.json   the flags the search ran with (what --resume checks against)
      optuna.db       the Optuna study (SQLite): the searcher's whole state
      trials.csv      one row per launched trial, rewritten atomically as trials report and end
      history.csv     one row per trial epoch, appended as results arrive
      best.json       the best trial so far (see `rank`), its config, metrics and exact params
      auto.json       search.auto's plan, each stage's planned and used seconds and results
      front.json      with --minimize: the non-dominated trials (accuracy against the cost)
      latency.json    with --minimize latency: each architecture's measured latency
      drivers.json    one entry per driver run: when it started and last reported (the time the
                      search really ran, without the downtime between runs)
      run-*/          Ray Tune's own folders, one per driver run; nothing here reads them

Everything a reader needs is in the first six files, so `analysis` works the same whether
Ray kept its state beside them or at a URI. Importing this module imports neither Ray nor
Optuna.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterable

from trainable.checkpoint import write_json, write_text
from trainable.config import DEFAULTS, config_from_cells
from trainable.errors import UserError

SETTINGS = "settings.json"
TRIALS = "trials.csv"
HISTORY = "history.csv"
BEST = "best.json"
OPTUNA_DB = "optuna.db"
DRIVERS = "drivers.json"
AUTO = "auto.json"  # search.auto's plan and stages, when the experiment is one of its runs
FRONT = "front.json"  # --minimize: the Pareto front of accuracy against the cost
# A continued trial's config carries the id it had before the driver stopped, so its rows,
# history and Optuna trial stay one trial. `search.tune.trial` removes it before training.
CONTINUES = "continues_trial"


def row_id(trial: Any) -> str:
    """A Ray trial's id in trials.csv: the one it continues, or its own."""
    continues = trial.config.get(CONTINUES)
    return continues["trial_id"] if continues else trial.trial_id
LATENCY = "latency.json"  # --minimize latency: measured latency per architecture
OBJECTIVES = ("params", "macs", "latency")  # what --minimize trades against val_acc
COST_COLUMN = {"params": "params", "macs": "macs", "latency": "latency_ms"}  # its trials.csv column


class Status(str, Enum):
    """What became of a trial. A str, so rows and tables compare it with plain strings."""

    COMPLETED = "completed"  # trained to the horizon (--max-epochs)
    STOPPED = "stopped"  # stopped early by ASHA at a rung, and by nothing else
    CUT = "cut"  # its run reached --time-budget before the horizon; --resume continues it
    DIVERGED = "diverged"  # its loss went NaN/inf; it stopped after that epoch
    ERRORED = "errored"  # it raised (out of memory, a bug) and was not restarted
    RUNNING = "running"  # training now
    INTERRUPTED = "interrupted"  # running when the driver stopped; --resume continues it
    REJECTED = "rejected"  # over the parameter budget: never launched (Optuna only)

    def __str__(self) -> str:
        return self.value


ENDED = (Status.COMPLETED, Status.STOPPED, Status.DIVERGED, Status.ERRORED)
# Rows a resumed search continues from their last checkpoint, as the same trial.
CONTINUABLE = (Status.RUNNING, Status.INTERRUPTED, Status.CUT)
TRIAL_STATUSES = tuple(s.value for s in Status if s is not Status.REJECTED)


def ended_status(epochs_trained: int, horizon: int, reported: str = "ok") -> Status:
    """The rule for a trial that ended without an error, written once.

    >>> ended_status(3, 3), ended_status(1, 3), ended_status(1, 3, "diverged")
    (<Status.COMPLETED: 'completed'>, <Status.STOPPED: 'stopped'>, <Status.DIVERGED: 'diverged'>)
    """
    if reported == Status.DIVERGED:
        return Status.DIVERGED
    return Status.COMPLETED if epochs_trained >= horizon else Status.STOPPED


CONFIG_COLUMNS = [key for key in DEFAULTS if key != "epochs"]
TRIAL_COLUMNS = (
    ["trial_id", "status", "params", "macs", "latency_ms"] + CONFIG_COLUMNS
    + ["epochs_trained", "best_val_acc", "best_epoch", "last_val_acc", "horizon",
       "wall_seconds", "gpu_seconds", "restarts", "error", "checkpoint", "versions"]
)
HISTORY_COLUMNS = ["trial_id", "epoch", "status", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
                   "epoch_seconds", "images_per_second", "time_total_s", "wall_time", "node_id"]


def milestones(grace: int, horizon: int, reduction_factor: int) -> list[int]:
    """ASHA's rung epochs, placed as Ray's ASHA places them for one bracket (grace x rf^k).

    >>> milestones(1, 3, 2), milestones(2, 20, 3), milestones(1, 27, 3)
    ([1, 2], [2, 6, 18], [1, 3, 9, 27])
    """
    import math

    # Ray's own arithmetic (floor of log(horizon / grace) / log(rf), plus one), so the rungs
    # land where Ray's ASHA put them for the same flags.
    count = int(math.log(horizon / grace) / math.log(reduction_factor) + 1)
    return [grace * reduction_factor ** k for k in range(count)]


def cell(value: Any) -> Any:
    """A value as one CSV cell: lists (blocks, widths) as JSON, None as empty."""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "" if value is None else value


def number(value: Any) -> float | None:
    """A numeric cell (or value) as a float; None when empty, unreadable or NaN (pandas' missing value)."""
    if value is None or value == "":
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return None if result != result else result


# ----------------------------------------------------------------------------- a trial's row
@dataclass
class TrialRow:
    """One trial's line of trials.csv, typed (as Optuna's `FrozenTrial` is a study's trial).

    Only this module reads and writes the file (`read_trials`, `write_trials`); everyone
    else sees these fields. The config holds every key of `trainable.config.DEFAULTS` but
    `epochs` (the trial's `horizon`); `run_config` puts them together.

    >>> row = TrialRow.from_cells({"trial_id": "a", "status": "stopped", "blocks": "[1, 1]", "widths": "[8, 16]",
    ...                            "params": "1234.0", "best_val_acc": "0.5", "horizon": "3", "epochs_trained": ""})
    >>> row.status, row.params, row.epochs_trained, row.run_config["blocks"], row.run_config["epochs"]
    (<Status.STOPPED: 'stopped'>, 1234, 0, [1, 1], 3)
    >>> TrialRow.from_cells(row.cells()) == row
    True
    """

    trial_id: str
    status: Status = Status.RUNNING
    config: dict[str, Any] = field(default_factory=dict)
    params: int | None = None
    macs: int | None = None
    latency_ms: float | None = None
    epochs_trained: int = 0
    best_val_acc: float | None = None
    best_epoch: int | None = None
    last_val_acc: float | None = None
    horizon: int | None = None
    wall_seconds: float | None = None
    gpu_seconds: float | None = None
    restarts: int = 0
    error: str = ""
    checkpoint: str = ""
    versions: str = ""

    INTS = ("params", "macs", "epochs_trained", "best_epoch", "horizon", "restarts")
    FLOATS = ("latency_ms", "best_val_acc", "last_val_acc", "wall_seconds", "gpu_seconds")
    TEXTS = ("error", "checkpoint", "versions")

    @classmethod
    def from_cells(cls, cells: dict[str, Any]) -> "TrialRow":
        """A row from trials.csv's text cells (an empty cell is None, or 0 for the counts)."""
        values: dict[str, Any] = {key: number(cells.get(key)) for key in cls.FLOATS}
        for key in cls.INTS:
            value = number(cells.get(key))
            values[key] = None if value is None else int(value)
        values["epochs_trained"] = values["epochs_trained"] or 0
        values["restarts"] = values["restarts"] or 0
        values.update({key: str(cells.get(key) or "") for key in cls.TEXTS})
        config = config_from_cells({key: cells.get(key, "") for key in CONFIG_COLUMNS})
        return cls(trial_id=str(cells["trial_id"]), status=Status(cells.get("status") or Status.RUNNING),
                   config=config, **values)

    @classmethod
    def of_config(cls, trial_id: str, config: dict[str, Any], **figures: Any) -> "TrialRow":
        """A new trial's row: its config as trials.csv will hold it (every key, defaults
        filled), so a live row and the same row read back are equal."""
        cells = {key: str(cell(config.get(key))) for key in CONFIG_COLUMNS}
        return cls(trial_id=trial_id, config=config_from_cells(cells), **figures)

    def cells(self) -> dict[str, Any]:
        """The row as trials.csv's text cells, in its columns."""
        values = {**self.config, **{key: getattr(self, key) for key in TRIAL_COLUMNS if key not in CONFIG_COLUMNS}}
        values["status"] = Status(self.status).value
        return {key: str(cell(values.get(key))) for key in TRIAL_COLUMNS}

    @property
    def run_config(self) -> dict[str, Any]:
        """The config the trial trains: its keys and its horizon as `epochs`."""
        return {**self.config, "epochs": self.horizon}

    def cost(self, objective: str) -> float | None:
        """Its figure on `objective` (params, macs or latency), where recorded."""
        return getattr(self, COST_COLUMN[objective])


# ----------------------------------------------------------------------------- readers
def read_settings(folder: str | Path) -> dict[str, Any]:
    """The search's settings.json; UserError if `folder` is not an experiment of this tool."""
    path = Path(folder) / SETTINGS
    if not path.is_file():
        raise UserError(f"{folder} is not an experiment folder (no {SETTINGS}); pass runs/NAME")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON") from None


def read_trials(folder: str | Path) -> list[TrialRow]:
    """The rows of trials.csv (empty if there is none yet)."""
    path = Path(folder) / TRIALS
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [TrialRow.from_cells(cells) for cells in csv.DictReader(handle)]


def read_history(folder: str | Path) -> list[dict[str, Any]]:
    """history.csv's rows, numbers parsed, one per (trial, epoch): the last one written.

    An epoch trained twice (a trial restarted from an older checkpoint) keeps its newer
    figures. A line cut short by a killed driver is skipped.
    """
    path = Path(folder) / HISTORY
    if not path.is_file():
        return []
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    with open(path, newline="") as handle:
        for raw in csv.DictReader(handle):
            if None in raw or any(raw.get(k) is None for k in HISTORY_COLUMNS):
                continue  # a torn last line
            row: dict[str, Any] = {k: raw[k] for k in ("trial_id", "status", "node_id")}
            for key in HISTORY_COLUMNS:
                if key not in row:
                    row[key] = number(raw[key])
            row["epoch"] = int(row["epoch"])
            rows[(row["trial_id"], row["epoch"])] = row
    return list(rows.values())


def read_best(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / BEST
    return json.loads(path.read_text()) if path.is_file() else None


def count_statuses(rows: Iterable[TrialRow]) -> dict[str, int]:
    """How many trials are in each status."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[Status(row.status).value] = counts.get(Status(row.status).value, 0) + 1
    return counts


def rank(rows: Iterable[TrialRow]) -> list[TrialRow]:
    """Trials best first by best_val_acc: what "best" means everywhere in this tool.

    Diverged trials and trials without a val figure are left out; ties keep the order the
    trials were launched in (a stable sort), so the same folder always names the same best.
    """
    scored = [r for r in rows if r.status != Status.DIVERGED and r.best_val_acc is not None]
    return sorted(scored, key=lambda r: -r.best_val_acc)


def front_rows(rows: Iterable[TrialRow], objective: str) -> list[TrialRow]:
    """The trials no other trial beats on both best_val_acc and the `objective`'s cost,
    cheapest first. Diverged trials and rows without both figures are left out (`rank`).

    >>> rows = [TrialRow(t, Status.COMPLETED, best_val_acc=a, params=p)
    ...         for t, a, p in [("a", 0.9, 400), ("b", 0.8, 100), ("c", 0.7, 300), ("d", 0.85, 200)]]
    >>> [r.trial_id for r in front_rows(rows, "params")]
    ['b', 'd', 'a']
    """
    from search.pareto import front_indices

    scored = [r for r in rank(rows) if r.cost(objective) is not None]
    members = [scored[i] for i in front_indices([(r.best_val_acc, -r.cost(objective)) for r in scored])]
    return sorted(members, key=lambda r: r.cost(objective))


def front_member(row: TrialRow) -> dict[str, Any]:
    """One trial of front.json: its id, best val_acc and epoch, status, costs and config."""
    return {"trial_id": row.trial_id, "val_acc": row.best_val_acc, "epoch": row.best_epoch,
            "status": Status(row.status).value, "params": row.params, "macs": row.macs,
            "latency_ms": row.latency_ms, "config": row.run_config}


def optuna_url(folder: str | Path) -> str:
    """The Optuna storage URL of the experiment's study."""
    return f"sqlite:///{Path(folder).resolve() / OPTUNA_DB}"


def load_study(folder: str | Path) -> Any:
    """The experiment's Optuna study, read-only use; None if there is none or it is unreadable."""
    import optuna

    if not (Path(folder) / OPTUNA_DB).is_file():
        return None
    try:
        storage = optuna.storages.RDBStorage(optuna_url(folder))
        return optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    except Exception:  # a locked or damaged database must not break a table
        return None


def rejected_count(folder: str | Path) -> int | None:
    """Configs rejected for the parameter budget, from the Optuna study (None if unreadable)."""
    study = load_study(folder)
    if study is None:
        return None
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.user_attrs.get("status") == Status.REJECTED and "warm_from" not in t.user_attrs)


def read_auto(folder: str | Path) -> dict[str, Any] | None:
    """auto.json (`search.auto`'s record), or None if the experiment has none."""
    path = Path(folder) / AUTO
    return json.loads(path.read_text()) if path.is_file() else None


def read_front(folder: str | Path) -> list[dict[str, Any]] | None:
    """front.json's members (`front_member` rows, written by `search.tune.experiment`), or None without one."""
    path = Path(folder) / FRONT
    return json.loads(path.read_text())["members"] if path.is_file() else None


def read_latency(folder: str | Path) -> dict[str, dict[str, Any]]:
    """latency.json: architecture key -> its latency record (`trainable.cost.measure_latency`)."""
    path = Path(folder) / LATENCY
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:  # torn by a kill: measured again
        return {}


def read_drivers(folder: str | Path) -> list[dict[str, Any]]:
    """drivers.json: one entry per driver run (run, started, last, gpus, gpu_share)."""
    path = Path(folder) / DRIVERS
    try:
        return json.loads(path.read_text()) if path.is_file() else []
    except json.JSONDecodeError:
        return []


def ran_seconds(folder: str | Path) -> float:
    """The time the search really ran: each driver run from its start to its last report."""
    return sum(max(0.0, float(d["last"]) - float(d["started"])) for d in read_drivers(folder))


# ----------------------------------------------------------------------------- writers
def write_trials(folder: str | Path, rows: Iterable[TrialRow]) -> None:
    write_text(Path(folder) / TRIALS, trials_csv_text(rows))


def write_best(folder: str | Path, best: dict[str, Any]) -> None:
    write_json(Path(folder) / BEST, best)


def write_settings(folder: str | Path, settings: dict[str, Any]) -> None:
    write_json(Path(folder) / SETTINGS, settings)


def write_auto(folder: str | Path, record: dict[str, Any]) -> None:
    write_json(Path(folder) / AUTO, record)


def write_front(folder: str | Path, front: dict[str, Any]) -> None:
    write_json(Path(folder) / FRONT, front)


def write_latency(folder: str | Path, measured: dict[str, dict[str, Any]]) -> None:
    write_json(Path(folder) / LATENCY, measured)


def record_driver(folder: str | Path, entry: dict[str, Any]) -> None:
    """Add or update this driver run's entry (keyed by `run`) in drivers.json."""
    drivers = [d for d in read_drivers(folder) if d.get("run") != entry["run"]]
    write_json(Path(folder) / DRIVERS, drivers + [entry])


def trials_csv_text(rows: Iterable[TrialRow]) -> str:
    """trials.csv's content for `rows`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TRIAL_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow(row.cells())
    return buffer.getvalue()


class HistoryLog:
    """Appends one history.csv line per result.

    Appending (not rewriting) keeps each report O(1). A line cut by a kill is dropped
    before the first append of a run, so it can never glue onto the next line. The file is
    opened per line: the driver pickles its callbacks, and an open file does not pickle.
    """

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / HISTORY
        self.checked = False

    def append(self, row: dict[str, Any]) -> None:
        if not self.checked:
            self._drop_torn_line()
            self.checked = True
        new = not self.path.is_file() or self.path.stat().st_size == 0
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: cell(row.get(k)) for k in HISTORY_COLUMNS})
            handle.flush()
            os.fsync(handle.fileno())

    def _drop_torn_line(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
