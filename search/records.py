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
from pathlib import Path
from typing import Any, Iterable

# The row's vocabulary (statuses, columns, the typed row, "best" and "the front") lives in
# `search.trial_row`; it is imported here too, so the folder's format is one import.
from search.trial_row import (CONFIG_COLUMNS, CONTINUABLE, COST_COLUMN, ENDED, OBJECTIVES,  # noqa: F401
                              TRIAL_COLUMNS, TRIAL_STATUSES, Status, TrialRow, cell, count_statuses, ended_status,
                              front_member, front_rows, number, rank)
from trainable.checkpoint import write_json, write_text
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
