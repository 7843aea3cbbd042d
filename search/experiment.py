"""The experiment folder: trial table, best config, settings, and the end-of-search summary.

    runs/NAME/
      settings.json      the flags the search ran with (what --resume checks against)
      optuna.db          the Optuna study (SQLite; opens in optuna-dashboard)
      trials.csv         one row per trial, rewritten atomically as trials report and end
      best.json          the best config so far, its metrics, epoch and exact params
      <Ray Tune state>   tuner.pkl, experiment_state-*.json, one folder per trial

`TrialTable` is a Ray Tune Callback on the driver: it sees every result and every end of a
trial, so the table is current while the search runs, and its state is saved with Ray's
experiment state so a resumed search keeps the rows of finished trials.
"""

from __future__ import annotations

import csv
import io
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from trainable.checkpoint import write_json, write_text
from trainable.config import DEFAULTS, config_from_cells

SETTINGS = "settings.json"
TRIALS = "trials.csv"
BEST = "best.json"
OPTUNA_DB = "optuna.db"

CONFIG_COLUMNS = [key for key in DEFAULTS if key != "epochs"]
COLUMNS = (
    ["trial_id", "status", "params"] + CONFIG_COLUMNS
    + ["epochs_trained", "best_val_acc", "best_epoch", "last_val_acc", "horizon",
       "wall_seconds", "gpu_seconds", "restarts", "error", "versions"]
)


def library_versions() -> str:
    """The versions a result depends on, so a trial can be rerun as it ran."""
    import optuna
    import ray
    import torch

    return f"python {platform.python_version()}; torch {torch.__version__}; ray {ray.__version__}; optuna {optuna.__version__}"


# Ray writes its experiment snapshot to a staging folder and copies it here in the
# background, so the snapshot on disk can name a checkpoint a few seconds older than its
# file time. Checkpoints are pruned only behind that margin (see prune_checkpoints).
SNAPSHOT_MARGIN_S = 30.0


def prune_checkpoints(folder: str | Path, final: bool = False, margin_s: float = SNAPSHOT_MARGIN_S) -> int:
    """Delete trial checkpoints that no saved experiment snapshot can still refer to.

    Ray's own rotation (CheckpointConfig.num_to_keep) can delete the checkpoint that the
    last snapshot on disk names; a driver killed then leaves a trial that cannot be
    restored. Here, for each trial, the newest checkpoint written at least `margin_s`
    before the latest snapshot's file time is one the snapshot is sure to have seen; it
    and the one before it are kept with everything newer, older ones go. With `final`
    (the search ended and Ray wrote its last snapshot) only each trial's newest is kept.
    Returns how many checkpoints were deleted.
    """
    folder = Path(folder)
    snapshots = [p.stat().st_mtime for p in folder.glob("experiment_state-*.json")]
    if not snapshots:
        return 0
    horizon = max(snapshots) - margin_s
    deleted = 0
    for trial_dir in folder.glob("trial_*"):
        checkpoints = sorted(trial_dir.glob("checkpoint_*"))
        if final:
            old = checkpoints[:-1]
        else:
            seen = [c for c in checkpoints if c.stat().st_mtime < horizon]
            old = seen[:-2]
        for checkpoint in old:
            shutil.rmtree(checkpoint, ignore_errors=True)
            deleted += 1
    return deleted


def _cell(value: Any) -> Any:
    # Lists (blocks, widths) are kept readable and parseable in one CSV cell.
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _error_line(trial: Any, error: Any = None) -> str:
    """The exception line of a failed trial (its last traceback line), for the table."""
    texts = [str(error) if error else ""]
    for attribute in ("error_file", "local_path"):
        path = getattr(trial, attribute, None)
        if path:
            path = Path(path) if attribute == "error_file" else Path(path) / "error.txt"
            if path.is_file():
                texts.append(path.read_text(errors="replace"))
    for text in texts:
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        if lines:
            return lines[-1][:300]
    return "unknown error"


class TrialTable(Callback):
    """Keeps `trials.csv` and `best.json` current from the driver, atomically."""

    def __init__(self, folder: str | Path, gpus_per_trial: float, horizon: int):
        self.folder = Path(folder)
        self.gpus_per_trial = gpus_per_trial
        self.horizon = horizon
        self.rows: dict[str, dict[str, Any]] = {}
        self.best_results: dict[str, dict[str, Any]] = {}
        self.versions = library_versions()
        self.prune = True  # off when Ray keeps its state at a URI (its own rotation applies)
        self._last_prune = 0.0

    # --- Ray Tune callback hooks -------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._row(trial)["status"] = "running"
        self.write()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        row = self._row(trial)
        row["status"] = "running"
        row["params"] = result.get("params", row.get("params"))
        row["epochs_trained"] = result.get("epoch", 0)
        row["last_val_acc"] = result.get("val_acc")
        row["wall_seconds"] = round(result.get("time_total_s", 0.0), 2)
        row["gpu_seconds"] = round(row["wall_seconds"] * self.gpus_per_trial, 2)
        val = result.get("val_acc")
        if val is not None and (row.get("best_val_acc") is None or val > row["best_val_acc"]):
            row["best_val_acc"], row["best_epoch"] = val, result.get("epoch")
            self.best_results[trial.trial_id] = {k: v for k, v in result.items() if k != "config"}
        if result.get("status") == "diverged":
            row["status"] = "diverged"
        self.write()
        if self.prune and time.monotonic() - self._last_prune > 10:
            self._last_prune = time.monotonic()
            prune_checkpoints(self.folder)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        if row.get("status") != "diverged":
            row["status"] = "completed" if (row.get("epochs_trained") or 0) >= self.horizon else "stopped"
        self.write()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        row["status"] = "errored"
        row["error"] = _error_line(trial, info.get("error"))
        self.write()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # A deadline (--time-budget) stops running trials without a per-trial callback:
        # settle their rows from Ray's final statuses.
        for trial in trials:
            row = self.rows.get(trial.trial_id)
            if row is None or row.get("status") != "running":
                continue
            if trial.status == "TERMINATED":
                row["status"] = "completed" if (row.get("epochs_trained") or 0) >= self.horizon else "stopped"
            elif trial.status == "ERROR":
                row["status"], row["error"] = "errored", _error_line(trial)
        self.write()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Its worker died (a node was lost, say); Ray restarts it from its last checkpoint.
        row = self._row(trial)
        row["restarts"] = int(row.get("restarts") or 0) + 1
        row["status"] = "running"
        self.write()

    def get_state(self) -> dict[str, Any]:
        return {"rows": self.rows, "best_results": self.best_results}

    def set_state(self, state: dict[str, Any]) -> None:
        self.rows = state.get("rows", {})
        self.best_results = state.get("best_results", {})
        for row in self.rows.values():
            if row.get("status") == "running":
                row["status"] = "interrupted"  # until the resumed trial reports again

    # --- the files ------------------------------------------------------------------------
    def _row(self, trial: Any) -> dict[str, Any]:
        if trial.trial_id not in self.rows:
            config = trial.config
            row = {"trial_id": trial.trial_id, "horizon": self.horizon, "versions": self.versions, "restarts": 0}
            row.update({key: _cell(config.get(key)) for key in CONFIG_COLUMNS})
            self.rows[trial.trial_id] = row
            self.rows[trial.trial_id]["_config"] = dict(config)
        return self.rows[trial.trial_id]

    def write(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in self.rows.values():
            writer.writerow(row)
        write_text(self.folder / TRIALS, buffer.getvalue())
        best = self.best()
        if best:
            write_json(self.folder / BEST, best)

    def best(self) -> dict[str, Any] | None:
        """The trial with the highest val_acc at any epoch (ASHA-stopped ones included)."""
        scored = [r for r in self.rows.values() if r.get("best_val_acc") is not None and r["status"] != "diverged"]
        if not scored:
            return None
        row = max(scored, key=lambda r: r["best_val_acc"])
        return {
            "trial_id": row["trial_id"],
            "config": row["_config"],
            "params": row["params"],
            "val_acc": row["best_val_acc"],
            "epoch": row["best_epoch"],
            "status": row["status"],
            "metrics": self.best_results.get(row["trial_id"], {}),
            "seed": row["_config"].get("seed"),
            "versions": self.versions,
        }



def read_trials(folder: str | Path) -> list[dict[str, Any]]:
    """The rows of trials.csv as dicts of strings (empty if there is none yet)."""
    path = Path(folder) / TRIALS
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def config_from_row(row: dict[str, str]) -> dict[str, Any]:
    """Rebuild a trial's config from its trials.csv row."""
    return {**config_from_cells({k: row.get(k, "") for k in CONFIG_COLUMNS}), "epochs": int(row["horizon"])}


def read_best(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / BEST
    return json.loads(path.read_text()) if path.is_file() else None


def count_statuses(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many trials are in each status."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def summary(folder: Path, rows: list[dict[str, Any]], best: dict[str, Any] | None, rejected: int,
            wall_seconds: float, on_gpu: bool) -> str:
    """The end-of-search report: counts, the best trial, time spent, and what to run next."""
    counts = count_statuses(rows)
    gpu_hours = sum(float(r.get("gpu_seconds") or 0) for r in rows) / 3600
    lines = [
        "",
        f"search finished: {len(rows)} trials run",
        "  " + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("completed", "stopped", "errored", "diverged")),
        f"  {rejected} configs rejected for the parameter budget (never launched)",
    ]
    if counts.get("running") or counts.get("interrupted"):
        lines.append(f"  {counts.get('running', 0) + counts.get('interrupted', 0)} unfinished: continue with --resume")
    if best:
        config = best["config"]
        lines += [
            f"best val_acc {best['val_acc']:.4f} at epoch {best['epoch']} (trial {best['trial_id']}, {best['params']:,} params)",
            f"  blocks {config.get('blocks')} widths {config.get('widths')} F={config.get('kernel_size')} "
            f"K={config.get('skip_kernel_size')} {config.get('optimizer')} lr={config.get('lr'):.3g} "
            f"batch={config.get('batch_size')}",
        ]
    else:
        lines.append("no trial finished an epoch")
    lines += [
        f"wall time {wall_seconds / 60:.1f} min, {gpu_hours:.2f} GPU-hours" if on_gpu else
        f"wall time {wall_seconds / 60:.1f} min (CPU only)",
        f"experiment: {folder}",
        "next:",
        f"  python -m analysis.table {folder}",
        f"  python -m search.retrain {folder}",
    ]
    return "\n".join(lines)
