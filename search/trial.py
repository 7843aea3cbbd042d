"""The Ray Tune function trainable: one search trial around `trainable.loop.Trainer`.

Each epoch it reports the metrics with a checkpoint (`tune.report(..., checkpoint=...)`),
so ASHA can stop it at a rung and a restarted trial continues from its last epoch. The
dataset is loaded and uploaded once per worker process (`prepare_data` caches it) and,
with `reuse_actors=True`, every later trial on that worker starts without decoding a byte.
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from trainable.checkpoint import load_checkpoint, save_checkpoint
from trainable.data import prepare_data
from trainable.loop import Trainer, default_device

STATE_FILE = "state.pt"


def run_trial(config: dict[str, Any], data_spec: dict[str, Any]) -> None:
    """Train `config` for its `epochs` (the ASHA horizon), reporting every epoch to Tune.

    `data_spec` holds `dataset`, `data_dir`, `val_fraction`, `split_seed`, `subset`,
    `threads` (CPU threads when no GPU) and `compile`.
    """
    device = default_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(data_spec.get("threads", 1))))
    data = prepare_data(
        data_spec["dataset"], data_spec.get("data_dir"), device, data_spec["val_fraction"],
        data_spec["split_seed"], data_spec.get("subset"), download=False,
    )
    trainer = None
    out_of_memory = None
    try:
        trainer = Trainer(config, data, compile_model=bool(data_spec.get("compile", False)))
        checkpoint = tune.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as folder:
                trainer.load_state_dict(load_checkpoint(Path(folder) / STATE_FILE))
        node = ray.get_runtime_context().get_node_id()  # which machine ran each epoch
        for metrics in trainer.epochs():
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(Path(folder) / STATE_FILE, trainer.state_dict())
                tune.report({**metrics, "node_id": node, "wall_time": time.time()},
                            checkpoint=tune.Checkpoint.from_directory(folder))
    except torch.cuda.OutOfMemoryError as exc:
        # Keep only the text: the traceback's frames would pin this trial's tensors on the GPU.
        out_of_memory = (f"CUDA out of memory (batch_size {config.get('batch_size')}, widths {config.get('widths')}): "
                         + str(exc).splitlines()[0])
    finally:
        # The actor is reused for the next trial: drop this one's tensors so GPU memory
        # does not creep up from trial to trial.
        del trainer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if out_of_memory:
        raise TrialOutOfMemory(out_of_memory)


class TrialOutOfMemory(RuntimeError):
    """A trial did not fit in GPU memory; the search marks it errored and goes on."""
