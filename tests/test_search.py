"""End-to-end searches on CPU: tiny models, synthetic data, one shared Ray session."""

import functools
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from pathlib import Path

import analysis

from conftest import BUDGET, check_resumed, rows_of, settings
from search.tune.budget import check_space_fits, over_budget
from search.records import load_study, read_history
from search.run import main, run_search
from search.settings import SearchSettings, check_settings, prepare_folder, settings_from_args
from search.tune.searcher import BudgetedOptunaSearch
from search.tune.trial import SearchTrial
from search.tune.space import WARM_START, default_space, space_v1
from search.tune.space_files import YamlSpace, load_space
from trainable.errors import UserError
from trainable.model import count_params

def test_search_writes_the_experiment(finished_search):
    folder = finished_search.folder
    for name in ("trials.csv", "best.json", "optuna.db", "settings.json"):
        assert (folder / name).is_file(), name
    rows = rows_of(folder)
    assert len(rows) == 8
    assert {r.status for r in rows} <= {"completed", "stopped"}
    assert sum(r.status == "stopped" for r in rows) >= 1, "ASHA stopped no trial"
    best = json.loads((folder / "best.json").read_text())
    assert best["val_acc"] == max(r.best_val_acc for r in rows)
    assert best["params"] == count_params(best["config"])
    assert "torch" in best["versions"] and best["seed"] == 0
    assert "search.retrain" in finished_search.summary and "rejected" in finished_search.summary
    # A file:// storage URI (the session's search was given one) keeps the experiment in that folder.
    storage = json.loads((folder / "settings.json").read_text())["storage"]
    assert storage.startswith("file://") and folder == Path(storage[len("file://"):]) / "exp"
    table, history = analysis.load(folder), analysis.curves(folder)
    assert len(table) == 8 and set(history["trial_id"]) == set(table["trial_id"])
    assert len(history) == table["epochs_trained"].sum()


def test_no_trial_over_the_budget_ran(finished_search):
    rows = rows_of(finished_search.folder)
    for row in rows:
        config = {"blocks": row.config["blocks"], "widths": row.config["widths"]}
        assert row.params == count_params(config) < BUDGET
    assert finished_search.rejected > 0


def test_optuna_study_matches_the_trials(finished_search):
    folder = finished_search.folder
    study = load_study(folder)
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in study.trials if "ray_trial_id" in t.user_attrs}
    rows = rows_of(folder)
    assert set(by_ray_id) == {r.trial_id for r in rows}
    for row in rows:
        state = by_ray_id[row.trial_id].state
        expected = optuna.trial.TrialState.COMPLETE if row.status == "completed" else optuna.trial.TrialState.PRUNED
        assert state == expected, row.trial_id
    rejected = [t for t in study.trials if t.user_attrs.get("status") == "rejected"]
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
    # A space that names its widths (version 1 of the built-in one) meets the budget check.
    share = check_space_fits(space_v1, 5_000_000, 10, fixed)
    assert 0 < share < 1  # part of that space is over 5M
    tight = check_space_fits(space_v1, 200_000, 10, fixed)
    assert tight < share  # a tighter budget leaves a smaller share of the space
    with pytest.raises(UserError, match="no config"):
        check_space_fits(space_v1, 10_000, 10, fixed)
    # The built-in space solves its widths into the budget: all of it fits.
    assert check_space_fits(functools.partial(default_space, budget=200_000), 200_000, 10, fixed) == 1.0
    # A space whose configs the trainer would refuse is refused here, before anything starts.
    with pytest.raises(UserError, match="produced a bad config.*optimizer"):
        check_space_fits(lambda trial: {**space_v1(trial), "optimizer": "lion"}, 5_000_000, 10, fixed)


def test_warm_starts_are_the_seed_model_and_a_wrn():
    # WARM_START is in terms of the default horizon (50 epochs): 2 warm-up epochs there.
    seed, wrn = (default_space(optuna.trial.FixedTrial(params), {"epochs": 50}) for params in WARM_START)
    assert seed["blocks"] == [3, 5, 3] and seed["widths"] == [64, 128, 256] and seed["augment_policy"] == "none"
    assert count_params(seed) == 4_918_602
    assert (seed["lr"], seed["weight_decay"], seed["warmup_epochs"]) == pytest.approx((2e-3, 5e-2, 2))
    assert wrn["block"] == "preact" and wrn["augment_policy"] == "trivialaugment" and wrn["cutout"] == 16
    assert (wrn["optimizer"], wrn["batch_size"], wrn["stem_width"]) == ("sgd", 128, 16)
    assert (wrn["lr"], wrn["weight_decay"]) == pytest.approx((0.1, 5e-4))
    assert count_params(wrn) == 2_243_546


def test_set_fixes_keys_and_takes_them_out_of_the_search(ray_session, tmp_path):
    outcome = run_search(settings(tmp_path, None, name="fixed", space=None, trials=2, max_epochs=1,
                                  param_budget=500_000, warm_start=False,
                                  overrides={"augment_policy": "trivialaugment", "cutout": 16}))
    rows = rows_of(outcome.folder)
    assert len(rows) == 2 and {(r.config["augment_policy"], r.config["cutout"]) for r in rows} == {("trivialaugment", 16)}
    saved = json.loads((outcome.folder / "settings.json").read_text())
    assert saved["overrides"] == {"augment_policy": "trivialaugment", "cutout": 16}
    study = load_study(outcome.folder)
    assert all("augment_policy" not in t.params and "cutout" not in t.params for t in study.trials)
    assert any("mixup_alpha" in t.params for t in study.trials)  # the rest is still searched


def test_the_first_space_floor_leaves_room_under_small_budgets():
    from search.tune.budget import LowestSampler

    corner = space_v1(optuna.create_study(sampler=LowestSampler()).ask())
    assert count_params(corner) < 40_000  # the smallest model (it was 138,250 with widths from 32)
    share = check_space_fits(space_v1, 150_000, 10, {"epochs": 1, "seed": 0}, draws=400)
    assert share >= 0.005  # random draws fit under 150,000 too, not only the corner


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
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=1), direction="maximize")
    # Rejection is the safety net for spaces that name their widths (version 1 of the built-in one).
    searcher = BudgetedOptunaSearch(study, storage, space_v1, 3_000_000, 10, {"epochs": 2, "seed": 0}, 2)
    configs = [searcher.suggest(f"t{i}") for i in range(5)]
    assert all(count_params(c) < 3_000_000 for c in configs)
    assert searcher.rejected > 0
    # ASHA's stopping result reaches Optuna through on_trial_complete alone (Ray skips
    # on_trial_result for it): its value must still be recorded.
    searcher.on_trial_complete("t0", result={"epoch": 1, "val_acc": 0.4, "status": "ok"})
    searcher.on_trial_result("t1", {"epoch": 1, "val_acc": 0.3})
    searcher.on_trial_complete("t1", result={"epoch": 2, "val_acc": 0.5, "status": "ok"})
    trials = {t.user_attrs.get("ray_trial_id"): t for t in study.trials}
    assert trials["t0"].intermediate_values == {1: 0.4} and trials["t0"].state == optuna.trial.TrialState.PRUNED
    assert trials["t1"].intermediate_values == {1: 0.3, 2: 0.5} and trials["t1"].value == 0.5


def test_every_epoch_is_an_intermediate_value_in_the_study(finished_search):
    folder = finished_search.folder
    study = load_study(folder)
    history: dict = {}
    for row in read_history(folder):
        history.setdefault(row["trial_id"], {})[row["epoch"]] = row["val_acc"]
    launched = [t for t in study.trials if "ray_trial_id" in t.user_attrs]
    assert len(launched) == 8
    for trial in launched:
        epochs = history[trial.user_attrs["ray_trial_id"]]
        assert trial.intermediate_values == pytest.approx(epochs), trial.number


def test_budgets_are_written_as_people_write_them():
    assert settings_from_args(["--param-budget", "5M"]).param_budget == 5_000_000
    assert settings_from_args(["--param-budget", "500k"]).param_budget == 500_000
    assert settings_from_args(["--param-budget", "1.5M"]).param_budget == 1_500_000
    assert settings_from_args(["--param-budget", "200000"]).param_budget == 200_000


def test_grace_defaults_to_the_horizon_when_shorter():
    settings = settings_from_args(["--max-epochs", "1", "--dataset", "synthetic"])
    check_settings(settings)  # no error: grace follows --max-epochs
    assert settings.grace == 1 and settings_from_args([]).grace == 2
    with pytest.raises(UserError, match="grace"):
        check_settings(settings_from_args(["--max-epochs", "1", "--grace-epochs", "2"]))


def test_resume_takes_the_resources_and_time_budget_it_is_given(finished_search, space_file):
    saved = SearchSettings(name="exp", storage=str(finished_search.folder.parent), resume=True, gpus=0,
                           gpus_per_trial=0.5, cpus_per_trial=2, time_budget="10m", trials=8,
                           extra={"given": ["name", "storage", "resume", "gpus_per_trial", "cpus_per_trial",
                                            "time_budget"]})
    merged = prepare_folder(saved)
    assert (merged.gpus_per_trial, merged.cpus_per_trial, merged.time_budget) == (0.5, 2, "10m")
    assert merged.max_epochs == 3 and merged.space == str(space_file.resolve())
    # Not given: the defaults, not the saved values (a CPU search resumed on a GPU box uses its GPUs).
    assert merged.gpus is None and merged.cpus is None


def test_search_checkpoints_every_second_epoch(finished_search):
    rows = rows_of(finished_search.folder)
    assert len(rows) == 8 and any(r.epochs_trained >= 2 for r in rows)  # the rule below is exercised
    for row in rows:
        # Default --checkpoint-every 2 over a 3-epoch horizon: a checkpoint after epoch 2 only
        # (none after the last epoch, when nothing is left to continue).
        trained = row.epochs_trained
        assert bool(row.checkpoint) == (trained >= 2), row
        if row.checkpoint:
            assert Path(row.checkpoint).name == "checkpoint_000000" and Path(row.checkpoint).is_dir()


@pytest.mark.parametrize("argv,message", [
    (["--grace-epochs", 5, "--max-epochs", 3], "grace"),
    (["--trials", 0], "--trials"),
    (["--dataset", "mnist"], "unknown --dataset"),
    (["--gpus", 64], "GPU"),
    (["--resume", "--name", "ghost"], "nothing to resume"),
    (["--set", "augment_policy=sometimes"], "augment_policy"),
    (["--set", "nokey=1"], "unknown config key"),
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
            finished_before = {r.trial_id: r for r in rows if r.status in ("completed", "stopped")}
            if len(finished_before) >= 2:
                break
        time.sleep(0.5)
    assert proc.poll() is None, "the search ended before it could be interrupted:\n" + proc.stdout.read()
    running = analysis.load(folder)  # a live experiment loads, mid-write, without Ray
    assert len(running) >= 2 and set(running["status"]) <= {"completed", "stopped", "running"}
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    # Ctrl-C ends with this tool's advice, not Ray's (Tuner.restore is not how a search resumes).
    assert "Tuner.restore" not in out and f"continue with --resume --name cut --storage {tmp_path}" in out, out
    interrupted = rows_of(folder)
    assert len({r.trial_id for r in interrupted if r.status in ("completed", "stopped")}) < 6

    outcome = run_search(settings(tmp_path, space_file, name="cut", resume=True, trials=6))
    check_resumed(folder, finished_before, trials=6)
    study = load_study(folder)
    launched = [t for t in study.trials if "ray_trial_id" in t.user_attrs]
    assert len(launched) == 6
    assert outcome.counts.get("completed", 0) + outcome.counts.get("stopped", 0) == 6


class TrialThatDeletesTheDataFirst(SearchTrial):
    """The real trial, after removing the data folder the driver loaded: no trial may need it."""

    def setup(self, config, data, spec, options):
        import shutil

        shutil.rmtree(spec.data_dir, ignore_errors=True)
        super().setup(config, data, spec, options)


def test_trials_get_the_data_from_the_driver_not_the_disk(ray_session, space_file, tmp_path, monkeypatch):
    from ray import cloudpickle
    from test_data import write_folder

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setenv("BUDGETNAS_CACHE", str(tmp_path / "cache"))
    write_folder(tmp_path / "images", sizes=((16, 16),), per_class=20)
    outcome = run_search(settings(tmp_path, space_file, name="gone", trials=3, max_epochs=2, dataset="imagefolder",
                                  data_dir=str(tmp_path / "images"), subset=None),
                         trial_cls=TrialThatDeletesTheDataFirst)
    assert not (tmp_path / "images").exists()
    rows = rows_of(outcome.folder)
    assert len(rows) == 3 and all(r.status in ("completed", "stopped") for r in rows), rows


def test_a_resume_that_changes_what_is_searched_names_the_old_and_new_values(finished_search):
    changed = SearchSettings(name="exp", storage=str(finished_search.folder.parent), resume=True, max_epochs=5,
                             param_budget=30_000, extra={"given": ["name", "storage", "resume", "max_epochs",
                                                                   "param_budget"]})
    with pytest.raises(UserError) as error:
        prepare_folder(changed)
    assert "--max-epochs 3 -> 5" in str(error.value) and "--param-budget 20000 -> 30000" in str(error.value)


def test_a_retrain_says_how_many_images_it_trains_on_and_what_the_search_used(finished_search, tmp_path, cli):
    from search.retrain import main as retrain_main

    code, out, err = cli(retrain_main, [finished_search.folder, "--epochs", "1", "--out", tmp_path / "all"])
    assert code == 0, err
    assert "the search used --subset 400; pass --subset 400 to retrain on as many" in out
    code, out, err = cli(retrain_main, [finished_search.folder, "--epochs", "1", "--subset", "400",
                                        "--out", tmp_path / "same"])
    assert code == 0, err
    assert "training images: 400 (train + val)\n" in out
