"""The driver's record of a search: `TrialTable` (a Ray Tune callback) and the end-of-search summary.

`TrialTable` sees every result, checkpoint and end of a trial on the driver, and writes
them through `search.records` (the folder's format): trials.csv and best.json rewritten
atomically, history.csv appended. A resumed search starts from those files, not from
Ray's snapshots, so a driver killed at any moment loses at most the result in flight.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from search.records import (COST_COLUMN, CONTINUES, ENDED, FRONT, HistoryLog, Status, TrialRow, count_statuses,
                            ended_status, front_member, front_rows, rank, read_history, read_trials, record_driver,
                            row_id, write_best, write_front, write_trials)


def library_versions() -> str:
    """The versions a result depends on, so a trial can be rerun as it ran."""
    import optuna
    import ray
    import torch

    return f"python {platform.python_version()}; torch {torch.__version__}; ray {ray.__version__}; optuna {optuna.__version__}"


def checkpoint_uri(checkpoint: Any) -> str:
    """Where a `tune.Checkpoint` lives, as a path (local disk) or a URI (any other storage)."""
    kind = checkpoint.filesystem.type_name
    return checkpoint.path if kind == "local" else f"{kind}://{checkpoint.path}"


def _error_line(trial: Any, error: Any = None) -> str:
    """The exception line of a failed trial (its last traceback line), for the table."""
    texts = [str(error) if error else ""]
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        texts.append(Path(path).read_text(errors="replace"))
    for text in texts:
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        if lines:
            return lines[-1][:300]
    return "unknown error"


WRITE_INTERVAL_S = 1.0  # the table's plain results are written at most this often


def best_epoch(epochs: dict[int, dict[str, Any]]) -> int | None:
    """The epoch with the highest val_acc (the earliest of equals), or None without one.

    >>> best_epoch({1: {"val_acc": 0.3}, 2: {"val_acc": 0.5}, 3: {"val_acc": 0.5}}), best_epoch({1: {}})
    (2, None)
    """
    scored = [(e, f["val_acc"]) for e, f in sorted(epochs.items()) if f.get("val_acc") is not None]
    return max(scored, key=lambda pair: pair[1])[0] if scored else None


class TrialTable(Callback):
    """Keeps trials.csv, history.csv and best.json current from the driver.

    Rows already in trials.csv (a resumed search) are kept; a trial the searcher continues
    (its config names the trial it continues) writes into that trial's row and history.
    """

    def __init__(self, folder: str | Path, gpus_per_trial: float, horizon: int, run_name: str = "run",
                 stopper: Any = None, num_classes: int = 10, costs: Any = None, in_channels: int = 3):
        self.folder = Path(folder)
        self.gpus_per_trial = gpus_per_trial
        self.horizon = horizon
        self.stopper = stopper  # `search.tune.deadline.DeadlineStopper` of --time-budget, if one is given
        self.num_classes, self.in_channels = num_classes, in_channels
        self.costs = costs  # `search.tune.costs.Costs`: MACs and latency per row; with an objective, front.json
        self.versions = library_versions()
        self.rows: dict[str, TrialRow] = {r.trial_id: r for r in read_trials(self.folder)}
        # A continued trial's wall time before this run: its time counts on over every run.
        self.wall_before: dict[str, float] = {}
        # Every epoch's figures per trial, the newest of an epoch trained twice: best_val_acc
        # and best.json's metrics come from these, so they always agree with history.csv.
        self.epochs: dict[str, dict[int, dict[str, Any]]] = {}
        for row in read_history(self.folder):
            self.epochs.setdefault(row["trial_id"], {})[row["epoch"]] = row
        # A killed driver's last table can lag its history.csv (the table is written at most
        # once a second): its rows' figures are taken from the history, which is complete.
        lagging = [trial_id for trial_id in self.rows if self._figures_from_history(trial_id)]
        self.ids: dict[str, str] = {}  # Ray trial id -> the trial id of its row
        self.history = HistoryLog(self.folder)
        self.driver = {"run": run_name, "started": time.time(), "last": time.time(), "gpu_share": gpus_per_trial}
        self.written = 0.0  # when the table was last written
        self.dirty = False  # a change not written yet
        if lagging:
            self.write()

    # --- Ray Tune callback hooks -------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._row(trial).status = Status.RUNNING
        self.write(force=False)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        row = self._row(trial)
        if result.get("status") == Status.ERRORED:  # it raised inside the trial: nothing was trained
            row.status, row.error = Status.ERRORED, result.get("error") or "unknown error"
            self.write(force=False)
            return
        row.status = Status.RUNNING
        if result.get("params") is not None:
            row.params = int(result["params"])
        if self.costs is not None and self.costs.probe is not None and row.latency_ms is None:
            self._set_costs(row, self.costs.figures(row.run_config))  # its latency, once measured
        row.epochs_trained = int(result.get("epoch", 0))
        row.last_val_acc = result.get("val_acc")
        # Time over every run of the trial: what it had when continued, plus this run's.
        row.wall_seconds = round(self.wall_before.get(row.trial_id, 0.0) + result.get("time_total_s", 0.0), 2)
        row.gpu_seconds = round(row.wall_seconds * self.gpus_per_trial, 2)
        figures = {k: v for k, v in result.items() if k != "config"}
        epochs = self.epochs.setdefault(row.trial_id, {})
        epochs[int(result.get("epoch", 0))] = figures
        best = best_epoch(epochs)
        if best is not None:
            row.best_val_acc, row.best_epoch = epochs[best]["val_acc"], best
        if result.get("status") == Status.DIVERGED:
            row.status = Status.DIVERGED
        self.history.append({**result, "trial_id": row.trial_id, "time_total_s": row.wall_seconds})
        self.write(force=False)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        self._row(trial).checkpoint = checkpoint_uri(checkpoint)
        self.write()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(self._row(trial))
        self.write(force=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        row.status, row.error = Status.ERRORED, _error_line(trial, info.get("error"))
        self.write(force=False)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Its worker died (a node was lost, say); Ray restarts it from its last checkpoint.
        row = self._row(trial)
        row.restarts += 1
        row.status = Status.RUNNING
        self.write(force=False)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        # Tune's loop turns many times a second: a change held back by `write` lands here.
        if self.dirty and time.time() - self.written >= WRITE_INTERVAL_S:
            self.write()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # The time budget ends running trials without a per-trial callback (Ray stops them
        # as TERMINATED); an interrupt leaves them to --resume. Both are continued by a resume.
        for trial in trials:
            row = self.rows.get(self.ids.get(trial.trial_id, trial.trial_id))
            if row is None or row.status != Status.RUNNING:
                continue
            if trial.status == "ERROR":
                row.status, row.error = Status.ERRORED, _error_line(trial)
            elif trial.status == "TERMINATED" and row.epochs_trained >= self.horizon:
                row.status = Status.COMPLETED
            elif trial.status == "TERMINATED" and self.stopper is not None and self.stopper.fired:
                row.status = Status.CUT
            else:
                row.status = Status.INTERRUPTED
        self.write()

    # --- the rows -------------------------------------------------------------------------
    def _figures_from_history(self, trial_id: str) -> bool:
        """Set a row's epoch figures from its history; True if the row had them otherwise."""
        epochs = self.epochs.get(trial_id)
        best = best_epoch(epochs) if epochs else None
        if best is None:
            return False
        row, last = self.rows[trial_id], max(epochs)
        figures = {"epochs_trained": last, "last_val_acc": epochs[last].get("val_acc"),
                   "best_val_acc": epochs[best]["val_acc"], "best_epoch": best}
        if row.params is None:  # written at its start, before its first result
            from trainable.model import count_params

            figures["params"] = count_params(row.run_config, self.num_classes, self.in_channels)
        changed = any(getattr(row, k) != v for k, v in figures.items())
        for key, value in figures.items():
            setattr(row, key, value)
        return changed

    def _end(self, row: TrialRow) -> None:
        if row.status not in (Status.DIVERGED, Status.ERRORED):
            row.status = ended_status(row.epochs_trained, self.horizon)

    @staticmethod
    def _set_costs(row: TrialRow, figures: dict[str, Any]) -> None:
        """A row's params, MACs and latency from `search.tune.costs.Costs.figures`."""
        for key, value in figures.items():
            setattr(row, key, value if value is None or key == "latency_ms" else int(value))

    def _row(self, trial: Any) -> TrialRow:
        if trial.trial_id not in self.ids:
            own = row_id(trial)
            self.ids[trial.trial_id] = own
            if own in self.rows:  # continued: keep its figures, count its time on
                self.wall_before[own] = self.rows[own].wall_seconds or 0.0
            else:
                config = {k: v for k, v in trial.config.items() if k != CONTINUES}
                row = TrialRow.of_config(own, config, horizon=self.horizon, versions=self.versions)
                if self.costs is not None:
                    self._set_costs(row, self.costs.figures(config))
                self.rows[own] = row
        return self.rows[self.ids[trial.trial_id]]

    def write(self, force: bool = True) -> None:
        """Rewrite trials.csv, best.json and drivers.json; unless `force`, at most once a second.

        Rewriting trials.csv costs time in proportion to its rows (20 ms at 1,000 trials, the
        soak benchmark): on every event a long search would spend its driver on it. Each
        result is in history.csv at once; the table follows within a second, and is written
        at once for a checkpoint (what a resume continues from) and at the experiment's end.
        A driver killed in that second leaves rows that a resume settles from the study.
        """
        now = time.time()
        if not force and now - self.written < WRITE_INTERVAL_S:
            self.dirty = True  # `on_step_end` writes it once the second is up
            return
        self.written, self.dirty = now, False
        write_trials(self.folder, self.rows.values())
        best = self.best()
        if best:
            write_best(self.folder, best)
        if self.costs is not None and self.costs.objective:
            write_front(self.folder, self.front())
        self.driver["last"] = time.time()
        record_driver(self.folder, self.driver)

    def front(self) -> dict[str, Any]:
        """front.json: the non-dominated trials of val_acc against the cost, cheapest first."""
        from search.pareto import knee

        objective = self.costs.objective
        members = [front_member(row) for row in front_rows(self.rows.values(), objective)]
        column = COST_COLUMN[objective]
        at = knee([(m["val_acc"], m[column]) for m in members])
        return {"objective": objective, "cost_column": column, "metric": "val_acc",
                "knee": members[at]["trial_id"] if at is not None else None, "members": members}

    def best(self) -> dict[str, Any] | None:
        """The best trial by `records.rank` (highest val_acc at any epoch, diverged ones excluded)."""
        ranked = rank(self.rows.values())
        if not ranked:
            return None
        row = ranked[0]
        config = row.run_config
        return {
            "trial_id": row.trial_id,
            "config": config,
            "params": row.params,
            "val_acc": row.best_val_acc,
            "epoch": row.best_epoch,
            "status": Status(row.status).value,
            "metrics": self.epochs.get(row.trial_id, {}).get(row.best_epoch, {}),
            "seed": config.get("seed"),
            "versions": self.versions,
        }


def summary(folder: Path, rows: list[TrialRow], best: dict[str, Any] | None, rejected: int,
            wall_seconds: float, ran_seconds: float, on_gpu: bool, requested: int, deadline_hit: bool) -> str:
    """The end-of-search report: counts, the best trial, time spent, and what to run next."""
    counts = count_statuses(rows)
    ended = sum(counts.get(s.value, 0) for s in ENDED)
    cut = counts.get(Status.CUT.value, 0)
    gpu_hours = sum(r.gpu_seconds or 0.0 for r in rows) / 3600
    if ended >= requested:
        head = f"search finished: {ended} trials run"
    elif deadline_hit:
        head = f"search stopped at its time budget: {ended} of {requested} trials ended"
    else:
        head = f"search incomplete: {ended} of {requested} trials ended"
    lines = [
        "",
        head,
        "  " + ", ".join(f"{counts.get(s.value, 0)} {s.value}" for s in ENDED),
        f"  {rejected} configs rejected for the parameter budget (never launched)",
    ]
    if cut:
        lines.append(f"  {cut} cut by the time budget before the horizon (a --resume continues them)")
    if ended < requested:
        lines.append(f"  {requested - ended} to go: continue with --resume --name {folder.name} "
                     f"--storage {folder.parent}" + (" --time-budget ..." if deadline_hit else ""))
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
    spent = f"this run {wall_seconds / 60:.1f} min, the search {ran_seconds / 60:.1f} min in all"
    lines += [
        f"wall time: {spent}, {gpu_hours:.2f} GPU-hours" if on_gpu else f"wall time: {spent} (CPU only)",
        f"experiment: {folder}",
        "next:",
        f"  python -m analysis.table {folder}",
        # The retrain's default is 200 epochs, hours on a CPU: a CPU search is pointed at a time
        # budget instead. A Pareto search (front.json) retrains its front.
        f"  python -m search.retrain {folder}" + ("" if on_gpu else " --time-budget 30m --ema")
        + (f"\n  python -m search.retrain {folder} --front" + ("" if on_gpu else " --epochs 30")
           if (folder / FRONT).is_file() else ""),
    ]
    return "\n".join(lines)
