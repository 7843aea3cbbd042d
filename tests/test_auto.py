"""search.auto: one command from data to submission under one deadline, resumable in every stage."""

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest

from conftest import BUDGET, kill_when, rows_of, wait_until
from trainable.model import count_params

TOY = ["--gpus", "0", "--dataset", "synthetic", "--subset", "400", "--max-epochs", "2", "--grace-epochs", "1",
       "--reduction-factor", "2", "--param-budget", str(BUDGET), "--confirm", "2", "--verbose", "0",
       "--shares", "0.3,0.45,0.22,0.03"]
# The confirm stage gets the largest share: it starts Tune and its trial workers anew (3-5 s
# before a first epoch here, more on a busy machine) and then trains three configs to twice
# the search's horizon; with less it is skipped as too short. 50 s: a search resumed after a
# kill starts Tune and its workers again, and on a slow day here that took its 12 s share to
# 18 s and left the confirm stage too little to run (at a 40 s deadline).
DEADLINE = 50


def unlabelled(path: Path) -> Path:
    np.save(path, np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8))
    return path


def files_of(folder: Path) -> set:
    """The experiment's files by name, less Ray's own run-* folders (named by the clock) and
    TensorBoard's event files (named by trial id, clock and process)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
            and not any(part.startswith("run-") or part == "tensorboard" for part in p.relative_to(folder).parts)}


# What a whole run writes, less Ray's run-* folders and TensorBoard's event files (named by
# the clock): a run killed and resumed in every stage must end with these files and no others.
WHOLE_RUN_FILES = {
    "auto.json", "best.json", "confirm_candidates.json", "drivers.json", "history.csv", "optuna.db",
    "settings.json", "trials.csv",
    *(f"confirm/{name}" for name in ("best.json", "drivers.json", "history.csv", "optuna.db", "settings.json",
                                     "trials.csv")),
    *(f"final/{name}" for name in ("checkpoint.pt", "config.json", "curves.png", "metrics.json", "model.json",
                                   "summary.txt", "weights.pt", "weights_ema.pt")),
}


def check_a_whole_run(folder: Path, tmp: Path) -> None:
    """What every finished run must hold: four stages done, the confirm stage's comparison,
    the submission, the report and the notebook API's summary of it."""
    record = json.loads((folder / "auto.json").read_text())
    assert [record["stages"][s]["status"] for s in ("search", "confirm", "retrain", "predict")] == ["done"] * 4
    assert all(record["stages"][s]["planned_s"] > 0 and "used_s" in record["stages"][s] for s in record["stages"])
    # Without --trials the search is ended by its time, not by the default 50 trials.
    assert json.loads((folder / "settings.json").read_text())["trials"] >= 2 * record["plan"]["expected_trials"]
    confirm = record["stages"]["confirm"]
    # The search's top 2 (1 where the epoch times the search measured leave room for one) and
    # the fixed recipe (scaled into the budget) compete at length.
    from search.confirm import noise_margin, ranked_configs

    ranking = [trial_id for trial_id, _, _ in ranked_configs(rows_of(folder))]
    assert 1 <= len(confirm["search_order"]) <= 2 and confirm["search_order"] == ranking[:len(confirm["search_order"])]
    assert sorted(confirm["confirm_order"]) == sorted(confirm["search_order"] + ["recipe"])
    # Each confirm trial (an id of its own in confirm/trials.csv) maps back to what it trained again.
    confirm_rows = {r.trial_id for r in rows_of(folder / "confirm")}
    assert set(confirm["confirm_trial_ids"]) == confirm_rows
    assert sorted(confirm["confirm_trial_ids"].values()) == sorted(confirm["confirm_order"])
    assert confirm["configs"]["recipe"]["augment_policy"] == "trivialaugment"
    # The recipe stays first unless the confirmed first beats it by more than the noise of the
    # validation set (40 images here: the split of --subset 400).
    val, first = confirm["confirm_val_acc"], confirm["confirm_order"][0]
    if "recipe" in val:
        assert confirm["noise_margin"] == pytest.approx(noise_margin(val["recipe"], 40))
        assert first == "recipe" or val[first] - val["recipe"] > confirm["noise_margin"]
    else:  # the recipe was cut before the horizon: only the runs that reached it are ranked
        assert confirm["noise_margin"] is None and "recipe" not in confirm["confirm_ended"]
        assert confirm["confirm_order"][-1] == "recipe" and set(val) == set(confirm["confirm_ended"])
    retrained = record["stages"]["retrain"]
    assert retrained["trial_id"] == confirm["confirm_order"][0] and 1 <= retrained["epochs"] <= 300
    rows = (tmp / "submission.csv").read_text().splitlines()
    assert rows[0] == "ID,Labels" and len(rows) == 41
    # The report is the user's next command (search never imports analysis), and reads auto.json.
    from analysis.report import main as report_main
    from search.auto import summary

    assert f"python -m analysis.report {folder}" in summary(record, folder)
    assert not (folder / "report").exists()
    assert report_main([str(folder), "--out", str(tmp / "report")]) == 0  # the experiment's files stay as they were
    report = (tmp / "report" / "report.md").read_text()
    assert "## Stages (search.auto)" in report
    if retrained["trial_id"] != "recipe":  # the report's "best" is the model that was submitted
        assert f"Submitted model (trial {retrained['trial_id']})" in report
    # The notebook API's result prints as a short summary, not as a dump of the record.
    from search.api import AutoResult

    result = AutoResult(folder, tmp / "submission.csv", retrained["trial_id"], retrained.get("test_acc_ema_mean"),
                        record)
    text = repr(result)
    assert "\n" not in text and len(text) < 300 and "40 rows" in text and "test acc" in text
    # The confirm stage is an experiment of its own, read like any other.
    import analysis

    assert len(analysis.load(folder / "confirm")) == len(confirm["confirm_order"])


@pytest.mark.parametrize("argv,message", [
    (["--time-budget", "5s"], "too short"),
    (["--input", "missing.pkl"], "does not exist"),
    (["--out", "no/such/folder/sub.csv"], "does not exist"),
    (["--time-budget", None], "--time-budget is required"),
])
def test_auto_refuses_bad_input_before_anything_runs(tmp_path, cli, argv, message, monkeypatch, space_file):
    from search.auto import main

    monkeypatch.chdir(tmp_path)
    unlabelled(tmp_path / "test.npy")
    base = {"--time-budget": "60s", "--input": "test.npy", "--out": "sub.csv"}
    flags = dict(zip(argv[::2], argv[1::2]))
    given = [x for k, v in {**base, **flags}.items() if v is not None for x in (k, v)]
    args = TOY + ["--name", "bad", "--space", space_file] + given
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = cli(main, args)
    assert code == 2 and err.startswith("error:") and message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_auto_dry_run_prints_the_plan_only(tmp_path, cli, monkeypatch, space_file):
    from search.auto import main

    monkeypatch.chdir(tmp_path)
    unlabelled(tmp_path / "test.npy")
    code, out, _ = cli(main, TOY + ["--name", "plan", "--space", space_file, "--time-budget", "2h", "--input", "test.npy",
                                    "--dry-run"])
    assert code == 0
    for stage in ("search", "confirm", "retrain", "predict"):
        assert stage in out
    assert "trials" in out and "epochs" in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # runs against a clock
def test_every_seed_diverging_falls_back_to_the_next_confirmed_config(tmp_path):
    import torch

    from search.auto import Record, stage_retrain
    from search.settings import SearchSettings

    s = SearchSettings(name="fallback", storage=str(tmp_path), gpus=0, dataset="synthetic", subset=200,
                       max_epochs=2)
    s.folder.mkdir(parents=True)
    configs = {"wild": {"blocks": [1, 1], "widths": [8, 16], "optimizer": "sgd", "lr": 1e12, "seed": 0,
                        "epochs": 2, "batch_size": 32},
               "tame": {"blocks": [1, 1], "widths": [8, 16], "lr": 3e-3, "seed": 0, "epochs": 2, "batch_size": 32}}
    record = Record(s.folder, {"stages": {}, "running": None}, time.time(), 0.0)
    images = torch.zeros(40, 3, 32, 32, dtype=torch.uint8)
    try:
        result = stage_retrain(s, 8.0, ["wild", "tame"], configs, 1, False, record, images, 10)
    finally:
        record.close()
    assert result["trial_id"] == "tame"
    assert [t["status"] for t in result["tried"]] == ["diverged", "ok"]


def _running(folder: Path, stage: str) -> bool:
    """auto.json says `stage` is running (a search that has begun its trials)."""
    path = folder / "auto.json"
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        record = {}
    return record.get("running") == stage and (stage != "search" or (folder / "history.csv").is_file())


def test_auto_resumes_after_a_kill_in_each_stage_and_ends_as_a_whole_run(ray_session, space_file, tmp_path):
    """Killed as each of search, confirm and retrain begins, then resumed: the fourth run ends
    with a whole run's files and results, and its summary counts all four runs' time."""
    args = [sys.executable, "-m", "search.auto", "--address", ray_session.address] + TOY + [
        "--space", str(space_file), "--storage", str(tmp_path / "runs"), "--name", "whole",
        "--time-budget", f"{DEADLINE}s", "--input", str(unlabelled(tmp_path / "test.npy")),
        "--out", str(tmp_path / "submission.csv")]
    folder = tmp_path / "runs" / "whole"
    resume: list = []
    walls = []
    for stage in ("search", "confirm", "retrain"):
        log = tmp_path / f"before-{stage}.log"
        start = time.time()
        with open(log, "w") as handle:
            proc = subprocess.Popen(args + resume, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            kill_when(proc, lambda: _running(folder, stage), what=f"stage {stage}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text()[-3000:]}") from None
        walls.append(time.time() - start)
        resume = ["--resume"]
    # What a write killed with a run leaves (a kill as the confirm stage began left
    # `.confirm_candidates.json.XXXXXXXX.tmp` once): a resume removes it, so the run ends with
    # a whole run's files. The kills come between stages, when only the killed driver writes.
    planted = [folder / ".auto.json.k1ll3d_a.tmp", folder / "confirm" / ".trials.csv.k1ll3d_b.tmp"]
    for path in planted:
        path.parent.mkdir(exist_ok=True)
        path.write_text("half")
    start = time.time()
    done = subprocess.run(args + resume, capture_output=True, text=True, timeout=300)
    walls.append(time.time() - start)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "submission:" in done.stdout
    record = json.loads((folder / "auto.json").read_text())
    assert files_of(folder) == WHOLE_RUN_FILES
    # Every run is counted: a killed one up to its last heartbeat (2 s), and the summary's
    # total is their sum, not the last run's time.
    runs = record["runs"]
    assert len(runs) == 4
    for run, wall in zip(runs, walls):
        assert wall - 4 <= run["wall_s"] <= wall + 0.5, (runs, walls)
    total = sum(run["wall_s"] for run in runs)
    assert total >= sum(walls) - 4 * len(walls)
    assert f"done in {total / 60:.1f} min over 4 runs" in done.stdout
    # What the runs printed is this tool's, not Tune's notices about its own state files.
    printed = done.stdout + "".join((tmp_path / f"before-{stage}.log").read_text() for stage in ("confirm", "retrain"))
    assert "Experiment state snapshotting" not in printed
    # The stages' time over all runs stays within the deadline that the runs shared.
    assert sum(st["used_s"] for st in record["stages"].values()) <= DEADLINE * 1.05
    check_a_whole_run(folder, tmp_path)


def test_auto_holds_its_deadline_when_the_machine_slows_down_midway(ray_session, space_file, tmp_path, cpu_hogs):
    """Two CPU-bound processes (real ones) start midway through the search stage and run to
    the end: the command still ends within its deadline + 5%, start-up excluded."""
    # 50 s: under this load the command's last seconds (the retrain's last steps, the
    # prediction, the exit) run late by a fraction of a second since the commands let idle
    # threads sleep (at 60 s: 59.8 to 60.3 s after start-up, in four runs here; at 50 s: 50.3 s,
    # the confirm stage skipped); before, by up to 4.4 s past a 40 s deadline. 5% of 50 s is 2.5 s.
    deadline = 50
    # --shares: a search plan whatever this machine's speed, with about the plan's own half for
    # the retrain. A Ray stage ends late by what Tune waits for its trial workers to stop: up
    # to 15 s for a worker still starting up, under this load (a confirm stage's new workers
    # at nice 15 import torch at a few percent of a core); the retrain absorbs that.
    args = [sys.executable, "-m", "search.auto", "--address", ray_session.address] + TOY[:-2] + [
        "--shares", "0.3,0.15,0.52,0.03",
        "--space", str(space_file), "--storage", str(tmp_path / "runs"), "--name", "busy",
        "--time-budget", f"{deadline}s", "--input", str(unlabelled(tmp_path / "test.npy")),
        "--out", str(tmp_path / "submission.csv")]
    folder = tmp_path / "runs" / "busy"
    start = time.time()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_until(proc, lambda: _running(folder, "search"), what="the search stage")
    cpu_hogs.start()  # the search has its first results: midway through it
    out, _ = proc.communicate(timeout=300)
    wall = time.time() - start
    assert proc.returncode == 0, out[-3000:]
    record = json.loads((folder / "auto.json").read_text())
    startup = record["runs"][0]["startup_s"]
    used = {name: (st.get("planned_s"), st.get("used_s")) for name, st in record["stages"].items()}
    assert wall - startup <= deadline * 1.05, (wall, startup, used, out[-2000:])
    assert sum(st["used_s"] for st in record["stages"].values()) <= deadline * 1.05
    assert record["stages"]["predict"]["rows"] == 40
    # Trials the deadline cut before their first report (common under this load) are in the
    # trial table; Tune's warning that it found no metrics for them is not shown.
    assert "Failed to fetch metrics" not in out, out[-2000:]
    assert "Experiment state snapshotting" not in out, out[-2000:]  # Tune's notice about its own files


@pytest.mark.slow  # runs against a clock
def test_the_predict_share_is_planned_from_the_input(tmp_path, space_file):
    """A dry run times a prediction of the real input: 10,000 images get about 250 times the
    predict time of 40, and the plan keeps that time for the predict stage."""
    from search.auto import options_from_parsed, build_auto_parser, run_auto
    from search.plan import PREDICT_MARGIN

    def plan_for(images: int) -> dict:
        path = tmp_path / f"in{images}.npy"
        np.save(path, np.random.default_rng(0).integers(0, 256, (images, 32, 32, 3), dtype=np.uint8))
        argv = TOY[:-2] + ["--name", f"p{images}", "--storage", tmp_path / "runs", "--time-budget", "20m",
                      "--space", space_file, "--input", path, "--out", tmp_path / "sub.csv", "--dry-run"]
        s, a = options_from_parsed(vars(build_auto_parser().parse_args([str(x) for x in argv])))
        return run_auto(s, a)["plan"]

    small, large = plan_for(40), plan_for(10_000)
    assert large["predict_s_estimate"] > 50 * small["predict_s_estimate"], (small, large)
    assert large["seconds"]["predict"] >= PREDICT_MARGIN * large["predict_s_estimate"]
    assert large["seconds"]["predict"] > small["seconds"]["predict"] + large["predict_s_estimate"]


def plan_settings(**flags):
    from search.auto import AutoSettings
    from search.settings import SearchSettings

    given = sorted(flags)
    return SearchSettings(name="p", extra={"given": given}, **flags), AutoSettings()


def test_a_short_deadline_trains_the_fixed_recipe_and_a_long_one_searches():
    """The plan from measured times: under SEARCH_PAYS_EPOCHS epochs of the middle config in the
    deadline there is no search; above it the retrain still keeps half the time, or what its
    capped epochs use."""
    from search.plan import SEARCH_PAYS_EPOCHS, make_plan

    s, a = plan_settings()
    epoch_s = 5.0  # a middle config's epoch here (3,000 images on 2 cores)
    short = make_plan(s, a, 6 * 60, 2, epoch_s, 0, predict_s=20, retrain_epoch_s=3.0)
    assert short.mode == "recipe" and short.seconds["search"] == 0 and short.seconds["retrain"] > 0.8 * 360
    assert "no search" in short.describe()
    # The retrain's epochs are capped (MAX_RETRAIN_EPOCHS): a plan that holds more says it ends early.
    assert "about 300 epochs; the cap, so it ends early" in replace(short, retrain_epochs_estimate=464).describe()
    assert "about 100 epochs)" in replace(short, retrain_epochs_estimate=100).describe()
    # The plan knows from what deadline a search would run here (the summary says so).
    assert short.search_from_s > 6 * 60
    assert make_plan(s, a, short.search_from_s + 1, 2, epoch_s, 0, predict_s=20, retrain_epoch_s=3.0).mode == "search"
    long = make_plan(s, a, 60 * 60, 2, epoch_s, 0, predict_s=20, retrain_epoch_s=3.0)
    assert long.mode == "search" and 3600 / 3.0 > SEARCH_PAYS_EPOCHS
    from search.plan import MAX_RETRAIN_EPOCHS, WINNER_SLOWDOWN

    capped = MAX_RETRAIN_EPOCHS * 3.0 / (1 - s.val_fraction) * WINNER_SLOWDOWN  # what the retrain can use
    assert long.seconds["retrain"] >= min(0.49 * (3600 - long.seconds["predict"]), capped - 1)
    assert long.expected_trials >= 20 and long.max_epochs <= s.max_epochs
    assert abs(sum(long.seconds.values()) - 3600) < 1
    # A confirm stage runs its candidates to the end of a horizon longer than the search's.
    assert long.confirm_epochs > long.max_epochs


def test_the_retrain_gets_no_more_time_than_its_capped_epochs_use(monkeypatch):
    """A retrain capped at MAX_RETRAIN_EPOCHS would end early on half of a long deadline: its
    share is what the cap uses (with room for a slower winner), and the search and the confirm
    stage get the rest in their own proportions; so a search starts at a shorter deadline."""
    import search.plan as plan

    s, a = plan_settings()
    train_val = 1 / (1 - s.val_fraction)

    def make(minutes: float, retrain_epoch_s: float = 1.0, epoch_s: float = 4.0):
        return plan.make_plan(s, a, minutes * 60, 2, epoch_s, 0, predict_s=20, retrain_epoch_s=retrain_epoch_s)

    long = make(120)
    capped = plan.MAX_RETRAIN_EPOCHS * 1.0 * train_val * plan.WINNER_SLOWDOWN
    assert long.mode == "search" and "cap" in long.reason, long.describe()
    assert abs(long.seconds["retrain"] - capped) < 1, (long.seconds, capped)
    assert long.seconds["search"] > 2 * long.seconds["confirm"] > 0
    assert abs(sum(long.seconds.values()) - 120 * 60) < 1
    # A slower retrain needs its half: the cap does not bind and nothing is said of it.
    slow = make(120, retrain_epoch_s=8.0)
    assert "cap" not in slow.reason and slow.seconds["retrain"] >= 0.49 * (120 * 60 - slow.seconds["predict"])
    # Trials slow for the retrain's speed (a CPU: 15 s an epoch, 2 at once, against 1 s alone):
    # the search starts at a shorter deadline than it would without the cap's rule (a cap no
    # deadline reaches).
    start = make(120, epoch_s=15.0).search_from_s
    monkeypatch.setattr(plan, "MAX_RETRAIN_EPOCHS", 10**6)
    assert make(120, epoch_s=15.0).search_from_s > 1.2 * start > 0


def _searched(folder, epoch_seconds: dict[str, float], start_s: float | None = None):
    """A search's folder in the real format: one completed trial per id, best first, with its
    epoch times in history.csv; with `start_s`, its run (drivers.json) began that long before
    its first epochs, and each result has its time."""
    from search.records import HistoryLog, Status, TrialRow, record_driver, write_settings, write_trials

    folder.mkdir(parents=True)
    write_settings(folder, {"name": folder.name})
    if start_s is not None:
        record_driver(folder, {"run": "run-1", "started": 1000.0, "last": 1100.0, "gpu_share": 0.0})
    rows, history = [], HistoryLog(folder)
    for rank, (trial_id, seconds) in enumerate(epoch_seconds.items()):
        config = {"blocks": [1, 1, 1], "widths": [8, 16, 32], "lr": 0.01 * (rank + 1)}
        rows.append(TrialRow.of_config(trial_id, config, status=Status.COMPLETED, params=1000 * (3 - rank),
                                       epochs_trained=4, horizon=4, best_val_acc=0.5 - rank / 10, best_epoch=4))
        for epoch in range(1, 5):
            history.append({"trial_id": trial_id, "epoch": epoch, "status": "ok", "val_acc": 0.1 * epoch,
                            "epoch_seconds": seconds,
                            "wall_time": None if start_s is None else 1000.0 + start_s + seconds * epoch})
    write_trials(folder, rows)
    return folder


def test_a_confirm_stage_short_of_time_drops_candidates_then_trusts_the_recipe(tmp_path, monkeypatch, capsys):
    """Benchmark 11 at 30 minutes on 1,000 images: the search's top configs ran slower than the
    plan's estimate, the confirm stage could not run the top 2 and the recipe past the search's
    horizon, skipped, and the retrain trained the search's pick at 16 epochs over the recipe.
    Now the lowest-ranked candidates are left out first (the best against the recipe is the
    comparison that matters); when even that does not fit, --pick best trusts the recipe."""
    from search.confirm import RECIPE_ID, candidates, fitting_candidates, stage_confirm
    from search.settings import SearchSettings

    folder = _searched(tmp_path / "runs" / "s", {"a": 2.0, "b": 1.0, "c": 1.0})
    top = candidates(rows_of(folder), "best", 3, "params")
    assert [t for t, _, _ in top] == ["a", "b", "c"]

    def fit(seconds: float):
        kept, horizon = fitting_candidates(folder, top, [RECIPE_ID], 12, seconds, 2, 1.0, 4)
        return [t for t, _, _ in kept], horizon

    # Two waves of two (2 s, then 1 s an epoch): 100 s run all of them to the confirm horizon.
    assert fit(100) == (["a", "b", "c"], 12)
    # 12 s: 3 epochs for all four, and for three; the best and the recipe, one wave, run 5.
    assert fit(12) == (["a"], 5)
    # 8 s: not even those two pass the search's 4 epochs.
    assert fit(8) == (["a"], 3)
    # The stage pays again what the search paid before its first epoch (Tune's set-up, the
    # workers starting): 4 s here, so 16 s fit what 12 s fit without it.
    from search.confirm import start_seconds
    from search.records import read_history

    late = _searched(tmp_path / "runs" / "late", {"a": 2.0, "b": 1.0, "c": 1.0}, start_s=4.0)
    assert start_seconds(late, read_history(late)) == pytest.approx(4.0)
    assert fitting_candidates(late, top, [RECIPE_ID], 12, 16, 2, 1.0, 4)[1] == fit(12)[1]
    assert fit(43)[1] == 12 and fitting_candidates(late, top, [RECIPE_ID], 12, 43, 2, 1.0, 4)[1] == 11
    # A first run killed before its first result (resumed 500 s later) adds nothing: each run
    # is read within its own span.
    from search.records import DRIVERS, read_drivers
    from trainable.checkpoint import write_json

    write_json(late / DRIVERS, [{"run": "run-0", "started": 500.0, "last": 505.0, "gpu_share": 0.0}]
               + read_drivers(late))
    assert start_seconds(late, read_history(late)) == pytest.approx(4.0)

    monkeypatch.setattr("search.tune.resources.ray_overhead", lambda address: 0.0)  # the skip starts no Ray
    s = SearchSettings(name="s", storage=str(tmp_path / "runs"), max_epochs=4, seed=0)
    recipe = {"blocks": [2, 2, 2], "widths": [16, 32, 64]}
    best = stage_confirm(s, "best", 2, 12, 8, False, recipe, 1.0, 2)
    assert best["skipped"] and best["confirm_order"] == [RECIPE_ID, "a"] and best["pick_changed"]
    assert "skipped" in capsys.readouterr().out
    # A cost-aware pick keeps the search's order, the recipe last.
    knee = stage_confirm(s, "knee", 2, 12, 4, False, recipe, 1.0, 2)
    assert knee["skipped"] and knee["confirm_order"][-1] == RECIPE_ID and knee["confirm_order"][0] != RECIPE_ID
    # A plan saved by an older version without a confirm stage asks for 0 epochs: skipped alike.
    old = stage_confirm(s, "best", 1, 0, 600, False, recipe, 1.0, 2)
    assert old["skipped"] and old["confirm_order"] == [RECIPE_ID, "a"] and RECIPE_ID in old["configs"]
    assert not (folder / "confirm").exists()  # nothing ran
    # The recipe's epoch is the one the search measured where it ran the same config (trial c,
    # 10 s), not the plan's estimate (0.1 s): with it, the best and the recipe reach 5 of the
    # 8 epochs needed (2x the search's 4) in 60 s, so the stage skips instead of starting.
    slow = _searched(tmp_path / "runs" / "twin", {"a": 2.0, "b": 1.0, "c": 10.0})
    twin = stage_confirm(replace(s, name="twin"), "best", 1, 12, 60, False,
                         {"blocks": [1, 1, 1], "widths": [8, 16, 32], "lr": 0.03}, 0.1, 2)
    assert twin["skipped"] and twin["confirm_epochs"] == 5 and not (slow / "confirm").exists()


def test_a_confirmed_lead_within_the_validation_noise_keeps_the_recipe_first():
    """Benchmark 11 at 30 minutes, seed 0: the confirm stage ranked trial f950 first, 0.44
    against the recipe's 0.40 on 200 validation images (8 images), and it lost to the recipe
    by 7.5 points on the test set. Within two standard errors the recipe stays first."""
    from search.confirm import RECIPE_ID, noise_margin, recipe_unless_beaten

    val = {"f950": 0.44, RECIPE_ID: 0.40, "b": 0.38}
    order = ["f950", RECIPE_ID, "b"]
    kept, margin = recipe_unless_beaten(order, val, 200)
    assert kept == [RECIPE_ID, "f950", "b"] and margin == pytest.approx(2 * (0.4 * 0.6 / 200) ** 0.5, rel=0.02)
    # The same lead on 5,000 validation images is past the noise: the candidate stays first.
    assert recipe_unless_beaten(order, val, 5_000) == (order, noise_margin(0.40, 5_000))
    # A clear lead on 200 images stands; the recipe first already, or not confirmed, changes nothing.
    assert recipe_unless_beaten(order, {**val, "f950": 0.55}, 200)[0] == order
    assert recipe_unless_beaten([RECIPE_ID, "f950"], val, 200) == ([RECIPE_ID, "f950"], None)
    assert recipe_unless_beaten(order, {"f950": 0.44}, 200) == (order, None)
    # A recipe at 0 still has a margin: 1 image of 50 right is not a lead to trust.
    assert recipe_unless_beaten(order, {"f950": 0.02, RECIPE_ID: 0.0}, 50)[0][0] == RECIPE_ID
    assert noise_margin(1.0, 50) > 0.04 and noise_margin(0.0, 50) == pytest.approx(noise_margin(1.0, 50))


def test_a_short_deadline_shrinks_the_fixed_recipe_until_it_trains_enough_epochs():
    """The recipe fills the budget when the deadline holds RECIPE_EPOCHS epochs of it; else it
    is halved (not below a quarter of the budget) until it does."""
    from search.plan import MIN_RECIPE_FILL, RECIPE_EPOCHS, sized_recipe
    from trainable.model import count_params
    from trainable.zoo import DEADLINE_RECIPE, fit_to_budget

    timed = []

    def time_epoch(config):  # an epoch's seconds in proportion to the model's size
        timed.append(count_params(config))
        return count_params(config) * 1e-5

    full = fit_to_budget(DEADLINE_RECIPE, 200_000)
    config, epochs = sized_recipe(DEADLINE_RECIPE, 200_000, 300, time_epoch)  # 171 epochs of the full size
    assert config["widths"] == full["widths"] and epochs >= RECIPE_EPOCHS and len(timed) == 1
    config, epochs = sized_recipe(DEADLINE_RECIPE, 200_000, 100, time_epoch)  # 57 epochs of the full size
    assert count_params(config) < 100_000 and epochs >= RECIPE_EPOCHS
    assert config["block"] == "preact" and config["augment_policy"] == "trivialaugment"
    config, epochs = sized_recipe(DEADLINE_RECIPE, 200_000, 10, time_epoch)  # never enough: a quarter
    assert MIN_RECIPE_FILL * 200_000 / 2 < count_params(config) < MIN_RECIPE_FILL * 200_000 and epochs < RECIPE_EPOCHS


def test_the_plan_respects_trials_and_the_horizon_follows_the_deadline():
    from search.plan import CONFIRM_MULTIPLE, make_plan

    s, a = plan_settings()
    free = make_plan(s, a, 30 * 60, 2, 5.0, 0, predict_s=20, retrain_epoch_s=3.0)
    s_few, _ = plan_settings(trials=8)
    few = make_plan(s_few, a, 30 * 60, 2, 5.0, 0, predict_s=20, retrain_epoch_s=3.0)
    assert few.expected_trials == 8 < free.expected_trials
    # Given, --trials is what the search launches; not given, its time ends it, not the default
    # 50 (benchmark 11: 50 trials ended a 25-minute search after 14 minutes).
    assert few.trials == 8 and free.trials == max(50, 2 * free.expected_trials) > 50
    assert few.seconds["search"] < free.seconds["search"] and few.seconds["retrain"] > free.seconds["retrain"]
    # A shorter deadline gets a shorter ASHA horizon rather than fewer trials.
    shorter = make_plan(s, a, 45 * 60, 2, 8.0, 0, predict_s=20, retrain_epoch_s=3.0)
    assert shorter.mode == "search" and shorter.expected_trials >= 20
    assert shorter.max_epochs < make_plan(s, a, 120 * 60, 2, 8.0, 0, predict_s=20, retrain_epoch_s=3.0).max_epochs
    # The confirm stage runs its candidates to at least CONFIRM_MULTIPLE x the search's horizon.
    assert shorter.confirm_epochs >= CONFIRM_MULTIPLE * shorter.max_epochs


def test_a_trials_epoch_is_timed_on_the_spaces_draws(monkeypatch):
    """The search's epoch estimate is the mean over SPACE_DRAWS random configs of the space the
    search runs (its --set keys in them), each timed as a trial runs it, not the middle config
    (in benchmark 11 that stood for draws 1.6x slower than it)."""
    import search.plan as plan
    from search.tune.space import default_space

    timed = []

    def fake_epoch(config, threads, train_images, gpus):  # an epoch's seconds: the model's depth
        timed.append((config, threads, train_images))
        return float(sum(config["blocks"]))

    monkeypatch.setattr(plan, "epoch_seconds", fake_epoch)
    s, _ = plan_settings(param_budget=200_000, overrides={"cutout": 12}, cpus_per_trial=1)
    seconds = plan.space_epoch_seconds(s, 10, 3, 2_700, 0)
    assert len(timed) == plan.SPACE_DRAWS and all(t[1:] == (1, 2_700) for t in timed)
    configs = [c for c, _, _ in timed]
    assert seconds == sum(sum(c["blocks"]) for c in configs) / len(configs)
    assert all(c["cutout"] == 12 and c["epochs"] == s.max_epochs for c in configs)
    assert len({(tuple(c["blocks"]), tuple(c["widths"])) for c in configs}) > 1  # draws, not one config
    # The same draws a random sampler of this space makes.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=s.seed))
    first = default_space(study.ask(), {"cutout": 12, "epochs": s.max_epochs, "seed": s.seed}, 200_000)
    assert configs[0]["widths"] == first["widths"] and configs[0]["blocks"] == first["blocks"]


def test_a_search_that_cannot_learn_or_be_checked_gives_its_time_to_the_recipe():
    """Benchmark 11 at 20 minutes: trials of the space at 15 s an epoch (2 at once), a middle
    config alone at 5 s. The old plan searched there: 12 trials, 10 of them the sampler's
    random start-up, and no confirm stage, and its pick lost to the recipe. Now a search needs
    the start-up plus MIN_MODEL_PROPOSALS trials and a confirm stage past its horizon, and
    `search_from_s` is the one deadline from which both hold."""
    from search.plan import CONFIRM_MULTIPLE, MIN_HORIZON, MIN_SEARCH_TRIALS, make_plan
    from search.tune.sampler import STARTUP_LAUNCHED

    s, a = plan_settings()
    assert MIN_SEARCH_TRIALS > STARTUP_LAUNCHED

    def plan(minutes: float, epoch_s: float = 15.0):
        return make_plan(s, a, minutes * 60, 2, epoch_s, 0, predict_s=20, retrain_epoch_s=5.0)

    twenty = plan(20)
    assert twenty.mode == "recipe" and twenty.seconds["retrain"] > 0.95 * 1200, twenty.describe()
    assert "no search" in twenty.reason and twenty.search_from_s > 20 * 60
    # Trials that cannot run the start-up and the model's proposals: 18 fit at any horizon.
    few = make_plan(s, a, 60 * 60, 2, 15.0 * 2.9, 0, predict_s=20, retrain_epoch_s=5.0)
    assert few.mode == "recipe" and f"fewer than {MIN_SEARCH_TRIALS}" in few.reason, few.reason
    # One threshold: every deadline below search_from_s trains the recipe, every one above searches,
    # each with the start-up and the model's proposals, a horizon of at least MIN_HORIZON and a
    # confirm stage that runs its candidates past it.
    start = twenty.search_from_s
    for minutes in range(10, 240, 5):
        p = plan(minutes)
        assert (p.mode == "search") == (minutes * 60 >= start), (minutes, start / 60, p.reason)
        if p.mode == "search":
            assert p.expected_trials >= MIN_SEARCH_TRIALS and p.max_epochs >= MIN_HORIZON
            assert p.confirm_configs == a.confirm + 1 and p.confirm_epochs >= CONFIRM_MULTIPLE * p.max_epochs


@pytest.mark.slow  # a command run to its deadline
def test_a_deadline_too_short_to_search_trains_the_fixed_recipe_for_all_of_it(tmp_path, cli, monkeypatch, space_file):
    """A deadline that holds fewer than SEARCH_PAYS_EPOCHS epochs of the middle config: no
    search and no confirm stage (no Ray at all), the fixed recipe in the budget trained to the
    time left, a submission, and a summary that says so and from what deadline it would search."""
    from search.auto import main

    monkeypatch.chdir(tmp_path)
    unlabelled(tmp_path / "test.npy")
    start = time.time()
    code, out, err = cli(main, ["--gpus", "0", "--dataset", "synthetic", "--subset", "1000", "--param-budget",
                                "100000", "--time-budget", "15s", "--input", "test.npy", "--out", "sub.csv",
                                "--name", "short", "--space", space_file])
    wall = time.time() - start
    assert code == 0, err
    record = json.loads((tmp_path / "runs" / "short" / "auto.json").read_text())
    assert record["plan"]["mode"] == "recipe" and "no search" in out
    assert record["stages"]["search"]["skipped"] and record["stages"]["confirm"]["skipped"]
    assert not (tmp_path / "runs" / "short" / "trials.csv").exists()
    retrained = record["stages"]["retrain"]
    assert retrained["trial_id"] == "recipe" and retrained["epochs"] >= 2
    assert retrained["config"]["block"] == "preact" and retrained["config"]["augment_policy"] == "trivialaugment"
    # The recipe is sized for the deadline (`plan.sized_recipe`) and the plan names its size.
    params = count_params(record["plan"]["recipe"])
    assert params < 100_000 and f"{params:,} params" in out
    assert wall - record["runs"][0]["startup_s"] <= 15 * 1.05
    assert len((tmp_path / "sub.csv").read_text().splitlines()) == 41
    assert "lets it search on this machine" in out
