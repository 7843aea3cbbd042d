"""Benchmark 5 (CUDA only): epoch time of the seed model, time to 94%, trials per GPU-hour
when 1, 2, 4 or 8 small trials share one GPU, and GPU utilisation while a search runs."""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import device, images, timed
from trainable import zoo
from trainable.zoo import architecture

SEED = architecture(zoo.SEED)  # 4,918,602 params
# The recipe the 95% sub-5M results share: SGD + Nesterov, cosine, label smoothing, cutout, TTA.
RECIPE = {**SEED, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 256,
          "warmup_epochs": 2, "label_smoothing": 0.1, "cutout": 8, "epochs": 40}
SHARED_SPACE = '''
def space(trial):
    return {"blocks": [2, 2, 2], "widths": [32, 64, 128], "batch_size": 128, "warmup_epochs": 0,
            "lr": trial.suggest_float("lr", 1e-3, 3e-3, log=True)}
'''


def gpu_utilisation(samples: list[float], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5).stdout
            samples.append(float(out.split()[0]))
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return
        time.sleep(0.5)


def run(data_dir: str | None, quick: bool) -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    from search.run import run_search
    from search.settings import SearchSettings
    from search.tune.resources import ray_started
    from trainable.data import to_device
    from trainable.loop import Trainer

    dev = device()
    dataset, source = images(data_dir, None)
    results: dict[str, Any] = {"source": source, "gpu": torch.cuda.get_device_name(0)}

    # Seed model, full training set: epoch time with and without the first (cudnn autotuning).
    data = to_device(dataset, dev, val_fraction=0.0)
    trainer = Trainer({**SEED, "epochs": 3}, data)
    times = [timed(trainer.train_epoch, dev)[0] for _ in range(2 if quick else 3)]
    images_per_epoch = trainer.steps_per_epoch * trainer.batch_size
    results["seed_epoch_seconds"] = times
    results["seed_images_per_s_after_first"] = images_per_epoch / (sum(times[1:]) / len(times[1:]))

    # Time to 94% test accuracy (a timing only: nothing is selected by it).
    recipe = {**RECIPE, "epochs": 15 if quick else RECIPE["epochs"]}
    trainer = Trainer(recipe, data)
    start, reached, best = time.perf_counter(), None, 0.0
    for metrics in trainer.epochs():
        acc = trainer.evaluate(dataset.test_images, dataset.test_labels, tta=True)["acc"]
        best = max(best, acc)
        if acc >= 0.94 and reached is None:
            reached = {"seconds": time.perf_counter() - start, "epoch": metrics["epoch"]}
    results["recipe"] = recipe
    results["time_to_94"] = reached
    results["recipe_best_test_acc_tta"] = best
    results["recipe_seconds"] = time.perf_counter() - start
    del trainer, data
    torch.cuda.empty_cache()

    # Trials per GPU-hour with k trials sharing the GPU, and utilisation during the k=4 search.
    sharing = {}
    with ray_started(gpus=1), tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp) / "space.py"
        space.write_text(SHARED_SPACE)
        for k in (1, 2, 4, 8):
            samples: list[float] = []
            stop = threading.Event()
            watcher = threading.Thread(target=gpu_utilisation, args=(samples, stop), daemon=True)
            watcher.start()
            settings = SearchSettings(name=f"share-{k}", storage=tmp, gpus=1, gpus_per_trial=1 / k,
                                      cpus_per_trial=1, trials=2 * k if quick else 4 * k, max_epochs=3,
                                      grace_epochs=3, space=str(space), dataset="imagefolder" if data_dir else
                                      "synthetic", data_dir=data_dir, subset=10_000, warm_start=False,
                                      verbose=0)
            start = time.time()
            outcome = run_search(settings)
            wall = time.time() - start
            stop.set()
            watcher.join()
            done = sum(outcome.counts.values())
            sharing[k] = {"trials": done, "wall_s": wall, "trials_per_gpu_hour": done / wall * 3600,
                          "mean_gpu_utilisation": sum(samples) / len(samples) if samples else None}
    results["sharing"] = sharing
    return results
