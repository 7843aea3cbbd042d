"""Benchmark 1: one epoch of augmented, normalised training batches, two ways, twice.

- ours: uint8 data resident on the device, crop/flip/normalise for a whole batch at once;
- seed-style: torchvision RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize
  per image through a DataLoader with one worker per core (the course project's pipeline).

Then the same two with TrivialAugment added: ours per image on the whole batch
(`trainable.policy`), against torchvision's TrivialAugmentWide per image in the DataLoader.
The DataLoader keeps its workers (persistent) and is warmed up before it is timed.

Also the ops (aten ops, about one GPU kernel each) per augmented batch of 128 for crop +
flip + cutout and each policy, next to the seed model's forward and backward: counted on
the `meta` device, so the same on every machine.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from benchmarks.common import count_ops, device, images, timed
from trainable.augment import augment_batch
from trainable.data import channel_stats
from trainable.zoo import SEED, architecture


class SeedStyleImages(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: uint8 HWC -> PIL image -> transforms."""

    def __init__(self, hwc: np.ndarray, labels: np.ndarray, transform: Any):
        self.hwc, self.labels, self.transform = hwc, labels, transform

    def __len__(self) -> int:
        return len(self.hwc)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.hwc[index])), int(self.labels[index])


def run(data_dir: str | None, quick: bool, batch_size: int = 128, dev: torch.device | None = None,
        workers: int | None = None) -> dict[str, Any]:
    dataset, source = images(data_dir, 5000 if quick else None)
    dev = dev or device()
    result = {"source": source, "images": len(dataset.train_images), "batch_size": batch_size, "device": str(dev)}
    for label, policy in (("", False), ("policy_", True)):
        measured = compare(dataset, dev, batch_size, policy, workers or os.cpu_count() or 1)
        result.update({label + key: value for key, value in measured.items()})
    result["policy_cost_vs_crop_flip"] = result["ours_images_per_s"] / result["policy_ours_images_per_s"]
    result["ops_per_batch"] = ops_per_batch(batch_size)
    return result


def ops_per_batch(batch_size: int = 128) -> dict[str, int]:
    """Aten ops of one augmented batch (crop + flip + cutout 16, then each policy) and of the
    seed model's forward + backward on it, on the meta device."""
    import torch.nn.functional as F

    from trainable.model import build_model
    from trainable.policy import PolicyAugment

    meta = torch.device("meta")
    x = torch.empty(batch_size, 3, 32, 32, dtype=torch.uint8, device=meta)
    mean, std = torch.zeros(1, 3, 1, 1, device=meta), torch.ones(1, 3, 1, 1, device=meta)
    out: dict[str, int] = {}
    for name in ("none", "trivialaugment", "randaugment", "autoaugment"):
        policy = PolicyAugment(name) if name != "none" else None
        augment_batch(x, mean, std, cutout_size=16, policy=policy)  # constants are made on the first batch
        label = "crop_flip_cutout" if name == "none" else f"crop_flip_cutout_{name}"
        out[label] = count_ops(lambda: augment_batch(x, mean, std, cutout_size=16, policy=policy))
    model = build_model(architecture(SEED)).to(meta)
    labels = torch.empty(batch_size, dtype=torch.int64, device=meta)
    images = torch.empty(batch_size, 3, 32, 32, device=meta)
    out["seed_model_forward_backward"] = count_ops(lambda: F.cross_entropy(model(images), labels).backward())
    return out


def compare(dataset: Any, dev: torch.device, batch_size: int, trivialaugment: bool, workers: int,
            cutout: int = 0) -> dict[str, Any]:
    """Images per second of one epoch, ours against the seed-style DataLoader."""
    import torchvision.transforms as T

    from trainable.policy import PolicyAugment

    x, y = dataset.train_images, dataset.train_labels
    mean, std = channel_stats(x)
    n = len(x)

    x_dev, y_dev, mean_dev, std_dev = x.to(dev), y.to(dev), mean.to(dev), std.to(dev)
    generator = torch.Generator(device=dev).manual_seed(0)
    policy = PolicyAugment("trivialaugment") if trivialaugment else None

    def ours_epoch() -> int:
        order = torch.randperm(n, device=dev, generator=generator)
        checksum = torch.zeros((), device=dev)
        for start in range(0, n, batch_size):
            batch = order[start:start + batch_size]
            out = augment_batch(x_dev[batch], mean_dev, std_dev, crop_padding=4, flip=True, cutout_size=cutout,
                                policy=policy, generator=generator)
            checksum += out[:, 0, 0, 0].sum() + y_dev[batch].sum()  # keep the work from being skipped
        return int(checksum.isfinite())

    timed(ours_epoch, dev)  # warm-up (allocator, kernels)
    ours_s, _ = timed(ours_epoch, dev)

    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    steps += [T.TrivialAugmentWide()] if trivialaugment else []
    steps += [T.ToTensor(), T.Normalize((mean / 255).flatten().tolist(), (std / 255).flatten().tolist())]
    steps += [T.RandomErasing(p=1.0, scale=(cutout**2 / 1024,) * 2, ratio=(1.0, 1.0))] if cutout else []
    transform = T.Compose(steps)
    seed_set = SeedStyleImages(x.permute(0, 2, 3, 1).numpy(), y.numpy(), transform)
    # Persistent workers, warmed up: their start-up is not charged to the epoch measured.
    loader = torch.utils.data.DataLoader(seed_set, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         pin_memory=dev.type == "cuda", persistent_workers=workers > 0)
    for index, _ in enumerate(loader):
        if index >= 2 * max(1, workers):
            break

    def seed_epoch() -> int:
        count = 0
        for images_, labels in loader:
            images_ = images_.to(dev, non_blocking=True)
            count += len(labels)
        return count

    seed_s, count = timed(seed_epoch, dev)
    return {"workers": workers, "ours_images_per_s": n / ours_s, "seed_style_images_per_s": count / seed_s,
            "speedup": (n / ours_s) / (count / seed_s)}
