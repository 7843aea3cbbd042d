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
    assert metrics["status"] == "ok" and metrics["seeds"] == metrics["seeds_in_mean"] == [0, 1]
    assert [len(seed["epochs"]) for seed in metrics["per_seed"]] == [3, 3]
    assert [seed["status"] for seed in metrics["per_seed"]] == ["ok", "ok"]
    assert "test_acc" not in metrics  # no figure of one seed passes for the whole retrain
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


def test_predict_given_the_experiment_uses_its_final_model(retrained, tmp_path, cli):
    synthetic_pickle(tmp_path / "test.pkl")
    by_model = cli(predict_main, [retrained, "--input", tmp_path / "test.pkl", "--out", tmp_path / "a.csv"])
    code, stdout, err = cli(predict_main, [retrained.parent, "--input", tmp_path / "test.pkl", "--out",
                                           tmp_path / "b.csv"])
    assert by_model[0] == 0 and code == 0, err
    assert f"retrained model in {retrained}" in stdout
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


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
    assert (labels == truth).float().mean().item() == pytest.approx(metrics["test_acc_per_seed"][0], abs=1e-6)
    # TTA goes through the same path
    images, _ = read_input(tmp_path / "test.pkl")
    tta = (predict_labels(retrained, images, tta=True) == truth).float().mean().item()
    assert tta == pytest.approx(metrics["test_acc_tta_per_seed"][0], abs=1e-6)


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
    losses = [[m["train_loss"] for m in json.loads((tmp_path / run / "metrics.json").read_text())["per_seed"][0]["epochs"]]
              for run in ("straight", "cut")]
    assert losses[0] == losses[1] and len(losses[0]) == 2


# ----------------------------------------------------------------------------- faults that mislead
def write_config(tmp_path, name="cfg.json", **extra):
    path = tmp_path / name
    path.write_text(json.dumps({**CONFIG, **extra}))
    return path


@pytest.mark.parametrize("change,key", [(["--epochs", 2], "epochs"), (["--ema"], "ema_decay"),
                                        (["--config", "other.json"], "widths")])
def test_a_resume_that_asks_for_another_run_is_refused(tmp_path, cli, change, key):
    cfg = write_config(tmp_path)
    write_config(tmp_path, "other.json", widths=[8, 24])
    out = tmp_path / "final"
    args = ["--dataset", "synthetic", "--subset", 300, "--epochs", 1, "--out", out]
    assert cli(retrain_main, ["--config", cfg, *args])[0] == 0
    before = (out / "checkpoint.pt").read_bytes()
    extra = [str(tmp_path / c) if str(c).endswith(".json") else c for c in change]
    argv = ["--config", cfg, *args, *extra, "--resume"]
    if "--config" in extra:
        argv = [*args, *extra, "--resume"]
    code, _, err = cli(retrain_main, argv)
    assert code == 2 and key in err and len(err.strip().splitlines()) == 1, err
    assert (out / "checkpoint.pt").read_bytes() == before  # nothing trained into the old run


def test_a_diverged_retrain_is_recorded_as_diverged(tmp_path, cli):
    cfg = write_config(tmp_path, lr=1e12, optimizer="sgd")
    out = tmp_path / "final"
    code, stdout, err = cli(retrain_main, ["--config", cfg, "--dataset", "synthetic", "--subset", 300,
                                           "--epochs", 2, "--out", out])
    assert code == 0 and "diverged" in err and "status: diverged" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["per_seed"][0]["status"] == "diverged"
    assert "test_acc_mean" not in metrics and metrics["seeds_in_mean"] == []


def test_seeds_of_a_subset_retrain_train_on_the_same_images(tmp_path, cli):
    cfg = write_config(tmp_path)
    out = tmp_path / "final"
    assert cli(retrain_main, ["--config", cfg, "--dataset", "synthetic", "--subset", 200, "--epochs", 1,
                              "--seeds", 2, "--out", out])[0] == 0
    stats = [json.loads((out / f"seed_{i}" / "model.json").read_text()) for i in range(2)]
    assert stats[0]["mean"] == stats[1]["mean"] and stats[0]["std"] == stats[1]["std"]


def test_metrics_json_is_written_every_epoch(tmp_path):
    from trainable.data import DataSpec
    from trainable.train import train_to_folder

    seen = []
    out = tmp_path / "run"

    def look(metrics):
        seen.append(len(json.loads((out / "metrics.json").read_text())["epochs"]))

    train_to_folder({**CONFIG, "epochs": 3}, DataSpec("synthetic", subset=300), out, on_epoch=look)
    assert seen == [1, 2, 3]  # on disk after each epoch, not only at the end
    assert len(json.loads((out / "metrics.json").read_text())["epochs"]) == 3


def test_tta_uses_only_the_views_training_covered(synthetic):
    from trainable.augment import shift_mirror, tta_views
    from trainable.data import to_device
    from trainable.loop import Trainer, predict_logits

    assert all(not mirror for _, _, mirror in tta_views({"flip": False, "crop_padding": 4}))
    assert tta_views({"flip": True, "crop_padding": 0}) == [(0, 0, False), (0, 0, True)]
    data = to_device(synthetic, "cpu", val_fraction=0.25)
    trainer = Trainer({**CONFIG, "epochs": 1, "flip": False}, data)
    trainer.run_epoch()
    images, labels = synthetic.test_images, synthetic.test_labels
    views = [(0, 0, False), (1, 1, False), (-1, -1, False)]
    by_hand = predict_logits(trainer.model, images, data.mean, data.std, views).argmax(1)
    assert trainer.evaluate(images, labels, tta=True)["acc"] == pytest.approx((by_hand == labels).float().mean().item())


def test_predict_reads_the_planar_cifar_layout_and_string_keys(retrained, tmp_path, cli):
    synthetic_pickle(tmp_path / "hwc.pkl")
    with open(tmp_path / "hwc.pkl", "rb") as handle:
        original = pickle.load(handle)
    planar = original[b"data"].transpose(0, 3, 1, 2).reshape(len(original[b"data"]), 3072)  # CIFAR's own rows
    with open(tmp_path / "planar.pkl", "wb") as handle:
        pickle.dump({"data": planar, "ids": [str(i).encode() for i in original[b"ids"]]}, handle)
    for name in ("hwc", "planar"):
        assert cli(predict_main, [retrained, "--input", tmp_path / f"{name}.pkl", "--out", tmp_path / f"{name}.csv"])[0] == 0
    hwc_rows = (tmp_path / "hwc.csv").read_text().splitlines()
    planar_rows = (tmp_path / "planar.csv").read_text().splitlines()
    assert planar_rows == hwc_rows  # same labels, and bytes ids written as plain text, not b'..'
    assert "b'" not in (tmp_path / "planar.csv").read_text()


def test_predict_refuses_ids_that_collide(retrained, tmp_path, cli):
    for folder in ("a", "b"):
        (tmp_path / "images" / folder).mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "images" / folder / "7.png")
    code, _, err = cli(predict_main, [retrained, "--input", tmp_path / "images", "--out", tmp_path / "s.csv"])
    assert code == 2 and "id 7" in err and not (tmp_path / "s.csv").exists()


def test_predict_names_a_class_order_that_is_not_cifar10s(retrained, tmp_path, cli):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(retrained, model)
    info = json.loads((model / "model.json").read_text())
    info["classes"] = [str(i + 1) for i in range(10)]  # folders named 1..10 sort as 1, 10, 2, ...
    (model / "model.json").write_text(json.dumps(info))
    synthetic_pickle(tmp_path / "test.pkl")
    code, stdout, _ = cli(predict_main, [model, "--input", tmp_path / "test.pkl", "--out", tmp_path / "a.csv"])
    assert code == 0 and "0=1, 1=2" in stdout
    cifar = "airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck"
    code, _, err = cli(predict_main, [model, "--input", tmp_path / "test.pkl", "--out", tmp_path / "b.csv",
                                      "--classes", cifar])
    assert code == 2 and "--classes" in err and not (tmp_path / "b.csv").exists()


class RunsCode:
    def __reduce__(self):
        return (print, ("code ran while loading a model",))


def test_a_model_folder_cannot_run_code(retrained, tmp_path, cli, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(retrained, model)
    torch.save({"weight": RunsCode()}, model / "weights.pt")
    synthetic_pickle(tmp_path / "test.pkl")
    code, stdout, err = cli(predict_main, [model, "--input", tmp_path / "test.pkl", "--out", tmp_path / "s.csv"])
    assert code == 2 and "safe load refused" in err and "code ran" not in stdout + err
