"""Retrain and predict on synthetic data, CPU."""

import csv
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from search.predict import images_from_hwc, main as predict_main, predict_labels, read_input
from search.retrain import main as retrain_main
from trainable.data import make_synthetic
from trainable.model import count_params

CONFIG = {"blocks": [1, 1], "widths": [8, 16], "batch_size": 64, "warmup_epochs": 0, "lr": 3e-3,
          "weight_decay": 1e-2}


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    """One retrain (2 seeds, EMA) through the command line, shared by the tests below."""
    from trainable.cli import run_main

    tmp = tmp_path_factory.mktemp("retrain")
    cfg = tmp / "cfg.json"
    cfg.write_text(json.dumps(CONFIG))
    out = tmp / "final"
    with pytest.raises(SystemExit) as done:
        run_main(retrain_main, ["--config", str(cfg), "--dataset", "synthetic", "--epochs", "3", "--seeds", "2",
                                "--ema", "--ema-decay", "0.9", "--out", str(out)])
    assert done.value.code == 0
    return out


def test_retrain_writes_every_artefact(retrained):
    for name in ("weights.pt", "weights_ema.pt", "config.json", "model.json", "metrics.json", "summary.txt",
                 "curves.png"):
        assert (retrained / name).is_file(), name
    metrics = json.loads((retrained / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 3 and metrics["seeds"] == [0, 1]
    for key in ("test_acc", "test_acc_tta", "test_acc_ema", "test_acc_ema_tta"):
        assert 0 <= metrics[f"{key}_mean"] <= 1 and len(metrics[f"{key}_per_seed"]) == 2
    assert metrics["test_acc_mean"] > 0.3 and metrics["test_acc_ema_mean"] > 0.3  # chance is 0.1
    summary = (retrained / "summary.txt").read_text().strip().splitlines()
    assert summary[-1] == f"Trainable params: {count_params(CONFIG):,}"
    with Image.open(retrained / "curves.png") as image:
        assert image.size[0] > 300 and image.size[1] > 200
    assert (retrained / "seed_1" / "weights.pt").is_file()


def synthetic_pickle(path, scramble=False):
    test = make_synthetic().test_images  # the same synthetic set the retrain evaluated
    hwc = test.permute(0, 2, 3, 1).numpy().copy()
    ids = np.arange(1000, 1000 + len(hwc))[::-1].copy()  # ids in an order of their own
    with open(path, "wb") as handle:
        pickle.dump({b"data": hwc, b"ids": ids}, handle)
    return ids


def test_predict_matches_the_retrain_and_writes_a_submission(retrained, tmp_path, cli):
    ids = synthetic_pickle(tmp_path / "test.pkl")
    out = tmp_path / "submission.csv"
    code, stdout, _ = cli(predict_main, [retrained, "--input", tmp_path / "test.pkl", "--out", out])
    assert code == 0 and "wrote" in stdout
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["ID", "Labels"]
    assert len(rows) == len(ids) + 1
    assert [int(r[0]) for r in rows[1:]] == ids.tolist()
    labels = torch.tensor([int(r[1]) for r in rows[1:]])
    truth = make_synthetic().test_labels
    metrics = json.loads((retrained / "metrics.json").read_text())
    assert (labels == truth).float().mean().item() == pytest.approx(metrics["test_acc"], abs=1e-6)
    # TTA goes through the same path
    images, _ = read_input(tmp_path / "test.pkl")
    tta = (predict_labels(retrained, images, tta=True) == truth).float().mean().item()
    assert tta == pytest.approx(metrics["test_acc_tta"], abs=1e-6)


def test_reshaped_layout_loses_accuracy(retrained, tmp_path):
    synthetic_pickle(tmp_path / "test.pkl")
    with open(tmp_path / "test.pkl", "rb") as handle:
        hwc = pickle.load(handle)[b"data"]
    truth = make_synthetic().test_labels
    right = (predict_labels(retrained, images_from_hwc(hwc, "data")) == truth).float().mean().item()
    scrambled = torch.from_numpy(hwc.reshape(-1, 3, 32, 32).copy())  # the classic bug
    wrong = (predict_labels(retrained, scrambled) == truth).float().mean().item()
    assert right - wrong > 0.2, (right, wrong)


@pytest.mark.parametrize("case", ["no_ids", "float_data", "chw_shape", "not_a_pickle", "no_weights"])
def test_malformed_input_fails_cleanly(retrained, tmp_path, cli, case):
    path = tmp_path / "bad.pkl"
    model = retrained
    good = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    payload = {b"data": good, b"ids": np.arange(4)}
    if case == "no_ids":
        del payload[b"ids"]
    elif case == "float_data":
        payload[b"data"] = good.astype(np.float32)
    elif case == "chw_shape":
        payload[b"data"] = good.reshape(4, 3, 32, 32)
    elif case == "no_weights":
        model = tmp_path / "model"
        model.mkdir()
        for name in ("config.json", "model.json"):
            (model / name).write_bytes((retrained / name).read_bytes())
    path.write_bytes(b"this is not a pickle" if case == "not_a_pickle" else pickle.dumps(payload))
    out = tmp_path / "sub.csv"
    code, _, err = cli(predict_main, [model, "--input", path, "--out", out])
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_retrain_refuses_a_config_over_budget(tmp_path, cli):
    cfg = tmp_path / "big.json"
    cfg.write_text(json.dumps({"blocks": [3, 5, 3], "widths": [64, 128, 256], "skip_kernel_size": 3}))
    code, _, err = cli(retrain_main, ["--config", cfg, "--dataset", "synthetic", "--out", tmp_path / "o"])
    assert code == 2 and "5,246,282" in err
    assert not (tmp_path / "o").exists()


def test_retrain_resumes_as_if_never_stopped(tmp_path, cli, monkeypatch):
    import torch

    from trainable.checkpoint import load_checkpoint
    from trainable.loop import Trainer

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(CONFIG))
    args = ["--config", cfg, "--dataset", "synthetic", "--subset", 300, "--epochs", 2]
    assert cli(retrain_main, [*args, "--out", tmp_path / "straight"])[0] == 0
    original = Trainer.run_epoch

    def stop_at_second_epoch(self):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "run_epoch", stop_at_second_epoch)
    assert cli(retrain_main, [*args, "--out", tmp_path / "cut"])[0] == 130
    monkeypatch.setattr(Trainer, "run_epoch", original)
    code, _, err = cli(retrain_main, [*args, "--out", tmp_path / "cut"])
    assert code == 2 and "--resume" in err
    assert cli(retrain_main, [*args, "--out", tmp_path / "cut", "--resume"])[0] == 0
    a, b = (load_checkpoint(tmp_path / run / "weights.pt") for run in ("straight", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [[m["train_loss"] for m in json.loads((tmp_path / run / "metrics.json").read_text())["epochs"]]
              for run in ("straight", "cut")]
    assert losses[0] == losses[1] and len(losses[0]) == 2
