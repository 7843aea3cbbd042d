"""Benchmark: a thousand-trial search through the real driver, to see what grows with it.

    python -m benchmarks.run --only soak --out bench/            # 1,000 trials, about an hour on 2 cores
    python -m benchmarks.run --only soak --quick --out bench/    # 60 trials

Tiny trials (synthetic images, the built-in space under the 5M budget, 1 to 2 epochs each
under ASHA) so that the driver, not training, is what is measured: the searcher's time per
launched trial (Optuna's TPE reads every trial on every ask, and budget rejections are
trials too), the driver's memory, and the time to write trials.csv and history.csv per
result, each taken near 100 launched trials and near the end. At the end: every row is in
trials.csv once and no Optuna trial is left running. A 4-GPU search launches more than
1,000 trials an hour, so the driver must keep up with one launch every 3 s.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from search.records import load_study


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def run(data_dir: str | None, quick: bool, out: Path | None = None) -> dict[str, Any]:
    import optuna

    import search.tune.experiment
    from search.records import HistoryLog, read_trials
    from search.run import run_search
    from search.settings import SearchSettings
    from search.tune.searcher import BudgetedOptunaSearch

    trials = 60 if quick else 1000
    marks = (20, trials) if quick else (100, trials)
    launches: list[tuple[int, float, float]] = []  # (launched so far, seconds of this suggest, RSS MB)
    writes: dict[str, list[tuple[int, float]]] = {"trials_csv": [], "history_csv": []}

    suggest, write_trials, append = BudgetedOptunaSearch.suggest, search.tune.experiment.write_trials, HistoryLog.append

    def timed_suggest(self: BudgetedOptunaSearch, trial_id: str) -> Any:
        start = time.perf_counter()
        config = suggest(self, trial_id)
        if isinstance(config, dict):
            launches.append((len(launches) + 1, time.perf_counter() - start, _rss_mb()))
        return config

    def timed_write(folder: Any, rows: Any) -> None:
        rows = list(rows)
        start = time.perf_counter()
        write_trials(folder, rows)
        writes["trials_csv"].append((len(rows), time.perf_counter() - start))

    def timed_append(self: HistoryLog, row: dict[str, Any]) -> None:
        start = time.perf_counter()
        append(self, row)
        writes["history_csv"].append((len(launches), time.perf_counter() - start))

    BudgetedOptunaSearch.suggest, search.tune.experiment.write_trials, HistoryLog.append = (
        timed_suggest, timed_write, timed_append)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = SearchSettings(name="soak", storage=str(out or tmp), gpus=0, trials=trials, max_epochs=2,
                                      grace_epochs=1, reduction_factor=2, dataset="synthetic", subset=48,
                                      warm_start=False, verbose=0, checkpoint_every=1,
                                      overrides={"batch_size": 16})
            start = time.time()
            outcome = run_search(settings)
            wall = time.time() - start
            rows = read_trials(outcome.folder)
            study = load_study(outcome.folder)
            running = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
            optuna_trials = len(study.trials)
    finally:
        BudgetedOptunaSearch.suggest, search.tune.experiment.write_trials, HistoryLog.append = (
            suggest, write_trials, append)

    def near(series: list[tuple[int, float]], mark: int, width: int) -> float:
        """Median seconds of the entries whose count lies in (mark - width, mark]."""
        values = [seconds for count, seconds in series if mark - width < count <= mark]
        return statistics.median(values) if values else float("nan")

    width = max(5, marks[0] // 5)
    result: dict[str, Any] = {
        "trials": trials, "wall_seconds": wall, "rows": len(rows), "unique_rows": len({r.trial_id for r in rows}),
        "optuna_trials": optuna_trials, "optuna_running_at_end": running, "rejected_for_budget": outcome.rejected,
        "counts": outcome.counts,
    }
    for mark in marks:
        rss = [mb for count, _, mb in launches if count <= mark]
        result[f"at_{mark}"] = {
            "driver_rss_mb": rss[-1] if rss else None,
            "suggest_seconds_per_launch": near([(c, s) for c, s, _ in launches], mark, width),
            "trials_csv_write_seconds": near(writes["trials_csv"], mark, width),
            "history_csv_append_seconds": near(writes["history_csv"], mark, width),
        }
    result["launches_per_hour_driver_bound"] = 3600 / max(1e-9, result[f"at_{marks[-1]}"]["suggest_seconds_per_launch"])
    result["table_cost"] = table_cost(200 if quick else 1000)
    return result


def table_cost(trials: int = 1000, results_per_trial: int = 2) -> dict[str, Any]:
    """The driver's table (`search.tune.experiment.TrialTable`) fed `trials` x `results_per_trial`
    results without Ray: seconds per result near 100 and near `trials` trials, with trials.csv
    rewritten on every result (as before) and at most once a second (as now)."""
    import types

    import search.tune.experiment
    from search.tune.experiment import TrialTable

    out: dict[str, Any] = {}
    for label, interval in (("every_result", 0.0), ("throttled", search.tune.experiment.WRITE_INTERVAL_S)):
        saved, search.tune.experiment.WRITE_INTERVAL_S = search.tune.experiment.WRITE_INTERVAL_S, interval
        try:
            with tempfile.TemporaryDirectory() as tmp:
                table = TrialTable(tmp, 0.0, results_per_trial)
                costs: list[tuple[int, float]] = []
                for index in range(trials):
                    trial = types.SimpleNamespace(trial_id=f"t{index:05d}", config={"blocks": [1, 1], "widths": [8, 16]})
                    table.on_trial_start(0, [], trial)
                    for epoch in range(1, results_per_trial + 1):
                        start = time.perf_counter()
                        table.on_trial_result(0, [], trial, {"epoch": epoch, "val_acc": 0.5, "time_total_s": 1.0,
                                                             "params": 100})
                        costs.append((index + 1, time.perf_counter() - start))
                    table.on_trial_complete(0, [], trial)
        finally:
            search.tune.experiment.WRITE_INTERVAL_S = saved
        out[label] = {f"seconds_per_result_near_{mark}": statistics.median(
            [c for n, c in costs if mark - 20 < n <= mark]) for mark in (100, trials)}
    return out
