"""Tables, curves and reports from a real (tiny, CPU) search experiment."""

import json
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
    assert len(df) == 8 and set(df["status"]) <= set(STATUSES)
    assert (df["status"] == "stopped").any()
    best = json.loads((finished_search.folder / "best.json").read_text())
    assert df.iloc[0]["trial_id"] == best["trial_id"]
    assert df.iloc[0]["best_val_acc"] == pytest.approx(best["val_acc"])
    assert (df["epochs_trained"] <= df["horizon"]).all() and (df["wall_seconds"] > 0).all()
    share = json.loads((finished_search.folder / "settings.json").read_text())["gpu_share"]
    assert df["gpu_seconds"].tolist() == pytest.approx((df["wall_seconds"] * share).tolist())


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
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 6
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
