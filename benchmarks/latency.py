"""How noisy a latency figure is: the same architectures measured again and again.

`--minimize latency` measures each architecture once (`trainable.cost.measure_latency`:
the median of up to 30 timed passes after 5 warm-up ones). Here each of three models is
measured `repeats` times in a row on this machine's default device; the spread of those
medians across repeats is what two measurements of one model can differ by, and the
interquartile range within one measurement is what the record's `*_iqr_ms` reports.
"""

from __future__ import annotations

import statistics
from typing import Any

from trainable.zoo import SEED, architecture

MODELS = {
    "tiny (blocks 1-1, widths 16-32)": {"blocks": [1, 1], "widths": [16, 32]},
    "middle (blocks 2-2-2, widths 32-64-128)": {"blocks": [2, 2, 2], "widths": [32, 64, 128]},
    "seed (blocks 3-5-3, widths 64-128-256)": architecture(SEED),
}


def run(data_dir: str | None, quick: bool, repeats: int | None = None) -> dict[str, Any]:
    import torch

    from trainable.cost import measure_latency
    from trainable.loop import default_device

    device = default_device()
    if device.type == "cpu":
        torch.set_num_threads(1)  # what a CPU trial with --cpus-per-trial 1 measures with
    repeats = repeats or (2 if quick else 5)
    result: dict[str, Any] = {"device": str(device), "repeats": repeats}
    for name, config in MODELS.items():
        records = [measure_latency(config, 10, device, max_seconds=1.0 if quick else 5.0) for _ in range(repeats)]
        for batch in (1, 256):
            medians = [r[f"batch{batch}_ms"] for r in records]
            middle = statistics.median(medians)
            result[f"{name}: batch {batch} median ms"] = round(middle, 3)
            # Two measurements of the same model differ by up to this share of its latency.
            result[f"{name}: batch {batch} spread of medians"] = round((max(medians) - min(medians)) / middle, 4)
            result[f"{name}: batch {batch} IQR / median"] = round(
                statistics.median(r[f"batch{batch}_iqr_ms"] for r in records) / middle, 4)
            result[f"{name}: batch {batch} runs"] = records[0][f"batch{batch}_runs"]
    return result
