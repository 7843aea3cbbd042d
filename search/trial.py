"""The Ray Tune function trainable: one search trial around `trainable.loop.Trainer`.

The driver loads the dataset once and hands the training arrays to every trial through
Ray's object store (`tune.with_parameters`); no trial reads the disk or resolves a path.
Workers on the driver's node map the arrays without a copy; a worker on another node of a
cluster receives them over the network. Each worker splits and uploads them to its device
once (`cached_device_data`), so with `reuse_actors=True` every later trial on that worker
starts at once.

Each epoch the trial reports its metrics to Tune; every `checkpoint_every` epochs the
report carries a checkpoint, so a trial restarted on another node, or continued by a
resumed search, loses at most that many epochs.
"""

from __future__ import annotations

import gc
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from search.searcher import CONTINUES
from trainable.checkpoint import load_checkpoint, save_checkpoint
from trainable.data import DataSpec, TrainArrays, cached_device_data
from trainable.loop import Trainer, device_for, is_out_of_memory

STATE_FILE = "state.pt"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialOptions:
    """How every trial of a search runs, apart from its config."""

    threads: int = 1  # CPU threads of a trial on the CPU
    compile: bool = False
    checkpoint_every: int = 2  # epochs between checkpoints (README: 'Checkpoints')
    gpu_share: float = 0.0  # this trial's fraction of its GPU; caps its memory when < 1


def run_trial(config: dict[str, Any], data: TrainArrays, spec: DataSpec, options: TrialOptions) -> None:
    """Train `config` for its `epochs` (the ASHA horizon), reporting every epoch to Tune."""
    config = dict(config)
    continues = config.pop(CONTINUES, None)
    device = device_for(ray.get_gpu_ids())
    if device.type == "cpu":
        torch.set_num_threads(max(1, options.threads))
    elif 0 < options.gpu_share < 1:
        # Nothing else isolates trials that share a GPU: cap this one's share of memory so
        # one large config cannot starve its neighbours.
        torch.cuda.set_per_process_memory_fraction(options.gpu_share, device)
    trainer = None
    out_of_memory = None
    try:
        prepared = cached_device_data(spec, device, data.as_dataset)  # the upload can run out of memory too
        trainer = Trainer(config, prepared, compile_model=options.compile)
        checkpoint = tune.get_checkpoint() or _continued_checkpoint(continues)
        if checkpoint:
            with checkpoint.as_directory() as folder:
                trainer.load_state_dict(load_checkpoint(Path(folder) / STATE_FILE))
        node = ray.get_runtime_context().get_node_id()  # which machine ran each epoch
        for metrics in trainer.epochs():
            report = {**metrics, "node_id": node, "wall_time": time.time()}
            if trainer.epoch % options.checkpoint_every or trainer.epoch >= trainer.config["epochs"]:
                tune.report(report)  # no checkpoint: nothing is left to continue after the last epoch
                continue
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(Path(folder) / STATE_FILE, trainer.state_dict())
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        # Keep only the text: the traceback's frames would pin this trial's tensors on the GPU.
        out_of_memory = (f"CUDA out of memory (batch_size {config.get('batch_size')}, widths {config.get('widths')}): "
                         + (str(exc).splitlines() or [type(exc).__name__])[0])
    finally:
        # The actor is reused for the next trial: drop this one's tensors so GPU memory
        # does not creep up from trial to trial.
        del trainer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if out_of_memory:
        raise TrialOutOfMemory(out_of_memory)


def _continued_checkpoint(continues: dict[str, Any] | None) -> tune.Checkpoint | None:
    """The checkpoint an interrupted trial left, when a resumed search continues it."""
    if not continues or not continues.get("checkpoint"):
        return None
    checkpoint = tune.Checkpoint(continues["checkpoint"])
    try:
        if checkpoint.filesystem.get_file_info(checkpoint.path).type.name == "NotFound":
            raise FileNotFoundError(checkpoint.path)
    except Exception as exc:  # deleted, or its storage unreachable: train from the start
        logger.warning("trial %s: checkpoint %s is gone (%s); it starts over", continues.get("trial_id"),
                       continues["checkpoint"], type(exc).__name__)
        return None
    return checkpoint


class TrialOutOfMemory(RuntimeError):
    """A trial did not fit in GPU memory; the search marks it errored and goes on."""
