"""Every user mistake: exit code 2, one `error:` line, no traceback, nothing written or overwritten."""

import json
import pickle
import shutil

import numpy as np
import pytest

from analysis.table import main as table_main
from benchmarks.proof import main as proof_main
from search.auto import main as auto_main
from search.predict import main as predict_main
from search.retrain import main as retrain_main
from search.run import main as search_main
from trainable.checkpoint import save_checkpoint
from trainable.model import build_model
from trainable.model import main as model_main

TINY = {"blocks": [1, 1], "widths": [8, 16]}


def snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture
def workspace(tmp_path, finished_search):
    """A copy of a finished experiment, a tiny model folder, a broken space file, a non-experiment."""
    shutil.copytree(finished_search.folder, tmp_path / "runs" / "exp")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY))
    (model / "model.json").write_text(json.dumps({"num_classes": 10, "classes": [str(i) for i in range(10)],
                                                  "mean": [0, 0, 0], "std": [1, 1, 1], "image_size": [32, 32]}))
    save_checkpoint(model / "weights.pt", build_model(TINY).state_dict())
    (tmp_path / "no_weights").mkdir()
    for name in ("config.json", "model.json"):
        shutil.copy(model / name, tmp_path / "no_weights" / name)
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps({b"data": np.zeros((2, 3, 32, 32), np.uint8), b"ids": [1, 2]}))
    (tmp_path / "broken_space.py").write_text("def space(trial)\n    return {}\n")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("not an experiment")
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "settings.json").write_text(json.dumps({"dataset": "synthetic", "max_epochs": 3}))
    return tmp_path


SEARCH = ["--gpus", "0", "--dataset", "synthetic", "--storage", "{tmp}/runs"]
CASES = [
    ("gpus beyond the machine", search_main, SEARCH + ["--gpus", "64"], "GPU"),
    ("zero trials", search_main, SEARCH + ["--trials", "0"], "--trials"),
    ("negative max epochs", search_main, SEARCH + ["--max-epochs", "-1"], "--max-epochs"),
    ("zero grace epochs", search_main, SEARCH + ["--grace-epochs", "0"], "--grace-epochs"),
    ("grace above max", search_main, SEARCH + ["--grace-epochs", "9", "--max-epochs", "3"], "grace"),
    ("unknown dataset", search_main, SEARCH + ["--dataset", "mnist"], "mnist"),
    ("missing data dir", search_main, SEARCH + ["--dataset", "cifar10", "--data-dir", "{tmp}/nowhere"], "does not exist"),
    ("no config fits the budget", search_main, SEARCH + ["--param-budget", "1000"], "param-budget"),
    ("a budget that is not a count", search_main, SEARCH + ["--param-budget", "5X"], "not a count like 5M"),
    ("a budget of part of a parameter", search_main, SEARCH + ["--param-budget", "1.5"], "whole, positive"),
    ("resume of nothing", search_main, SEARCH + ["--resume", "--name", "ghost"], "nothing to resume"),
    ("name taken", search_main, SEARCH + ["--name", "exp"], "already exists"),
    ("resume changing the space", search_main, SEARCH + ["--resume", "--name", "exp", "--param-budget", "123456"],
     "--param-budget"),
    ("space with a syntax error", search_main, SEARCH + ["--space", "{tmp}/broken_space.py", "--name", "x"],
     "syntax error"),
    ("unknown objective", search_main, SEARCH + ["--minimize", "flops"], "--minimize"),
    ("resume adding an objective", search_main, SEARCH + ["--resume", "--name", "exp", "--minimize", "params"],
     "--minimize"),
    ("auto with an unknown pick", auto_main, SEARCH + ["--time-budget", "5m", "--input", "{tmp}/bad.pkl", "--out",
                                                        "{tmp}/sub.csv", "--pick", "smallest"], "--pick"),
    ("retrain of the front and a trial", retrain_main, ["{tmp}/runs/exp", "--front", "--trial", "x"], "--front"),
    ("front of two experiments", table_main, ["{tmp}/runs/exp", "{tmp}/runs/exp", "--front"], "--front"),
    ("analysis of a non-experiment", table_main, ["{tmp}/plain"], "not an experiment"),
    ("retrain without a finished trial", retrain_main, ["{tmp}/unfinished"], "no finished trial"),
    ("predict on a malformed pickle", predict_main, ["{tmp}/model", "--input", "{tmp}/bad.pkl", "--out",
                                                     "{tmp}/sub.csv"], "N x H x W x 3"),
    ("predict into a missing folder", predict_main, ["{tmp}/model", "--input", "{tmp}/bad.pkl", "--out",
                                                     "{tmp}/nowhere/sub.csv"], "does not exist"),
    ("predict without weights", predict_main, ["{tmp}/no_weights", "--input", "{tmp}/bad.pkl", "--out",
                                               "{tmp}/sub.csv"], "weights.pt"),
    ("proof of an unknown step", proof_main, ["--smoke", "--out", "{tmp}/proof", "--steps", "training_step,warp"],
     "unknown --steps warp"),
    ("layer table for no channels", model_main, ["--config", "{tmp}/model/config.json", "--channels", "0"],
     "--channels"),
]


@pytest.mark.parametrize("name,main,argv,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(workspace, cli, name, main, argv, message):
    before = snapshot(workspace)
    code, out, err = cli(main, [a.format(tmp=workspace) for a in argv])
    assert code == 2, (name, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    assert "Traceback" not in err
    assert snapshot(workspace) == before, "a refused command wrote or changed files"
