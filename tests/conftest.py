"""Shared fixtures: a learnable synthetic dataset and a tiny config, CPU only."""

from __future__ import annotations

import os

import pytest

# Tests never write into the user's cache.
os.environ.setdefault("BUDGETNAS_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), "budgetnas-test-cache"))

TINY = {"blocks": [1, 1], "widths": [8, 16], "epochs": 2, "batch_size": 32, "warmup_epochs": 0,
        "lr": 3e-3, "weight_decay": 1e-2}


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
