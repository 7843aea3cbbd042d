import json

import pytest
import torch

from trainable.data import DataSpec, to_device
from trainable.loop import Trainer, device_for, is_out_of_memory, lr_factor
from trainable.train import main, train_to_folder


def test_schedule_warms_up_then_anneals_to_zero():
    factors = [lr_factor(s, 10, 100) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert factors[-1] < 1e-3


def test_short_run_learns_well_above_chance(synthetic, tiny_config):
    data = to_device(synthetic, "cpu", val_fraction=0.25)
    trainer = Trainer({**tiny_config, "epochs": 3}, data)
    history = list(trainer.epochs())
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert history[-1]["val_acc"] > 0.5  # chance is 0.1
    assert set(history[0]) >= {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
                                "epoch_seconds", "images_per_second", "params"}


def test_resume_continues_exactly(synthetic, tiny_config):
    data = to_device(synthetic, "cpu", val_fraction=0.25)
    cfg = {**tiny_config, "cutout": 4, "dropout": 0.2}  # dropout and cutout exercise every RNG
    straight = Trainer(cfg, data)
    list(straight.epochs())

    first = Trainer(cfg, data)
    first.run_epoch()
    state = first.state_dict()
    torch.manual_seed(1234)  # disturb the global RNG: the checkpoint must restore it
    resumed = Trainer(cfg, data)
    resumed.load_state_dict(state)
    list(resumed.epochs())
    assert resumed.epoch == straight.epoch == 2
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_nan_loss_ends_the_run_as_diverged(synthetic, tiny_config):
    data = to_device(synthetic, "cpu", val_fraction=0.25)
    trainer = Trainer({**tiny_config, "epochs": 5, "optimizer": "sgd", "lr": 1e12}, data)
    history = list(trainer.epochs())
    assert history[-1]["status"] == "diverged" and trainer.status == "diverged"
    assert len(history) <= 2


def test_train_cli_writes_metrics_and_checkpoint(tmp_path, tiny_config, cli):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(tiny_config))
    out = tmp_path / "run"
    code, stdout, _ = cli(main, ["--config", cfg, "--epochs", 1, "--dataset", "synthetic", "--out", out])
    assert code == 0 and "epoch   1/1" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 1 and 0 <= metrics["test_acc"] <= 1
    assert (out / "checkpoint.pt").is_file()
    code, _, err = cli(main, ["--config", cfg, "--dataset", "synthetic", "--out", out])
    assert code == 2 and "--resume" in err  # a second run into the same folder is refused


class Interrupt(Exception):
    pass


def test_train_to_folder_resumes_as_if_never_stopped(tmp_path, tiny_config):
    from trainable.checkpoint import load_checkpoint

    cfg = tiny_config | {"epochs": 2, "cutout": 4}
    straight = train_to_folder(cfg, DataSpec("synthetic"), tmp_path / "straight")

    def stop_after_first(metrics):
        if metrics["epoch"] == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_to_folder(cfg, DataSpec("synthetic"), tmp_path / "cut", on_epoch=stop_after_first)
    # What a write killed with the run would leave, and a file of the user's that only looks alike.
    stale, theirs = tmp_path / "cut" / ".checkpoint.pt.k1ll3d_w.tmp", tmp_path / "cut" / "notes.tmp"
    stale.write_bytes(b"half a checkpoint")
    theirs.write_text("mine")
    resumed = train_to_folder(cfg, DataSpec("synthetic"), tmp_path / "cut", resume=True)
    assert not stale.exists() and theirs.read_text() == "mine"
    assert [m["train_loss"] for m in resumed["epochs"]] == [m["train_loss"] for m in straight["epochs"]]
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_compile_failure_in_backward_falls_back_to_eager(synthetic, tiny_config, monkeypatch):
    class BreaksInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("backward compilation failed (simulated)")

    resets = []
    monkeypatch.setattr(torch.compiler, "reset", lambda: resets.append(1))
    monkeypatch.setattr(torch, "compile", lambda model: (lambda x: BreaksInBackward.apply(model(x))))
    data = to_device(synthetic, "cpu", val_fraction=0.25)
    eager = Trainer(tiny_config, data)
    list(eager.epochs())
    compiled = Trainer(tiny_config, data, compile_model=True)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        list(compiled.epochs())
    assert compiled.forward is compiled.model and len(resets) == 1  # reset before each compiled model
    # The failed step was redone eagerly, none lost or doubled. (BatchNorm's running stats
    # saw the failing batch's forward once more; the weights do not depend on them.)
    for a, b in zip(eager.model.parameters(), compiled.model.parameters()):
        assert torch.equal(a, b)


def test_out_of_memory_is_never_taken_for_a_compile_failure(synthetic, tiny_config, monkeypatch):
    def out_of_memory(x):
        raise RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")

    monkeypatch.setattr(torch, "compile", lambda model: out_of_memory)
    trainer = Trainer(tiny_config, to_device(synthetic, "cpu", val_fraction=0.25), compile_model=True)
    with pytest.raises(RuntimeError, match="ALLOC_FAILED"):
        trainer.run_epoch()
    assert is_out_of_memory(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


@pytest.mark.parametrize("gpu_ids,expected", [([], "cpu"), (["0"], "cuda:0"), ([2, 3], "cuda:0")])
def test_a_trial_trains_where_ray_put_it(gpu_ids, expected):
    # Ray leaves GPUs visible to a trial that asked for none: only the assigned ids decide.
    assert str(device_for(gpu_ids)) == expected


@pytest.mark.parametrize("case", ["missing_dir", "no_train_test", "bad_json", "unknown_key"])
def test_train_cli_bad_input(tmp_path, tiny_config, cli, case):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(tiny_config))
    args = ["--config", cfg, "--dataset", "imagefolder", "--out", tmp_path / "out"]
    if case == "missing_dir":
        args += ["--data-dir", tmp_path / "nowhere"]
    elif case == "no_train_test":
        (tmp_path / "empty").mkdir()
        args += ["--data-dir", tmp_path / "empty"]
    elif case == "bad_json":
        cfg.write_text("{blocks: [1, 1]")
    else:
        cfg.write_text(json.dumps({**tiny_config, "depth": 3}))
    code, _, err = cli(main, args)
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_long_pass_says_how_far_it_is_and_a_short_one_says_nothing():
    import io

    from trainable.progress import Steps

    out = io.StringIO()  # not a terminal: lines, not a bar
    with Steps(1000, "predict", delay_s=0.0, every_s=0.0, out=out) as steps:
        steps.update(250)
        steps.update(750)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("predict: 250 of 1,000 images") and lines[-1].startswith("predict: 1,000 of 1,000")
    quiet = io.StringIO()
    with Steps(1000, "predict", out=quiet) as steps:  # done well within its 2 s delay
        steps.update(1000)
    assert quiet.getvalue() == ""
