"""search.auto: one command from data to submission under one deadline, resumable in every stage."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import BUDGET

TOY = ["--gpus", "0", "--dataset", "synthetic", "--subset", "400", "--max-epochs", "2", "--grace-epochs", "1",
       "--reduction-factor", "2", "--param-budget", str(BUDGET), "--confirm", "2", "--verbose", "0",
       "--shares", "0.4,0.3,0.27,0.03"]
DEADLINE = 55


def unlabelled(path: Path) -> Path:
    np.save(path, np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8))
    return path


def files_of(folder: Path) -> set:
    """The experiment's files by name, less Ray's own run-* folders (named by the clock) and
    TensorBoard's event files (named by trial id, clock and process)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
            and not any(part.startswith("run-") or part == "tensorboard" for part in p.relative_to(folder).parts)}


@pytest.fixture(scope="module")
def auto_run(ray_session, space_file, tmp_path_factory):
    from search.auto import main

    tmp = tmp_path_factory.mktemp("auto")
    args = TOY + ["--space", str(space_file), "--storage", str(tmp / "runs"), "--name", "whole",
                  "--time-budget", f"{DEADLINE}s", "--input", str(unlabelled(tmp / "test.npy")),
                  "--out", str(tmp / "submission.csv")]
    start = time.time()
    assert main([str(a) for a in args]) == 0
    return tmp, time.time() - start


def test_auto_goes_from_data_to_a_submission_within_its_deadline(auto_run):
    tmp, wall = auto_run
    folder = tmp / "runs" / "whole"
    record = json.loads((folder / "auto.json").read_text())
    startup = record["startup_s"]
    assert wall - startup <= DEADLINE * 1.05 + 5, (wall, startup)  # + 5 s: the report after the last stage
    assert [record["stages"][s]["status"] for s in ("search", "confirm", "retrain", "predict")] == ["done"] * 4
    assert all(record["stages"][s]["planned_s"] > 0 and "used_s" in record["stages"][s] for s in record["stages"])
    confirm = record["stages"]["confirm"]
    assert len(confirm["search_order"]) == 2 and sorted(confirm["confirm_order"]) == sorted(confirm["search_order"])
    assert confirm["kendall_tau"] in (-1.0, 1.0) and confirm["pick_changed"] == (confirm["kendall_tau"] == -1.0)
    retrained = record["stages"]["retrain"]
    assert retrained["trial_id"] == confirm["confirm_order"][0] and 1 <= retrained["epochs"] <= 300
    rows = (tmp / "submission.csv").read_text().splitlines()
    assert rows[0] == "ID,Labels" and len(rows) == 41
    assert (folder / "final" / "weights_ema.pt").is_file()
    assert "## Stages (search.auto)" in (folder / "report" / "report.md").read_text()
    # The confirm stage is an experiment of its own, read like any other.
    import analysis

    assert len(analysis.load(folder / "confirm")) == 2


@pytest.mark.parametrize("argv,message", [
    (["--time-budget", "5s"], "too short"),
    (["--input", "missing.pkl"], "does not exist"),
    (["--out", "no/such/folder/sub.csv"], "does not exist"),
    (["--time-budget", None], "--time-budget is required"),
])
def test_auto_refuses_bad_input_before_anything_runs(tmp_path, cli, argv, message, monkeypatch):
    from search.auto import main

    monkeypatch.chdir(tmp_path)
    unlabelled(tmp_path / "test.npy")
    base = {"--time-budget": "60s", "--input": "test.npy", "--out": "sub.csv"}
    flags = dict(zip(argv[::2], argv[1::2]))
    args = TOY + ["--name", "bad"] + [x for k, v in {**base, **flags}.items() if v is not None for x in (k, v)]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = cli(main, args)
    assert code == 2 and err.startswith("error:") and message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_auto_dry_run_prints_the_plan_only(tmp_path, cli, monkeypatch):
    from search.auto import main

    monkeypatch.chdir(tmp_path)
    unlabelled(tmp_path / "test.npy")
    code, out, _ = cli(main, TOY + ["--name", "plan", "--time-budget", "2h", "--input", "test.npy", "--dry-run"])
    assert code == 0
    for stage in ("search", "confirm", "retrain", "predict"):
        assert stage in out
    assert "trials" in out and "epochs" in out
    assert not (tmp_path / "runs").exists()


def test_every_seed_diverging_falls_back_to_the_next_confirmed_config(tmp_path):
    from search.auto import AutoSettings, Record, stage_retrain
    from search.run import SearchSettings

    s = SearchSettings(name="fallback", storage=str(tmp_path), gpus=0, dataset="synthetic", subset=200,
                       max_epochs=2)
    s.folder.mkdir(parents=True)
    configs = {"wild": {"blocks": [1, 1], "widths": [8, 16], "optimizer": "sgd", "lr": 1e12, "seed": 0,
                        "epochs": 2, "batch_size": 32},
               "tame": {"blocks": [1, 1], "widths": [8, 16], "lr": 3e-3, "seed": 0, "epochs": 2, "batch_size": 32}}
    record = Record(s.folder, {"stages": {}, "running": None})
    try:
        result = stage_retrain(s, AutoSettings(), 30.0, ["wild", "tame"], configs, 1, False, record)
    finally:
        record.close()
    assert result["trial_id"] == "tame"
    assert [t["status"] for t in result["tried"]] == ["diverged", "ok"]


def _wait_for_stage(folder: Path, stage: str, proc: subprocess.Popen, timeout: float = 150) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        path = folder / "auto.json"
        if path.is_file():
            try:
                record = json.loads(path.read_text())
            except json.JSONDecodeError:
                record = {}
            running = record.get("running")
            if running == stage and (stage != "search" or (folder / "history.csv").is_file()):
                return
        time.sleep(0.2)
    raise AssertionError(f"stage {stage} never ran before the deadline (exit {proc.poll()})")


def test_auto_resumes_after_a_kill_in_each_stage_to_the_same_files(auto_run, ray_session, space_file, tmp_path):
    args = [sys.executable, "-m", "search.auto", "--address", ray_session.address] + TOY + [
        "--space", str(space_file), "--storage", str(tmp_path / "runs"), "--name", "whole",
        "--time-budget", f"{DEADLINE}s", "--input", str(unlabelled(tmp_path / "test.npy")),
        "--out", str(tmp_path / "submission.csv")]
    folder = tmp_path / "runs" / "whole"
    resume: list = []
    for stage in ("search", "confirm", "retrain"):
        log = tmp_path / f"before-{stage}.log"
        with open(log, "w") as handle:
            proc = subprocess.Popen(args + resume, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for_stage(folder, stage, proc)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text()[-3000:]}") from None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        resume = ["--resume"]
    done = subprocess.run(args + resume, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "submission:" in done.stdout
    record = json.loads((folder / "auto.json").read_text())
    assert all(record["stages"][s]["status"] == "done" for s in ("search", "confirm", "retrain", "predict"))
    assert files_of(folder) == files_of(auto_run[0] / "runs" / "whole")
    assert len((tmp_path / "submission.csv").read_text().splitlines()) == 41
