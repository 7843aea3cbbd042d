"""End-to-end searches on CPU: tiny models, synthetic data, one shared Ray session."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

import analysis

from conftest import BUDGET, check_resumed, rows_of, settings
from search.budget import BudgetedOptunaSearch, check_space_fits, over_budget, startup_trials
from search.run import main, run_search
from search.space import WARM_START, YamlSpace, default_space, load_space
from trainable.errors import UserError
from trainable.model import count_params

def test_search_writes_the_experiment(finished_search):
    folder = finished_search.folder
    for name in ("trials.csv", "best.json", "optuna.db", "settings.json"):
        assert (folder / name).is_file(), name
    rows = rows_of(folder)
    assert len(rows) == 8
    assert {r["status"] for r in rows} <= {"completed", "stopped"}
    assert sum(r["status"] == "stopped" for r in rows) >= 1, "ASHA stopped no trial"
    best = json.loads((folder / "best.json").read_text())
    assert best["val_acc"] == max(float(r["best_val_acc"]) for r in rows)
    assert best["params"] == count_params(best["config"])
    assert "torch" in best["versions"] and best["seed"] == 0
    assert "search.retrain" in finished_search.summary and "rejected" in finished_search.summary


def test_no_trial_over_the_budget_ran(finished_search):
    rows = rows_of(finished_search.folder)
    for row in rows:
        config = {"blocks": json.loads(row["blocks"]), "widths": json.loads(row["widths"])}
        assert int(row["params"]) == count_params(config) < BUDGET
    assert finished_search.rejected > 0


def test_optuna_study_matches_the_trials(finished_search):
    folder = finished_search.folder
    study = optuna.load_study(study_name="exp", storage=f"sqlite:///{folder / 'optuna.db'}")
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in study.trials if "ray_trial_id" in t.user_attrs}
    rows = rows_of(folder)
    assert set(by_ray_id) == {r["trial_id"] for r in rows}
    for row in rows:
        state = by_ray_id[row["trial_id"]].state
        expected = optuna.trial.TrialState.COMPLETE if row["status"] == "completed" else optuna.trial.TrialState.PRUNED
        assert state == expected, row["trial_id"]
    rejected = [t for t in study.trials if t.user_attrs.get("rejected")]
    assert len(rejected) == finished_search.rejected
    # Rejected configs carry their excess as an Optuna constraint (> 0 means infeasible).
    assert all(t.constraints["params_over_budget"] > 0 for t in rejected)
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in rejected)


def test_impossible_budget_exits_2_before_any_trial(tmp_path, space_file, cli):
    code, _, err = cli(main, ["--gpus", 0, "--dataset", "synthetic", "--param-budget", 1000,
                              "--storage", tmp_path, "--name", "none"])
    assert code == 2 and "param-budget" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()


def test_budget_check_counts_before_launch():
    assert over_budget(4_999_999, 5_000_000) <= 0 < over_budget(5_000_000, 5_000_000)
    fixed = {"epochs": 1, "seed": 0}
    share = check_space_fits(default_space, 5_000_000, 10, fixed)
    assert 0 < share < 1  # part of the default space is over 5M
    assert startup_trials(share) >= 10 and startup_trials(1.0) == 10
    assert check_space_fits(default_space, 200_000, 10, fixed) >= 0  # only the smallest corner may fit
    with pytest.raises(UserError, match="no config"):
        check_space_fits(default_space, 10_000, 10, fixed)


def test_warm_start_is_the_seed_model():
    config = default_space(optuna.trial.FixedTrial(WARM_START))
    assert config["blocks"] == [3, 5, 3] and config["widths"] == [64, 128, 256]
    assert count_params(config) == 4_918_602


def test_space_files(tmp_path):
    good = tmp_path / "space.yaml"
    good.write_text("blocks: [{int: [1, 3]}, 2]\nwidths: {choice: [[8, 16], [16, 32]]}\nlr: {float: [0.001, 0.01], log: true}\n")
    space, warm = load_space(good)
    assert isinstance(space, YamlSpace) and warm is None
    config = space(optuna.create_study().ask())
    assert config["blocks"][1] == 2 and config["widths"] in ([8, 16], [16, 32])
    broken = tmp_path / "broken.py"
    broken.write_text("def space(trial)\n    return {}\n")
    with pytest.raises(UserError, match="syntax error"):
        load_space(broken)


def test_searcher_rejects_over_budget_configs_itself():
    searcher = BudgetedOptunaSearch(space=default_space, budget=3_000_000, num_classes=10,
                                    fixed={"epochs": 2, "seed": 0}, horizon=2, metric="val_acc", mode="max",
                                    sampler=optuna.samplers.RandomSampler(seed=1))
    configs = [searcher.suggest(f"t{i}") for i in range(5)]
    assert all(count_params(c) < 3_000_000 for c in configs)
    assert searcher.rejected > 0


@pytest.mark.parametrize("argv,message", [
    (["--grace-epochs", 5, "--max-epochs", 3], "grace"),
    (["--trials", 0], "--trials"),
    (["--dataset", "mnist"], "unknown --dataset"),
    (["--gpus", 64], "GPU"),
    (["--resume", "--name", "ghost"], "nothing to resume"),
])
def test_bad_flags_exit_2(tmp_path, cli, argv, message):
    code, _, err = cli(main, ["--storage", tmp_path, "--dataset", "synthetic", *argv])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_existing_name_is_not_overwritten(finished_search, cli):
    before = (finished_search.folder / "trials.csv").read_bytes()
    code, _, err = cli(main, ["--storage", finished_search.folder.parent, "--name", "exp", "--dataset", "synthetic",
                              "--gpus", 0])
    assert code == 2 and "already exists" in err
    assert (finished_search.folder / "trials.csv").read_bytes() == before


def test_resume_after_interrupt_keeps_finished_trials(ray_session, space_file, tmp_path):
    # The driver is a separate process on the test cluster: interrupting it leaves the cluster up.
    args = [sys.executable, "-m", "search.run", "--gpus", "0", "--address", ray_session.address, "--dataset", "synthetic",
            "--subset", "400", "--trials", "6", "--max-epochs", "3", "--grace-epochs", "1",
            "--reduction-factor", "2", "--param-budget", str(BUDGET), "--space", str(space_file),
            "--storage", str(tmp_path), "--name", "cut", "--verbose", "0"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    folder = tmp_path / "cut"
    deadline = time.time() + 120
    finished_before: dict = {}
    while time.time() < deadline and proc.poll() is None:
        if (folder / "trials.csv").is_file():
            rows = rows_of(folder)
            finished_before = {r["trial_id"]: r for r in rows if r["status"] in ("completed", "stopped")}
            if len(finished_before) >= 2:
                break
        time.sleep(0.5)
    assert proc.poll() is None, "the search ended before it could be interrupted:\n" + proc.stdout.read()
    running = analysis.load(folder)  # a live experiment loads, mid-write, without Ray
    assert len(running) >= 2 and set(running["status"]) <= {"completed", "stopped", "running"}
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    interrupted = rows_of(folder)
    assert len({r["trial_id"] for r in interrupted if r["status"] in ("completed", "stopped")}) < 6

    outcome = run_search(settings(tmp_path, space_file, name="cut", resume=True, trials=6))
    check_resumed(folder, finished_before, trials=6)
    study = optuna.load_study(study_name="cut", storage=f"sqlite:///{folder / 'optuna.db'}")
    launched = [t for t in study.trials if "ray_trial_id" in t.user_attrs]
    assert len(launched) == 6
    assert outcome.counts.get("completed", 0) + outcome.counts.get("stopped", 0) == 6


def test_time_budget_ends_the_search_gracefully(ray_session, space_file, tmp_path):
    start = time.time()
    outcome = run_search(settings(tmp_path, space_file, name="deadline", trials=50, max_epochs=3,
                                  time_budget="25s"))  # cold workers take ~10 s to start here
    assert time.time() - start < 90
    rows = rows_of(outcome.folder)
    assert 0 < len(rows) < 50  # it stopped early, keeping what finished
    assert all(r["status"] in ("completed", "stopped") for r in rows)
    assert (outcome.folder / "best.json").is_file() and "search finished" in outcome.summary
