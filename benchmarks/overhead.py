"""Benchmark 3: what Ray Tune costs a trial.

The same config for the same epochs on the same subset, trained bare with `trainable` and
then as a one-trial Ray Tune search (run_search, start-up included). Reports the wall-time
ratio and the trial's start latency (from launch to its first batch).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import device, timed

SPACE = '''
def space(trial):
    return {"blocks": [1, 1, 1], "widths": [16, 32, 64], "batch_size": 64, "warmup_epochs": 0,
            "lr": trial.suggest_float("lr", 0.002, 0.0021)}
'''


def run(data_dir: str | None, quick: bool) -> dict[str, Any]:
    import ray

    from search.run import SearchSettings, run_search
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

    ray.init(num_cpus=1, num_gpus=1 if dev.type == "cuda" else 0, include_dashboard=False,
             configure_logging=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            space = Path(tmp) / "space.py"
            space.write_text(SPACE)
            settings = SearchSettings(name="overhead", storage=tmp, gpus=1 if dev.type == "cuda" else 0,
                                      gpus_per_trial=1.0, trials=1, max_epochs=epochs, grace_epochs=epochs,
                                      space=str(space), dataset=dataset, data_dir=data_dir_arg, subset=subset,
                                      warm_start=False, verbose=0)
            start = time.time()
            run_search(settings)
            tune_s = time.time() - start
            from analysis import curves

            first = json.loads((next((Path(tmp) / "overhead").glob("trial_*")) / "result.json")
                               .read_text().splitlines()[0])
            # Launch to first batch: the first report came at `wall_time`, one epoch after the first batch.
            latency = first["wall_time"] - first["epoch_seconds"] - start
    finally:
        ray.shutdown()
    return {"device": str(dev), "epochs": epochs, "subset": subset, "bare_seconds": bare_s,
            "tune_seconds": tune_s, "overhead_ratio": tune_s / bare_s,
            "trial_start_latency_s": latency}
