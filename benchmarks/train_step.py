"""Benchmark 2: training throughput of the project's loop against a plain seed-style loop.

Same model, same batch size, same optimizer (AdamW). The seed-style loop reads batches from
a DataLoader with per-image torchvision transforms and trains in fp32 with a contiguous
NCHW layout; the project's loop trains from device-resident uint8 data (and on CUDA in bf16
with channels_last, optionally compiled).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import device, images, timed
from benchmarks.data_pipeline import SeedStyleImages
from trainable.data import to_device
from trainable.loop import Trainer
from trainable.model import build_model, count_params
from trainable import zoo
from trainable.zoo import architecture

SMALL = {"blocks": [1, 1, 1], "widths": [16, 32, 64]}  # CPU-sized
SEED = architecture(zoo.SEED)  # 4,918,602 params


def seed_style_epoch(arch: dict, loader: Any, dev: torch.device, bf16_channels_last: bool = False) -> int:
    model = build_model(arch).to(dev)
    if bf16_channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=5e-2)
    model.train()
    seen = 0
    for x, y in loader:
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        if bf16_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16_channels_last and dev.type == "cuda"):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen


def run(data_dir: str | None, quick: bool, batch_size: int = 128) -> dict[str, Any]:
    import torchvision.transforms as T

    dev = device()
    on_cuda = dev.type == "cuda"
    arch = SEED if on_cuda else SMALL
    subset = (2048 if quick else 8192) if not on_cuda else (10_000 if quick else None)
    dataset, source = images(data_dir, subset)
    data = to_device(dataset, dev, val_fraction=0.0)
    config = {**arch, "epochs": 3, "batch_size": batch_size, "warmup_epochs": 0}
    n = len(data.train_x)
    results: dict[str, Any] = {"source": source, "device": str(dev), "model": arch,
                               "params": count_params(arch), "images": n, "batch_size": batch_size}

    def ours(compile_model: bool, policy: str = "none") -> float:
        trainer = Trainer({**config, "augment_policy": policy}, data, compile_model=compile_model)
        timed(trainer.train_epoch, dev)  # warm-up: cudnn autotuning, compilation, the policy's constants
        seconds, _ = timed(trainer.train_epoch, dev)
        return trainer.steps_per_epoch * trainer.batch_size / seconds

    results["ours_images_per_s"] = ours(False)
    # The same step with TrivialAugment (the space draws a policy 3 times in 4): its cost
    # relative to crop + flip alone.
    results["ours_trivialaugment_images_per_s"] = ours(False, "trivialaugment")
    results["trivialaugment_step_cost"] = results["ours_images_per_s"] / results["ours_trivialaugment_images_per_s"]
    if on_cuda:
        results["ours_compiled_images_per_s"] = ours(True)

    mean, std = data.mean.cpu(), data.std.cpu()
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize((mean / 255).flatten().tolist(), (std / 255).flatten().tolist())])
    seed_set = SeedStyleImages(dataset.train_images.permute(0, 2, 3, 1).numpy(), dataset.train_labels.numpy(),
                               transform)
    loader = torch.utils.data.DataLoader(seed_set, batch_size=batch_size, shuffle=True, drop_last=True,
                                         num_workers=os.cpu_count() or 1, pin_memory=on_cuda)
    seconds, seen = timed(lambda: seed_style_epoch(arch, loader, dev), dev)
    results["seed_style_fp32_images_per_s"] = seen / seconds
    if on_cuda:
        seconds, seen = timed(lambda: seed_style_epoch(arch, loader, dev, bf16_channels_last=True), dev)
        results["seed_style_bf16_channels_last_images_per_s"] = seen / seconds
    results["speedup"] = results["ours_images_per_s"] / results["seed_style_fp32_images_per_s"]
    return results
