"""The Ray Tune trainable: one search trial around `trainable.loop.Trainer`, one epoch per `step`.

Why a class-based `tune.Trainable` and not a function trainable: Ray runs a function
trainable in a thread of its actor and, to reuse the actor for the next trial, waits for
that thread to end for `TUNE_FUNCTION_THREAD_TIMEOUT_S` (2 s by default). A trial ASHA
stops ends only at its next report, and freeing a large model can take longer, so a reuse
failed: the next trial errored before it started, neither the searcher nor the trial table
heard of it, and Ray kept its concurrency slot. An environment variable can lengthen the
wait only in a Ray session this tool starts itself, not on a cluster (`--address`) or in a
notebook whose Ray is already up. A class trainable has no thread: Ray calls `step`,
`save_checkpoint`, `load_checkpoint` and `reset_config` on the actor in turn, so a reuse
simply waits for the previous call, in every mode.

The driver loads the dataset once and hands the training arrays to every trial through
Ray's object store (`tune.with_parameters`); no trial reads the disk or resolves a path.
Each worker splits and uploads them to its device once (`cached_device_data`), so with
`reuse_actors=True` every later trial on that worker starts at once (`reset_config`).

Each epoch is one `step`. Every `checkpoint_every` epochs (never after the last) the
result asks Ray for a checkpoint, so a trial restarted on another node, or continued by a
resumed search, loses at most that many epochs. An error inside the trial (out of memory,
a bug) ends it as `errored` with the reason in its last result; Ray's `max_failures`
restarts are left for what they are for, a worker or node that died.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from search.records import CONTINUES, Status
from trainable.checkpoint import load_checkpoint, save_checkpoint
from trainable.data import DataSpec, DeviceData, TrainArrays, cached_device_data
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


class SearchTrial(tune.Trainable):
    """Trains one config for its `epochs` (the ASHA horizon), one epoch per `step`.

    Construct through `tune.with_parameters(SearchTrial, data=..., spec=..., options=...)`.
    """

    def setup(self, config: dict[str, Any], data: TrainArrays, spec: DataSpec, options: TrialOptions) -> None:
        self.arrays, self.spec, self.options = data, spec, options
        self.device = device_for(ray.get_gpu_ids())
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, options.threads))
        elif 0 < options.gpu_share < 1:
            # Nothing else isolates trials that share a GPU: cap this one's share of memory so
            # one large config cannot starve its neighbours.
            torch.cuda.set_per_process_memory_fraction(options.gpu_share, self.device)
        self.node = ray.get_runtime_context().get_node_id()  # which machine ran each epoch
        self._start(config)

    def _start(self, config: dict[str, Any]) -> None:
        config = dict(config)
        continues = config.pop(CONTINUES, None)
        self.trainer: Trainer | None = None
        self.error: str | None = None
        self.epochs_done = 0
        self.config_seen = config
        try:
            self.trainer = Trainer(config, self.device_data(), compile_model=self.options.compile)
            checkpoint = _continued_checkpoint(continues)
            if checkpoint:
                with checkpoint.as_directory() as folder:
                    self.load_checkpoint(folder)
        except Exception as exc:  # the upload and the model can run out of memory too
            self._fail(exc)

    def device_data(self) -> DeviceData:
        """The training arrays on this trial's device, uploaded once per worker."""
        return cached_device_data(self.spec, self.device, self.arrays.as_dataset)

    def step(self) -> dict[str, Any]:
        if self.error is None and self.trainer is not None:
            try:
                metrics = self.trainer.run_epoch()
            except Exception as exc:
                self._fail(exc)
            else:
                epoch = self.epochs_done = self.trainer.epoch
                done = epoch >= self.trainer.config["epochs"] or self.trainer.status != "ok"
                return {**metrics, "node_id": self.node, "wall_time": time.time(), "done": done,
                        # No checkpoint after the last epoch: nothing is left to continue.
                        "should_checkpoint": not done and epoch % self.options.checkpoint_every == 0}
        # The metric is present (as None) so Ray accepts the result; nothing ranks it.
        return {"status": Status.ERRORED.value, "error": self.error, "val_acc": None, "epoch": self.epochs_done,
                "node_id": self.node, "wall_time": time.time(), "done": True}

    def _fail(self, exc: Exception) -> None:
        """Keep only the text: the traceback's frames would pin this trial's tensors on the GPU."""
        if is_out_of_memory(exc):
            cfg = self.config_seen
            text = (f"CUDA out of memory (batch_size {cfg.get('batch_size')}, widths {cfg.get('widths')}): "
                    + (str(exc).splitlines() or [type(exc).__name__])[0])
        else:
            logger.exception("trial failed")
            text = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        self.error = text[:300]
        self._free()

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        if self.trainer is not None:  # an errored trial has nothing to save (and is never continued)
            save_checkpoint(Path(checkpoint_dir) / STATE_FILE, self.trainer.state_dict())

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        self.trainer.load_state_dict(load_checkpoint(Path(checkpoint_dir) / STATE_FILE))
        self.epochs_done = self.trainer.epoch

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Reuse this worker (and its data on the device) for the next trial."""
        self._free()
        self._start(new_config)
        return True

    def cleanup(self) -> None:
        # The actor ends after this: its process frees everything. A full garbage collection
        # here (0.1 s idle) took 6 s on a machine two other processes kept busy, and Tune
        # waits for it when a time budget ends the search.
        self.trainer = None

    def _free(self) -> None:
        # The actor is reused for the next trial: drop this one's tensors so GPU memory
        # does not creep up from trial to trial.
        self.trainer = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _continued_checkpoint(continues: dict[str, Any] | None) -> tune.Checkpoint | None:
    """The checkpoint an interrupted (or cut) trial left, when a resumed search continues it."""
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
