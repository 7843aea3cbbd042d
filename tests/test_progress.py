"""What a user sees while a search runs: the tool's own progress line, not Ray's boxes."""

import io
import re
import types

from conftest import BUDGET
from search.records import Status, TrialRow
from search.tune.progress import Progress


def rows():
    return {row.trial_id: row for row in (
        TrialRow("a", Status.COMPLETED, best_val_acc=0.41, params=151234),
        TrialRow("b", Status.STOPPED, best_val_acc=0.52, params=98000),
        TrialRow("c", Status.RUNNING, params=120000),
    )}


def test_the_progress_line_counts_trials_and_names_the_best():
    out = io.StringIO()
    progress = Progress(rows, lambda: 7, verbose=1, budget_s=600, interval_s=0, out=out)
    progress.on_step_end(1, [types.SimpleNamespace(status="RUNNING")])
    progress.on_step_end(2, [types.SimpleNamespace(status="RUNNING")])  # nothing new: not repeated
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("[search 0.0 of 10.0 min] 1 running, 1 completed, 1 stopped, 0 cut, 0 errored; "
                               "7 rejected for the budget; best 0.5200 (trial b, 98k params)")


def test_the_progress_clock_is_the_time_budgets_which_began_before_tune_did():
    import time

    # The budget started with the driver run, 2 minutes before Tune (data, Ray's start).
    progress = Progress(rows, lambda: 0, verbose=1, budget_s=600, started=time.time() - 120)
    assert progress.line().startswith("[search 2.0 of 10.0 min]")


def test_the_last_trial_ending_after_long_epochs_is_no_stall():
    out = io.StringIO()
    progress = Progress(rows, lambda: 0, verbose=0, interval_s=0, stall_s=60, out=out)
    progress.last_event -= 120  # the last launch was two minutes ago; its epochs were long
    progress.on_step_end(1, [types.SimpleNamespace(status="RUNNING")])
    progress.on_trial_complete(2, [], types.SimpleNamespace(trial_id="a"))
    progress.on_step_end(3, [types.SimpleNamespace(status="TERMINATED")])  # the search's end
    assert out.getvalue() == ""
    progress.last_event -= 61  # nothing ran or launched for a minute since: that is a stall
    progress.on_step_end(4, [types.SimpleNamespace(status="PENDING")])
    assert "waiting: no trial running or launched for 61 s" in out.getvalue()


def test_verbose_0_prints_no_progress_but_a_stall():
    out = io.StringIO()
    progress = Progress(rows, lambda: 423, verbose=0, interval_s=0, stall_s=0, out=out)
    progress.on_step_end(1, [])
    progress.on_step_end(2, [])  # a stall is said once, until the next launch
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "waiting: no trial running or launched" in lines[0] and "423 configs rejected" in lines[0]
    progress.on_trial_start(3, [], types.SimpleNamespace(trial_id="d"))
    progress.on_step_end(4, [types.SimpleNamespace(status="RUNNING")])
    assert len(out.getvalue().splitlines()) == 1  # running: no stall


def test_a_quick_search_prints_a_screenful_not_hundreds_of_lines(space_file, tmp_path):
    """The quick run as a user starts it, Ray's own start included: the tool's start line,
    progress lines and summary, none of Ray's boxes, hints or its token-auth notice."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "search.run", "--gpus", "0", "--dataset", "synthetic", "--subset",
                           "400", "--trials", "4", "--max-epochs", "2", "--grace-epochs", "1", "--param-budget",
                           str(BUDGET), "--space", str(space_file), "--storage", str(tmp_path), "--name", "quick"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = (done.stdout + done.stderr).splitlines()
    assert any(line.startswith("search quick: 4 trial(s) to run") for line in printed)
    assert any(line.startswith("search finished: 4 trials run") for line in printed)
    # The last progress line (the search's end) counts every trial, and names the best the
    # summary names, at the time the search took.
    last = [line for line in printed if line.startswith("[search ")][-1]
    found = re.fullmatch(r"\[search ([\d.]+) min\] 0 running, (\d+) completed, (\d+) stopped, 0 cut, 0 errored; "
                         r"(\d+) rejected for the budget; best ([\d.]+) \(trial (\w+), [\d.]+k params\)", last)
    assert found, last
    minutes, completed, stopped, rejected, best, trial = found.groups()
    assert int(completed) + int(stopped) == 4 and int(completed) >= 1
    summary = next(line for line in printed if line.startswith("best val_acc"))
    assert summary.startswith(f"best val_acc {best} ") and f"(trial {trial}," in summary
    assert any(line.startswith(f"  {rejected} configs rejected for the parameter budget") for line in printed)
    assert 0 < float(minutes) <= float(re.search(r"this run ([\d.]+) min", done.stdout).group(1)) + 0.1
    assert len(printed) < 40, "\n".join(printed)
    assert not any("Trial status" in line or "Current best trial" in line or "Token authentication" in line
                   or "Tuner.restore" in line for line in printed), "\n".join(printed)
