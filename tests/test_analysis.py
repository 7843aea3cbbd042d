"""Tables, curves and reports from a real (tiny, CPU) search experiment."""

import json
import re
import shutil

import pandas as pd
import pytest
from PIL import Image

import analysis
from analysis.report import main as report_main
from analysis.table import main as table_main
from analysis.trials import COLUMNS, STATUSES


def test_load_has_every_column_and_status(finished_search):
    df = analysis.load(finished_search.folder)
    assert isinstance(df, pd.DataFrame) and list(df.columns) == COLUMNS
    # Every config key a user searches over is a column, and the driver's bookkeeping is not.
    from trainable.config import DEFAULTS
    assert set(DEFAULTS) - {"epochs"} <= set(df.columns)
    assert {"best_val_acc", "best_epoch", "params", "wall_seconds", "gpu_seconds"} <= set(df.columns)
    assert not {"checkpoint", "versions", "restarts"} & set(df.columns)
    assert len(df) == 8 and set(df["status"]) <= set(STATUSES)
    assert (df["status"] == "stopped").any()
    best = json.loads((finished_search.folder / "best.json").read_text())
    assert df.iloc[0]["trial_id"] == best["trial_id"]
    assert df.iloc[0]["best_val_acc"] == pytest.approx(best["val_acc"])
    assert (df["epochs_trained"] <= df["horizon"]).all() and (df["wall_seconds"] > 0).all()



def test_gpu_seconds_are_the_trials_share_of_its_wall_time(tmp_path):
    import types

    from search.tune.experiment import TrialTable

    table = TrialTable(tmp_path, 0.25, 3)
    trial = types.SimpleNamespace(trial_id="t1", config={"blocks": [1, 1], "widths": [8, 16]})
    table.on_trial_result(0, [], trial, {"epoch": 1, "val_acc": 0.3, "time_total_s": 8.0, "params": 100})
    row = table.rows["t1"]
    assert (row.wall_seconds, row.gpu_seconds) == (8.0, 2.0)


def test_curves_are_long_format(finished_search):
    df = analysis.load(finished_search.folder)
    history = analysis.curves(finished_search.folder)
    assert {"trial_id", "epoch", "val_acc", "status"} <= set(history.columns)
    assert len(history) == df["epochs_trained"].sum()
    per_trial = history.groupby("trial_id")["epoch"].max()
    assert per_trial.to_dict() == dict(zip(df["trial_id"], df["epochs_trained"]))


def test_report_writes_plots_and_html(finished_search, tmp_path, cli):
    out = tmp_path / "report"
    code, stdout, _ = cli(report_main, [finished_search.folder, "--out", out])
    assert code == 0
    pngs = sorted(p for p in out.glob("*.png") if p.name != "report.png")
    assert len(pngs) == 6 and (out / "report.png").is_file() and "report.png" in stdout
    for png in pngs:
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size[0] >= 600 and image.size[1] >= 300
        assert png.stat().st_size > 10_000
    page = (out / "report.html").read_text()
    markdown = (out / "report.md").read_text()
    for png in pngs:
        assert f'data-file="{png.name}"' in page and f"({png.name})" in markdown
    assert page.count("data:image/png;base64,") == 6  # self-contained
    assert "rejected for the parameter budget: " + str(finished_search.rejected) in markdown
    # A search of a minute or two reads in seconds or minutes, not "0.01 h".
    assert re.search(r"wall time: \d+ s;|wall time: \d+\.\d min;", markdown), markdown[:2000]


def test_markdown_table_shows_the_columns_that_matter_unless_asked_for_all(finished_search, cli):
    code, narrow, _ = cli(table_main, [finished_search.folder, "--format", "markdown"])
    assert code == 0
    header = narrow.splitlines()[0]
    assert header.startswith("| trial_id | status | params |") and header.count("|") == 12  # 11 columns
    assert not re.search(r"0\.\d{6,}", narrow)  # rounded as the terminal table is
    code, wide, _ = cli(table_main, [finished_search.folder, "--format", "markdown", "--columns", "all"])
    assert code == 0 and wide.splitlines()[0].count("|") > 30 and "best_val_acc" in wide.splitlines()[0]


def test_table_stacks_experiments(finished_search, tmp_path, cli):
    other = tmp_path / "other"
    shutil.copytree(finished_search.folder, other)
    code, stdout, _ = cli(table_main, [finished_search.folder, other, "--format", "csv"])
    assert code == 0
    stacked = pd.read_csv(__import__("io").StringIO(stdout))
    assert stacked["experiment"].value_counts().to_dict() == {finished_search.folder.name: 8, "other": 8}
    code, stdout, _ = cli(table_main, [finished_search.folder, "--top", 3, "--status", "completed"])
    lines = stdout.strip().splitlines()
    assert code == 0 and len(lines) <= 4 and all(len(line) <= 80 for line in lines)
    assert all("completed" in line for line in lines[1:])
    code, stdout, _ = cli(table_main, [finished_search.folder, "--format", "json", "--sort", "params"])
    params = [row["params"] for row in json.loads(stdout)]
    assert params == sorted(params)


def test_analysis_reads_only_the_tools_files(finished_search, tmp_path):
    # Ray's folders (run-*/) deleted: the table and curves are unchanged.
    copy = tmp_path / "copy"
    shutil.copytree(finished_search.folder, copy)
    for ray_folder in copy.glob("run-*"):
        shutil.rmtree(ray_folder)
    pd.testing.assert_frame_equal(analysis.load(copy), analysis.load(finished_search.folder))
    assert len(analysis.curves(copy)) == len(analysis.curves(finished_search.folder))


def test_a_torn_last_history_line_is_ignored(finished_search, tmp_path):
    copy = tmp_path / "torn"
    shutil.copytree(finished_search.folder, copy)
    history = (copy / "history.csv").read_text()
    (copy / "history.csv").write_text(history + history.splitlines()[1][:25])  # a driver killed mid-line
    assert len(analysis.curves(copy)) == len(analysis.curves(finished_search.folder))


@pytest.mark.parametrize("case", ["not_an_experiment", "no_epoch_yet"])
def test_bad_experiment_paths(tmp_path, cli, case):
    folder = tmp_path / "exp"
    folder.mkdir()
    if case == "no_epoch_yet":
        (folder / "settings.json").write_text(json.dumps({"max_epochs": 3}))
        (folder / "trials.csv").write_text("trial_id,status,blocks,widths,horizon,epochs_trained\nabc,running,\"[1, 1]\",\"[8, 16]\",3,\n")
    for main in (table_main, report_main):
        code, _, err = cli(main, [folder])
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (folder / "report").exists()


def test_analysis_and_ranking_ignore_ray(finished_search):
    import subprocess
    import sys

    code = ("import sys, analysis; analysis.load(sys.argv[1]); analysis.curves(sys.argv[1]); "
            "assert 'ray' not in sys.modules, 'analysis imported ray'")
    done = subprocess.run([sys.executable, "-c", code, str(finished_search.folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def write_experiment(folder, rows):
    """An experiment folder as a search writes it, with the given trials.csv rows."""
    from search.records import TrialRow, trials_csv_text

    folder.mkdir()
    (folder / "settings.json").write_text(json.dumps({"max_epochs": 3, "param_budget": 100000}))
    base = {"blocks": "[1, 1]", "widths": "[8, 16]", "horizon": 3, "params": 5266}
    (folder / "trials.csv").write_text(trials_csv_text([TrialRow.from_cells({**base, **row}) for row in rows]))


def test_best_means_one_thing_everywhere(tmp_path):
    from analysis.front import front_table
    from search.tune.experiment import TrialTable
    from search.records import rank, read_trials

    rows = [
        {"trial_id": "gone", "status": "diverged", "best_val_acc": 0.80, "best_epoch": 2, "epochs_trained": 3},
        {"trial_id": "first", "status": "completed", "best_val_acc": 0.70, "best_epoch": 3, "epochs_trained": 3},
        {"trial_id": "tied", "status": "stopped", "best_val_acc": 0.70, "best_epoch": 1, "epochs_trained": 1},
        {"trial_id": "worse", "status": "completed", "best_val_acc": 0.50, "best_epoch": 3, "epochs_trained": 3},
    ]
    folder = tmp_path / "exp"
    write_experiment(folder, rows)
    assert [r.trial_id for r in rank(read_trials(folder))] == ["first", "tied", "worse"]  # diverged out, ties stable
    table = analysis.load(folder)
    assert table["trial_id"].tolist()[:3] == ["first", "tied", "worse"]  # the report's best is row 0
    assert TrialTable(folder, 0.0, 3).best()["trial_id"] == "first"  # what best.json holds
    assert "gone" not in front_table(table, "params")["trial_id"].tolist()


def test_interrupted_trials_are_a_status_of_their_own(tmp_path, cli):
    rows = [{"trial_id": "a", "status": "interrupted", "best_val_acc": 0.4, "best_epoch": 1, "epochs_trained": 1},
            {"trial_id": "b", "status": "completed", "best_val_acc": 0.5, "best_epoch": 3, "epochs_trained": 3}]
    write_experiment(tmp_path / "exp", rows)
    assert set(analysis.load(tmp_path / "exp")["status"]) == {"interrupted", "completed"}
    code, stdout, _ = cli(table_main, [tmp_path / "exp", "--status", "interrupted", "--format", "csv"])
    assert code == 0 and stdout.strip().splitlines()[1].startswith("a,interrupted")


def test_importances_need_enough_trials_and_say_what_they_measure(finished_search, tmp_path, cli):
    from analysis.report import MIN_IMPORTANCE_TRIALS, optuna_importances

    completed = (analysis.load(finished_search.folder)["status"] == "completed").sum()
    assert completed < MIN_IMPORTANCE_TRIALS
    importances, note = optuna_importances(finished_search.folder)
    assert importances is None and f"{completed} trial(s)" in note and str(MIN_IMPORTANCE_TRIALS) in note
    code, _, _ = cli(report_main, [finished_search.folder, "--out", tmp_path / "r"])
    assert code == 0 and "no importance plot" in (tmp_path / "r" / "report.md").read_text()


def test_importances_with_enough_trials_say_how_many(tmp_path):
    import optuna

    from analysis.report import optuna_importances

    study = optuna.create_study(study_name="exp", storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                                sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    study.optimize(lambda t: t.suggest_float("lr", 0, 1) + 0.01 * t.suggest_float("noise", 0, 1), n_trials=12)
    importances, note = optuna_importances(tmp_path)
    assert set(importances) == {"lr", "noise"} and importances["lr"] > importances["noise"]
    assert note.startswith("from 12 completed trials")
