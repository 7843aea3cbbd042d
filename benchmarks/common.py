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


def stratified(dataset: Dataset, n_train: int | None, n_test: int | None = None) -> Dataset:
    """A class-balanced, seeded subset of each split (an ImageFolder lists images class by
    class, so its first N images would be one class)."""
    from trainable.data import stratified_subset

    def part(images: torch.Tensor, labels: torch.Tensor, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if n is None or n >= len(labels):
            return images, labels
        chosen = stratified_subset(labels, n, 0)
        return images[chosen], labels[chosen]

    train, test = part(dataset.train_images, dataset.train_labels, n_train), part(
        dataset.test_images, dataset.test_labels, n_test)
    return Dataset(*train, *test, dataset.classes)


def images(data_dir: str | None, subset: int | None) -> tuple[Dataset, str]:
    """Real images from an ImageFolder (CIFAR-10 JPEGs) when given, else the synthetic set."""
    if data_dir:
        dataset, source = load_dataset("imagefolder", data_dir), f"imagefolder {data_dir}"
    else:
        dataset, source = make_synthetic(n_train=subset or 2000, n_test=200), "synthetic (no --data-dir)"
    return stratified(dataset, subset), source


def count_ops(fn: Callable[[], Any]) -> int:
    """How many aten ops `fn` dispatches that compute (views, which launch nothing, left out):
    on a GPU each is about one kernel launch.

    Counted with a TorchDispatchMode, so it works on the `meta` device: shapes, no data.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            Count.ops += not func.is_view
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.ops


def seed_list(text: str) -> int | list[int]:
    """--seeds: a count ('3': seeds 0, 1, 2) or the seeds themselves ('1,2')."""
    return [int(x) for x in text.split(",") if x] if "," in text else int(text)


def search_benchmark_parser(prog: str, doc: str, subset_default: str, fifo_default: str) -> "argparse.ArgumentParser":
    """The flags every search benchmark's own command takes (benchmarks 4 and 8)."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("--data-dir", help="ImageFolder of real images (CIFAR-10 JPEGs); default: synthetic data")
    parser.add_argument("--out", required=True, help="folder for results.json and the plot")
    parser.add_argument("--seeds", type=seed_list, default=3,
                        help="N for seeds 0 .. N-1, or the seeds themselves, e.g. 1,2 (default: 3)")
    parser.add_argument("--subset", type=int, help=f"training images taken (default: {subset_default})")
    parser.add_argument("--fifo-trials", type=int, help="random + FIFO's trials, each to the horizon: their epochs "
                                                        f"are every method's budget (default: {fifo_default})")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    return parser


def write_results(out: Path, result: dict[str, Any]) -> None:
    """results.json in `out`, and the figures on stdout, a line per seed."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "per_seed"}, default=str))
    for entry in result.get("per_seed", []):
        print(json.dumps(entry, default=str))
