"""The ResNet family the search explores, its exact parameter count, and its layer table.

    python -m trainable.model --config cfg.json [--num-classes 10] [--image-size 32]

The seed's model, BasicBlocks [3,5,3] x [64,128,256] with F=3 and K=1, counts 4,918,602.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Sequence

import torch
from torch import nn

from trainable.config import architecture_of, validate_config, with_defaults


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut, then ReLU.

    The shortcut is the identity when the shape is kept, else a KxK strided conv + BN.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, kernel: int, skip_kernel: int):
        super().__init__()
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv plus a shortcut (the WRN / PreAct-ResNet form), no final ReLU.

    When the shape changes, the shortcut is a KxK strided conv (no BN) of the pre-activated
    input, as in WRN; otherwise the identity of the raw input.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, kernel: int, skip_kernel: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel, 1, kernel // 2, bias=False)
        self.shortcut = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, skip_kernel, stride, skip_kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(act)
        out = self.conv1(act)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + skip


class ResNet(nn.Module):
    """Stem conv3x3 (+ BN + ReLU unless pre-activation), stages of blocks, pool, dropout, linear.

    With `preact`, blocks are `PreActBlock`s, the stem is a bare conv (the first block's BN
    follows it) and a final BN + ReLU comes before the pool, as in WRN.
    """

    def __init__(
        self,
        blocks: Sequence[int],
        widths: Sequence[int],
        kernel_size: int = 3,
        skip_kernel_size: int = 1,
        stem_width: int | None = None,
        dropout: float = 0.0,
        preact: bool = False,
        num_classes: int = 10,
    ):
        super().__init__()
        stem_width = stem_width or widths[0]
        conv = nn.Conv2d(3, stem_width, 3, 1, 1, bias=False)
        self.stem = nn.Sequential(conv) if preact else nn.Sequential(conv, nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True))
        block_type = PreActBlock if preact else BasicBlock
        stages = []
        in_ch = stem_width
        for index, (count, width) in enumerate(zip(blocks, widths)):
            layers = []
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(block_type(in_ch, width, stride, kernel_size, skip_kernel_size))
                in_ch = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.final = nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True)) if preact else nn.Sequential()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final(self.stages(self.stem(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.head(self.dropout(x))


def build_model(config: dict[str, Any], num_classes: int = 10) -> ResNet:
    """Build the model a config describes (weights initialised on the current device).

    >>> build_model({"blocks": [1, 1], "widths": [8, 16]}).head.out_features
    10
    """
    cfg = with_defaults(config)  # validated where it entered (CLI, searcher, checkpoint)
    return ResNet(num_classes=num_classes, **architecture_of(cfg))


@functools.lru_cache(maxsize=4096)
def _count_cached(arch_json: str, num_classes: int) -> int:
    # The meta device records shapes only: no memory, no init. A 5M-param model counts in ms.
    with torch.device("meta"):
        model = ResNet(num_classes=num_classes, **json.loads(arch_json))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_params(config: dict[str, Any], num_classes: int = 10) -> int:
    """Exact number of trainable parameters, without allocating any weights.

    >>> count_params({"blocks": [3, 5, 3], "widths": [64, 128, 256]})
    4918602
    """
    cfg = with_defaults(config)
    return _count_cached(json.dumps(architecture_of(cfg), sort_keys=True), num_classes)


def layer_summary(config: dict[str, Any], num_classes: int = 10, image_size: int = 32) -> str:
    """A torchsummary-style table: layer, output shape, params; ends with `Trainable params: N`."""
    cfg = with_defaults(config)
    with torch.device("meta"):
        model = ResNet(num_classes=num_classes, **architecture_of(cfg))
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
        model(torch.zeros(2, 3, image_size, image_size, device="meta"))
    for handle in handles:
        handle.remove()

    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    line = "-" * 64
    form = ("pre-activation blocks (BN-ReLU-conv)" if cfg["preact"] else "post-activation blocks (conv-BN-ReLU)")
    out = [f"BasicBlocks {cfg['blocks']} x {cfg['widths']}, {form}", line,
           f"{'Layer (type)':>25}  {'Output Shape':>25}  {'Param #':>10}", "=" * 64]
    out += [f"{name:>25}  {shape:>25}  {params:>10,}" for name, shape, params in rows]
    out += ["=" * 64, f"Total params: {total:,}", f"Non-trainable params: {total - trainable:,}"]
    out += [f"Trainable params: {trainable:,}"]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    from trainable.cli import ArgumentParser, read_json

    parser = ArgumentParser(
        prog="python -m trainable.model",
        description="Print the layer table and exact trainable parameter count of a config.",
    )
    parser.add_argument("--config", required=True, help="JSON file with the config dict")
    parser.add_argument("--num-classes", type=int, default=10, help="classes of the head (default 10)")
    parser.add_argument("--image-size", type=int, default=32, help="input side in pixels (default 32)")
    args = parser.parse_args(argv)
    config = validate_config(read_json(args.config, "config file"))
    print(layer_summary(config, args.num_classes, args.image_size))
    return 0


if __name__ == "__main__":
    from trainable.cli import run_main

    run_main(main)
