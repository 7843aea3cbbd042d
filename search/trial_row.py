"""A trial's row of trials.csv, typed, and the vocabulary of its fields: what became of a
trial (`Status`), the table's columns, and the rules over rows that "best" and "the front"
mean everywhere in this tool (`rank`, `front_rows`).

`TrialRow` is to trials.csv what Optuna's `FrozenTrial` is to a study's trial. Only
`search.records` reads and writes the file; it takes and gives these rows. Importing this
module imports neither Ray nor Optuna.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable

from trainable.config import DEFAULTS, config_from_cells

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

    Only `search.records` reads and writes the file (`read_trials`, `write_trials`);
    everyone else sees these fields. The config holds every key of `trainable.config.DEFAULTS` but
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
