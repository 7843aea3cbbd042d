"""Benchmark 3: what Ray Tune costs a trial, and what its checkpoints cost.

The same config for the same epochs on the same subset, trained bare with `trainable` and
then as trials of a Ray Tune search (run_search, start-up included). Reports the wall-time
ratio and the start latency (launch to first batch) of a trial on a new worker process and
of one on a reused worker. Then the time to write a checkpoint (the seed config's
4,918,602 params with AdamW state, and the benchmark's small config) and its share of a
trial's time at --checkpoint-every 1 and 2.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import device, timed
from search.records import read_history

SPACE = '''
def space(trial):
    return {"blocks": [1, 1, 1], "widths": [16, 32, 64], "batch_size": 64, "warmup_epochs": 0,
            "lr": trial.suggest_float("lr", 0.002, 0.0021)}
'''


def run(data_dir: str | None, quick: bool) -> dict[str, Any]:
    from search.run import run_search
    from search.settings import SearchSettings
    from search.tune.resources import ray_started
    from trainable.data import prepare_data
    from trainable.loop import Trainer

    dev = device()
    epochs = 2 if quick else 5
    subset = 2000 if quick else 5000
    dataset, data_dir_arg = ("imagefolder", data_dir) if data_dir else ("synthetic", None)
    config = {"blocks": [1, 1, 1], "widths": [16, 32, 64], "batch_size": 64, "warmup_epochs": 0, "lr": 0.002,
              "epochs": epochs, "seed": 0}

    def bare() -> None:
        data = prepare_data(dataset, data_dir_arg, dev, 0.1, 0, subset)
        for _ in Trainer(config, data).epochs():
            pass

    bare_s, _ = timed(bare, dev)  # includes loading the (cached) data, as a trial does

    # The trial gets the threads the bare run had; otherwise this measures thread counts.
    threads = torch.get_num_threads()
    with ray_started(cpus=threads, gpus=1 if dev.type == "cuda" else 0), tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp) / "space.py"
        space.write_text(SPACE)
        # Two trials one after the other on one worker: the first pays for starting the
        # worker process (imports, data load); the second reuses it (reuse_actors=True).
        settings = SearchSettings(name="overhead", storage=tmp, gpus=1 if dev.type == "cuda" else 0,
                                  gpus_per_trial=1.0, cpus_per_trial=threads, trials=2, max_epochs=epochs, grace_epochs=epochs,
                                  space=str(space), dataset=dataset, data_dir=data_dir_arg, subset=subset,
                                  warm_start=False, verbose=0)
        start = time.time()
        run_search(settings)
        tune_s = time.time() - start
        history = read_history(Path(tmp) / "overhead")
        runs = [sorted((h for h in history if h["trial_id"] == trial_id), key=lambda h: h["epoch"])
                for trial_id in {h["trial_id"] for h in history}]
        runs.sort(key=lambda lines: lines[0]["wall_time"])
        # Launch to first batch = the first report's wall time, less that epoch, less the launch:
        # the search's start for the first trial, the end of the first trial for the second.
        cold = runs[0][0]["wall_time"] - runs[0][0]["epoch_seconds"] - start
        warm = runs[1][0]["wall_time"] - runs[1][0]["epoch_seconds"] - runs[0][-1]["wall_time"]
    epoch_s = bare_s / epochs
    small_ckpt_s = checkpoint_seconds(config, dataset, data_dir_arg, dev, subset)
    seed_ckpt_s = checkpoint_seconds({"epochs": 1, "seed": 0}, dataset, data_dir_arg, dev, subset)
    return {"device": str(dev), "epochs": epochs, "subset": subset, "trials": 2, "bare_seconds_per_trial": bare_s,
            "tune_seconds_per_trial": tune_s / 2, "overhead_ratio": tune_s / (2 * bare_s),
            "first_trial_start_latency_s": cold, "reused_worker_start_latency_s": warm,
            "checkpoint_seconds_small_config": small_ckpt_s, "checkpoint_seconds_seed_config": seed_ckpt_s,
            "epoch_seconds_small_config": epoch_s,
            "checkpoint_share_every_1": small_ckpt_s / (epoch_s + small_ckpt_s),
            "checkpoint_share_every_2": small_ckpt_s / (2 * epoch_s + small_ckpt_s)}


def checkpoint_seconds(config: dict[str, Any], dataset: str, data_dir: str | None, dev: torch.device,
                       subset: int, repeats: int = 3) -> float:
    """Seconds to write one trial checkpoint (weights, optimizer state, RNGs; fsync'd) of `config`."""
    from search.tune.trial import STATE_FILE
    from trainable.checkpoint import save_checkpoint
    from trainable.data import prepare_data
    from trainable.loop import Trainer

    trainer = Trainer({**config, "epochs": 1}, prepare_data(dataset, data_dir, dev, 0.1, 0, min(subset, 256)))
    trainer.run_epoch()  # the optimizer has state once it has stepped
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        for _ in range(repeats):
            save_checkpoint(Path(folder) / STATE_FILE, trainer.state_dict())
        return (time.perf_counter() - start) / repeats
