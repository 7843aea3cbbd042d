"""The ResNet family the search explores, its exact parameter count, and its layer table.

    python -m trainable.model --config cfg.json [--num-classes 10] [--image-size 32]

The seed's model, BasicBlocks [3,5,3] x [64,128,256] with F=3 and K=1, counts 4,918,602.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainable.config import architecture_of, validate_config, with_defaults


def drop_path(branch: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the residual branch of each image with probability `rate` in
    training and scale the kept ones by 1 / (1 - rate); the identity at evaluation.

    The mask is drawn on the branch's device: no value goes to or from the host.
    """
    if not training or rate <= 0:
        return branch
    keep = torch.rand(branch.shape[0], 1, 1, 1, device=branch.device) >= rate
    return branch * keep.to(branch.dtype) / (1.0 - rate)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut, then ReLU.

    The shortcut is the identity when the shape is kept, else a KxK strided conv + BN.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, kernel: int, skip_kernel: int, drop: float = 0.0):
        super().__init__()
        self.drop = drop
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel, 1, kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, skip_kernel, stride, skip_kernel // 2, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def last_norms(self) -> list[nn.BatchNorm2d]:
        return [self.bn2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(drop_path(out, self.drop, self.training) + self.shortcut(x))


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv plus a shortcut (the WRN / PreAct-ResNet form), no final ReLU.

    When the shape changes, the shortcut is a KxK strided conv (no BN) of the pre-activated
    input, as in WRN; otherwise the identity of the raw input.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, kernel: int, skip_kernel: int, drop: float = 0.0):
        super().__init__()
        self.drop = drop
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel, 1, kernel // 2, bias=False)
        self.shortcut = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, skip_kernel, stride, skip_kernel // 2, bias=False)

    def last_norms(self) -> list[nn.BatchNorm2d]:
        # Its branch ends in a conv; a zero bn2 makes what that conv sees zero (ReLU(0) = 0).
        return [self.bn2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(act)
        out = self.conv1(act)
        out = self.conv2(torch.relu(self.bn2(out)))
        return drop_path(out, self.drop, self.training) + skip


def shake(a: torch.Tensor, b: torch.Tensor, training: bool) -> torch.Tensor:
    """Shake-Shake's mix of two branches: per image, alpha * a + (1 - alpha) * b going forward
    and beta, 1 - beta for the gradients (alpha, beta ~ U(0, 1), independent); 0.5 each at
    evaluation. The backward weights come from a detached correction, not a custom autograd
    function, so torch.compile sees plain tensor ops.
    """
    if not training:
        return 0.5 * (a + b)
    shape = (a.shape[0], 1, 1, 1)
    alpha = torch.rand(shape, device=a.device, dtype=a.dtype)
    beta = torch.rand(shape, device=a.device, dtype=a.dtype)
    return beta * a + (1 - beta) * b + ((alpha - beta) * (a - b)).detach()


class ShakeBlock(nn.Module):
    """Two ReLU-conv-BN-ReLU-conv-BN branches mixed by `shake`, plus a shortcut.

    When the shape changes, the shortcut is Shake-Shake's: ReLU, then two strided 1x1 convs
    to half the channels each, the second on the input shifted by one pixel, concatenated
    and batch-normalised (`skip_kernel_size` does not apply).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, kernel: int, skip_kernel: int, drop: float = 0.0):
        super().__init__()
        self.drop, self.stride = drop, stride

        def branch() -> nn.Sequential:
            return nn.Sequential(
                nn.ReLU(), nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True), nn.Conv2d(out_ch, out_ch, kernel, 1, kernel // 2, bias=False),
                nn.BatchNorm2d(out_ch))

        self.branch_a, self.branch_b = branch(), branch()
        self.project = None
        if stride != 1 or in_ch != out_ch:
            self.project = nn.ModuleList([nn.Conv2d(in_ch, out_ch // 2, 1, bias=False),
                                          nn.Conv2d(in_ch, out_ch - out_ch // 2, 1, bias=False)])
            self.project_bn = nn.BatchNorm2d(out_ch)

    def last_norms(self) -> list[nn.BatchNorm2d]:
        return [self.branch_a[-1], self.branch_b[-1]]

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.project is None:
            return x
        x = torch.relu(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))  # the other half sees the pixels one step on
        a = self.project[0](F.avg_pool2d(x, 1, self.stride))
        b = self.project[1](F.avg_pool2d(shifted, 1, self.stride))
        return self.project_bn(torch.cat([a, b], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = shake(self.branch_a(x), self.branch_b(x), self.training)
        return drop_path(mixed, self.drop, self.training) + self.shortcut(x)


BLOCK_TYPES = {"basic": BasicBlock, "preact": PreActBlock, "shake": ShakeBlock}


class ResNet(nn.Module):
    """Stem conv3x3 (+ BN, + ReLU for basic blocks), stages of blocks, pool, dropout, linear.

    Pre-activation blocks have a bare conv stem (the first block's BN follows it) and a final
    BN + ReLU before the pool, as in WRN; Shake-Shake's stem is conv + BN (each branch starts
    with a ReLU) and a final ReLU before the pool. `drop_path` is the stochastic depth rate
    of the last block, rising linearly from the first; `zero_init_residual` zeroes the last
    BatchNorm of every residual branch.
    """

    def __init__(
        self,
        blocks: Sequence[int],
        widths: Sequence[int],
        kernel_size: int = 3,
        skip_kernel_size: int = 1,
        stem_width: int | None = None,
        dropout: float = 0.0,
        block: str = "basic",
        drop_path: float = 0.0,
        zero_init_residual: bool = False,
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        super().__init__()
        stem_width = stem_width or widths[0]
        # The stem reads as many channels as the images have: 1 for grayscale sets.
        conv = nn.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False)
        stem = {"basic": [nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True)], "preact": [],
                "shake": [nn.BatchNorm2d(stem_width)]}[block]
        self.stem = nn.Sequential(conv, *stem)
        block_type = BLOCK_TYPES[block]
        total = sum(blocks)
        stages = []
        in_ch = stem_width
        depth = 0
        for index, (count, width) in enumerate(zip(blocks, widths)):
            layers = []
            for position in range(count):
                stride = 2 if index > 0 and position == 0 else 1
                depth += 1
                layers.append(block_type(in_ch, width, stride, kernel_size, skip_kernel_size,
                                         drop=drop_path * depth / total))
                in_ch = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        final = {"basic": [], "preact": [nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True)], "shake": [nn.ReLU()]}[block]
        self.final = nn.Sequential(*final)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(in_ch, num_classes)
        if zero_init_residual:
            for module in self.modules():
                for norm in getattr(module, "last_norms", lambda: [])():
                    nn.init.zeros_(norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final(self.stages(self.stem(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.head(self.dropout(x))


def build_model(config: dict[str, Any], num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """Build the model a config describes (weights initialised on the current device).

    >>> build_model({"blocks": [1, 1], "widths": [8, 16]}).head.out_features
    10
    """
    cfg = with_defaults(config)  # validated where it entered (CLI, searcher, checkpoint)
    return ResNet(num_classes=num_classes, in_channels=in_channels, **architecture_of(cfg))


def count_built(config: dict[str, Any], num_classes: int = 10, in_channels: int = 3) -> int:
    """The trainable parameters of the model `build_model` makes, counted on the `meta` device
    (shapes only; about 13 ms for a 5M model). `count_params` is pinned to it by a test."""
    cfg = with_defaults(config)
    with torch.device("meta"):
        model = ResNet(num_classes=num_classes, in_channels=in_channels, **architecture_of(cfg))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _block_params(block: str, c: int, o: int, k: int, skip: int, projected: bool) -> int:
    """One residual block's parameters: convs without bias, 2 per BatchNorm channel."""
    if block == "shake":  # two conv-BN-conv-BN branches; a 1x1 split projection + BN
        return 2 * (c * o * k * k + o * o * k * k + 4 * o) + (c * o + 2 * o if projected else 0)
    convs = c * o * k * k + o * o * k * k + (c * o * skip * skip if projected else 0)
    if block == "preact":  # BN of the input and of the middle; the projection has no BN
        return convs + 2 * c + 2 * o
    return convs + 4 * o + (2 * o if projected else 0)  # basic: two BNs, one more on the projection


def count_params(config: dict[str, Any], num_classes: int = 10, in_channels: int = 3) -> int:
    """Exact number of trainable parameters, in closed form (a few microseconds: a solve of
    the widths for a budget calls it many times), equal to `count_built` for every block type.

    The head depends on the class count and the stem on the channel count (a grayscale
    stem has a third of an RGB stem's weights):

    >>> count_params({"blocks": [3, 5, 3], "widths": [64, 128, 256]})
    4918602
    >>> count_params({"blocks": [3, 5, 3], "widths": [64, 128, 256]}, num_classes=100, in_channels=1)
    4940580
    >>> 4918602 + 90 * 257 - 2 * 64 * 9  # 90 more head rows of 256 weights + bias; 2 of 3 stem planes fewer
    4940580
    """
    cfg = with_defaults(config)
    block, k, skip = cfg["block"], cfg["kernel_size"], cfg["skip_kernel_size"]
    stem = cfg["stem_width"] or cfg["widths"][0]
    total = in_channels * stem * 9 + (0 if block == "preact" else 2 * stem)
    c = stem
    for index, (count, width) in enumerate(zip(cfg["blocks"], cfg["widths"])):
        for position in range(count):
            stride = 2 if index > 0 and position == 0 else 1
            total += _block_params(block, c, width, k, skip, stride != 1 or c != width)
            c = width
    final = 2 * c if block == "preact" else 0
    return total + final + c * num_classes + num_classes


def layer_summary(config: dict[str, Any], num_classes: int = 10, image_size: int | Sequence[int] = 32,
                  in_channels: int = 3) -> str:
    """A torchsummary-style table: layer, output shape, params; ends with `Trainable params: N`.

    `image_size` is a side, or (height, width)."""
    sides = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    cfg = with_defaults(config)
    with torch.device("meta"):
        model = ResNet(num_classes=num_classes, in_channels=in_channels, **architecture_of(cfg))
    rows: list[tuple[str, str, int]] = []

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        kind = type(module).__name__
        own = sum(p.numel() for p in module.parameters(recurse=False))
        shape = "[-1, " + ", ".join(str(d) for d in output.shape[1:]) + "]"
        rows.append((f"{kind}-{len(rows) + 1}", shape, own))

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if not list(m.children()) and not isinstance(m, nn.Sequential)
    ]
    with torch.no_grad():
        model(torch.zeros(2, in_channels, *sides, device="meta"))
    for handle in handles:
        handle.remove()

    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    line = "-" * 64
    form = {"basic": "BasicBlocks, post-activation (conv-BN-ReLU)", "preact": "BasicBlocks, pre-activation (BN-ReLU-conv)",
            "shake": "Shake-Shake blocks (two ReLU-conv-BN branches)"}[cfg["block"]]
    out = [f"{form}: {cfg['blocks']} x {cfg['widths']}", line,
           f"{'Layer (type)':>25}  {'Output Shape':>25}  {'Param #':>10}", "=" * 64]
    out += [f"{name:>25}  {shape:>25}  {params:>10,}" for name, shape, params in rows]
    out += ["=" * 64, f"Total params: {total:,}", f"Non-trainable params: {total - trainable:,}"]
    out += [f"Trainable params: {trainable:,}"]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    from trainable.cli import ArgumentParser, read_json
    from trainable.errors import UserError

    parser = ArgumentParser(
        prog="python -m trainable.model",
        description="Print the layer table and exact trainable parameter count of a config.",
    )
    parser.add_argument("--config", required=True, help="JSON file with the config dict")
    parser.add_argument("--num-classes", type=int, default=10, help="classes of the head (default 10)")
    parser.add_argument("--image-size", type=int, default=32, help="input side in pixels (default 32)")
    parser.add_argument("--channels", type=int, default=3, help="image channels: 3 for colour, 1 for grayscale (default 3)")
    args = parser.parse_args(argv)
    for flag, value in (("--num-classes", args.num_classes), ("--image-size", args.image_size),
                        ("--channels", args.channels)):
        if value <= 0:
            raise UserError(f"{flag} must be positive, got {value}")
    config = validate_config(read_json(args.config, "config file"))
    print(layer_summary(config, args.num_classes, args.image_size, args.channels))
    return 0


if __name__ == "__main__":
    from trainable.cli import run_main

    run_main(main)
