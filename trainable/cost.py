"""What a model costs to run: exact multiply-accumulates, and measured inference latency.

Parameters are counted in `trainable.model.count_params`. MACs are counted the same way,
on the `meta` device (shapes only, no memory, no arithmetic), with PyTorch's own
`torch.utils.flop_counter.FlopCounterMode`: it counts 2 FLOPs per multiply-accumulate of
the convolutions and matrix products, so MACs are half its total. Batch norm, ReLU and
pooling are not counted (as in every MACs figure of the literature).

Latency is a measurement, not a count: the median of repeated timed forward passes after
a warm-up, at batch 1 (one image, what a deployed model answers) and batch 256 (throughput),
in inference mode with the training path's settings (bf16 autocast and channels_last on
CUDA). Its spread is the interquartile range of the timed runs.
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from typing import Any

import torch

from trainable.config import architecture_of, with_defaults
from trainable.model import ResNet

LATENCY_BATCHES = (1, 256)


@functools.lru_cache(maxsize=4096)
def _macs_cached(arch_json: str, num_classes: int, image_size: int, in_channels: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = ResNet(num_classes=num_classes, in_channels=in_channels, **json.loads(arch_json)).eval()
        x = torch.zeros(1, in_channels, image_size, image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def count_macs(config: dict[str, Any], num_classes: int = 10, image_size: int = 32, in_channels: int = 3) -> int:
    """Multiply-accumulates of one forward pass of one image, exact and without weights.

    A 3x3 stem 3->8 at 4x4 (3*8*9*16), one block of two 3x3 convs 8->8 (2*8*8*9*16) and the
    head 8->10:

    >>> count_macs({"blocks": [1], "widths": [8], "stem_width": 8}, num_classes=10, image_size=4)
    21968
    >>> 3*8*9*16 + 2*8*8*9*16 + 8*10
    21968
    """
    arch = json.dumps(architecture_of(with_defaults(config)), sort_keys=True)
    return _macs_cached(arch, num_classes, image_size, in_channels)


def _timed_runs(model: torch.nn.Module, x: torch.Tensor, warmup: int, repeats: int, max_seconds: float) -> list[float]:
    """Seconds of each timed forward pass (at least 3; fewer than `repeats` past `max_seconds`)."""
    on_cuda = x.device.type == "cuda"
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=on_cuda):
        for _ in range(warmup):
            model(x)
        if on_cuda:
            torch.cuda.synchronize(x.device)
        times: list[float] = []
        begin = time.perf_counter()
        while len(times) < repeats and (len(times) < 3 or time.perf_counter() - begin < max_seconds):
            start = time.perf_counter()
            model(x)
            if on_cuda:
                torch.cuda.synchronize(x.device)  # the host waits for the device: the pass's true end
            times.append(time.perf_counter() - start)
    return times


def measure_latency(config: dict[str, Any], num_classes: int, device: str | torch.device, image_size: int = 32,
                    in_channels: int = 3, warmup: int = 5, repeats: int = 30, max_seconds: float = 5.0,
                    batches: tuple[int, ...] = LATENCY_BATCHES) -> dict[str, Any]:
    """Median and interquartile range (ms) of a forward pass at each of `batches`, on `device`.

    Random weights time the same as trained ones. A batch is timed `repeats` times after
    `warmup` untimed passes, but no longer than `max_seconds` once 3 runs are in (a large
    model at batch 256 on a CPU takes seconds a pass).
    """
    device = torch.device(device)
    torch.manual_seed(0)
    model = ResNet(num_classes=num_classes, in_channels=in_channels,
                   **architecture_of(with_defaults(config))).to(device).eval()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    result: dict[str, Any] = {"device": device_name(device), "threads": torch.get_num_threads()}
    for batch in batches:
        x = torch.randn(batch, in_channels, image_size, image_size, device=device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        times = sorted(t * 1000 for t in _timed_runs(model, x, warmup, repeats, max_seconds))
        quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        result[f"batch{batch}_ms"] = round(statistics.median(times), 4)
        result[f"batch{batch}_iqr_ms"] = round(quartiles[2] - quartiles[0], 4)
        result[f"batch{batch}_runs"] = len(times)
    return result


def device_name(device: torch.device) -> str:
    """The device a latency belongs to: the GPU's model name, or 'cpu'."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
