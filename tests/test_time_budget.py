"""Training to a time budget: the schedule follows the clock, so a run ends annealed and on
time, even when other processes slow the machine down halfway."""

import gc
import json
import threading
import time

import pytest

from trainable.data import make_synthetic, to_device
from trainable.loop import StepClock, TimeBudget, Trainer

CONFIG = {"blocks": [1, 1], "widths": [16, 32], "batch_size": 64, "warmup_epochs": 1, "epochs": 500, "lr": 3e-3}


def run_to_budget(seconds: float, tail_s: float = 0.0, on_start=None) -> tuple[Trainer, list, float]:
    data = to_device(make_synthetic(n_train=1200, n_test=100), "cpu")
    trainer = Trainer(CONFIG, data, time_budget=TimeBudget(seconds, tail_s))
    # The heap of the tests before this one is collected now, not in a pause near the end of
    # these few seconds (a stall there leaves no time to anneal, whatever the schedule).
    gc.collect()
    start = time.perf_counter()
    if on_start:
        on_start()
    history = list(trainer.epochs())
    return trainer, history, time.perf_counter() - start


@pytest.mark.slow  # runs against a clock
def test_a_time_budget_ends_on_time_and_annealed():
    for _ in range(2):
        trainer, history, wall = run_to_budget(6.0, tail_s=1.0)
        # A steady machine is this test's premise. Other processes of the suite stalled the last
        # steps 4x in about 1 full run in 3 on a busy CI machine (then the stop comes before the
        # schedule's end; test_a_stall_late_in_the_budget_still_ends_annealed covers stalls on a
        # fake clock): run once more. The assertions below hold for the run kept, either way.
        if history[-1]["slowdown"] < 2:
            break
    # The tail is kept back, scaled by the machine's speed at the end against its start (a
    # busy CI machine changes it): training ends near 6 - 1 s x slowdown, never after 6.
    slowdown = history[-1]["slowdown"]
    assert 6.0 - slowdown - 0.5 <= wall <= 6.0, (wall, slowdown)
    assert len(history) >= 3  # several epochs: the cap (500) was not what ended it
    assert trainer.progress == 1.0
    # Annealed, not cut at a high learning rate (the message shows each epoch's clock).
    assert history[-1]["lr"] <= 0.05 * CONFIG["lr"], [
        {k: m[k] for k in ("epoch", "lr", "epoch_seconds", "time_used_s", "slowdown")} for m in history]
    lrs = [m["lr"] for m in history[1:]]
    assert lrs == sorted(lrs, reverse=True)  # after warm-up it only decays


def test_the_speed_reference_leaves_out_the_first_step(monkeypatch):
    """The first step pays one-off costs; a machine that then runs 1.5x slower reads as 1.5x
    slower, not as faster than at the start."""
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    clock = StepClock()
    for step, seconds in enumerate([1.0] + [0.1] * 9 + [0.15] * 20, start=1):
        now[0] += seconds
        clock.tick()
        if step == 10:
            assert clock.slowdown() == pytest.approx(1.0)
    assert clock.slowdown() == pytest.approx(1.5, rel=0.01)


def test_a_stall_late_in_the_budget_still_ends_annealed(monkeypatch):
    """A pause of the whole process between steps (a garbage collection, the process
    descheduled during validation) late in the budget leaves only a few steps before the
    stop, at the pace the steps had before it; the schedule still reaches its end in them.
    A fake clock makes it exact: 0.025 s a reading (two readings a step), and a validation
    past 6 s of a 10 s budget that ends at 9.7 s, which leaves 6 steps."""
    data = to_device(make_synthetic(n_train=640, n_test=50), "cpu")
    clock = {"now": 0.0, "stalled": False}

    def perf_counter() -> float:
        clock["now"] += 0.025
        return clock["now"]

    evaluate = Trainer.evaluate

    def stalling_evaluate(self, *args, **kwargs):
        if clock["now"] >= 6.0 and not clock["stalled"]:
            clock["stalled"], clock["now"] = True, 9.7
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(time, "perf_counter", perf_counter)
    monkeypatch.setattr(Trainer, "evaluate", stalling_evaluate)
    trainer = Trainer(CONFIG, data, time_budget=TimeBudget(10.0))
    history = list(trainer.epochs())
    monkeypatch.undo()
    assert clock["stalled"] and clock["now"] <= 10.2, clock
    assert trainer.progress == 1.0
    assert history[-1]["lr"] <= 0.05 * CONFIG["lr"], history[-1]


def test_a_machine_faster_than_when_the_tail_was_timed_anneals_to_the_shorter_tail(monkeypatch):
    """The reference steps ran on a busy machine (0.1 s a clock reading), the rest on an
    idle one (0.04 s): the tail scales down with the machine's speed (0.4x), so training runs
    to 10 - 2 x 0.4 = 9.2 s of a 10 s budget and its schedule ends annealed there. A stop
    kept at the unscaled tail (8 s) cuts the schedule at about 87% of its course."""
    data = to_device(make_synthetic(n_train=640, n_test=50), "cpu")
    clock = {"now": 0.0, "readings": 0}

    def perf_counter() -> float:
        clock["readings"] += 1
        clock["now"] += 0.1 if clock["readings"] <= 40 else 0.04
        return clock["now"]

    monkeypatch.setattr(time, "perf_counter", perf_counter)
    trainer = Trainer(CONFIG, data, time_budget=TimeBudget(10.0, tail_s=2.0))
    history = list(trainer.epochs())
    monkeypatch.undo()
    assert history[-1]["slowdown"] < 0.5, history[-1]
    assert 9.0 <= clock["now"] <= 9.6, clock  # 9.2 s, then the last validation
    assert history[-1]["lr"] <= 0.01 * CONFIG["lr"], history[-1]


def test_an_epoch_cap_that_comes_first_also_ends_annealed():
    data = to_device(make_synthetic(n_train=400, n_test=50), "cpu")
    trainer = Trainer({**CONFIG, "epochs": 3}, data, time_budget=TimeBudget(600.0))
    history = list(trainer.epochs())
    assert len(history) == 3 and history[-1]["lr"] < 0.05 * CONFIG["lr"]


def test_a_machine_that_slows_down_midway_still_ends_on_time(cpu_hogs):
    """A CPU-bound process starts 3 s into an 8 s budget on this 2-core machine: the steps
    slow down (2-3x), the kept-back tail grows with them, and the run still ends on time."""
    cpu_hogs.count = 1
    timer = threading.Timer(3.0, cpu_hogs.start)
    trainer, history, wall = run_to_budget(8.0, tail_s=0.3, on_start=timer.start)
    timer.join()
    assert wall <= 8.0 * 1.05, wall
    assert history[-1]["slowdown"] > 1.3, history[-1]  # the hogs were felt
    # Annealed: the reserve grew with the slowdown (a jump in the schedule's progress), and
    # the last steps still ran at a few percent of the peak rate.
    assert history[-1]["lr"] <= 0.05 * CONFIG["lr"]
    # The epochs after the hogs started are slower than before.
    assert max(m["epoch_seconds"] for m in history[-2:]) > 1.2 * min(m["epoch_seconds"] for m in history[:2])


def test_retrain_time_budget_from_the_command_line(tmp_path, cli, cpu_hogs):
    """`search.retrain --time-budget`: from the command's start to its end, data and test pass
    included, within the budget + 5%, with a machine that slows down halfway."""
    from search.retrain import main

    config = tmp_path / "c.json"
    config.write_text(json.dumps({k: v for k, v in CONFIG.items() if k != "epochs"}))
    timer = threading.Timer(5.0, cpu_hogs.start)
    timer.start()
    start = time.perf_counter()
    code, out, err = cli(main, ["--config", config, "--dataset", "synthetic", "--subset", "1200", "--ema",
                                "--time-budget", "15s", "--epochs", "500", "--out", tmp_path / "out"])
    wall = time.perf_counter() - start
    timer.join()
    assert code == 0, err
    assert wall <= 15 * 1.05, wall
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    epochs = metrics["per_seed"][0]["epochs"]
    assert 3 <= len(epochs) < 500 and epochs[-1]["lr"] <= 0.05 * CONFIG["lr"]
    assert epochs[-1]["slowdown"] > 1.3  # the hogs were felt
    assert "test_acc_ema_mean" in metrics and "(at most 500 epochs)" in out


@pytest.mark.slow  # runs against a clock
def test_a_resumed_time_budget_counts_the_time_used_before(tmp_path):
    """A run stopped after part of its time continues with what the checkpoint says it used:
    its schedule goes on from there, it does not start over."""
    data = to_device(make_synthetic(n_train=600, n_test=50), "cpu")
    first = Trainer(CONFIG, data, time_budget=TimeBudget(6.0))
    epochs = first.epochs()
    before = [next(epochs) for _ in range(2)]
    state = first.state_dict()
    again = Trainer(CONFIG, data, time_budget=TimeBudget(3.0))
    again.load_state_dict(state)
    assert again.progress == pytest.approx(first.progress) and again.clock.used() >= before[-1]["time_used_s"] - 0.01
    after = list(again.epochs())
    assert after[0]["epoch"] == 3 and after[0]["lr"] <= before[-1]["lr"] * 1.01
    assert after[-1]["lr"] <= 0.02 * CONFIG["lr"]


@pytest.mark.parametrize("module", ["search.auto", "search.retrain"])
def test_the_deadline_commands_let_idle_threads_sleep_before_torch_loads(module):
    """OpenMP reads its wait policy when torch's libraries load: the commands that keep a
    deadline set it first (spinning threads stalled a prediction 15x on a shared CPU), a
    policy the user set is kept, and importing the module from Python changes nothing."""
    import os
    import subprocess
    import sys

    probe = ("import runpy, sys, trainable.cli as cli\n"
             "real, seen = cli.sleep_when_waiting, []\n"
             "cli.sleep_when_waiting = lambda: (seen.append('torch' in sys.modules), real())\n"
             "sys.argv = ['x', '--help']\n"
             "try:\n"
             f"    runpy.run_module({module!r}, run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "import os\n"
             "print(seen, os.environ.get('OMP_WAIT_POLICY'))\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}

    def last_line(code: str, given: str | None) -> list:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env=env if given is None else {**env, "OMP_WAIT_POLICY": given})
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.splitlines()[-1].split()

    assert last_line(probe, None) == ["[False]", "PASSIVE"]  # run as the command: set before torch
    assert last_line(probe, "ACTIVE") == ["[False]", "ACTIVE"]
    imported = f"import os, {module}\nprint(os.environ.get('OMP_WAIT_POLICY'))\n"
    assert last_line(imported, None) == ["None"]
