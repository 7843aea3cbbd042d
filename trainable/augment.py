"""Batched augmentation on the training device: crop, flip, policy, normalise, cutout.

Per-image CPU transforms (PIL, a DataLoader) starve a GPU on 32x32 images, and more so when
several trials share one card. Here a whole batch is augmented with a handful of tensor ops:

- random crop from a reflect-padded image and horizontal flip are one gather: each output
  pixel reads the input pixel at a shifted, reflected (and, if flipped, mirrored) index, so
  no padded copy is ever made and the data stays uint8 until the crop is done;
- normalisation happens after the crop, on the smaller tensor;
- cutout zeroes a per-image square of the normalised batch (zero is the mean colour).

A config's pixel sizes (crop padding, cutout) are those of a 32x32 image, the size the
recipes were tuned on; on other sizes they scale with the shorter side (`scaled`), as the
policies' translations do (`trainable.policy.magnitude_table`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def make_mixer(config: dict[str, Any], num_classes: int) -> Callable[..., Any] | None:
    """torchvision's MixUp and/or CutMix (one of the two per mixed batch), or None when both alphas are 0."""
    from torchvision.transforms import v2

    mixers = []
    if config["mixup_alpha"] > 0:
        mixers.append(v2.MixUp(alpha=config["mixup_alpha"], num_classes=num_classes))
    if config["cutmix_alpha"] > 0:
        mixers.append(v2.CutMix(alpha=config["cutmix_alpha"], num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


REFERENCE_SIZE = 32  # the image side a config's pixel sizes are given for


def scaled(pixels: int, side: int) -> int:
    """A config's pixel size (for a 32-pixel side) at `side` pixels.

    >>> scaled(4, 32), scaled(4, 64), scaled(4, 28), scaled(8, 96), scaled(0, 64)
    (4, 8, 4, 24, 0)
    """
    return int(round(pixels * side / REFERENCE_SIZE))


def batch_augmentation(config: dict[str, Any], height: int, width: int) -> dict[str, Any]:
    """`augment_batch`'s keyword arguments for a (defaulted) config on height x width images:
    crop padding and cutout scaled from 32 px, the policy built for the size (or None)."""
    from trainable.policy import PolicyAugment

    side = min(height, width)
    policy = None
    if config["augment_policy"] != "none":
        policy = PolicyAugment(config["augment_policy"], config["randaugment_n"], config["randaugment_m"],
                               (height, width))
    return {"crop_padding": scaled(config["crop_padding"], side), "flip": config["flip"],
            "cutout_size": scaled(config["cutout"], side), "policy": policy}


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    # Reflect padding without repeating the edge: -1 -> 1, size -> size - 2.
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def shift_mirror(
    images: torch.Tensor, dy: torch.Tensor | int, dx: torch.Tensor | int, mirrored: torch.Tensor | bool
) -> torch.Tensor:
    """Shift each image by (dy, dx) pixels over a reflect-padded border and mirror where asked.

    `dy`, `dx` and `mirrored` are ints/bools for the whole batch or (B, 1) tensors per image.
    One gather: no padded copy is made and the dtype is kept.
    """
    batch, channels, height, width = images.shape
    device = images.device
    rows = _reflect(torch.arange(height, device=device).expand(batch, height) + dy, height)
    cols = _reflect(torch.arange(width, device=device).expand(batch, width) + dx, width)
    if isinstance(mirrored, torch.Tensor):
        cols = torch.where(mirrored, width - 1 - cols, cols)
    elif mirrored:  # one bool for the batch: decided on the host, no tensor made from it
        cols = width - 1 - cols
    # One flat index per output pixel, shared by the channels through an expanded view: a
    # single gather. Measured on the CPU (batch 128, 32x32): 0.55 ms, against 3.0 ms for
    # advanced indexing with four broadcast index tensors.
    flat = (rows.unsqueeze(2) * width + cols.unsqueeze(1)).view(batch, 1, height * width)
    pixels = images.reshape(batch, channels, height * width)
    return pixels.gather(2, flat.expand(batch, channels, height * width)).view(batch, channels, height, width)


def crop_flip(
    images: torch.Tensor, crop_padding: int, flip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop of `images` (B, C, H, W) from a reflect-padded copy, and a random mirror.

    Returns a tensor of the same shape and dtype on the same device.
    """
    if crop_padding <= 0 and not flip:
        return images
    batch, _, height, width = images.shape
    device = images.device
    dy = dx = 0
    mirrored = False
    if crop_padding > 0:
        pad = min(crop_padding, height - 1, width - 1)  # reflect needs pad < size
        dy = torch.randint(-pad, pad + 1, (batch, 1), device=device, generator=generator)
        dx = torch.randint(-pad, pad + 1, (batch, 1), device=device, generator=generator)
    if flip:
        mirrored = torch.rand(batch, 1, device=device, generator=generator) < 0.5
    return shift_mirror(images, dy, dx, mirrored)


# Test-time augmentation: the image and its mirror, each also shifted one pixel both ways
# along the diagonal; logits are averaged over the six views.
TTA_VIEWS = [(dy, dx, mirror) for mirror in (False, True) for dy, dx in ((0, 0), (1, 1), (-1, -1))]


def tta_views(config: dict) -> list[tuple[int, int, bool]]:
    """The TTA views a config's training covered: mirrors only if it flipped, shifts only if it cropped.

    >>> len(tta_views({"flip": True, "crop_padding": 4})), tta_views({"flip": False, "crop_padding": 0})
    (6, [(0, 0, False)])
    """
    return [(dy, dx, mirror) for dy, dx, mirror in TTA_VIEWS
            if (config.get("flip", True) or not mirror) and (config.get("crop_padding", 4) > 0 or dy == dx == 0)]


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) to float32, minus the channel mean, over the channel std (0..255 units)."""
    return (images.float() - mean) / std


def cutout(images: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero a `size` x `size` square per image, centred anywhere (it may hang off the edge)."""
    if size <= 0:
        return images
    batch, _, height, width = images.shape
    device = images.device
    cy = torch.randint(0, height, (batch, 1, 1), device=device, generator=generator)
    cx = torch.randint(0, width, (batch, 1, 1), device=device, generator=generator)
    ys = torch.arange(height, device=device).view(1, height, 1)
    xs = torch.arange(width, device=device).view(1, 1, width)
    top, left = cy - size // 2, cx - size // 2
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return images.masked_fill(inside.unsqueeze(1), 0.0)


def augment_batch(
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    crop_padding: int = 4,
    flip: bool = True,
    cutout_size: int = 0,
    policy: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 batch in, normalised float32 batch out: crop + flip, policy, normalise, cutout.

    The order of the published recipes: the policy (`trainable.policy.PolicyAugment`) sees
    the cropped, flipped uint8 image, cutout the normalised one.

    >>> x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    >>> augment_batch(x, torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)).shape
    torch.Size([2, 3, 8, 8])
    """
    out = crop_flip(images, crop_padding, flip, generator)
    if policy is not None:
        out = policy(out, generator)
    return cutout(normalize(out, mean, std), cutout_size, generator)


def augmentation_grid(config: dict, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                      num_classes: int, seed: int = 0) -> torch.Tensor:
    """Each image beside what a training step of `config` makes of it: (2N, C, H, W) uint8.

    The trial's own path: crop + flip, policy, normalise, cutout, then MixUp/CutMix if the
    config mixes (shown on every batch here), and back to pixels for the eye.
    """
    from trainable.config import with_defaults

    cfg = with_defaults(config)
    generator = torch.Generator(device=images.device).manual_seed(seed)
    out = augment_batch(images, mean, std, generator=generator, **batch_augmentation(cfg, *images.shape[-2:]))
    mixer = make_mixer(cfg, num_classes)
    if mixer is not None:
        torch.manual_seed(seed)
        out, _ = mixer(out, torch.zeros(len(images), dtype=torch.int64))
    pixels = (out * std + mean).round().clamp(0, 255).to(torch.uint8)
    return torch.stack([images, pixels], dim=1).flatten(0, 1)


def main(argv: list[str] | None = None) -> int:
    """python -m trainable.augment --config cfg.json --dataset ... --data-dir ... --out grid.png"""
    from pathlib import Path

    import torchvision

    from trainable.cli import ArgumentParser, read_json
    from trainable.config import validate_config
    from trainable.data import DATA_DIR_HELP, DATASETS, DataSpec, channel_stats
    from trainable.errors import UserError

    parser = ArgumentParser(prog="python -m trainable.augment",
                            description="Write a grid of training images as a trial of the config sees them, "
                                        "each original beside its augmented version.")
    parser.add_argument("--config", required=True, help="JSON file with the config dict")
    parser.add_argument("--dataset", choices=DATASETS, default="cifar10", help="data source (default cifar10)")
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--count", type=int, default=32, help="training images to show (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="which images and which augmentation draws (default 0)")
    args = parser.parse_args(argv)
    if args.count <= 0:
        raise UserError(f"--count must be positive, got {args.count}")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out must name a .png file, got {out}")
    config = validate_config(read_json(args.config, "config file"))
    dataset = DataSpec(args.dataset, args.data_dir).load(download=False)
    chosen = torch.randperm(len(dataset.train_images), generator=torch.Generator().manual_seed(args.seed))[:args.count]
    images = dataset.train_images[chosen]
    mean, std = channel_stats(dataset.train_images)
    grid = augmentation_grid(config, images, mean, std, dataset.num_classes, args.seed)
    big = torch.nn.functional.interpolate(grid.float(), scale_factor=3, mode="nearest") / 255.0
    out.parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(big, out, nrow=8, padding=4, pad_value=1.0)
    print(f"wrote {out}: {len(images)} training images, each original (left) beside its augmented version (right)")
    return 0


if __name__ == "__main__":
    from trainable.cli import run_main

    run_main(main)
