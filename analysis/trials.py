"""Read an experiment folder into pandas, without Ray.

Everything comes from the files the search writes through `search.records`: trials.csv
(one row per trial, statuses as the driver saw them), history.csv (one row per trial epoch)
and settings.json. Nothing Ray wrote is read, so an experiment whose Ray state lives at a
URI loads the same. A running experiment loads too: its unfinished trials show as
`running`, and a line cut short at the end of history.csv is ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from search.records import (HISTORY_COLUMNS, TRIAL_COLUMNS, TRIAL_STATUSES, Status, TrialRow, rank, read_history,
                            read_settings, read_trials, rejected_count)
from trainable.errors import UserError

# The table's columns: trials.csv's, in its order, less what only the driver needs.
COLUMNS = ["trial_id", "status", "error"] + [c for c in TRIAL_COLUMNS if c not in
                                             ("trial_id", "status", "error", "restarts", "checkpoint", "versions")]
STATUSES = TRIAL_STATUSES
CURVE_COLUMNS = [c for c in HISTORY_COLUMNS if c != "status"]  # the status is the trial's, added on load

settings_of = read_settings


def _row(trial: TrialRow) -> dict[str, Any]:
    """A trial's line of the table: its config keys and its figures, by the table's columns."""
    row: dict[str, Any] = {key: value for key, value in trial.config.items() if key in COLUMNS}
    row.update({key: getattr(trial, key) for key in COLUMNS if hasattr(trial, key) and key not in ("config",)})
    row.update(status=Status(trial.status).value, error=trial.error or None)
    return row


def load_experiment(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trial table best first, per-epoch curves) of an experiment; UserError if no epoch has finished."""
    folder = Path(path)
    read_settings(folder)
    raw_rows = read_trials(folder)
    ranked = rank(raw_rows)
    order = ranked + [r for r in raw_rows if r not in ranked]  # unranked (diverged, no figure) last
    rows = [_row(r) for r in order]
    table = pd.DataFrame(rows, columns=COLUMNS)
    if table.empty or table["epochs_trained"].max() == 0:
        raise UserError(f"{folder} has no finished epoch yet; wait for the first trials to report")
    status = dict(zip(table["trial_id"], table["status"]))
    history = [{**{k: h.get(k) for k in CURVE_COLUMNS}, "status": status.get(h["trial_id"])}
               for h in read_history(folder)]
    curves = pd.DataFrame(history, columns=CURVE_COLUMNS + ["status"])
    return table.reset_index(drop=True), curves


def load(path: str | Path) -> pd.DataFrame:
    """One row per trial of the experiment at `path`, finished or still running, best first
    (for example `load("runs/NAME").head()`)."""
    return load_experiment(path)[0]


def curves(path: str | Path) -> pd.DataFrame:
    """Per-epoch history of every trial, long format: trial_id, epoch, val_acc, ... , status."""
    return load_experiment(path)[1]


__all__ = ["load", "curves", "load_experiment", "rejected_count", "settings_of", "COLUMNS", "STATUSES"]
