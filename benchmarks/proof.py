"""The GPU proof: every speed and accuracy figure the README claims, in one prepared command.

    PYTHONPATH=. python -m benchmarks.proof --data-archive cifar10-jpeg.tar.xz --out proof/
    python -m benchmarks.proof --smoke --out /tmp/proof      # toy sizes, CPU, under 2 minutes

Needs only torch, torchvision and numpy (no Ray, no Optuna, no install): it measures the
training core, and packs trials as plain processes. Five steps, each with its own time cap;
a step that would run past its cap is cut down or skipped with the reason, so the command
always finishes and reports. Writes DIR/proof.json and DIR/proof.md.

1. data pipeline: crop + flip + cutout, and TrivialAugment, on the device against
   torchvision's per-image transforms in a DataLoader (16 workers);
2. training step: the seed config (4,918,602 params) and a small one, fp32 NCHW against bf16
   autocast + channels_last against the same plus torch.compile; one full epoch of the seed
   config at the best setting;
3. trial packing: 1, 2, 4 and 8 trial processes sharing the GPU: images per second, peak
   memory per trial, and the ASHA trials per GPU-hour that implies at default settings;
4. accuracy in time: a strong recipe trained on the whole training set for about 3 minutes,
   the test set read once at the end;
5. correctness on the device: bf16 against fp32 losses, exact resume, the compile fallback,
   and the host syncs inside the step loop.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import platform
import tarfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from trainable.checkpoint import write_json, write_text
from trainable.cli import ArgumentParser, run_main
from trainable.data import Dataset, DeviceData, load_imagefolder, make_synthetic, to_device
from trainable.errors import UserError

SEED = {"blocks": [3, 5, 3], "widths": [64, 128, 256]}  # 4,918,602 params
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
PUBLISHED = {"airbench94": "94.01% in 3.29 s (A100)", "airbench95": "95.01% in 10.4 s (A100)"}


# ----------------------------------------------------------------------------- helpers
def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def subset(dataset: Dataset, n: int) -> Dataset:
    return Dataset(dataset.train_images[:n], dataset.train_labels[:n], dataset.test_images, dataset.test_labels,
                   dataset.classes)


def epoch_rate(config: dict[str, Any], data: DeviceData, dev: torch.device, *, fast: bool = True,
               compile_model: bool = False, epochs: int = 2) -> dict[str, float]:
    """Images per second of training epochs after a warm-up epoch (cuDNN autotuning, compile)."""
    from trainable.loop import Trainer

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
    return {"images_per_s": images / seconds, "epoch_s": seconds, "first_epoch_s": first}


class Steps:
    """Runs each step under its own cap; a failure or a cap is reported, never fatal."""

    def __init__(self) -> None:
        self.results: dict[str, Any] = {}

    def run(self, name: str, cap: float, fn: Callable[[float], dict[str, Any]]) -> None:
        print(f"== {name} (cap {cap:.0f} s)", flush=True)
        start = time.perf_counter()
        try:
            result = fn(cap)
        except Exception as exc:  # a proof reports what failed and goes on to the next step
            result = {"skipped": f"{type(exc).__name__}: {str(exc)[:300]}"}
        result["step_seconds"] = round(time.perf_counter() - start, 1)
        self.results[name] = result
        for key, value in result.items():
            print(f"  {key}: {value}", flush=True)


# ----------------------------------------------------------------------------- the steps
def data_pipeline(dataset: Dataset, dev: torch.device, smoke: bool) -> Callable[[float], dict[str, Any]]:
    def step(cap: float) -> dict[str, Any]:
        from benchmarks.data_pipeline import compare

        part = subset(dataset, 512 if smoke else 20_000)
        workers = 2 if smoke else min(16, os.cpu_count() or 1)
        out: dict[str, Any] = {"images": len(part.train_images), "dataloader_workers": workers}
        start = time.perf_counter()
        for label, policy in (("crop_flip_cutout", False), ("trivialaugment_cutout", True)):
            if time.perf_counter() - start > cap / 2:
                out[label] = {"skipped": "the first half of the cap is spent"}
                continue
            out[label] = compare(part, dev, 128, policy, workers, cutout=16)
        return out

    return step


def training_step(dataset: Dataset, dev: torch.device, smoke: bool) -> Callable[[float], dict[str, Any]]:
    def step(cap: float) -> dict[str, Any]:
        part = to_device(subset(dataset, 1024 if smoke else 10_240), dev, val_fraction=0.0)
        configs = {"toy": TOY} if smoke else {"seed": SEED, "small": SMALL}
        modes = {"fp32_nchw": dict(fast=False), "bf16_channels_last": dict(fast=True),
                 "bf16_channels_last_compile": dict(fast=True, compile_model=True)}
        out: dict[str, Any] = {"images_per_epoch": len(part.train_x)}
        start = time.perf_counter()
        for name, config in configs.items():
            for mode, kwargs in modes.items():
                if smoke and kwargs.get("compile_model"):
                    out[f"{name}_{mode}"] = {"skipped": "smoke: compiling on a CPU takes longer than the smoke cap"}
                    continue
                if time.perf_counter() - start > cap * 0.6:
                    out[f"{name}_{mode}"] = {"skipped": "60% of the cap spent"}
                    continue
                out[f"{name}_{mode}"] = epoch_rate(config, part, dev, **kwargs)
        rates = {mode: out[f"{list(configs)[0]}_{mode}"] for mode in modes}
        best = max((m for m in modes if "images_per_s" in rates[m]), key=lambda m: rates[m]["images_per_s"])
        out["best_setting"] = best
        full = to_device(dataset, dev, val_fraction=0.0)
        per_epoch = len(full.train_x) / rates[best]["images_per_s"]
        if time.perf_counter() - start + 2 * per_epoch > cap:
            out["full_epoch"] = {"skipped": f"a full epoch would take ~{per_epoch:.0f} s, past the cap"}
        else:
            measured = epoch_rate(configs[list(configs)[0]], full, dev, epochs=1, **modes[best])
            out["full_epoch"] = {"images": len(full.train_x), "seconds": measured["epoch_s"],
                                 "images_per_s": measured["images_per_s"]}
        return out

    return step


def _packed_trial(config: dict[str, Any], arrays: str, n: int, epochs: int, device: str, threads: int,
                  start: Any, queue: Any) -> None:
    """One trial process of step 3: its own copy of the data on the device, then timed epochs."""
    import numpy as np

    torch.set_num_threads(threads)
    with np.load(arrays) as saved:
        images, labels = torch.from_numpy(saved["x"][:n]), torch.from_numpy(saved["y"][:n])
    dataset = Dataset(images, labels, images[:0], labels[:0], [str(i) for i in range(10)])
    dev = torch.device(device)
    data = to_device(dataset, dev, val_fraction=0.0)
    start.wait()  # every process starts training together
    rate = epoch_rate(config, data, dev, epochs=epochs)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0
    queue.put({"images_per_s": rate["images_per_s"], "peak_memory_mb": peak / 2**20})


def trial_packing(dataset: Dataset, dev: torch.device, smoke: bool, out_dir: Path) -> Callable[[float], dict[str, Any]]:
    def step(cap: float) -> dict[str, Any]:
        import numpy as np

        arrays = out_dir / "arrays.npz"
        n = 512 if smoke else 10_240
        np.savez(arrays, x=dataset.train_images[:n].numpy(), y=dataset.train_labels[:n].numpy())
        context = multiprocessing.get_context("spawn")  # CUDA cannot be shared through fork
        config = TOY if smoke else SEARCH_SIZED
        counts = (1, 2) if smoke else (1, 2, 4, 8)
        out: dict[str, Any] = {"config": config, "images_per_trial_epoch": n}
        start = time.perf_counter()
        for k in counts:
            if time.perf_counter() - start > cap * 0.7:
                out[f"trials_{k}"] = {"skipped": "70% of the cap spent"}
                continue
            barrier, queue = context.Barrier(k), context.Queue()
            threads = max(1, (os.cpu_count() or 1) // k)
            procs = [context.Process(target=_packed_trial, args=(config, str(arrays), n, 1 if smoke else 2,
                                                                 str(dev), threads, barrier, queue))
                     for _ in range(k)]
            for proc in procs:
                proc.start()
            reports = [queue.get(timeout=max(30.0, cap)) for _ in procs]
            for proc in procs:
                proc.join()
            total = sum(r["images_per_s"] for r in reports)
            epoch_images = 45_000  # CIFAR-10's training split less the search's 10% val
            out[f"trials_{k}"] = {
                "total_images_per_s": total, "per_trial_images_per_s": total / k,
                "peak_memory_mb_per_trial": max(r["peak_memory_mb"] for r in reports),
                "asha_trials_per_gpu_hour": 3600 * total / (ASHA_EPOCHS_PER_TRIAL * epoch_images),
            }
        arrays.unlink(missing_ok=True)
        measured = {k: out[f"trials_{k}"] for k in counts if "total_images_per_s" in out[f"trials_{k}"]}
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
        # The epochs that fit: the cap less the probe already spent, the evaluation and slack.
        epochs = max(1, min(60, int((cap - probe["first_epoch_s"] - probe["epoch_s"] - 20) / probe["epoch_s"])))
        trainer = Trainer({**config, "epochs": epochs}, data, ema_decay=0.999)
        sync(dev)
        start = time.perf_counter()
        for _ in trainer.epochs():
            pass
        sync(dev)
        train_s = time.perf_counter() - start
        test = {name: trainer.evaluate(dataset.test_images, dataset.test_labels, tta=tta, use_ema=ema)["acc"]
                for name, tta, ema in (("test_acc", False, False), ("test_acc_tta", True, False),
                                       ("test_acc_ema", False, True), ("test_acc_ema_tta", True, True))}
        return {"config": config, "params": trainer.params, "epochs": epochs, "train_seconds": train_s,
                "train_images": len(data.train_x), **test, "published": PUBLISHED}

    return step


def correctness(dataset: Dataset, dev: torch.device, smoke: bool) -> Callable[[float], dict[str, Any]]:
    def step(cap: float) -> dict[str, Any]:
        from trainable.loop import Trainer

        data = to_device(subset(dataset, 1024 if smoke else 8192), dev, val_fraction=0.0)
        config = {**(TOY if smoke else SMALL), "epochs": 2, "warmup_epochs": 0}
        out: dict[str, Any] = {}

        # bf16 autocast against fp32: the first steps' losses agree within 2%.
        losses = {}
        for name, fast in (("fp32", False), ("bf16", True)):
            trainer = Trainer(config, data, fast_path=fast)
            trainer.steps_per_epoch = 8
            losses[name] = trainer.train_epoch()["train_loss"]
        gap = abs(losses["bf16"] - losses["fp32"]) / losses["fp32"]
        out["bf16_vs_fp32"] = {**losses, "relative_gap": gap, "ok": gap < 0.02,
                               "note": None if dev.type == "cuda" else "on a CPU both run in fp32"}

        # Resume: 2 epochs straight against 1 + checkpoint + 1, deterministic kernels.
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
        out["resume_exact"] = {"max_weight_difference": diff, "ok": diff == 0.0}

        # The compile fallback: a compiler that fails, and training goes on eagerly.
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
        out["compile_fallback"] = {"ok": trainer.forward is trainer.model and math.isfinite(metrics["train_loss"]),
                                   "warned": any("torch.compile failed" in str(w.message) for w in caught)}

        # Host syncs in one epoch of steps: the loop reads its metrics once, at the end (2 reads).
        if dev.type == "cuda":
            for label, extra in (("default", {}), ("trivialaugment_mixup", {"augment_policy": "trivialaugment",
                                                                             "mixup_alpha": 0.2})):
                trainer = Trainer({**config, **extra}, data)
                trainer.train_epoch()  # warm-up
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        trainer.train_epoch()
                    finally:
                        torch.cuda.set_sync_debug_mode(0)
                syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
                out[f"host_syncs_{label}"] = {"per_epoch": len(syncs), "steps": trainer.steps_per_epoch,
                                              "ok": len(syncs) <= 2, "first": syncs[:3]}
        else:
            out["host_syncs"] = {"skipped": "CUDA only (torch.cuda.set_sync_debug_mode)"}
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
        dataset = Dataset(dataset.train_images[:2048], dataset.train_labels[:2048], dataset.test_images[:512],
                          dataset.test_labels[:512], dataset.classes)
    return dataset, f"CIFAR-10 JPEGs from {archive}"


CAPS = {"data_pipeline": 45, "training_step": 120, "trial_packing": 100, "accuracy_in_time": 170, "correctness": 30}
SMOKE_CAPS = {"data_pipeline": 20, "training_step": 20, "trial_packing": 40, "accuracy_in_time": 15, "correctness": 15}


def prove(archive: str | None, out: Path, smoke: bool) -> dict[str, Any]:
    """Run the five steps; return everything proof.json holds."""
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BUDGETNAS_CACHE", str(out / "cache"))  # the decode cache stays beside the proof
    dev = torch.device("cpu") if smoke else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset, source = load_data(archive, out, smoke)
    caps = SMOKE_CAPS if smoke else CAPS
    steps = Steps()
    steps.run("data_pipeline", caps["data_pipeline"], data_pipeline(dataset, dev, smoke))
    steps.run("training_step", caps["training_step"], training_step(dataset, dev, smoke))
    steps.run("trial_packing", caps["trial_packing"], trial_packing(dataset, dev, smoke, out))
    steps.run("accuracy_in_time", caps["accuracy_in_time"], accuracy_in_time(dataset, dev, smoke))
    steps.run("correctness", caps["correctness"], correctness(dataset, dev, smoke))
    return {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
            "torch": torch.__version__, "smoke": smoke, "data": source, "steps": steps.results}


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
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.data_archive and not Path(args.data_archive).is_file():
        raise UserError(f"--data-archive {args.data_archive} does not exist")
    if (out / "proof.json").exists() and not args.force:
        raise UserError(f"{out / 'proof.json'} exists; pass --force to replace it, or another --out")
    if not args.smoke and not torch.cuda.is_available():
        print("warning: no CUDA device: the figures below are the CPU's", flush=True)
    start = time.perf_counter()
    proof = prove(args.data_archive, out, args.smoke)
    proof["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / "proof.json", proof)
    write_text(out / "proof.md", markdown(proof))
    print(f"\nproof done in {proof['wall_seconds']:.0f} s: wrote {out / 'proof.json'} and {out / 'proof.md'}")
    return 0


if __name__ == "__main__":
    run_main(main)
