"""The costs a search records for every trial (params, MACs) and the one `--minimize` trades
against accuracy (params, macs or latency), held on the driver and cached per architecture.

Params and MACs are exact counts on the `meta` device (`trainable.model.count_params`,
`trainable.cost.count_macs`), known before a trial trains. Latency is measured
(`trainable.cost.measure_latency`) in a Ray task of its own, once per architecture, and
kept in the experiment's latency.json, so a resumed search never measures it again.

Why a Ray task with a reserved slot: trials that share a GPU (or the CPU cores) would slow
the timed passes by however busy their neighbours happen to be. `search.run` sets one
trial slot aside for the probe (a whole GPU when the search has two or more, one trial's
CPUs on a CPU search), so the probe runs alone on its device. Where no slot can be spared
(one GPU, or a single CPU slot) it shares, and every figure it records says
`"isolated": false`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.records import LATENCY, OBJECTIVES, read_latency, write_latency
from trainable.config import architecture_of, with_defaults
from trainable.cost import count_macs
from trainable.model import count_params

# The latency `--minimize latency` trades against accuracy: one image, as a deployed model answers.
LATENCY_KEY = "batch1_ms"


@dataclass(frozen=True)
class Probe:
    """Where and how latency is measured: the Ray resources of its task, and whether they
    keep it alone on its device."""

    device: str  # "cuda" or "cpu": the trials' device type
    resources: dict[str, float] = field(default_factory=dict)  # num_cpus / num_gpus of the task
    isolated: bool = True
    threads: int = 1  # CPU threads of a CPU measurement (a trial's)


def _measure(config: dict[str, Any], num_classes: int, image_size: int, in_channels: int, device: str,
             threads: int, isolated: bool) -> dict[str, Any]:
    """The probe task's body: latency of `config` on this worker's `device`."""
    import torch

    from trainable.cost import measure_latency

    torch.set_num_threads(max(1, threads))
    result = measure_latency(config, num_classes, "cuda:0" if device == "cuda" else "cpu", image_size, in_channels)
    return {**result, "isolated": isolated}


class Costs:
    """params, MACs and (with a probe) latency of configs, per architecture."""

    def __init__(self, folder: str | Path, num_classes: int, image_size: int, objective: str | None = None,
                 probe: Probe | None = None, in_channels: int = 3):
        self.folder = Path(folder)
        self.num_classes, self.image_size, self.in_channels = num_classes, image_size, in_channels
        self.objective = objective
        self.probe = probe
        self.measured: dict[str, dict[str, Any]] = read_latency(self.folder)
        self.pending: dict[str, Any] = {}  # architecture key -> Ray ObjectRef of its measurement

    def key(self, config: dict[str, Any]) -> str:
        """The architecture (and device type) a latency belongs to."""
        arch = architecture_of(with_defaults(config))
        # Channels join the key only when not 3, so RGB keys stay those of earlier latency.json files.
        channels = {"in_channels": self.in_channels} if self.in_channels != 3 else {}
        return json.dumps({**arch, "num_classes": self.num_classes, "image_size": self.image_size, **channels,
                           "device": self.probe.device if self.probe else "cpu"}, sort_keys=True)

    def counts(self, config: dict[str, Any]) -> dict[str, int]:
        """Exact params and MACs (per image) of `config`."""
        return {"params": count_params(config, self.num_classes, self.in_channels),
                "macs": count_macs(config, self.num_classes, self.image_size, self.in_channels)}

    def request_latency(self, config: dict[str, Any]) -> None:
        """Start measuring `config`'s latency, unless it is known or under way (no wait)."""
        key = self.key(config)
        if self.probe is None or key in self.measured or key in self.pending:
            return
        import ray

        task = ray.remote(_measure).options(**self.probe.resources, max_retries=1)
        self.pending[key] = task.remote(config, self.num_classes, self.image_size, self.in_channels,
                                        self.probe.device, self.probe.threads, self.probe.isolated)

    def latency(self, config: dict[str, Any], wait: bool = True) -> dict[str, Any] | None:
        """`config`'s latency record; measured now if `wait` and not yet known, else None."""
        key = self.key(config)
        if key in self.measured or self.probe is None:
            return self.measured.get(key)
        if key not in self.pending:
            if not wait:
                return None
            self.request_latency(config)
        import ray

        ready, _ = ray.wait([self.pending[key]], timeout=None if wait else 0)
        if not ready:
            return None
        self.measured[key] = ray.get(self.pending.pop(key))
        write_latency(self.folder, self.measured)
        return self.measured[key]

    def value(self, config: dict[str, Any]) -> float:
        """The cost `--minimize` names, for `config` (waits for a latency being measured)."""
        if self.objective == "latency":
            record = self.latency(config)
            if record is None:
                raise RuntimeError("--minimize latency needs a latency probe")
            return float(record[LATENCY_KEY])
        return float(self.counts(config)[self.objective or "params"])

    def figures(self, config: dict[str, Any]) -> dict[str, Any]:
        """What a trial's row records: params, MACs, and its latency once measured (no wait)."""
        figures: dict[str, Any] = dict(self.counts(config))
        record = self.latency(config, wait=False) if self.probe else None
        if record:
            figures["latency_ms"] = record[LATENCY_KEY]
        return figures


__all__ = ["Costs", "Probe", "OBJECTIVES", "LATENCY", "LATENCY_KEY"]
