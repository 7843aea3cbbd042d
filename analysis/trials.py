"""Read an experiment folder into pandas, without starting Ray.

Sources, all plain files a search writes: each trial folder's `params.json` (its config)
and `result.json` (one JSON line per reported epoch), `error.txt` for trials that failed,
the search's `trials.csv` (statuses as the driver saw them) and `settings.json`. A running
experiment loads too: its unfinished trials show as `running`, and a half-written last line
of a result file is ignored. A trial folder that cannot be read is skipped with a warning.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from trainable.config import DEFAULTS, config_from_cells
from trainable.errors import UserError

HYPERPARAMS = ["optimizer", "lr", "weight_decay", "momentum", "warmup_epochs", "batch_size", "label_smoothing",
               "cutout", "dropout", "crop_padding", "flip", "seed"]
COLUMNS = (["trial_id", "status", "error", "params", "blocks", "widths", "kernel_size", "skip_kernel_size",
            "stem_width"] + HYPERPARAMS
           + ["epochs_trained", "best_val_acc", "best_epoch", "last_val_acc", "horizon", "wall_seconds",
              "gpu_seconds"])
STATUSES = ("completed", "stopped", "errored", "diverged", "running")
CURVE_COLUMNS = ["trial_id", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds",
                 "time_total_s", "timestamp", "wall_time", "node_id"]


def settings_of(folder: str | Path) -> dict[str, Any]:
    """The search's settings.json; UserError if `folder` is not an experiment."""
    folder = Path(folder)
    path = folder / "settings.json"
    if not folder.is_dir() or not path.is_file():
        raise UserError(f"{folder} is not an experiment folder (no settings.json); pass runs/NAME")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON") from None


def _read_results(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    results = []
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            results.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines) - 1:
                break  # the line a running trial is writing right now
            raise
    return results


def _driver_statuses(folder: Path) -> dict[str, dict[str, str]]:
    path = folder / "trials.csv"
    if not path.is_file():
        return {}
    try:
        with open(path, newline="") as handle:
            return {row["trial_id"]: row for row in csv.DictReader(handle)}
    except (csv.Error, KeyError, UnicodeDecodeError):
        warnings.warn(f"{path} is unreadable; statuses are inferred from the trial folders")
        return {}


def _trial_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p.name.startswith("trial_")
                                                                 or (p / "params.json").exists()))


def _status(driver: dict[str, str] | None, history: list[dict[str, Any]], horizon: int, error_file: bool) -> str:
    # The driver's word (trials.csv) wins: a trial whose node died has an error.txt, but if
    # Ray restarted it from its checkpoint and it finished, it is not an errored trial.
    if history and history[-1].get("status") == "diverged":
        return "diverged"
    if driver and driver.get("status") in ("completed", "stopped", "errored", "diverged"):
        return driver["status"]
    if error_file:
        return "errored"
    if history and history[-1].get("epoch", 0) >= horizon:
        return "completed"
    return "running"


def _number(cell: str | None) -> float | None:
    return float(cell) if cell not in (None, "") else None


def _catch_up(row: dict[str, Any], driver: dict[str, str] | None) -> None:
    """Ray writes result.json lazily; trials.csv is written at every report. Take the newer."""
    if not driver or int(_number(driver.get("epochs_trained")) or 0) <= row["epochs_trained"]:
        return
    row["epochs_trained"] = int(_number(driver["epochs_trained"]))
    row["best_val_acc"] = _number(driver.get("best_val_acc"))
    row["best_epoch"] = int(_number(driver["best_epoch"])) if driver.get("best_epoch") else None
    row["last_val_acc"] = _number(driver.get("last_val_acc"))
    row["params"] = int(_number(driver["params"])) if driver.get("params") else row["params"]
    row["wall_seconds"] = _number(driver.get("wall_seconds")) or row["wall_seconds"]


def _row_from_driver(driver: dict[str, str], horizon: int, gpu_share: float) -> dict[str, Any]:
    """A trial known to trials.csv whose folder Ray has not written yet."""
    config = config_from_cells({key: driver.get(key, "") for key in DEFAULTS if key != "epochs"})
    row = {key: config.get(key) for key in COLUMNS if key in config}
    row.update(trial_id=driver["trial_id"], status=driver["status"], error=driver.get("error") or None,
               params=None, epochs_trained=0, best_val_acc=None, best_epoch=None, last_val_acc=None,
               horizon=horizon, wall_seconds=0.0)
    _catch_up(row, driver)
    row["gpu_seconds"] = row["wall_seconds"] * gpu_share
    return row


def load_experiment(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trial table, per-epoch curves) of an experiment; UserError if it has no finished epoch."""
    folder = Path(path)
    settings = settings_of(folder)
    horizon = int(settings.get("max_epochs", 0))
    gpu_share = float(settings.get("gpu_share") or 0.0)  # GPUs per trial as run (0 on CPUs)
    driver = _driver_statuses(folder)
    rows, curves = [], []
    for trial_dir in _trial_folders(folder):
        if not (trial_dir / "params.json").exists() and not (trial_dir / "result.json").exists():
            continue  # a trial that is starting: Ray made its folder and has not written it yet
        try:
            config = json.loads((trial_dir / "params.json").read_text())
            history = _read_results(trial_dir / "result.json")
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            warnings.warn(f"skipping trial folder {trial_dir}: unreadable ({type(exc).__name__})")
            continue
        trial_id = history[-1]["trial_id"] if history and "trial_id" in history[-1] else trial_dir.name.split("_")[-1]
        error_file = trial_dir / "error.txt"
        status = _status(driver.get(trial_id), history, horizon, error_file.is_file())
        error = None
        if status == "errored":
            text = error_file.read_text(errors="replace").strip() if error_file.is_file() else ""
            error = driver.get(trial_id, {}).get("error") or (text.splitlines()[-1] if text else "error")
        val = [(m.get("val_acc"), m.get("epoch")) for m in history if m.get("val_acc") is not None]
        best = max(val, key=lambda pair: pair[0]) if val else (None, None)
        last = history[-1] if history else {}
        wall = float(last.get("time_total_s", 0.0))
        row = {
            "trial_id": trial_id,
            "status": status,
            "error": error,
            "params": last.get("params"),
            **{key: config.get(key) for key in ("blocks", "widths", "kernel_size", "skip_kernel_size",
                                                 "stem_width")},
            **{key: config.get(key) for key in HYPERPARAMS},
            "epochs_trained": int(last.get("epoch", 0)),
            "best_val_acc": best[0],
            "best_epoch": best[1],
            "last_val_acc": last.get("val_acc"),
            "horizon": horizon,
            "wall_seconds": wall,
            "gpu_seconds": wall * gpu_share,
        }
        _catch_up(row, driver.get(trial_id))
        rows.append(row)
        for m in history:
            curves.append({"trial_id": trial_id, "status": row["status"],
                           **{key: m.get(key) for key in CURVE_COLUMNS if key != "trial_id"}})
    seen = {row["trial_id"] for row in rows}
    rows += [_row_from_driver(r, horizon, gpu_share) for trial_id, r in driver.items() if trial_id not in seen]
    table = pd.DataFrame(rows, columns=COLUMNS)
    if table.empty or table["epochs_trained"].max() == 0:
        raise UserError(f"{folder} has no finished epoch yet; wait for the first trials to report")
    table = table.sort_values("best_val_acc", ascending=False, na_position="last").reset_index(drop=True)
    return table, pd.DataFrame(curves, columns=CURVE_COLUMNS + ["status"])


def load(path: str | Path) -> pd.DataFrame:
    """One row per trial of the experiment at `path`, finished or still running.

    >>> df = load("runs/NAME")                      # doctest: +SKIP
    >>> df.sort_values("best_val_acc", ascending=False).head()   # doctest: +SKIP
    """
    return load_experiment(path)[0]


def curves(path: str | Path) -> pd.DataFrame:
    """Per-epoch history of every trial, long format: trial_id, epoch, val_acc, ... , status."""
    return load_experiment(path)[1]


def rejected_count(path: str | Path) -> int | None:
    """Configs rejected for the parameter budget, from the Optuna study (None if unreadable)."""
    import optuna

    db = Path(path) / "optuna.db"
    if not db.is_file():
        return None
    try:
        summaries = optuna.get_all_study_summaries(storage=f"sqlite:///{db}")
        study = optuna.load_study(study_name=summaries[0].study_name, storage=f"sqlite:///{db}")
    except Exception:  # a locked or damaged database must not break a table
        return None
    return sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("rejected"))
