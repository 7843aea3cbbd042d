"""MLflow, W&B (offline) and TensorBoard, each read back with its own reader."""

import json

import pytest

from conftest import settings

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")
pytest.importorskip("tensorboard")


@pytest.fixture(scope="module")
def tracked(ray_session, space_file, tmp_path_factory):
    import os

    from search.records import read_history
    from search.run import run_search

    os.environ.pop("WANDB_API_KEY", None)
    os.environ["WANDB_MODE"] = "offline"  # no network here: W&B must not try to reach its server
    tmp = tmp_path_factory.mktemp("tracked")
    outcome = run_search(settings(tmp, space_file, name="tracked", trials=3, max_epochs=2,
                                  track=["mlflow", "wandb"]))
    history: dict = {}
    for row in read_history(outcome.folder):
        history.setdefault(row["trial_id"], {})[row["epoch"]] = row["val_acc"]
    return outcome.folder, history


def test_mlflow_holds_a_run_per_trial_with_its_config_and_every_epoch(tracked):
    folder, history = tracked
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tracked"])
    assert len(runs) == len(history) == 3
    client = mlflow.tracking.MlflowClient()
    from conftest import rows_of

    lr_of = {r.trial_id: r.config["lr"] for r in rows_of(folder)}
    expected = {tuple(round(v, 6) for _, v in sorted(h.items())): lr_of[t] for t, h in history.items()}
    seen = {}
    for run_id, lr in zip(runs["run_id"], runs["params.lr"]):
        values = [m.value for m in sorted(client.get_metric_history(run_id, "val_acc"), key=lambda m: m.step)]
        seen[tuple(round(v, 6) for v in values)] = float(lr)
    assert seen == pytest.approx(expected)  # each run: one trial's epochs, under that trial's config


def wandb_history(path):
    """The val_acc values of an offline W&B run file (run-*.wandb), in order: the file is a
    LevelDB-style log (32 KiB blocks of CRC/length/type-framed chunks) of W&B's protobuf
    `Record`s, read here with W&B's own message classes."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, block, pending, values = path.read_bytes(), 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):  # the rest of the block is padding
            pos += left
            continue
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or its last chunk
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                values += [float(i.value_json) for i in record.history.item
                           if (i.key or "/".join(i.nested_key)) == "val_acc"]
    return values


def test_wandb_logs_every_trial_offline(tracked):
    folder, history = tracked
    runs = sorted((folder / "wandb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 3
    logged = sorted(tuple(round(v, 6) for v in wandb_history(p)) for p in runs)
    assert logged == sorted(tuple(round(v, 6) for _, v in sorted(h.items())) for h in history.values())


def test_tensorboard_event_files_hold_each_trials_val_acc(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder, history = tracked
    assert len(history) == 3 and all(history.values())  # every trial reported val_acc
    for trial_id, epochs in history.items():
        events = EventAccumulator(str(folder / "tensorboard" / trial_id))
        events.Reload()
        read = {e.step: e.value for e in events.Scalars("val_acc")}
        assert read == pytest.approx(epochs), trial_id


def test_the_retrain_logs_its_seeds_and_model_to_mlflow(tracked, tmp_path, cli):
    from search.retrain import main

    folder, _ = tracked
    code, _, err = cli(main, [folder, "--epochs", "1", "--subset", "200", "--out", tmp_path / "final",
                              "--track", "mlflow"])
    assert code == 0, err
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tracked-retrain"])
    metrics = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert len(runs) == 1 and runs["metrics.test_acc_mean"][0] == pytest.approx(metrics["test_acc_mean"])
    assert runs["metrics.seed_0_test_acc"][0] == pytest.approx(metrics["per_seed"][0]["test_acc"])
    artifacts = [a.path for a in mlflow.tracking.MlflowClient().list_artifacts(runs["run_id"][0], "model")]
    assert "model/weights.pt" in artifacts
