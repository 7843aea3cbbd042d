"""Datasets as uint8 tensors: CIFAR-10, any ImageFolder, and a learnable synthetic set.

A dataset is decoded once into uint8 arrays (ImageFolder decodes are cached on disk), split
into train/val by a stratified, seeded draw, and moved whole to the training device, where
`trainable.augment` crops, flips and normalises whole batches. Nothing here runs per batch.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from trainable.errors import DataError

DATASETS = ("cifar10", "imagefolder", "synthetic")
CACHE_ENV = "BUDGETNAS_CACHE"


@dataclass
class Dataset:
    """A whole dataset in memory: images uint8 (N, 3, H, W), labels int64 (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _from_hwc(images: np.ndarray, labels: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    # Channel-first by transposing axes (a reshape would scramble every image).
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(images, dtype=np.uint8).transpose(0, 3, 1, 2)))
    return x, torch.as_tensor(np.asarray(labels), dtype=torch.int64)


# ----------------------------------------------------------------------------- CIFAR-10
def load_cifar10(data_dir: str | Path, download: bool = True) -> Dataset:
    """CIFAR-10 through torchvision, downloaded into `data_dir` when missing and allowed."""
    import torchvision

    root = Path(data_dir)
    try:
        train = torchvision.datasets.CIFAR10(str(root), train=True, download=download)
        test = torchvision.datasets.CIFAR10(str(root), train=False, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted."
        raise DataError(
            f"CIFAR-10 is not in {root} ({exc}); run once with internet access to download it, "
            "or pass --dataset imagefolder --data-dir DIR with train/<class>/ and test/<class>/ images"
        ) from None
    except OSError as exc:  # no network: URLError and socket errors are OSErrors
        raise DataError(
            f"CIFAR-10 is not in {root} and could not be downloaded ({exc.__class__.__name__}); "
            "download it where there is internet and copy cifar-10-batches-py/ into that folder, "
            "or pass --dataset imagefolder --data-dir DIR"
        ) from None
    train_x, train_y = _from_hwc(train.data, train.targets)
    test_x, test_y = _from_hwc(test.data, test.targets)
    return Dataset(train_x, train_y, test_x, test_y, list(train.classes))


# ----------------------------------------------------------------------------- ImageFolder
def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "budgetnas"))


def _folder_fingerprint(root: Path) -> str:
    # Directory mtimes change whenever a file is added, removed or renamed inside them;
    # stat-ing ~22 folders keeps a cached load well under a second for 60,000 images.
    parts = [str(root.resolve())]
    for split in ("train", "test"):
        for folder in sorted([root / split, *(p for p in (root / split).iterdir() if p.is_dir())]):
            parts.append(f"{folder.name}:{folder.stat().st_mtime_ns}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def _decode(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _decode_split(root: Path) -> tuple[np.ndarray, list[int], list[str]]:
    import torchvision

    try:
        folder = torchvision.datasets.ImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"cannot read images in {root}: {exc}") from None
    paths = [path for path, _ in folder.samples]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        images = list(pool.map(_decode, paths))
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        first = images[0].shape
        odd = next(p for p, im in zip(paths, images) if im.shape != first)
        raise DataError(
            f"images in {root} have mixed sizes ({', '.join(sorted(f'{s[1]}x{s[0]}' for s in shapes))}), "
            f"e.g. {odd}; resize them to one size first"
        )
    return np.stack(images), [label for _, label in folder.samples], list(folder.classes)


def load_imagefolder(data_dir: str | Path) -> Dataset:
    """Images in `data_dir/train/<class>/*` and `data_dir/test/<class>/*`, decoded once and cached."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist")
    missing = [split for split in ("train", "test") if not (root / split).is_dir()]
    if missing:
        raise DataError(
            f"{root} is not an ImageFolder dataset: it has no {' or '.join(m + '/' for m in missing)} "
            "folder (expected train/<class>/*.jpg and test/<class>/*.jpg)"
        )
    cache = _cache_dir() / f"imagefolder-{_folder_fingerprint(root)}.npz"
    if cache.is_file():
        try:
            with np.load(cache) as saved:
                return Dataset(
                    torch.from_numpy(saved["train_x"]),
                    torch.from_numpy(saved["train_y"]),
                    torch.from_numpy(saved["test_x"]),
                    torch.from_numpy(saved["test_y"]),
                    [str(c) for c in saved["classes"]],
                )
        except (OSError, KeyError, ValueError):
            pass  # a torn or old cache file: decode again and overwrite it
    train_hwc, train_labels, classes = _decode_split(root / "train")
    test_hwc, test_labels, test_classes = _decode_split(root / "test")
    if test_classes != classes:
        raise DataError(f"train/ and test/ in {root} hold different class folders")
    if train_hwc.shape[1:] != test_hwc.shape[1:]:
        raise DataError(f"train/ and test/ images in {root} have different sizes")
    train_x, train_y = _from_hwc(train_hwc, train_labels)
    test_x, test_y = _from_hwc(test_hwc, test_labels)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, train_x=train_x.numpy(), train_y=train_y.numpy(), test_x=test_x.numpy(),
                 test_y=test_y.numpy(), classes=np.array(classes))
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only cache folder only costs the next load a decode
    return Dataset(train_x, train_y, test_x, test_y, classes)


# ----------------------------------------------------------------------------- synthetic
def make_synthetic(
    n_train: int = 2000, n_test: int = 500, num_classes: int = 10, image_size: int = 32, seed: int = 0
) -> Dataset:
    """A learnable stand-in for CIFAR-10: each class has its own colour and stripe frequency.

    Stripes run horizontally with a random phase per image, so crops and flips keep the class;
    noise keeps it from being trivial. A small ResNet passes 50% (chance is 10%) in a few epochs.
    """
    rng = np.random.default_rng(seed)
    colours = rng.uniform(50, 205, size=(num_classes, 3))
    freqs = rng.uniform(1.0, 6.0, size=num_classes)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = np.arange(n) % num_classes
        rng.shuffle(labels)
        y = np.arange(image_size)[None, :, None, None] / image_size
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1, 1))
        stripes = 40 * np.sin(2 * np.pi * freqs[labels][:, None, None, None] * y + phase)
        images = colours[labels][:, None, None, :] + stripes + rng.normal(0, 30, (n, image_size, image_size, 3))
        return _from_hwc(np.clip(images, 0, 255).astype(np.uint8), labels)

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    return Dataset(train_x, train_y, test_x, test_y, [f"class{i}" for i in range(num_classes)])


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = True) -> Dataset:
    """Load `cifar10`, `imagefolder` or `synthetic` as uint8 tensors."""
    if name == "cifar10":
        return load_cifar10(data_dir or "./data", download=download)
    if name == "imagefolder":
        if data_dir is None:
            raise DataError("--dataset imagefolder needs --data-dir DIR (with train/ and test/ inside)")
        return load_imagefolder(data_dir)
    if name == "synthetic":
        return make_synthetic()
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


# ----------------------------------------------------------------------------- splits
def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (kept, held_out) with `fraction` of every class held out.

    Deterministic for a seed; the two parts never overlap and together cover every index.
    """
    generator = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_held = int(round(len(members) * fraction))
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return torch.sort(torch.cat(kept)).values, torch.sort(torch.cat(held)).values


def stratified_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Indices of `size` samples drawn with the class balance of `labels`."""
    if size >= len(labels):
        return torch.arange(len(labels))
    _, chosen = stratified_split(labels, size / len(labels), seed)
    return chosen


# ----------------------------------------------------------------------------- on the device
@dataclass
class DeviceData:
    """Train and val splits resident on the training device, plus the normalisation stats."""

    train_x: torch.Tensor  # uint8 (N, 3, H, W)
    train_y: torch.Tensor  # int64 (N,)
    val_x: torch.Tensor | None
    val_y: torch.Tensor | None
    mean: torch.Tensor  # float (1, 3, 1, 1), in 0..255 units
    std: torch.Tensor
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def device(self) -> torch.device:
        return self.train_x.device


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images (N, 3, H, W), in 0..255 units."""
    flat = images.transpose(0, 1).reshape(images.shape[1], -1).double()
    return flat.mean(1).float().view(1, -1, 1, 1), flat.std(1).float().clamp_min(1e-3).view(1, -1, 1, 1)


def to_device(
    dataset: Dataset,
    device: torch.device | str,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    subset: int | None = None,
) -> DeviceData:
    """Split the training set (stratified, seeded) and upload both parts to `device` once."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"val fraction must be in [0, 1), got {val_fraction}")
    images, labels = dataset.train_images, dataset.train_labels
    if subset is not None:
        if subset <= 0:
            raise DataError(f"--subset must be positive, got {subset}")
        chosen = stratified_subset(labels, subset, split_seed)
        images, labels = images[chosen], labels[chosen]
    train_idx, val_idx = stratified_split(labels, val_fraction, split_seed)
    mean, std = channel_stats(images[train_idx])
    device = torch.device(device)
    has_val = len(val_idx) > 0
    return DeviceData(
        train_x=images[train_idx].to(device),
        train_y=labels[train_idx].to(device),
        val_x=images[val_idx].to(device) if has_val else None,
        val_y=labels[val_idx].to(device) if has_val else None,
        mean=mean.to(device),
        std=std.to(device),
        classes=dataset.classes,
    )


@dataclass(frozen=True)
class DataSpec:
    """Where a run's images come from and how its training set is split.

    One record for the search (its trials) and `search.retrain`, so both read the same
    flags the same way.

    >>> DataSpec("synthetic").load().num_classes
    10
    """

    dataset: str = "cifar10"
    data_dir: str | None = None  # resolved to an absolute path by the caller that parsed it
    val_fraction: float = 0.1
    split_seed: int = 0
    subset: int | None = None

    def load(self, download: bool = True) -> Dataset:
        return load_dataset(self.dataset, self.data_dir, download=download)

    def to_device(self, dataset: Dataset, device: torch.device | str) -> DeviceData:
        return to_device(dataset, device, self.val_fraction, self.split_seed, self.subset)


@dataclass
class TrainArrays:
    """The training part of a dataset as numpy arrays, and nothing of its test part.

    What a search hands its trials through Ray's object store: numpy arrays are mapped
    there without a copy by every worker on the node, and sent once to other nodes. The
    test images stay on the driver, so no trial can look at them.
    """

    images: np.ndarray  # uint8 (N, 3, H, W)
    labels: np.ndarray  # int64 (N,)
    classes: list[str]

    @classmethod
    def of(cls, dataset: Dataset) -> "TrainArrays":
        return cls(dataset.train_images.numpy(), dataset.train_labels.numpy(), list(dataset.classes))

    def as_dataset(self) -> Dataset:
        import warnings

        with warnings.catch_warnings():
            # Arrays from the object store are read-only; they are only ever indexed (copied).
            warnings.simplefilter("ignore", UserWarning)
            images, labels = torch.from_numpy(self.images), torch.from_numpy(self.labels)
        empty = torch.zeros((0, *images.shape[1:]), dtype=torch.uint8)
        return Dataset(images, labels, empty, torch.zeros(0, dtype=torch.int64), self.classes)


_PREPARED: dict[tuple, DeviceData] = {}


def prepare_data(
    dataset: str,
    data_dir: str | None,
    device: torch.device | str,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    subset: int | None = None,
    download: bool = True,
) -> DeviceData:
    """Load, split and upload a dataset once per process; later calls reuse it.

    For benchmarks and scripts that train several configs in one process.
    """
    spec = DataSpec(dataset, str(Path(data_dir).resolve()) if data_dir else None, val_fraction, split_seed, subset)
    return cached_device_data(spec, device, lambda: spec.load(download=download))


def cached_device_data(spec: DataSpec, device: torch.device | str, load: Callable[[], Dataset]) -> DeviceData:
    """`spec`'s split on `device`, built with `load()` the first time in this process.

    A search worker runs many trials; each one after the first starts without splitting
    or uploading anything. One dataset per process: a new one replaces the old, so a GPU
    never holds two copies.
    """
    key = (spec, str(device))
    if key not in _PREPARED:
        _PREPARED.clear()
        _PREPARED[key] = spec.to_device(load(), device)
    return _PREPARED[key]
