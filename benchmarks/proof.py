"""The GPU proof: every speed and accuracy figure the README claims, in one prepared command.

    PYTHONPATH=. python -m benchmarks.proof --data-archive cifar10-jpeg.tar.xz --out proof/
    python -m benchmarks.proof --smoke --out /tmp/proof      # toy sizes, CPU, under 2 minutes

Needs only torch, torchvision and numpy (no Ray, no Optuna, no install): it measures the
training core, and packs trials as plain processes. Five steps, each with its own time cap
that holds compile time included (a measurement starts only if the last one's time still
fits; compiled runs go in a child process killed at the cap), and the whole command under
a hard deadline (--deadline, default 9 minutes): proof.json is rewritten after every step,
and at the deadline a watchdog writes what there is, ends every child and exits. A GPU loan
is short: the proof can be cut short, never hang (`benchmarks.harness` holds that machinery:
steps under caps, the watchdog, child processes). Writes DIR/proof.json and DIR/proof.md.

1. data pipeline: crop + flip + cutout, and TrivialAugment, on the device against
   torchvision's per-image transforms in a warmed-up DataLoader (16 persistent workers);
2. training step: the seed config (4,918,602 params) and a small one, fp32 NCHW against bf16
   autocast + channels_last, at batch 128 and 512, with and without TrivialAugment (the
   space draws a policy 3 times in 4), and with torch.compile (recording whether it really
   compiled); one full epoch of the seed config at the best setting;
3. trial packing: 1, 2, 4 and 8 trial processes sharing the GPU: images per second over one
   common window (start barrier to last finish), memory per trial with its CUDA context
   (`torch.cuda.mem_get_info`), and the ASHA trials per GPU-hour that implies;
4. accuracy in time: a strong recipe trained on the whole training set for about 3 minutes,
   the time it first reached 94% on the test set (read after each epoch for this figure
   only; nothing is chosen by it), and its final accuracy;
5. correctness on the device: bf16 against fp32 losses, exact resume, the compile fallback,
   and the host syncs inside the step loop (crop + flip, and TrivialAugment + MixUp).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import platform
import queue as queues
import tarfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from benchmarks.harness import Budget, ProofSteps, Watchdog, end_children, spawn
from trainable.checkpoint import write_json, write_text
from trainable.cli import ArgumentParser, run_main
from trainable.data import Dataset, DeviceData, load_imagefolder, make_synthetic, to_device
from trainable.errors import UserError
from trainable import zoo
from trainable.zoo import architecture

SEED = architecture(zoo.SEED)  # 4,918,602 params
SMALL = {"blocks": [2, 2, 2], "widths": [32, 64, 128]}
SEARCH_SIZED = {"blocks": [2, 2, 2], "widths": [48, 96, 192]}  # the middle of the default space
TOY = {"blocks": [1, 1], "widths": [8, 16]}
# The strong recipe of step 4: the known levers that pay within minutes (Nesterov SGD,
# label smoothing, cutout, flip + crop, EMA and TTA); a policy pays only over long runs.
RECIPE = {**SEED, "optimizer": "sgd", "lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 512,
          "warmup_epochs": 2, "label_smoothing": 0.1, "cutout": 12}
# ASHA at the search's defaults (--max-epochs 20, grace 2, reduction factor 3): every trial
# trains 2 epochs, a third goes on to 6, a ninth to 18, a 27th to 20.
ASHA_EPOCHS_PER_TRIAL = 2 + (6 - 2) / 3 + (18 - 6) / 9 + (20 - 18) / 27
PUBLISHED = {"airbench94": "94.01% in 3.29 s (A100), about 1.97M params",
             "airbench95": "95.01% in 10.4 s (A100), about 4.6M params",
             "airbench96": "96.05% in 46.3 s (A100), about 9.9M params: above this tool's 5M budget"}


# ----------------------------------------------------------------------------- helpers
def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def subset(dataset: Dataset, n: int) -> Dataset:
    """n training images, as many of each class (a folder lists its images class by class)."""
    from benchmarks.common import stratified

    return stratified(dataset, n)


def epoch_rate(config: dict[str, Any], data: DeviceData, dev: torch.device, *, fast: bool = True,
               compile_model: bool = False, epochs: int = 2) -> dict[str, Any]:
    """Images per second of training epochs after a warm-up epoch (cuDNN autotuning, compile).

    With `compile_model`, says whether the model really ran compiled (`compiled`): when
    compilation fails the Trainer warns and trains eagerly, and the figure is eager's.
    """
    from trainable.loop import Trainer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer({**config, "epochs": epochs + 1, "warmup_epochs": 0}, data, compile_model=compile_model,
                          fast_path=fast)
        sync(dev)
        start = time.perf_counter()
        trainer.train_epoch()
        sync(dev)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(epochs):
            trainer.train_epoch()
        sync(dev)
    seconds = (time.perf_counter() - start) / epochs
    images = trainer.steps_per_epoch * trainer.batch_size
    out: dict[str, Any] = {"images_per_s": images / seconds, "epoch_s": seconds, "first_epoch_s": first}
    if compile_model:
        out["compiled"] = trainer.forward is not trainer.model
        failures = [str(w.message)[:200] for w in caught if "torch.compile failed" in str(w.message)]
        if failures:
            out["compile_error"] = failures[0]
    return out


def _child_rate(config: dict[str, Any], arrays: str, n: int, device: str, kwargs: dict[str, Any], queue: Any) -> None:
    """A measurement in its own process (compiled runs), so the parent can end it at the cap."""
    data = to_device(_load_arrays(arrays, n), torch.device(device), val_fraction=0.0)
    queue.put(epoch_rate(config, data, torch.device(device), **kwargs))


def _load_arrays(arrays: str, n: int) -> Dataset:
    import numpy as np

    with np.load(arrays) as saved:
        images, labels = torch.from_numpy(saved["x"][:n]), torch.from_numpy(saved["y"][:n])
    return Dataset(images, labels, images[:0], labels[:0], [str(i) for i in range(10)])


def _save_arrays(dataset: Dataset, n: int, path: Path) -> Path:
    import numpy as np

    part = subset(dataset, n)
    np.savez(path, x=part.train_images.numpy(), y=part.train_labels.numpy())
    return path


def in_child(config: dict[str, Any], arrays: Path, n: int, dev: torch.device, seconds: float,
             **kwargs: Any) -> dict[str, Any]:
    """`epoch_rate` in a child process, ended if it has not reported within `seconds`."""
    queue = multiprocessing.get_context("spawn").Queue()
    proc = spawn(_child_rate, (config, str(arrays), n, str(dev), kwargs, queue))
    deadline = time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline:
            try:
                return queue.get(timeout=1.0)
            except queues.Empty:
                if not proc.is_alive():
                    return {"skipped": f"the measuring process died (exit code {proc.exitcode})"}
        return {"skipped": f"not done within the {seconds:.0f} s left of the cap (compilation included)"}
    finally:
        end_children()


# ----------------------------------------------------------------------------- the steps
def data_pipeline(dataset: Dataset, dev: torch.device, smoke: bool) -> Callable[[float], dict[str, Any]]:
    def step(cap: float) -> dict[str, Any]:
        from benchmarks.data_pipeline import compare, ops_per_batch

        part = subset(dataset, 512 if smoke else 20_000)
        workers = 2 if smoke else min(16, os.cpu_count() or 1)
        out: dict[str, Any] = {"images": len(part.train_images), "dataloader_workers": workers,
                               "ops_per_batch_of_128": ops_per_batch(128)}
        budget = Budget(cap, margin=1.1)
        for label, policy in (("crop_flip_cutout", False), ("trivialaugment_cutout", True)):
            out[label] = budget.measure(lambda: compare(part, dev, 128, policy, workers, cutout=16))
        return out

    return step


def training_step(dataset: Dataset, dev: torch.device, smoke: bool, out_dir: Path) -> Callable[[float], dict[str, Any]]:
    def step(cap: float) -> dict[str, Any]:
        n = 256 if smoke else 10_240
        part = to_device(subset(dataset, n), dev, val_fraction=0.0)
        budget = Budget(cap)
        main = TOY if smoke else SEED
        out: dict[str, Any] = {"images_per_epoch": len(part.train_x)}
        # fp32 NCHW against bf16 + channels_last, at batch 128, for the seed config and a small one.
        for name, config in ({"toy": TOY} if smoke else {"seed": SEED, "small": SMALL}).items():
            for mode, fast in (("fp32_nchw", False), ("bf16_channels_last", True)):
                out[f"{name}_b128_{mode}"] = budget.measure(lambda: epoch_rate(config, part, dev, fast=fast))
        label = "toy" if smoke else "seed"
        # Batch 512, and TrivialAugment (drawn 3 times in 4 by the space), at the fast setting.
        for batch, policy in ((512, "none"), (128, "trivialaugment"), (512, "trivialaugment")):
            key = f"{label}_b{batch}_bf16_channels_last" + ("_trivialaugment" if policy != "none" else "")
            config = {**main, "batch_size": batch, "augment_policy": policy}
            out[key] = budget.measure(lambda: epoch_rate(config, part, dev))
        # torch.compile in a child process: killed at the cap, compile time included.
        arrays = _save_arrays(dataset, n, out_dir / "step_arrays.npz")
        key = f"{label}_b128_bf16_channels_last_compile"
        if smoke:
            result = in_child(main, arrays, n, dev, max(5.0, budget.left() - 2))
            result["compiled"] = "not tried: compiling on a CPU takes longer than the smoke cap (the child ran eager)"
            out[key] = result
        elif budget.left() > 30:
            out[key] = in_child(main, arrays, n, dev, budget.left() - 25, compile_model=True)
        else:
            out[key] = {"skipped": f"{budget.left():.0f} s left of the cap: too little to compile"}
        arrays.unlink(missing_ok=True)
        eager = {m: out[f"{label}_b128_{m}"] for m in ("fp32_nchw", "bf16_channels_last")}
        measured = {m: r for m, r in eager.items() if "images_per_s" in r}
        if not measured:
            return out
        best = max(measured, key=lambda m: measured[m]["images_per_s"])
        out["best_eager_setting"] = best
        full = to_device(dataset, dev, val_fraction=0.0)
        per_epoch = len(full.train_x) / measured[best]["images_per_s"]
        if budget.fits(2 * per_epoch):
            timed = epoch_rate(main, full, dev, epochs=1, fast=best != "fp32_nchw")
            out["full_epoch"] = {"images": len(full.train_x), "seconds": timed["epoch_s"],
                                 "images_per_s": timed["images_per_s"]}
        else:
            out["full_epoch"] = {"skipped": f"a full epoch would take ~{per_epoch:.0f} s, past the cap"}
        return out

    return step


BARRIER_TIMEOUT = 120.0  # the slowest child's start-up (import torch, CUDA context, upload)


def _packed_trial(index: int, config: dict[str, Any], arrays: str, n: int, epochs: int, device: str, threads: int,
                  start: Any, warm: Any, done: Any, queue: Any) -> None:
    """One trial process of step 3: its own copy of the data on the device, a warm-up epoch,
    then timed epochs that every process starts together (barrier `warm`)."""
    import threading as _threading

    torch.set_num_threads(threads)
    dev = torch.device(device)
    data = to_device(_load_arrays(arrays, n), dev, val_fraction=0.0)
    from trainable.loop import Trainer

    trainer = Trainer({**config, "epochs": epochs + 1, "warmup_epochs": 0}, data)
    try:
        start.wait(timeout=BARRIER_TIMEOUT)  # every process has its data on the device
        trainer.train_epoch()  # warm-up: cuDNN autotuning, allocator
        sync(dev)
        warm.wait(timeout=BARRIER_TIMEOUT)
    except _threading.BrokenBarrierError:
        return  # another trial died: the parent reports it
    began = time.time()
    for _ in range(epochs):
        trainer.train_epoch()
    sync(dev)
    ended = time.time()
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0
    queue.put({"index": index, "images": epochs * trainer.steps_per_epoch * trainer.batch_size, "began": began,
               "ended": ended, "peak_allocated_mb": peak / 2**20})
    try:
        done.wait(timeout=BARRIER_TIMEOUT)  # held until the parent has read the device's memory
    except _threading.BrokenBarrierError:
        pass


def _device_used_mb(dev: torch.device) -> float | None:
    if dev.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(dev)
    return (total - free) / 2**20


def pack(k: int, config: dict[str, Any], arrays: Path, n: int, epochs: int, dev: torch.device,
         seconds: float) -> dict[str, Any]:
    """k trial processes on the device at once; throughput over their common timed window."""
    context = multiprocessing.get_context("spawn")
    start, warm, done, queue = context.Barrier(k), context.Barrier(k), context.Barrier(k + 1), context.Queue()
    before = _device_used_mb(dev)
    threads = max(1, (os.cpu_count() or 1) // k)
    procs = [spawn(_packed_trial, (i, config, str(arrays), n, epochs, str(dev), threads, start, warm, done, queue))
             for i in range(k)]
    reports: list[dict[str, Any]] = []
    deadline = time.perf_counter() + seconds
    try:
        while len(reports) < k:
            if time.perf_counter() > deadline:
                return {"skipped": f"{len(reports)} of {k} trials reported within {seconds:.0f} s"}
            try:
                reports.append(queue.get(timeout=0.5))
                continue
            except queues.Empty:
                pass
            reported = {r["index"] for r in reports}
            dead = [i for i, proc in enumerate(procs) if not proc.is_alive() and i not in reported]
            if dead:
                for barrier in (start, warm, done):
                    barrier.abort()  # the others stop waiting at once
                return {"skipped": f"trial process {dead[0]} died before reporting (exit code "
                                   f"{procs[dead[0]].exitcode}); the others were ended"}
        used = _device_used_mb(dev)
        try:
            done.wait(timeout=10)
        except threading.BrokenBarrierError:
            pass
    finally:
        end_children()
    window = max(r["ended"] for r in reports) - min(r["began"] for r in reports)
    total = sum(r["images"] for r in reports) / window
    epoch_images = 45_000  # CIFAR-10's training split less the search's 10% val
    return {
        "total_images_per_s": total, "per_trial_images_per_s": total / k, "window_s": window,
        "peak_allocated_mb_per_trial": max(r["peak_allocated_mb"] for r in reports),
        "device_mb_per_trial_with_context": None if used is None or before is None else (used - before) / k,
        "asha_trials_per_gpu_hour": 3600 * total / (ASHA_EPOCHS_PER_TRIAL * epoch_images),
    }


def trial_packing(dataset: Dataset, dev: torch.device, smoke: bool, out_dir: Path) -> Callable[[float], dict[str, Any]]:
    def step(cap: float) -> dict[str, Any]:
        n = 512 if smoke else 10_240
        arrays = _save_arrays(dataset, n, out_dir / "arrays.npz")
        config = TOY if smoke else SEARCH_SIZED
        counts = (1, 2) if smoke else (1, 2, 4, 8)
        out: dict[str, Any] = {"config": config, "images_per_trial_epoch": n}
        budget = Budget(cap, margin=1.5)
        try:
            for k in counts:
                out[f"trials_{k}"] = budget.measure(
                    lambda: pack(k, config, arrays, n, 1 if smoke else 2, dev, max(5.0, budget.left())))
        finally:
            arrays.unlink(missing_ok=True)
        measured = {k: out[f"trials_{k}"] for k in counts if "total_images_per_s" in out[f"trials_{k}"]}
        if measured:
            top = max(v["total_images_per_s"] for v in measured.values())
            # The fewest trials that reach 95% of the best total: more only adds memory pressure.
            best_k = min(k for k, v in measured.items() if v["total_images_per_s"] >= 0.95 * top)
            out["recommended_gpus_per_trial"] = 1 / best_k
        return out

    return step


def accuracy_in_time(dataset: Dataset, dev: torch.device, smoke: bool) -> Callable[[float], dict[str, Any]]:
    def step(cap: float) -> dict[str, Any]:
        from trainable.loop import Trainer

        config = {**(TOY if smoke else RECIPE), "epochs": 1}
        data = to_device(dataset, dev, val_fraction=0.0)
        probe = epoch_rate({**config, "batch_size": config.get("batch_size", 128)}, data, dev, epochs=1)
        # Test accuracy after each epoch, for the time to 94% only: 10,000 images in big batches.
        start = time.perf_counter()
        Trainer(config, data).evaluate(dataset.test_images, dataset.test_labels)
        eval_s = time.perf_counter() - start
        # The epochs that fit: the cap less the probe already spent, the evaluations and slack.
        spent = probe["first_epoch_s"] + probe["epoch_s"] + eval_s
        epochs = max(1, min(60, int((cap - spent - 4 * eval_s - 10) / (probe["epoch_s"] + eval_s))))
        trainer = Trainer({**config, "epochs": epochs}, data, ema_decay=0.999)
        train_s, by_epoch, to_94 = 0.0, [], None
        for _ in range(epochs):
            sync(dev)
            start = time.perf_counter()
            trainer.run_epoch()
            sync(dev)
            train_s += time.perf_counter() - start
            acc = trainer.evaluate(dataset.test_images, dataset.test_labels)["acc"]
            by_epoch.append(round(acc, 4))
            if to_94 is None and acc >= 0.94:
                to_94 = train_s
        test = {name: trainer.evaluate(dataset.test_images, dataset.test_labels, tta=tta, use_ema=ema)["acc"]
                for name, tta, ema in (("test_acc", False, False), ("test_acc_tta", True, False),
                                       ("test_acc_ema", False, True), ("test_acc_ema_tta", True, True))}
        return {"config": config, "params": trainer.params, "epochs": epochs, "train_seconds": train_s,
                "train_images": len(data.train_x), **test, "seconds_to_94_percent": to_94,
                "test_acc_by_epoch": by_epoch, "published": PUBLISHED}

    return step


def correctness(dataset: Dataset, dev: torch.device, smoke: bool) -> Callable[[float], dict[str, Any]]:
    def step(cap: float) -> dict[str, Any]:
        from trainable.loop import Trainer

        data = to_device(subset(dataset, 1024 if smoke else 8192), dev, val_fraction=0.0)
        config = {**(TOY if smoke else SMALL), "epochs": 2, "warmup_epochs": 0}
        out: dict[str, Any] = {}
        budget = Budget(cap, margin=1.0)

        def bf16_vs_fp32() -> dict[str, Any]:
            # bf16 autocast against fp32: the first steps' losses agree within 2%.
            losses = {}
            for name, fast in (("fp32", False), ("bf16", True)):
                trainer = Trainer(config, data, fast_path=fast)
                trainer.steps_per_epoch = 8
                losses[name] = trainer.train_epoch()["train_loss"]
            gap = abs(losses["bf16"] - losses["fp32"]) / losses["fp32"]
            return {**losses, "relative_gap": gap, "ok": gap < 0.02,
                    "note": None if dev.type == "cuda" else "on a CPU both run in fp32"}

        def resume_exact() -> dict[str, Any]:
            # 2 epochs straight against 1 + checkpoint + 1, deterministic kernels.
            torch.backends.cudnn.deterministic = True
            try:
                straight = Trainer(config, data)
                torch.backends.cudnn.benchmark = False
                list(straight.epochs())
                first = Trainer(config, data)
                torch.backends.cudnn.benchmark = False
                first.run_epoch()
                resumed = Trainer(config, data)
                torch.backends.cudnn.benchmark = False
                resumed.load_state_dict(first.state_dict())
                list(resumed.epochs())
                diff = max((a.float() - b.float()).abs().max().item()
                           for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()))
            finally:
                torch.backends.cudnn.deterministic = False
            return {"max_weight_difference": diff, "ok": diff == 0.0}

        def compile_fallback() -> dict[str, Any]:
            # A compiler that fails, and training goes on eagerly.
            original = torch.compile

            def broken(model: Any, **kwargs: Any) -> Any:
                def fail(*args: Any) -> Any:
                    raise RuntimeError("simulated compiler failure")
                return fail

            torch.compile = broken
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    trainer = Trainer(config, data, compile_model=True)
                    metrics = trainer.run_epoch()
            finally:
                torch.compile = original
            return {"ok": trainer.forward is trainer.model and math.isfinite(metrics["train_loss"]),
                    "warned": any("torch.compile failed" in str(w.message) for w in caught)}

        def host_syncs(extra: dict[str, Any]) -> dict[str, Any]:
            # Host syncs in one epoch of steps: the loop reads its metrics once, at the end (2 reads).
            trainer = Trainer({**config, **extra}, data)
            trainer.train_epoch()  # warm-up: the policy's constants are made on the first batch
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    trainer.train_epoch()
                finally:
                    torch.cuda.set_sync_debug_mode(0)
            syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
            return {"per_epoch": len(syncs), "steps": trainer.steps_per_epoch,
                    "per_step": (len(syncs) - 2) / trainer.steps_per_epoch, "ok": len(syncs) <= 2,
                    "first": syncs[:3]}

        checks: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("bf16_vs_fp32", bf16_vs_fp32), ("resume_exact", resume_exact), ("compile_fallback", compile_fallback)]
        if dev.type == "cuda":
            checks += [("host_syncs_default", lambda: host_syncs({})),
                       ("host_syncs_trivialaugment_mixup",
                        lambda: host_syncs({"augment_policy": "trivialaugment", "mixup_alpha": 0.2}))]
        else:
            out["host_syncs"] = {"skipped": "CUDA only (torch.cuda.set_sync_debug_mode)"}
        for name, check in checks:
            out[name] = budget.measure(check)
        return out

    return step


# ----------------------------------------------------------------------------- the command
def load_data(archive: str | None, out: Path, smoke: bool) -> tuple[Dataset, str]:
    """The CIFAR-10 JPEG archive unpacked into `out` and decoded with every core, or synthetic data."""
    if archive is None:
        return make_synthetic(n_train=2048, n_test=512), "synthetic (no --data-archive)"
    folder = out / "cifar10-jpeg"
    if not (folder / "train").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            try:
                tar.extractall(folder, filter="data")  # no links or absolute paths out of the folder
            except TypeError:  # a Python without extraction filters
                tar.extractall(folder)
    roots = [p.parent for p in folder.rglob("train") if (p.parent / "test").is_dir()]
    if not roots:
        raise UserError(f"{archive} holds no train/ and test/ folders of images")
    start = time.perf_counter()
    dataset = load_imagefolder(roots[0])
    print(f"decoded {len(dataset.train_images) + len(dataset.test_images):,} images in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    if smoke:
        from benchmarks.common import stratified

        dataset = stratified(dataset, 2048, 512)  # every class, so the accuracy figure means something
    return dataset, f"CIFAR-10 JPEGs from {archive}"


CAPS = {"data_pipeline": 45, "training_step": 150, "trial_packing": 100, "accuracy_in_time": 160, "correctness": 40}
# The smoke run's correctness checks take 2-5 s on a 2-core CPU; a slower one skipped the last
# of them at a 6 s cap.
SMOKE_CAPS = {"data_pipeline": 8, "training_step": 14, "trial_packing": 20, "accuracy_in_time": 8, "correctness": 12}
DEFAULT_DEADLINE = 570.0  # seconds: the caps and the decode fit, under a 10-minute command limit


def describe_device(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


STEPS = ("data_pipeline", "training_step", "trial_packing", "accuracy_in_time", "correctness")


def prove(archive: str | None, out: Path, smoke: bool, deadline: float = DEFAULT_DEADLINE,
          only: Sequence[str] = STEPS) -> dict[str, Any]:
    """Run the five steps (or those in `only`, in their order) under the hard deadline;
    return everything proof.json holds.

    proof.json and proof.md are rewritten after every step (`complete` false until the end).
    """
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BUDGETNAS_CACHE", str(out / "cache"))  # the decode cache stays beside the proof
    dev = torch.device("cpu") if smoke else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    began = time.perf_counter()
    header = {"device": describe_device(dev), "torch": torch.__version__, "smoke": smoke, "data": None,
              "deadline_seconds": deadline, "steps_asked": [name for name in STEPS if name in only]}

    def write(extra: dict[str, Any]) -> dict[str, Any]:
        proof = {**header, "steps": dict(steps.results), "complete": False,
                 "wall_seconds": round(time.perf_counter() - began, 1), **extra}
        write_json(out / "proof.json", proof)
        write_text(out / "proof.md", markdown(proof))
        return proof

    steps = ProofSteps(on_step=lambda results: write({}))
    watchdog = Watchdog(deadline, write, steps)
    watchdog.timer.start()
    try:
        dataset, header["data"] = load_data(archive, out, smoke)
        caps = SMOKE_CAPS if smoke else CAPS
        made = {"data_pipeline": lambda: data_pipeline(dataset, dev, smoke),
                "training_step": lambda: training_step(dataset, dev, smoke, out),
                "trial_packing": lambda: trial_packing(dataset, dev, smoke, out),
                "accuracy_in_time": lambda: accuracy_in_time(dataset, dev, smoke),
                "correctness": lambda: correctness(dataset, dev, smoke)}
        for name in header["steps_asked"]:
            steps.run(name, caps[name], made[name]())
    finally:
        watchdog.timer.cancel()
        end_children()
    return write({"complete": True})


def markdown(proof: dict[str, Any]) -> str:
    """proof.md: the device, the versions and every figure, one row per measurement."""
    lines = [f"# GPU proof: {proof['device']}", "", f"torch {proof['torch']}; data: {proof['data']}"
             + ("; smoke run (toy sizes)" if proof["smoke"] else ""), "", "| step | measurement | value |",
             "|---|---|---|"]

    def rows(step: str, prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                rows(step, f"{prefix}.{key}" if prefix else key, inner)
        else:
            shown = f"{value:,.4g}" if isinstance(value, float) else str(value)
            lines.append(f"| {step} | {prefix} | {shown} |")

    for step, result in proof["steps"].items():
        rows(step, "", result)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m benchmarks.proof", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-archive", help="the CIFAR-10 JPEG archive (tar.xz with train/ and test/); "
                                               "default: synthetic images")
    parser.add_argument("--out", required=True, help="folder for proof.json and proof.md")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: checks the command, measures nothing")
    parser.add_argument("--force", action="store_true", help="replace an earlier proof in --out")
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE,
                        help=f"hard limit in seconds for the whole command: at it, what was measured is written "
                             f"and the command exits 3 (default {DEFAULT_DEADLINE:.0f})")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help="comma-separated steps to run, in the proof's order (default all: "
                             f"{','.join(STEPS)}); rerun one step when device time is short")
    args = parser.parse_args(argv)
    if args.deadline <= 0:
        raise UserError("--deadline must be positive")
    only = [name.strip() for name in args.steps.split(",") if name.strip()]
    unknown = [name for name in only if name not in STEPS]
    if unknown or not only:
        raise UserError(f"unknown --steps {','.join(unknown) or repr(args.steps)}; choose from {','.join(STEPS)}")
    out = Path(args.out)
    if args.data_archive and not Path(args.data_archive).is_file():
        raise UserError(f"--data-archive {args.data_archive} does not exist")
    if (out / "proof.json").exists() and not args.force:
        raise UserError(f"{out / 'proof.json'} exists; pass --force to replace it, or another --out")
    if not args.smoke and not torch.cuda.is_available():
        print("warning: no CUDA device: the figures below are the CPU's", flush=True)
    proof = prove(args.data_archive, out, args.smoke, args.deadline, only)
    print(f"\nproof done in {proof['wall_seconds']:.0f} s: wrote {out / 'proof.json'} and {out / 'proof.md'}")
    return 0


if __name__ == "__main__":
    run_main(main)
