"""What every benchmark shares: the machine it ran on, a clock, and the images it uses."""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Callable

import torch

from trainable.data import Dataset, load_dataset, make_synthetic


def machine() -> dict[str, Any]:
    """CPU model, cores, GPU (if any) and library versions, printed with every benchmark."""
    import optuna
    import ray
    import torchvision

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "ray": ray.__version__,
            "optuna": optuna.__version__}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], dev: torch.device) -> tuple[float, Any]:
    """Seconds `fn` takes, with the device synchronised before and after (GPU work is async)."""
    sync(dev)
    start = time.perf_counter()
    out = fn()
    sync(dev)
    return time.perf_counter() - start, out


def images(data_dir: str | None, subset: int | None) -> tuple[Dataset, str]:
    """Real images from an ImageFolder (CIFAR-10 JPEGs) when given, else the synthetic set."""
    if data_dir:
        dataset, source = load_dataset("imagefolder", data_dir), f"imagefolder {data_dir}"
    else:
        dataset, source = make_synthetic(n_train=subset or 2000, n_test=200), "synthetic (no --data-dir)"
    if subset and subset < len(dataset.train_images):
        dataset = Dataset(dataset.train_images[:subset], dataset.train_labels[:subset], dataset.test_images,
                          dataset.test_labels, dataset.classes)
    return dataset, source
