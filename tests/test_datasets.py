"""Other datasets: CIFAR-100, SVHN and FashionMNIST through torchvision.datasets, read from
small files written here in each set's own on-disk format (no network), and ImageFolder
sets at another size and in grayscale. Each runs a search, a retrain and a prediction.

torchvision checks CIFAR-100's and SVHN's files against the MD5 sums of the published
archives, which files written here cannot match. For those two, `published_files` keeps
torchvision's check that each file is there and drops only the comparison of its MD5 sum;
everything else (torchvision's readers, its label mapping, our loaders) runs as it is.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import rows_of, settings
from trainable.data import load_dataset, load_imagefolder
from trainable.errors import DataError
from trainable.model import count_params


def pixels(n: int, channels: int, size: int, labels: np.ndarray, seed: int) -> np.ndarray:
    """uint8 images (N, C, H, W): a brightness per class plus noise, so the classes differ."""
    rng = np.random.default_rng(seed)
    base = (40 + 170 * (labels % 7) / 6)[:, None, None, None]
    return np.clip(base + rng.normal(0, 25, (n, channels, size, size)), 0, 255).astype(np.uint8)


def split_of(n: int, classes: int, channels: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % classes
    return pixels(n, channels, size, labels, seed), labels


# ----------------------------------------------------------------------------- the formats
def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100) -> dict:
    """cifar-100-python/{train,test,meta}: pickled dicts, rows of 3,072 bytes (red plane, green, blue)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for name, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = split_of(n, 100, 3, 32, seed)
        entry = {"data": images.reshape(n, -1), "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist(),
                 "filenames": [f"{i}.png" for i in range(n)], "batch_label": name}
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle)
        written[name] = (images, labels)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({"fine_label_names": [f"fine{i}" for i in range(100)],
                     "coarse_label_names": [f"coarse{i}" for i in range(20)]}, handle)
    return written


def write_svhn(root: Path, n_train: int = 120, n_test: int = 60) -> dict:
    """{train,test}_32x32.mat: X is 32 x 32 x 3 x N, y is N x 1 with the digit 0 stored as 10."""
    from scipy.io import savemat

    root.mkdir(parents=True)
    written = {}
    for name, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = split_of(n, 10, 3, 32, seed)
        savemat(root / f"{name}_32x32.mat", {"X": images.transpose(2, 3, 1, 0),
                                              "y": np.where(labels == 0, 10, labels)[:, None].astype(np.uint8)})
        written[name] = (images, labels)
    return written


def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format of MNIST: a magic (0, 0, 8 = unsigned byte, dimensions), each size as a
    big-endian int32, then the bytes."""
    with open(path, "wb") as handle:
        handle.write(struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape))
        handle.write(array.astype(np.uint8).tobytes())


def write_fashionmnist(root: Path, n_train: int = 120, n_test: int = 60) -> dict:
    """FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, 28 x 28 grayscale, and the
    .gz archives beside them as a download leaves them."""
    folder = root / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    written = {}
    for prefix, name, n, seed in (("train", "train", n_train, 0), ("t10k", "test", n_test, 1)):
        images, labels = split_of(n, 10, 1, 28, seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images[:, 0])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
        for kind in ("images-idx3", "labels-idx1"):
            raw = folder / f"{prefix}-{kind}-ubyte"
            with open(raw, "rb") as source, gzip.open(f"{raw}.gz", "wb") as target:
                target.write(source.read())
        written[name] = (images, labels)
    return written


def write_imagefolder(root: Path, size: int, gray: bool, per_class: int = 30) -> dict:
    """train/<class>/*.png and test/<class>/*.png, `size` px, grayscale ('L') or RGB."""
    written = {}
    for name, n, seed in (("train", 3 * per_class, 0), ("test", 3 * 6, 1)):
        images, labels = split_of(n, 3, 1 if gray else 3, size, seed)
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = root / name / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            array = image[0] if gray else image.transpose(1, 2, 0)
            Image.fromarray(array, mode="L" if gray else "RGB").save(folder / f"{index:04d}.png")
        written[name] = (images, labels)
    return written


@pytest.fixture
def published_files(monkeypatch):
    """torchvision's file check without its MD5 comparison (see the module's docstring)."""
    import torchvision.datasets.cifar
    import torchvision.datasets.svhn

    def exists(fpath, md5=None):
        return os.path.isfile(fpath)

    for module in (torchvision.datasets.cifar, torchvision.datasets.svhn):
        monkeypatch.setattr(module, "check_integrity", exists)


# ----------------------------------------------------------------------------- reading
@pytest.mark.parametrize("name", ["cifar100", "svhn", "fashionmnist"])
def test_each_set_reads_back_pixel_for_pixel_from_its_own_format(tmp_path, published_files, name):
    writer = {"cifar100": write_cifar100, "svhn": write_svhn, "fashionmnist": write_fashionmnist}[name]
    written = writer(tmp_path / name)
    dataset = load_dataset(name, tmp_path / name, download=False)
    for split, images, labels in (("train", dataset.train_images, dataset.train_labels),
                                  ("test", dataset.test_images, dataset.test_labels)):
        expected_images, expected_labels = written[split]
        assert images.dtype == torch.uint8 and torch.equal(images, torch.from_numpy(expected_images)), split
        assert labels.tolist() == expected_labels.tolist(), split  # SVHN's stored 10 is the digit 0 again
    classes, channels = {"cifar100": (100, 3), "svhn": (10, 3), "fashionmnist": (10, 1)}[name]
    assert (dataset.num_classes, dataset.channels) == (classes, channels)
    if name == "cifar100":
        assert dataset.classes[:2] == ["fine0", "fine1"]  # the 100 fine classes, in the meta file's order
    if name == "fashionmnist":
        assert dataset.classes[0] == "T-shirt/top"


def test_torchvision_still_refuses_files_that_are_not_the_published_ones(tmp_path):
    # Without the fixture, torchvision's MD5 check runs: our loader turns it into one line.
    write_cifar100(tmp_path / "c")
    with pytest.raises(DataError, match="CIFAR-100 is not in .*run once with internet"):
        load_dataset("cifar100", tmp_path / "c", download=False)


def test_grayscale_and_mixed_imagefolders(tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGETNAS_CACHE", str(tmp_path / "cache"))
    images, labels = write_imagefolder(tmp_path / "gray", 20, gray=True, per_class=2)["train"]
    expected = torch.from_numpy(images[np.argsort(labels, kind="stable")])  # ImageFolder's order: class, then file
    gray = load_imagefolder(tmp_path / "gray")
    assert gray.channels == 1 and torch.equal(gray.train_images, expected)
    # One colour image among grayscale ones: the set is colour, each gray image in all three channels.
    red = np.zeros((20, 20, 3), dtype=np.uint8) + np.array([255, 0, 0], dtype=np.uint8)
    Image.fromarray(red).save(tmp_path / "gray" / "train" / "class0" / "0000x-red.png")  # sorts after 0000.png
    mixed = load_imagefolder(tmp_path / "gray")
    assert mixed.channels == 3
    assert torch.equal(mixed.train_images[0], expected[0].expand(3, 20, 20))
    assert mixed.train_images[1, :, 0, 0].tolist() == [255, 0, 0]


# ----------------------------------------------------------------------------- end to end
# name -> (class count, channel count, image side, extra search settings)
CASES = {
    "cifar100": (100, 3, 32, {"val_fraction": 0.5}),  # two images a class: one of each held out
    "svhn": (10, 3, 32, {}),
    "fashionmnist": (10, 1, 28, {}),
    "imagefolder": (3, 3, 64, {}),
}


def unlabelled_input(folder: Path, name: str, channels: int, side: int) -> Path:
    """What a user would label: an .npy array (N x H x W for a grayscale model) or a folder of PNGs."""
    images, _ = split_of(12, 3, channels, side, seed=7)
    if name in ("svhn", "imagefolder"):
        target = folder / "unlabelled"
        target.mkdir()
        for index, image in enumerate(images):
            Image.fromarray(image.transpose(1, 2, 0)).save(target / f"{index}.png")
        return target
    target = folder / "unlabelled.npy"
    np.save(target, images[:, 0] if channels == 1 else images.transpose(0, 2, 3, 1))
    return target


@pytest.mark.parametrize("name", list(CASES))
def test_a_search_a_retrain_and_a_prediction_on_each_set(ray_session, space_file, tmp_path, monkeypatch,
                                                        published_files, cli, name):
    from search.predict import main as predict_main
    from search.records import read_history
    from search.retrain import main as retrain_main
    from search.run import run_search

    monkeypatch.setenv("BUDGETNAS_CACHE", str(tmp_path / "cache"))
    classes, channels, side, extra = CASES[name]
    data_dir = tmp_path / "data"
    if name == "imagefolder":
        write_imagefolder(data_dir, side, gray=False)
    else:
        {"cifar100": write_cifar100, "svhn": write_svhn, "fashionmnist": write_fashionmnist}[name](data_dir)
    result = run_search(settings(tmp_path / "runs", space_file, dataset=name, data_dir=str(data_dir), subset=None,
                                 trials=2, max_epochs=1, **extra))
    folder = result.folder
    rows = rows_of(folder)
    assert len(rows) == 2 and all(row.status == "completed" for row in rows)
    for row in rows:  # the exact count with the data's own classes and channels
        assert row.params == count_params(row.run_config, classes, channels)
    # Each trial's best is its epoch's val accuracy, a share of the val images it got right.
    history = read_history(folder)
    for row in rows:
        epochs = [h["val_acc"] for h in history if h["trial_id"] == row.trial_id]
        assert epochs and row.best_val_acc == pytest.approx(max(epochs)) and 0 <= max(epochs) <= 1
    assert json.loads((folder / "settings.json").read_text())["dataset"] == name

    out = tmp_path / "final"
    code, stdout, err = cli(retrain_main, [folder, "--epochs", 1, "--out", out])
    assert code == 0, err
    model = json.loads((out / "model.json").read_text())
    assert (model["num_classes"], model["channels"], model["image_size"]) == (classes, channels, [side, side])
    weights = torch.load(out / "weights.pt", weights_only=True)
    stem = next(value for key, value in weights.items() if key.startswith("stem.0"))
    assert stem.shape[1] == channels  # a grayscale set gets a one-channel stem
    assert weights["head.weight"].shape[0] == classes

    submission = tmp_path / "submission.csv"
    code, stdout, err = cli(predict_main, [out, "--input", unlabelled_input(tmp_path, name, channels, side),
                                           "--out", submission])
    assert code == 0, err
    with open(submission, newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["ID", "Labels"] and len(table) == 13
    assert all(0 <= int(label) < classes for _, label in table[1:])
    if channels == 1:  # colour images for a grayscale model: one line, nothing written
        colour = tmp_path / "colour.npy"
        np.save(colour, np.zeros((2, side, side, 3), dtype=np.uint8))
        code, _, err = cli(predict_main, [out, "--input", colour, "--out", tmp_path / "other.csv"])
        assert code == 2 and "grayscale model" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "other.csv").exists()
