"""Datasets as uint8 tensors: CIFAR-10/100, SVHN, FashionMNIST, any ImageFolder, and a
learnable synthetic set.

A dataset is decoded once into uint8 arrays (N, C, H, W) (ImageFolder decodes are cached
on disk), split into train/val by a stratified, seeded draw, and moved whole to the
training device, where `trainable.augment` crops, flips and normalises whole batches.
Nothing here runs per batch. Class count, channel count (1 for grayscale), image size and
the normalisation all come from the data: nothing downstream assumes CIFAR-10's.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from trainable.errors import DataError
from trainable.progress import Steps

# The sets torchvision downloads: its class, how its split is named, the layout of its
# arrays, and what a user copies into --data-dir where there is no internet.
TORCHVISION_SETS = {
    "cifar10": ("CIFAR10", "train", "hwc", "cifar-10-batches-py/"),
    "cifar100": ("CIFAR100", "train", "hwc", "cifar-100-python/"),
    "svhn": ("SVHN", "split", "chw", "train_32x32.mat and test_32x32.mat"),
    "fashionmnist": ("FashionMNIST", "train", "hw", "FashionMNIST/raw/"),
}
DATASETS = (*TORCHVISION_SETS, "imagefolder", "synthetic")
DATA_DIR_HELP = ("where cifar10/cifar100/svhn/fashionmnist are (downloaded on first use; default ./data), "
                 "or the ImageFolder root with train/<class>/ and test/<class>/")
CACHE_ENV = "BUDGETNAS_CACHE"


@dataclass
class Dataset:
    """A whole dataset in memory: images uint8 (N, C, H, W), labels int64 (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        """3 for colour images, 1 for grayscale: what the model's stem reads."""
        return int(self.train_images.shape[1])


def _from_hwc(images: np.ndarray, labels: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    # Channel-first by transposing axes (a reshape would scramble every image).
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(images, dtype=np.uint8).transpose(0, 3, 1, 2)))
    return x, torch.as_tensor(np.asarray(labels), dtype=torch.int64)


# ----------------------------------------------------------------------------- torchvision's sets
def _channels_first(images: Any, layout: str) -> np.ndarray:
    """A torchvision set's image array as uint8 (N, C, H, W): transposed from (N, H, W, C),
    given a channel axis when grayscale (N, H, W), kept when already (N, C, H, W)."""
    array = np.asarray(images, dtype=np.uint8)
    if layout == "hwc":
        array = array.transpose(0, 3, 1, 2)
    elif layout == "hw":
        array = array[:, None]
    return np.ascontiguousarray(array)


def _torchvision_split(name: str, root: Path, train: bool, download: bool) -> Any:
    """One split of a torchvision set: read from `root` when there, downloaded only when not.

    Trying without download first means a folder that holds the set never touches the
    network (torchvision's SVHN would otherwise fetch its .mat files again to check them).
    """
    import torchvision

    cls_name, split_key, _, files = TORCHVISION_SETS[name]
    cls = getattr(torchvision.datasets, cls_name)
    split = {"split": "train" if train else "test"} if split_key == "split" else {"train": train}
    label = cls_name.replace("CIFAR", "CIFAR-")

    def read(download: bool) -> Any:
        try:
            return cls(str(root), download=download, **split)
        except ImportError as exc:  # SVHN reads .mat files with scipy
            raise DataError(f"--dataset {name} needs {exc.name or 'scipy'}: pip install scipy "
                            "(or pip install -e '.[datasets]')") from None

    try:
        return read(download=False)
    except RuntimeError as missing:  # torchvision: "Dataset not found or corrupted."
        if not download:
            raise DataError(f"{label} is not in {root} ({missing}); run once with internet access to "
                            f"download it, or pass --dataset imagefolder --data-dir DIR with train/<class>/ "
                            "and test/<class>/ images") from None
    try:
        return read(download=True)
    except (OSError, RuntimeError) as exc:  # no network: URLError, socket errors; MNIST's mirrors all failed
        reason = str(exc).splitlines()[0][:120] if str(exc) else exc.__class__.__name__
        raise DataError(f"{label} is not in {root} and could not be downloaded ({reason}); download it where "
                        f"there is internet and copy {files} into {root}, or pass --dataset imagefolder "
                        "--data-dir DIR") from None


def load_torchvision(name: str, data_dir: str | Path, download: bool = True) -> Dataset:
    """CIFAR-10, CIFAR-100 (its 100 fine classes), SVHN (train and test; the extra split is
    not used) or FashionMNIST through `torchvision.datasets`, downloaded into `data_dir` on
    first use when allowed. FashionMNIST stays one channel."""
    _, _, layout, _ = TORCHVISION_SETS[name]
    root = Path(data_dir)
    splits = [_torchvision_split(name, root, train, download) for train in (True, False)]
    arrays = []
    for split in splits:
        labels = split.labels if name == "svhn" else split.targets  # SVHN's digit 0 is label 0 (torchvision maps 10)
        arrays += [torch.from_numpy(_channels_first(split.data, layout)),
                   torch.as_tensor(np.asarray(labels), dtype=torch.int64)]
    classes = [str(digit) for digit in range(10)] if name == "svhn" else list(splits[0].classes)
    return Dataset(*arrays, classes)


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


GRAY_MODES = ("1", "L", "LA")  # PIL modes of grayscale images (alpha dropped)


def _decode(path: str) -> np.ndarray:
    """An image as uint8 (H, W) when grayscale, else (H, W, 3)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L" if image.mode in GRAY_MODES else "RGB"), dtype=np.uint8)


def _stack(images: list[np.ndarray], colour: bool) -> np.ndarray:
    """Decoded images as one (N, H, W, C) array: C = 1 for an all-grayscale set, else 3
    (grayscale images among colour ones get their gray in all three channels)."""
    if colour:
        return np.stack([image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2) for image in images])
    return np.stack(images)[..., None]


def _decode_split(root: Path) -> tuple[list[np.ndarray], list[int], list[str]]:
    import torchvision

    try:
        folder = torchvision.datasets.ImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"cannot read images in {root}: {exc}") from None
    paths = [path for path, _ in folder.samples]
    images = []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool, \
            Steps(len(paths), f"decoding {root.name}/ (cached after the first time)") as steps:
        for image in pool.map(_decode, paths):
            images.append(image)
            steps.update()
    shapes = {image.shape[:2] for image in images}
    if len(shapes) > 1:
        first = images[0].shape[:2]
        odd = next(p for p, im in zip(paths, images) if im.shape[:2] != first)
        raise DataError(
            f"images in {root} have mixed sizes ({', '.join(sorted(f'{s[1]}x{s[0]}' for s in shapes))}), "
            f"e.g. {odd}; resize them to one size first"
        )
    return images, [label for _, label in folder.samples], list(folder.classes)


def load_imagefolder(data_dir: str | Path) -> Dataset:
    """Images in `data_dir/train/<class>/*` and `data_dir/test/<class>/*`, decoded once and cached.

    Any one size (32 px, 64 px, not square); a set whose images are all grayscale stays one
    channel."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist")
    missing = [split for split in ("train", "test") if not (root / split).is_dir()]
    if missing:
        raise DataError(
            f"{root} is not an ImageFolder dataset: it has no {' or '.join(m + '/' for m in missing)} "
            "folder (expected train/<class>/*.jpg and test/<class>/*.jpg)"
        )
    # v2: grayscale sets are cached one channel (v1 files hold them as RGB).
    cache = _cache_dir() / f"imagefolder-v2-{_folder_fingerprint(root)}.npz"
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
    train_images, train_labels, classes = _decode_split(root / "train")
    test_images, test_labels, test_classes = _decode_split(root / "test")
    if test_classes != classes:
        raise DataError(f"train/ and test/ in {root} hold different class folders")
    if train_images[0].shape[:2] != test_images[0].shape[:2]:
        raise DataError(f"train/ and test/ images in {root} have different sizes")
    colour = any(image.ndim == 3 for image in train_images + test_images)
    train_x, train_y = _from_hwc(_stack(train_images, colour), train_labels)
    test_x, test_y = _from_hwc(_stack(test_images, colour), test_labels)
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
    """Load one of `DATASETS` as uint8 tensors (torchvision's sets into `data_dir`, default ./data)."""
    if name in TORCHVISION_SETS:
        return load_torchvision(name, data_dir or "./data", download=download)
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

    train_x: torch.Tensor  # uint8 (N, C, H, W)
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
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def device(self) -> torch.device:
        return self.train_x.device


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in 0..255 units."""
    flat = images.transpose(0, 1).reshape(images.shape[1], -1).double()
    return flat.mean(1).float().view(1, -1, 1, 1), flat.std(1).float().clamp_min(1e-3).view(1, -1, 1, 1)


def split_indices(labels: torch.Tensor, val_fraction: float, split_seed: int = 0, subset: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices into `labels`: the stratified `subset` if one is asked, then
    `val_fraction` of each class held out. The one place a run's split is decided, so what
    plans a run (`search.auto` counts the validation images) sees the split it trains on.

    >>> train, val = split_indices(torch.arange(200) % 10, 0.1, subset=100)
    >>> len(train), len(val), len(set(train.tolist()) & set(val.tolist()))
    (90, 10, 0)

    Each class rounds on its own: 5 images a class hold none out at 0.1.

    >>> [len(part) for part in split_indices(torch.arange(100) % 10, 0.1, subset=50)]
    [50, 0]
    """
    if not 0 <= val_fraction < 1:
        raise DataError(f"val fraction must be in [0, 1), got {val_fraction}")
    chosen = torch.arange(len(labels))
    if subset is not None:
        if subset <= 0:
            raise DataError(f"--subset must be positive, got {subset}")
        chosen = stratified_subset(labels, subset, split_seed)
    train_idx, val_idx = stratified_split(labels[chosen], val_fraction, split_seed)
    return chosen[train_idx], chosen[val_idx]


def to_device(
    dataset: Dataset,
    device: torch.device | str,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    subset: int | None = None,
) -> DeviceData:
    """Split the training set (stratified, seeded) and upload both parts to `device` once."""
    images, labels = dataset.train_images, dataset.train_labels
    train_idx, val_idx = split_indices(labels, val_fraction, split_seed, subset)
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

    def split_sizes(self, labels: torch.Tensor) -> tuple[int, int]:
        """(train, val) image counts of this split of a training set with these labels."""
        train_idx, val_idx = split_indices(labels, self.val_fraction, self.split_seed, self.subset)
        return len(train_idx), len(val_idx)


@dataclass
class TrainArrays:
    """The training part of a dataset as numpy arrays, and nothing of its test part.

    What a search hands its trials through Ray's object store: numpy arrays are mapped
    there without a copy by every worker on the node, and sent once to other nodes. The
    test images stay on the driver, so no trial can look at them.
    """

    images: np.ndarray  # uint8 (N, C, H, W)
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
