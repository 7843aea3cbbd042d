"""Resume and records that hold anywhere: the folder, the rungs, the deadline, both ledgers."""

import json
import os
import shutil
import time
import types

import optuna
import pytest

import analysis
from conftest import ray_trial, result_stream, rows_of, settings
from search.tune.experiment import TrialTable
from ray.tune.search import Searcher

from search.records import load_study, ran_seconds, read_drivers, read_history
from search.run import run_search
from search.settings import check_same_data, data_hash, prepare_folder
from search.tune.rungs import RungScheduler
from search.tune.searcher import BudgetedOptunaSearch
from search.tune.space_files import load_space
from trainable.data import TrainArrays, make_synthetic
from trainable.errors import UserError

SLOW_SPACE = '''
def space(trial):
    return {"blocks": [1, 1], "widths": [16, 32], "batch_size": 32, "warmup_epochs": 0,
            "lr": trial.suggest_float("lr", 1e-3, 1e-2, log=True)}
'''


# ----------------------------------------------------------------------------- the folder
def test_a_resume_from_another_folder_continues_the_experiment_it_names(finished_search, space_file, tmp_path,
                                                                        monkeypatch):
    # Copied, renamed, and resumed from another folder by a relative path: it resumes in
    # place, with the same Optuna study, and writes nothing where the command ran.
    moved = tmp_path / "elsewhere" / "e2"
    shutil.copytree(finished_search.folder, moved)
    before = len(rows_of(moved))
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    outcome = run_search(settings("../elsewhere", space_file, name="e2", trials=before + 2, resume=True))
    assert list(here.iterdir()) == []
    assert outcome.folder == moved.resolve()
    assert len(rows_of(moved)) == before + 2 and outcome.complete
    assert len(rows_of(finished_search.folder)) == before  # the original is left as it was
    storage = optuna.storages.RDBStorage(f"sqlite:///{moved / 'optuna.db'}")
    assert optuna.get_all_study_names(storage) == ["exp"]
    launched = [t for t in load_study(moved).trials if "ray_trial_id" in t.user_attrs]
    assert len(launched) == before + 2


def test_settings_hold_absolute_paths_and_a_changed_space_file_is_refused(finished_search, space_file, tmp_path,
                                                                           monkeypatch):
    saved = json.loads((finished_search.folder / "settings.json").read_text())
    assert saved["space"] == str(space_file.resolve()) and saved["space_hash"] and saved["data_hash"]
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(finished_search.folder, copy / "exp")
    space = tmp_path / "space.py"
    space.write_text(space_file.read_text())
    moved = json.loads((copy / "exp" / "settings.json").read_text())
    (copy / "exp" / "settings.json").write_text(json.dumps({**moved, "space": str(space)}))
    resumed = prepare_folder(settings(str(copy), space, name="exp", resume=True))
    assert resumed.folder == copy / "exp"
    space.write_text(space_file.read_text() + "\n# edited\n")
    with pytest.raises(UserError, match="space"):
        prepare_folder(settings(str(copy), space, name="exp", resume=True))
    space.unlink()
    with pytest.raises(UserError, match="gone"):
        prepare_folder(settings(str(copy), space, name="exp", resume=True))


def test_a_resume_removes_the_temp_files_of_writes_killed_with_the_search(finished_search, space_file, tmp_path):
    """Temp files of writes killed with the search (older than this process's writer) go on a
    resume, in its trial folders too; a newer one may be this process's own write in flight."""
    from trainable.checkpoint import PROCESS_STARTED

    folder = tmp_path / "exp"
    shutil.copytree(finished_search.folder, folder)
    trial = next(p for p in folder.iterdir() if p.is_dir())
    stale = [folder / ".trials.csv.abcd_123.tmp", trial / ".checkpoint.pt.zz9yx8w7.tmp"]
    live = folder / ".best.json.n0w_writ.tmp"
    for path in stale + [live]:
        path.write_text("half")
    for path in stale:
        os.utime(path, (PROCESS_STARTED - 60, PROCESS_STARTED - 60))
    before = {p for p in folder.rglob("*") if p not in stale}
    prepare_folder(settings(tmp_path, space_file, name="exp", resume=True))
    assert {p for p in folder.rglob("*")} == before  # the stale two gone, nothing else


def test_a_dataset_that_changed_is_refused_on_resume(tmp_path):
    data = TrainArrays.of(make_synthetic(n_train=100, n_test=10))
    resumed = settings(tmp_path, tmp_path / "space.py", resume=True)
    resumed.extra["data_hash"] = data_hash(data)
    assert check_same_data(resumed, data) == data_hash(data)
    changed = TrainArrays(data.images.copy(), data.labels, data.classes)
    changed.images[0, 0, 0, 0] ^= 1  # one pixel of one image
    with pytest.raises(UserError, match="dataset"):
        check_same_data(resumed, changed)


# ----------------------------------------------------------------------------- the rungs
def _trial(trial_id, continues=None):
    return ray_trial(trial_id, continues=continues)


@pytest.mark.parametrize("seed,grace,horizon,factor", [(0, 1, 9, 3), (1, 1, 9, 3), (2, 2, 20, 3), (3, 1, 12, 2),
                                                       (4, 1, 27, 3)])
def test_rungs_decide_as_rays_asha_does(seed, grace, horizon, factor):
    from ray.tune.schedulers import ASHAScheduler

    ray_asha = ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=horizon, grace_period=grace,
                             reduction_factor=factor)
    ours = RungScheduler(horizon, grace, factor)
    stopped: set = set()
    agree = 0
    for trial_id, _, epoch, value in result_stream(seed, horizon=horizon):
        if trial_id in stopped:
            continue
        trial = _trial(trial_id)
        if epoch == 1:
            ray_asha.on_trial_add(None, trial)
        result = {"epoch": epoch, "val_acc": value}
        theirs = ray_asha.on_trial_result(None, trial, result)
        assert ours.on_trial_result(None, trial, result) == theirs, (trial_id, epoch)
        agree += 1
        if theirs == "STOP":
            stopped.add(trial_id)
    assert agree > 30 and len(stopped) > 3  # the stream really exercised the rungs


@pytest.mark.parametrize("seed", [0, 1])
def test_rungs_after_a_resume_decide_as_an_uninterrupted_run(seed):
    from ray.tune.schedulers import ASHAScheduler

    # The uninterrupted run, with Ray's ASHA as the reference.
    stream = result_stream(seed)
    reference = ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=9, grace_period=1,
                              reduction_factor=3)
    expected, done = [], set()
    for trial_id, _, epoch, value in stream:
        if trial_id in done:
            continue
        if epoch == 1:
            reference.on_trial_add(None, _trial(trial_id))
        decision = reference.on_trial_result(None, _trial(trial_id), {"epoch": epoch, "val_acc": value})
        expected.append((trial_id, decision))
        if decision == "STOP":
            done.add(trial_id)
    # The same results, with the driver stopped halfway: the first half's records are what
    # history.csv holds, and the continued trials come back under new Ray ids at epoch k+1.
    half = len(stream) // 2
    first = RungScheduler(9, 1, 3)
    decisions, history, stopped = [], [], set()
    for trial_id, _, epoch, value in stream[:half]:
        if trial_id in stopped:
            continue
        decision = first.on_trial_result(None, _trial(trial_id), {"epoch": epoch, "val_acc": value})
        decisions.append((trial_id, decision))
        history.append({"trial_id": trial_id, "epoch": epoch, "val_acc": value, "status": "ok"})
        if decision == "STOP":
            stopped.add(trial_id)
    second = RungScheduler(9, 1, 3).from_history(history)
    for trial_id, _, epoch, value in stream[half:]:
        if trial_id in stopped:
            continue
        decision = second.on_trial_result(None, _trial("new-" + trial_id, continues=trial_id),
                                          {"epoch": epoch, "val_acc": value})
        decisions.append((trial_id, decision))
        if decision == "STOP":
            stopped.add(trial_id)
    assert decisions == expected
    assert sum(d == "STOP" for _, d in decisions[len(decisions) // 2:]) >= 1  # stops happened after the resume


# ----------------------------------------------------------------------------- the deadline
def test_a_deadline_ends_the_search_gracefully_and_a_resume_continues_its_cut_trials(finished_search, tmp_path):
    # finished_search: this process's first search pays one-off imports (Tune's tracker
    # integrations, torch._dynamo for the MAC counts: 3-4 s here) that would come out of the
    # 12 s below and leave the trials no time for an epoch; in the suite it is already built.
    space = tmp_path / "slow_space.py"
    space.write_text(SLOW_SPACE)
    args = dict(name="deadline", trials=2, max_epochs=8, scheduler="fifo", param_budget=10**6, subset=1600,
                checkpoint_every=1)
    start = time.time()
    first = run_search(settings(tmp_path, space, time_budget="12s", **args))
    # The budget counts from the call (data and Tune's set-up take from it) and the trials stop
    # one epoch before its end; 2 s is for Tune to end its workers. (Tune's own time_budget_s
    # starts after its set-up and lets running epochs finish: 3-4 s over a 10 s budget here.)
    assert time.time() - start < 12 + 2
    rows = {r.trial_id: r for r in rows_of(first.folder)}
    cut = [r for r in rows.values() if r.status == "cut"]
    # On a slow machine a trial on a cold worker is cut before its first report (no epochs):
    # it has nothing to continue, but at least one cut trial must have trained some.
    before = {r.trial_id: r.epochs_trained for r in cut}
    assert cut and all(epochs < 8 for epochs in before.values()) and max(before.values()) > 0, rows
    assert "cut by the time budget" in first.summary and not first.counts.get("stopped")
    # A deadline is an ending the user asked for: the run is complete, with its best on record.
    assert first.complete and (first.folder / "best.json").is_file() and "stopped at its time budget" in first.summary

    time.sleep(3)  # the driver is down for a while before the resume
    # A resume runs for the budget it is given, counted from the resume: not the first run's
    # 12 s, and not nothing (the cut trials remain).
    short = run_search(settings(tmp_path, space, resume=True, time_budget="6s", **args))
    assert 5 < short.wall_seconds < 6 + 2.5, short.wall_seconds  # 8.04 s once, on a busy machine
    second = run_search(settings(tmp_path, space, resume=True, **args))
    after = {r.trial_id: r for r in rows_of(second.folder)}
    assert set(after) == set(rows)  # the same trials, no new ones
    assert all(r.status == "completed" and r.epochs_trained == 8 for r in after.values())
    history = analysis.curves(second.folder)
    for trial_id, epochs_before in before.items():
        epochs = history.loc[history["trial_id"] == trial_id, "epoch"].tolist()
        assert sorted(set(epochs)) == list(range(1, 9))
        assert epochs.count(1) == 1, f"the cut trial started over: {epochs}"
    study = load_study(second.folder)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    # The time the search ran is the driver runs, not the pause between the first two.
    drivers = read_drivers(second.folder)
    assert len(drivers) >= 2
    span = max(h["wall_time"] for h in read_history(second.folder)) - drivers[0]["started"]
    assert ran_seconds(second.folder) < span - 2.5


# ----------------------------------------------------------------------------- both ledgers
def test_a_row_the_table_never_closed_is_settled_from_optuna(finished_search, space_file, tmp_path):
    folder = tmp_path / "exp"
    shutil.copytree(finished_search.folder, folder)
    text = (folder / "trials.csv").read_text()
    rows = rows_of(folder)
    phantom = next(r for r in rows if r.status == "stopped")
    # A driver killed after Ray told the searcher and before it told the table.
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(phantom.trial_id + ","))
    lines[index] = lines[index].replace(",stopped,", ",running,", 1)
    (folder / "trials.csv").write_text("\n".join(lines) + "\n")
    outcome = run_search(settings(tmp_path, space_file, name="exp", trials=8, resume=True))
    after = {r.trial_id: r for r in rows_of(folder)}
    assert len(after) == 8 and after[phantom.trial_id].status == "stopped"
    study = load_study(folder)
    assert len([t for t in study.trials if "ray_trial_id" in t.user_attrs]) == 8  # no trial launched
    assert outcome.complete


def test_the_searcher_saves_what_it_has_pending_and_whether_it_is_exhausted(tmp_path):
    space, _ = load_space(str(_space_file(tmp_path)))
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    study = optuna.create_study(storage=storage, direction="maximize")
    searcher = BudgetedOptunaSearch(study, storage, space, 10**6, 10, {"epochs": 3, "seed": 0}, 3)
    searcher.suggest("a")
    searcher.pending.append((0, "a", "/somewhere/checkpoint"))
    searcher.exhausted = True
    searcher.save(str(tmp_path / "state.pkl"))
    again = BudgetedOptunaSearch(study, storage, space, 10**6, 10, {"epochs": 3, "seed": 0}, 3)
    again.restore(str(tmp_path / "state.pkl"))
    assert again.pending == [(0, "a", "/somewhere/checkpoint")] and again.exhausted
    assert again.numbers == {"a": 0} and again.suggest("b") == Searcher.FINISHED


def _space_file(tmp_path):
    path = tmp_path / "space.py"
    path.write_text(SLOW_SPACE)
    return path


def test_an_epoch_trained_again_keeps_its_newest_figures_everywhere(tmp_path):
    space, _ = load_space(str(_space_file(tmp_path)))
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    study = optuna.create_study(storage=storage, direction="maximize")
    searcher = BudgetedOptunaSearch(study, storage, space, 10**6, 10, {"epochs": 4, "seed": 0}, 4)
    config = searcher.suggest("r1")
    table = TrialTable(tmp_path, 0.0, 4)
    first = types.SimpleNamespace(trial_id="r1", config=config)
    for epoch, value in [(1, 0.3), (2, 0.6), (3, 0.5)]:
        result = {"epoch": epoch, "val_acc": value, "time_total_s": float(epoch), "params": 1}
        table.on_trial_result(0, [], first, result)
        searcher.on_trial_result("r1", result)
    assert table.rows["r1"].best_val_acc == 0.6
    # The driver stopped; the trial continues from its epoch-1 checkpoint under a new Ray id
    # and trains epochs 2 and 3 again, worse this time.
    searcher.pending.append((searcher.numbers.pop("r1"), "r1", None))
    table = TrialTable(tmp_path, 0.0, 4)
    again = types.SimpleNamespace(trial_id="r2", config={**searcher.suggest("r2")})
    for epoch, value in [(2, 0.4), (3, 0.45)]:
        result = {"epoch": epoch, "val_acc": value, "time_total_s": float(epoch), "params": 1}
        table.on_trial_result(0, [], again, result)
        searcher.on_trial_result("r2", result)
    newest = {1: 0.3, 2: 0.4, 3: 0.45}
    assert {h["epoch"]: h["val_acc"] for h in read_history(tmp_path)} == newest
    assert study.trials[0].intermediate_values == newest
    row = table.rows["r1"]
    assert (row.best_val_acc, row.best_epoch) == (0.45, 3)
    assert table.best()["val_acc"] == 0.45 and table.best()["metrics"]["epoch"] == 3
