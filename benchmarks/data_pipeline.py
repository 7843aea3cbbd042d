"""Benchmark 1: one epoch of augmented, normalised training batches, two ways.

- ours: uint8 data resident on the device, crop/flip/normalise for a whole batch at once;
- seed-style: torchvision RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize
  per image through a DataLoader with one worker per core (the course project's pipeline).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from benchmarks.common import device, images, timed
from trainable.augment import augment_batch
from trainable.data import channel_stats


class SeedStyleImages(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: uint8 HWC -> PIL image -> transforms."""

    def __init__(self, hwc: np.ndarray, labels: np.ndarray, transform: Any):
        self.hwc, self.labels, self.transform = hwc, labels, transform

    def __len__(self) -> int:
        return len(self.hwc)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.hwc[index])), int(self.labels[index])


def run(data_dir: str | None, quick: bool, batch_size: int = 128) -> dict[str, Any]:
    import torchvision.transforms as T

    dataset, source = images(data_dir, 5000 if quick else None)
    dev = device()
    x, y = dataset.train_images, dataset.train_labels
    mean, std = channel_stats(x)
    n = len(x)

    x_dev, y_dev, mean_dev, std_dev = x.to(dev), y.to(dev), mean.to(dev), std.to(dev)
    generator = torch.Generator(device=dev).manual_seed(0)

    def ours_epoch() -> int:
        order = torch.randperm(n, device=dev, generator=generator)
        checksum = torch.zeros((), device=dev)
        for start in range(0, n, batch_size):
            batch = order[start:start + batch_size]
            out = augment_batch(x_dev[batch], mean_dev, std_dev, crop_padding=4, flip=True, generator=generator)
            checksum += out[:, 0, 0, 0].sum() + y_dev[batch].sum()  # keep the work from being skipped
        return int(checksum.isfinite())

    timed(ours_epoch, dev)  # warm-up (allocator, kernels)
    ours_s, _ = timed(ours_epoch, dev)

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize((mean / 255).flatten().tolist(), (std / 255).flatten().tolist())])
    seed_set = SeedStyleImages(x.permute(0, 2, 3, 1).numpy(), y.numpy(), transform)
    workers = os.cpu_count() or 1
    loader = torch.utils.data.DataLoader(seed_set, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         pin_memory=dev.type == "cuda", persistent_workers=False)

    def seed_epoch() -> int:
        count = 0
        for images_, labels in loader:
            images_ = images_.to(dev, non_blocking=True)
            count += len(labels)
        return count

    seed_s, count = timed(seed_epoch, dev)
    return {
        "source": source, "images": n, "batch_size": batch_size, "device": str(dev), "workers": workers,
        "ours_images_per_s": n / ours_s, "seed_style_images_per_s": count / seed_s,
        "speedup": (n / ours_s) / (count / seed_s),
    }
