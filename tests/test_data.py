import numpy as np
import pytest
import torch
from PIL import Image

from trainable.data import load_dataset, load_imagefolder, stratified_split, to_device
from trainable.errors import DataError


def test_split_is_stratified_disjoint_and_seeded():
    labels = torch.arange(1000) % 10
    train, val = stratified_split(labels, 0.1, seed=3)
    assert len(set(train.tolist()) & set(val.tolist())) == 0
    assert len(train) + len(val) == 1000
    assert torch.bincount(labels[val]).tolist() == [10] * 10
    again, _ = stratified_split(labels, 0.1, seed=3)
    other, _ = stratified_split(labels, 0.1, seed=4)
    assert torch.equal(train, again) and not torch.equal(train, other)


def test_device_data_is_uint8_and_split(synthetic):
    data = to_device(synthetic, "cpu", val_fraction=0.25, split_seed=0, subset=200)
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape[1:] == (3, 32, 32)
    assert len(data.train_x) == 150 and len(data.val_x) == 50
    assert data.mean.shape == (1, 3, 1, 1)


def write_folder(root, sizes=((8, 8),), per_class=3):
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                w, h = sizes[i % len(sizes)]
                pixels = np.full((h, w, 3), 40 if cls == "cat" else 200, dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_imagefolder_loads_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGETNAS_CACHE", str(tmp_path / "cache"))
    write_folder(tmp_path / "ds")
    first = load_imagefolder(tmp_path / "ds")
    assert first.classes == ["cat", "dog"]
    assert first.train_images.shape == (6, 3, 8, 8) and first.train_images.dtype == torch.uint8
    assert first.train_images[first.train_labels == 0].max() == 40
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    import trainable.data

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although the cache holds it")

    monkeypatch.setattr(trainable.data, "_decode", no_decoding)
    second = load_imagefolder(tmp_path / "ds")  # from the cache: nothing decoded
    assert torch.equal(first.train_images, second.train_images)


@pytest.mark.parametrize("case", ["missing", "no_test", "mixed_sizes", "unknown_dataset"])
def test_bad_data_is_refused(tmp_path, monkeypatch, case):
    monkeypatch.setenv("BUDGETNAS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    if case == "missing":
        with pytest.raises(DataError, match="does not exist"):
            load_imagefolder(root)
    elif case == "no_test":
        (root / "train" / "a").mkdir(parents=True)
        with pytest.raises(DataError, match="no test/"):
            load_imagefolder(root)
    elif case == "mixed_sizes":
        write_folder(root, sizes=((8, 8), (9, 8)))
        with pytest.raises(DataError, match="mixed sizes"):
            load_imagefolder(root)
    else:
        with pytest.raises(DataError, match="unknown dataset"):
            load_dataset("mnist")


def test_cifar10_offline_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="CIFAR-10 is not in"):
        load_dataset("cifar10", tmp_path, download=False)
