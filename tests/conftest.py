"""Shared fixtures: a learnable synthetic dataset and a tiny config, CPU only."""

from __future__ import annotations

import os
import random
import signal
import time
import types

import pytest

# Tests never write into the user's cache.
os.environ.setdefault("BUDGETNAS_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), "budgetnas-test-cache"))

TINY = {"blocks": [1, 1], "widths": [8, 16], "epochs": 2, "batch_size": 32, "warmup_epochs": 0,
        "lr": 3e-3, "weight_decay": 1e-2}


# The suite's two tiers: `pytest -m "not slow"` runs the fast one (no Ray cluster, no
# subprocess, no run of a command against a deadline). A test is slow when it needs Ray (its
# fixtures say so), starts a process or a kernel (its code says so), or is marked
# `@pytest.mark.slow` (a command run to a deadline).
SLOW_FIXTURES = {"ray_cluster", "ray_session", "finished_search", "cpu_hogs"}
SLOW_CALLS = ("subprocess.", "nbclient")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: needs Ray, a subprocess or a deadline (not in the fast tier)")


def pytest_collection_modifyitems(config, items):
    import inspect

    for item in items:
        try:
            source = inspect.getsource(item.function)
        except (AttributeError, OSError, TypeError):  # doctests have no function
            source = ""
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or any(call in source for call in SLOW_CALLS):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def tiny_config() -> dict:
    return dict(TINY)


@pytest.fixture(scope="session")
def synthetic():
    from trainable.data import make_synthetic

    return make_synthetic(n_train=400, n_test=200)


@pytest.fixture
def cli(capsys):
    """Run a command's main through run_main: cli(main, argv) -> (exit code, stdout, stderr)."""
    from trainable.cli import run_main

    def run(main, argv):
        with pytest.raises(SystemExit) as exit_info:
            run_main(main, [str(a) for a in argv])
        captured = capsys.readouterr()
        return exit_info.value.code, captured.out, captured.err

    return run


# ----------------------------------------------------------------------------- searches
TINY_SPACE = '''
def space(trial):
    n = trial.suggest_int("n_stages", 2, 3)
    return {
        "blocks": [trial.suggest_int(f"blocks_{i}", 1, 2) for i in range(n)],
        "widths": [trial.suggest_int("width", 4, 32, step=4) * 2**i for i in range(n)],
        "lr": trial.suggest_float("lr", 1e-3, 1e-2, log=True),
        "batch_size": 64, "warmup_epochs": 0,
    }
'''
BUDGET = 20_000  # rejects most of TINY_SPACE (widths up to 32/64/128)


@pytest.fixture(scope="session")
def ray_cluster():
    """One Ray cluster for the whole test run: a head with no CPUs and two 1-CPU worker nodes,
    all on this machine (ray.cluster_utils.Cluster), so trials really spread over nodes."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1, num_gpus=0)
    cluster.wait_for_nodes()
    # Started as a notebook or a cluster's driver would be: no environment of this tool's.
    ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def ray_session(ray_cluster):
    """The shared Ray session (a connected driver)."""
    return ray_cluster


@pytest.fixture(scope="session")
def space_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "tiny_space.py"
    path.write_text(TINY_SPACE)
    return path


def settings(tmp, space_file, **overrides):
    """SearchSettings of a tiny CPU search over TINY_SPACE on synthetic data."""
    from search.settings import SearchSettings

    base = dict(name="exp", storage=str(tmp), gpus=0, trials=6, max_epochs=3, grace_epochs=1, reduction_factor=2,
                param_budget=BUDGET, space=str(space_file), dataset="synthetic", subset=400, verbose=0)
    return SearchSettings(**{**base, **overrides})


@pytest.fixture(scope="session")
def finished_search(ray_session, space_file, tmp_path_factory):
    from search.run import run_search

    tmp = tmp_path_factory.mktemp("runs")
    # Its storage is a file:// URI, as a user may give it: the experiment is still the folder.
    return run_search(settings(f"file://{tmp}", space_file, trials=8))


def rows_of(folder):
    """trials.csv's rows (`search.records.read_trials`), which a test reading them expects to exist."""
    from search.records import TRIALS, read_trials

    assert (folder / TRIALS).is_file(), f"no {TRIALS} in {folder}"
    return read_trials(folder)


def check_resumed(folder, finished_before: dict, trials: int) -> list:
    """After a resume: every trial once, all ended, and the ones finished before unchanged."""
    rows = rows_of(folder)
    ids = [r.trial_id for r in rows]
    assert len(ids) == len(set(ids)) == trials
    assert all(r.status in ("completed", "stopped") for r in rows)
    after = {r.trial_id: r for r in rows}
    for trial_id, row in finished_before.items():
        assert after[trial_id].best_val_acc == row.best_val_acc
        assert after[trial_id].epochs_trained == row.epochs_trained
    return rows


# ----------------------------------------------------------------------------- a busy machine
HOG = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


class CpuHogs:
    """Real CPU-bound processes that share the machine with the code under test: started
    with `start()` (e.g. midway through a run), ended by `stop()` or after `seconds`."""

    def __init__(self, count: int = 2, seconds: float = 300):
        self.count, self.seconds, self.procs = count, seconds, []

    def start(self) -> None:
        import subprocess
        import sys

        self.procs = [subprocess.Popen([sys.executable, "-c", HOG.format(seconds=self.seconds)])
                      for _ in range(self.count)]

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def cpu_hogs():
    hogs = CpuHogs()
    yield hogs
    hogs.stop()


# ----------------------------------------------------------------------------- shared helpers
def wait_until(proc, ready, timeout: float = 150.0, what: str = "the moment waited for") -> None:
    """Return as soon as `ready()` holds while `proc` runs; fail if it ends first or the
    moment never comes within `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} never came (exit {proc.poll()})")


def kill_when(proc, ready, timeout: float = 150.0, what: str = "the moment to kill it") -> None:
    """kill -9 `proc` as soon as `ready()` holds (`wait_until`)."""
    wait_until(proc, ready, timeout, what)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def result_stream(seed: int, trials: int = 24, horizon: int = 9) -> list:
    """Results as an asynchronous search makes them: (trial, width, epoch, val_acc), three
    trials at a time, interleaved; a trial ends at the horizon or, 5% of epochs, earlier."""
    rng = random.Random(seed)
    width = {t: rng.choice([8, 16, 24, 32]) for t in range(trials)}
    skill = {t: rng.uniform(0.2, 0.5) + 0.01 * width[t] for t in range(trials)}
    epochs, live, nxt, out = {t: 0 for t in range(trials)}, [0, 1, 2], 3, []
    while live:
        t = rng.choice(live)
        epochs[t] += 1
        out.append((f"t{t}", width[t], epochs[t], skill[t] + 0.02 * epochs[t] + rng.gauss(0, 0.03)))
        if epochs[t] >= horizon or rng.random() < 0.05:
            live.remove(t)
            if nxt < trials:
                live.append(nxt)
                nxt += 1
    return out


def ray_trial(trial_id: str, config: dict | None = None, continues: str | None = None):
    """What the schedulers read of a Ray trial: its id and config (with the id it continues)."""
    from search.records import CONTINUES

    extra = {CONTINUES: {"trial_id": continues, "checkpoint": None}} if continues else {}
    return types.SimpleNamespace(trial_id=trial_id, config={**(config or {}), **extra})
