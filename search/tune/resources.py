"""What a search runs on: starting Ray (the project's one way, used by the search, the
benchmarks and the tests' helpers) and the seconds that takes a stage, the GPUs it may use,
and how many trials run at once."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterator

from search.settings import SearchSettings
from trainable.errors import UserError

if TYPE_CHECKING:
    from search.tune.costs import Probe

# Starting and stopping Ray around a search stage: 8-12 s on 2 cores here; about 2 s to
# connect to a running cluster (--address); nothing when Ray is already up in this process (a
# notebook). Of that, what comes after a stage's time budget has stopped its trials (the budget
# counts Ray's start, `search.tune.deadline`): Tune ends its workers (0.7 s here) and a Ray the
# stage started shuts down (1.4 s); a running cluster is only left.
RAY_OVERHEAD_S = 10.0
RAY_CONNECT_S = 2.0
RAY_STOP_S = 3.0
RAY_LEAVE_S = 1.0


def ray_overhead(address: str | None) -> float:
    """Seconds a search stage spends starting and stopping Ray, beside its trials."""
    import ray

    if ray.is_initialized():
        return 0.0
    return RAY_CONNECT_S if address else RAY_OVERHEAD_S


def ray_stop_seconds(address: str | None) -> float:
    """Seconds a search stage takes after its time budget has ended (`RAY_STOP_S`): what it
    keeps out of the budget it gives its search so that the stage ends within its share."""
    import ray

    if ray.is_initialized():
        return RAY_LEAVE_S / 2  # Tune's end of its workers only
    return RAY_LEAVE_S if address else RAY_STOP_S


@contextmanager
def muted(logger: str, mute: bool = True) -> Iterator[None]:
    """Inside, the logger `logger` passes errors only (with `mute`): for Ray's notices that
    are not this tool's advice; its level is put back after."""
    target = logging.getLogger(logger)
    level = target.level
    if mute:
        target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


@contextmanager
def ray_started(address: str | None = None, cpus: int | None = None, gpus: int | None = None,
                log_to_driver: bool = False) -> Iterator[None]:
    """Use the caller's Ray session if there is one; otherwise start one and stop it after.

    Without an `address`, the Ray started is this run's own (`address="local"`), with the
    CPUs and GPUs asked for: a bare `ray.init()` would join a cluster that a killed run left
    behind and then refuse `num_cpus` ("When connecting to an existing cluster, num_cpus and
    num_gpus must not be provided"). With one (a running cluster), its resources are the
    cluster's own.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    # Ray says on every start that the local cluster it makes uses token authentication (its
    # default, kept): noise to a user of a cluster that is this run's own and ends with it.
    # Below --verbose 2 (`log_to_driver`) that one notice is left out.
    with muted("ray._private.authentication.authentication_token_setup", not log_to_driver):
        ray.init(address=address or "local", num_cpus=None if address else cpus,
                 num_gpus=None if address else gpus, include_dashboard=False, configure_logging=False,
                 log_to_driver=log_to_driver)
    try:
        yield
    finally:
        ray.shutdown()


def check_gpus(s: SearchSettings) -> int:
    """The GPU count to use; more than the machine or cluster has is refused."""
    if s.address:
        import ray

        available = int(ray.cluster_resources().get("GPU", 0))
    else:
        import torch

        available = torch.cuda.device_count()
    if s.gpus is None:
        return available
    if s.gpus > available:
        where = "the cluster" if s.address else "this machine"
        raise UserError(f"--gpus {s.gpus} asked for, but {where} has {available} GPU(s); pass --gpus {available}")
    return s.gpus


@dataclass
class Resources:
    """What this driver run may use: GPUs, the share of each trial, and how many run at once."""

    gpus: int
    gpus_per_trial: float
    concurrent: int
    probe: "Probe | None" = None  # where --minimize latency measures, when it does


@contextmanager
def ray_session(s: SearchSettings) -> Iterator[None]:
    """The search's Ray (`ray_started`): the caller's, or one of its own."""
    with ray_started(s.address, s.cpus or os.cpu_count(), s.gpus, log_to_driver=s.verbose > 1):
        yield


def plan_resources(s: SearchSettings) -> Resources:
    """GPUs and concurrency from the resources of this run (recomputed at every --resume)."""
    import ray

    return resources_for(s, check_gpus(s), int(ray.cluster_resources().get("CPU", 1)))


def resources_for(s: SearchSettings, gpus: int, cpus: int) -> Resources:
    """The GPUs, a trial's share, the trials run at once and the latency probe's slot, for a
    run with `gpus` GPUs and `cpus` CPUs (no Ray needed: `search.auto` plans with it)."""
    share = s.gpus_per_trial if gpus > 0 else 0.0
    concurrent = max(1, int(gpus / share)) if gpus > 0 else max(1, cpus // s.cpus_per_trial)
    resources = Resources(gpus, share, concurrent)
    return latency_probe(s, resources) if s.minimize == "latency" else resources


def latency_probe(s: SearchSettings, resources: Resources) -> Resources:
    """Set one trial slot aside for the latency probe (`search.tune.costs`), so that it times its
    passes alone on its device: a whole GPU when there are two or more, one trial's CPUs on
    a CPU search. Where none can be spared, the probe shares and its records say so."""
    from search.tune.costs import Probe

    gpus, share, concurrent = resources.gpus, resources.gpus_per_trial, resources.concurrent
    if gpus >= 2:
        probe = Probe("cuda", {"num_gpus": 1, "num_cpus": s.cpus_per_trial}, True, s.cpus_per_trial)
        concurrent = max(1, int((gpus - 1) / share))
    elif gpus == 1:
        probe = Probe("cuda", {"num_gpus": 0, "num_cpus": 0}, False, s.cpus_per_trial)
    elif concurrent >= 2:
        probe = Probe("cpu", {"num_cpus": s.cpus_per_trial}, True, s.cpus_per_trial)
        concurrent -= 1
    else:
        probe = Probe("cpu", {"num_cpus": 0}, False, s.cpus_per_trial)
    return replace(resources, concurrent=concurrent, probe=probe)
