"""Starting Ray: the project's one way, used by the search, the benchmarks and the tests' helpers."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


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
    ray.init(address=address or "local", num_cpus=None if address else cpus, num_gpus=None if address else gpus,
             include_dashboard=False, configure_logging=False, log_to_driver=log_to_driver)
    try:
        yield
    finally:
        ray.shutdown()
