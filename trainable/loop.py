"""The training loop: one config, data resident on the device, metrics once per epoch.

Speed decisions are made for the GPU and the same code runs on the CPU:
- batches are drawn by a device `randperm` and augmented on the device (`trainable.augment`);
- bf16 autocast, channels_last and cudnn.benchmark on CUDA; fused AdamW/SGD on CUDA;
- loss and correct counts accumulate as device tensors and are read once per epoch, so no
  step waits on a host sync;
- the learning rate is a pure function of the global step (linear warm-up, then cosine to
  zero over the whole `epochs` horizon), so a run stopped early by a scheduler followed the
  same schedule prefix as one that runs to the end, and resuming needs only the step count;
- under a time budget (`TimeBudget`) the same shape follows the elapsed share of the time
  instead (budgeted training, Li, Yumer and Ramanan, ICLR 2020): the run ends annealed and on
  time even when the machine slows down halfway.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from trainable.augment import augment_batch, batch_augmentation, make_mixer, normalize, shift_mirror, tta_views
from trainable.config import with_defaults
from trainable.data import DeviceData
from trainable.model import build_model, count_params
from trainable.progress import Steps

# Big batches under inference_mode on a GPU; on a CPU a batch that stays in cache is faster
# (measured on 2 cores, ResNet-14 at 175k params: 1,574 img/s at 128, 802 at 1,024).
EVAL_BATCH = {"cuda": 1024, "cpu": 128}


def default_device() -> torch.device:
    """CUDA when present, else the CPU: for runs outside Ray (a search trial uses `device_for`)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_for(gpu_ids: list) -> torch.device:
    """The device of a trial that Ray assigned `gpu_ids` (`ray.get_gpu_ids()`).

    Ray sets CUDA_VISIBLE_DEVICES to the assigned GPUs, so an assigned trial uses cuda:0.
    Ray does not hide the GPUs from a trial that asked for none, so such a trial must not
    look at `torch.cuda.is_available()`: it trains on the CPU and never initialises CUDA.

    >>> device_for([]), device_for(["3"])
    (device(type='cpu'), device(type='cuda', index=0))
    """
    return torch.device("cuda", 0) if gpu_ids else torch.device("cpu")


# Allocation failures that are not torch.cuda.OutOfMemoryError: cuDNN and cuBLAS report
# their own when they cannot get workspace, and a device-side copy can fail as a plain
# RuntimeError.
_OOM_MARKERS = ("out of memory", "CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED",
                "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for every way a GPU reports that an allocation failed.

    >>> is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")), is_out_of_memory(ValueError("x"))
    (True, False)
    """
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in _OOM_MARKERS)


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module,
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    views: list[tuple[int, int, bool]] | None = None,
    device: torch.device | None = None,
    progress: str | None = None,
) -> torch.Tensor:
    """Float32 logits of uint8 images (N, 3, H, W), in big batches, averaged over TTA `views`
    ((dy, dx, mirrored) each; `trainable.augment.tta_views`) or of the images alone. With a
    `progress` label, a long pass shows its progress (`trainable.progress.Steps`)."""

    device = device or mean.device
    model.eval()
    on_cuda = device.type == "cuda"
    views = views or [(0, 0, False)]
    out = []
    size = EVAL_BATCH.get(device.type, 128)
    steps = Steps(len(images), progress, delay_s=2.0) if progress else None
    for start in range(0, len(images), size):
        batch = images[start:start + size].to(device)
        total = None
        for dy, dx, mirror in views:
            x = normalize(shift_mirror(batch, dy, dx, mirror), mean, std)
            if on_cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_cuda):
                logits = model(x).float()
            total = logits if total is None else total + logits
        out.append(total / len(views))
        if steps is not None:
            steps.update(len(batch))
    if steps is not None:
        steps.close()
    return torch.cat(out) if out else torch.zeros(0)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak lr at `step`: linear warm-up, then cosine annealing to zero."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# Under a time budget, warm-up ends by this share of the time at the latest: a config's
# `warmup_epochs` written for a 50-epoch horizon must not eat a 3-epoch budget.
MAX_WARMUP_SHARE = 0.1


def budget_lr_factor(step: int, warmup_steps: int, progress: float) -> float:
    """Multiplier of the peak lr under a time budget: `lr_factor`'s shape over the elapsed
    share of the time (`progress`, 0..1), warm-up ending at its step count or at
    MAX_WARMUP_SHARE of the time, whichever comes first.

    >>> budget_lr_factor(0, 0, 0.0), budget_lr_factor(500, 10, 0.5), budget_lr_factor(900, 10, 1.0)
    (1.0, 0.5, 0.0)
    >>> round(budget_lr_factor(4, 1000, 0.05), 3)  # a long warm-up cut at 10% of the time: half-way up here
    0.497
    """
    warm = 1.0
    if warmup_steps > 0:
        warm = min(1.0, max((step + 1) / warmup_steps, progress / MAX_WARMUP_SHARE))
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class TimeBudget:
    """Train for `seconds` of wall time from the start of `Trainer.epochs` (data passes,
    validation and checkpoints included; a resumed run's earlier time comes on top), keeping back `tail_s` for the work after training (the test pass, a prediction), as it
    would take at the machine's speed when training began.

    The tail is scaled by how much slower the steps have become since the fastest stretch
    seen (a machine that slows down 2x midway will also evaluate 2x slower), and the learning
    rate follows the elapsed share of the time left for training. With an epoch cap too
    (the config's `epochs`), whichever comes first ends the run, annealed.
    """

    seconds: float
    tail_s: float = 0.0


class StepClock:
    """The wall time a run has used (across resumes) and how its steps' speed has changed.

    Per-step times are smoothed (an exponential average over about 5 steps, so a change is
    seen within a few steps). The reference is the median time of steps 2 to 10: the speed at
    which the tail was measured, just before training began. The first step is left out: it
    pays one-off costs (allocations, warm-up) that made it several times slower than the next
    ones, and an average that held it read a machine that then slowed down 1.5x as faster
    than at the start. The tail scales with the machine's speed now against then, up or down
    (clamped to 1/4..4x): a reference taken from the fastest stretch seen would count a
    slowdown twice when the tail itself was measured on a busy machine.
    """

    REFERENCE_STEPS = (2, 10)

    def __init__(self, used_s: float = 0.0):
        self.used_before = used_s
        self.started = time.perf_counter()
        self.last = self.started
        self.smoothed: float | None = None
        self.reference: float | None = None
        self.early: list[float] = []
        self.steps = 0

    def used(self) -> float:
        return self.used_before + time.perf_counter() - self.started

    def tick(self) -> float:
        """Note that a step ended; return its seconds."""
        now = time.perf_counter()
        dt, self.last = now - self.last, now
        self.steps += 1
        # The average starts after the first step too, for the same reason.
        self.smoothed = dt if self.smoothed is None or self.steps == 2 else 0.8 * self.smoothed + 0.2 * dt
        first, last = self.REFERENCE_STEPS
        if first <= self.steps <= last:
            self.early.append(dt)
            if self.steps == last:
                self.reference = statistics.median(self.early)
        return dt

    def resync(self) -> None:
        """Start the next step's time now (after validation or a checkpoint, which are not steps)."""
        self.last = time.perf_counter()

    def slowdown(self) -> float:
        if not self.smoothed or not self.reference:
            return 1.0
        return min(4.0, max(0.25, self.smoothed / self.reference))


class WeightAverage:
    """An exponential moving average of a model's weights and BatchNorm statistics.

    Not torch.optim.swa_utils.AveragedModel: its update reads a device counter on the host
    every step (a sync per batch on a GPU). Here the decay comes from the host's step count
    and one foreach lerp updates every float tensor. The decay warms up as (1 + step) /
    (10 + step): with a fixed 0.999 a short run's average stays close to the random start
    (measured: 5 epochs of 78 steps on CIFAR-10 gave chance accuracy).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        import copy

        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def _floats(self, model: torch.nn.Module) -> list[torch.Tensor]:
        return [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self._floats(self.module), [t.detach() for t in self._floats(model)], 1 - decay)

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state)


class Trainer:
    """Trains one config on `DeviceData`.

    >>> from trainable.data import make_synthetic, to_device
    >>> data = to_device(make_synthetic(200, 50), "cpu")
    >>> trainer = Trainer({"blocks": [1, 1], "widths": [8, 16], "epochs": 1}, data)
    >>> [m["epoch"] for m in trainer.epochs()]
    [1]
    """

    def __init__(self, config: dict[str, Any], data: DeviceData, compile_model: bool = False,
                 ema_decay: float | None = None, fast_path: bool = True, time_budget: TimeBudget | None = None):
        self.config = cfg = with_defaults(config)  # validated where it entered
        self.data = data
        # A label turns on progress lines within an epoch that runs long (a retrain on a CPU);
        # trials leave it off.
        self.progress_label: str | None = None
        self.device = data.device
        self.on_cuda = self.device.type == "cuda"
        # bf16 autocast + channels_last on CUDA; fast_path=False is the fp32 NCHW baseline the
        # GPU proof compares against.
        self.mixed = self.on_cuda and fast_path
        torch.manual_seed(cfg["seed"])
        self.params = count_params(cfg, data.num_classes, data.channels)
        self.model = build_model(cfg, data.num_classes, data.channels).to(self.device)
        if self.on_cuda:
            torch.backends.cudnn.benchmark = True
        if self.mixed:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = self.model
        if compile_model:
            # A process trains many architectures (reused search workers): without a reset,
            # Dynamo's recompile limit (8) would silently turn compile off for later ones.
            torch.compiler.reset()
            self.forward = torch.compile(self.model)
        self.optimizer = self._make_optimizer()
        # An exponential moving average of the weights (and BN buffers), updated every step.
        self.ema = WeightAverage(self.model, ema_decay) if ema_decay else None
        self.generator = torch.Generator(device=self.device).manual_seed(cfg["seed"])
        # Crop padding, cutout and the policy's translations scaled to the images' size.
        self.augmentation = batch_augmentation(cfg, *data.train_x.shape[-2:])
        self.mixer = make_mixer(cfg, data.num_classes)
        n_train = len(data.train_x)
        self.batch_size = min(cfg["batch_size"], n_train)
        # Drop the last partial batch: a batch of 1 breaks BatchNorm, and equal batches keep
        # the per-step schedule identical across epochs.
        self.steps_per_epoch = max(1, n_train // self.batch_size)
        self.total_steps = self.steps_per_epoch * cfg["epochs"]
        self.warmup_steps = int(round(cfg["warmup_epochs"] * self.steps_per_epoch))
        self.epoch = 0
        self.step = 0
        self.status = "ok"
        self.time_budget = time_budget
        self.clock = StepClock()
        self.progress = 0.0  # the share of the schedule done: steps, or time under a budget

    def _advance(self) -> None:
        """Move the schedule's progress on after a step; under a time budget, by the time
        used against the time left for training (never backwards)."""
        by_steps = self.step / max(1, self.total_steps)
        if self.time_budget is None:
            self.progress = by_steps
            return
        step_s = self.clock.tick()
        budget = self.time_budget
        used = self.clock.used()
        # The budget counts from this run's start; time a resumed run used before adds to both sides.
        end = self.clock.used_before + budget.seconds
        training_s = end - budget.tail_s * self.clock.slowdown()
        target = min(1.0, used / training_s) if training_s > 0 else 1.0
        # The hard stop: the unscaled tail, or later where the machine now runs faster than
        # when the tail was timed (its scaled tail is shorter: the schedule ends there, and a
        # stop at the unscaled tail would cut it short of annealed).
        stop = max(training_s, end - budget.tail_s)
        if used < stop:
            # A sudden slowdown grows the kept-back tail and the target jumps: move on at up to
            # 4x the clock's pace, or a tenth of what is left a step, so the last steps anneal;
            # and at least fast enough to reach the end in the steps that still fit before
            # the stop (after a stall, e.g. the process descheduled, few steps are left).
            pace = step_s / max(training_s, step_s)
            # Steps left at the slower of this step and the recent average: one quick step on a
            # busy machine must not promise more steps than will fit.
            typical_s = max(step_s, self.clock.smoothed or step_s)
            steps_left = max(1.0, (stop - used) / max(typical_s, 1e-9))
            step_up = max(4 * pace, (1 - self.progress) / 10 + 0.005, (1 - self.progress) / steps_left)
            target = min(target, self.progress + step_up)
        else:
            target = 1.0  # the stop is reached: end now whatever the schedule says
        self.progress = max(self.progress, by_steps, target)

    def finished(self) -> bool:
        """The horizon is reached: every epoch, or (under a time budget) its time."""
        if self.status != "ok":
            return True
        if self.time_budget is not None:
            return self.progress >= 1.0
        return self.epoch >= self.config["epochs"]

    def _lr(self) -> float:
        if self.time_budget is None:
            return self.config["lr"] * lr_factor(self.step, self.warmup_steps, self.total_steps)
        return self.config["lr"] * budget_lr_factor(self.step, self.warmup_steps, self.progress)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        # Fused kernels on CUDA: one launch per step for all parameters.
        fused = {"fused": True} if self.on_cuda else {}
        decay = [p for p in self.model.parameters() if p.ndim > 1]
        no_decay = [p for p in self.model.parameters() if p.ndim <= 1]  # BN and biases
        groups = [
            {"params": decay, "weight_decay": cfg["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if cfg["optimizer"] == "sgd":
            return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"] or 0.0,
                                   nesterov=cfg["momentum"] > 0, **fused)
        return torch.optim.AdamW(groups, lr=cfg["lr"], betas=(cfg["momentum"], 0.999), **fused)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.mixed)

    def _loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast():
            logits = self.forward(self._prepare(images))
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.config["label_smoothing"])
        return logits, loss

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss, backward and optimizer step of one batch; returns (logits, loss).

        `labels` are class ids, or (B, classes) soft targets from MixUp/CutMix; label
        smoothing applies to both (cross_entropy smooths probability targets too).

        With `sam_rho` > 0 (SAM), the gradient that steps the weights is taken at the weights
        moved by rho along the normalised gradient of the batch, then the move is undone:
        two forward/backward passes on the same (augmented, mixed) batch. The norm and the
        move stay on the device (foreach ops): no host sync. The returned logits and loss
        are the first pass's, at the weights being trained.
        """
        logits, loss = self._loss(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        rho = self.config["sam_rho"]
        if rho > 0:
            params = [p for p in self.model.parameters() if p.grad is not None]
            grads = [p.grad for p in params]
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            moves = torch._foreach_mul(grads, rho / (norm + 1e-12))
            with torch.no_grad():
                torch._foreach_add_(params, moves)
            try:
                self.optimizer.zero_grad(set_to_none=True)
                _, perturbed = self._loss(images, labels)
                perturbed.backward()
            finally:  # back to the weights being trained, even if the pass failed (compile fallback)
                with torch.no_grad():
                    torch._foreach_sub_(params, moves)
        self.optimizer.step()
        return logits, loss

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`_train_step`, falling back to eager if torch.compile fails in forward or backward.

        The compiled backward is built at the first backward pass, so the fallback wraps the
        whole step; the optimizer has not stepped when either fails, and zero_grad clears
        any partial gradients. Running out of memory is never taken for a compile failure.
        """
        try:
            return self._train_step(images, labels)
        except Exception as exc:
            if self.forward is self.model or is_out_of_memory(exc):
                raise
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); training without it")
            self.forward = self.model
            return self._train_step(images, labels)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.mixed:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training split; returns loss and accuracy (one host sync)."""
        cfg, data = self.config, self.data
        self.model.train()
        order = torch.randperm(len(data.train_x), device=self.device, generator=self.generator)
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        steps = (Steps(self.steps_per_epoch * self.batch_size, self.progress_label, delay_s=20.0, every_s=30.0)
                 if self.progress_label else None)
        for index in range(self.steps_per_epoch):
            if self.time_budget is not None and self.progress >= 1.0:
                break  # the time is spent: the last epoch is a partial one
            batch = order[index * self.batch_size:(index + 1) * self.batch_size]
            images = augment_batch(data.train_x[batch], data.mean, data.std, generator=self.generator,
                                   **self.augmentation)
            labels = data.train_y[batch]
            targets = labels
            # MixUp/CutMix draw on the host's RNG (saved in checkpoints): no device sync.
            if self.mixer is not None and torch.rand(()) < cfg["mix_prob"]:
                images, targets = self.mixer(images, labels)  # targets: (B, classes) soft labels
            lr = self._lr()
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            logits, loss = self._step(images, targets)
            if self.ema is not None:
                self.ema.update(self.model, self.step)
            total_loss += loss.detach() * len(batch)
            # train_acc: against the label with the larger mixing weight when the batch was mixed.
            correct += (logits.argmax(1) == (targets.argmax(1) if targets.ndim == 2 else targets)).sum()
            seen += len(batch)
            self.step += 1
            self._advance()
            if steps is not None:
                steps.update(len(batch))
        if steps is not None:
            steps.close()
        seen = max(seen, 1)
        return {"train_loss": total_loss.item() / seen, "train_acc": correct.item() / seen}

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, tta: bool = False,
                 use_ema: bool = False, progress: str | None = None) -> dict[str, float]:
        """Loss and accuracy on uint8 images (no training augmentation), in big batches (a
        `progress` label shows a long pass's progress)."""
        model = self.ema.module if use_ema and self.ema is not None else self.model
        views = tta_views(self.config) if tta else None
        logits = predict_logits(model, images, self.data.mean, self.data.std, views, self.device, progress)
        labels = labels.to(self.device)
        loss = F.cross_entropy(logits, labels).item() if len(labels) else float("nan")
        return {"loss": loss, "acc": (logits.argmax(1) == labels).float().mean().item()}

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch, evaluate on val, and return the epoch's metrics."""
        if self.on_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        train = self.train_epoch()  # its .item() calls synchronize the device
        seconds = time.perf_counter() - start
        self.epoch += 1
        metrics: dict[str, Any] = {
            "epoch": self.epoch,
            "train_loss": train["train_loss"],
            "train_acc": train["train_acc"],
            "val_loss": None,
            "val_acc": None,
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_seconds": seconds,
            "images_per_second": self.steps_per_epoch * self.batch_size / max(seconds, 1e-9),
            "params": self.params,
            "status": "ok",
        }
        if not math.isfinite(train["train_loss"]):
            # A NaN/inf loss never recovers; stop now instead of burning the rest of the budget.
            self.status = metrics["status"] = "diverged"
            metrics["val_acc"] = 1.0 / self.data.num_classes  # chance: a finite, honest floor
            return metrics
        if self.data.val_x is not None:
            val = self.evaluate(self.data.val_x, self.data.val_y)
            metrics["val_loss"], metrics["val_acc"] = val["loss"], val["acc"]
        return metrics

    def epochs(self) -> Iterator[dict[str, Any]]:
        """Yield each remaining epoch's metrics until the horizon (or the time budget) or divergence."""
        self.clock = StepClock(self.clock.used_before)  # the budget counts from here (and from before a resume)
        while not self.finished():
            metrics = self.run_epoch()
            if self.time_budget is not None:
                metrics["time_used_s"] = round(self.clock.used(), 2)
                metrics["slowdown"] = round(self.clock.slowdown(), 2)
            yield metrics
            self.clock.resync()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizer, step, epoch, RNG states."""
        state = {
            "config": self.config,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "status": self.status,
            "generator": self.generator.get_state(),
            "ema_decay": self.ema.decay if self.ema is not None else None,
            "cpu_rng": torch.get_rng_state(),
            "progress": self.progress,
            "time_used_s": self.clock.used(),
        }
        if self.on_cuda:
            state["cuda_rng"] = torch.cuda.get_rng_state()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`'s output (model, optimizer, schedule position, RNGs)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.status = state["epoch"], state["step"], state["status"]
        self.progress = state.get("progress", self.step / max(1, self.total_steps))
        self.clock = StepClock(state.get("time_used_s", 0.0) if self.time_budget is not None else 0.0)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["cpu_rng"])
        if self.on_cuda and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
