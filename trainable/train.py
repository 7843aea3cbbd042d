"""Train one config from the command line; no Ray involved.

    python -m trainable.train --config cfg.json --epochs 30 --dataset imagefolder \\
        --data-dir /tmp/cifar10-jpeg --out runs/one

Prints one line per epoch, writes `metrics.json` and `checkpoint.pt` (atomically, every
epoch) into `--out`, and evaluates the test set once at the end. `--resume` continues from
the checkpoint in `--out`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from trainable.checkpoint import load_checkpoint, remove_temp_files, save_checkpoint, write_json, write_text
from trainable.cli import ArgumentParser, read_json, run_main
from trainable.config import validate_config, with_defaults
from trainable.data import DATA_DIR_HELP, DATASETS, DataSpec
from trainable.errors import UserError
from trainable.loop import TimeBudget, Trainer, default_device, predict_logits
from trainable.model import layer_summary

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"


def format_epoch(m: dict[str, Any], total: int) -> str:
    """One progress line for an epoch's metrics."""
    val = "-" if m["val_acc"] is None else f"{m['val_acc']:.4f}"
    horizon = f"{m['epoch']:>3}/{total}" if "time_used_s" not in m else f"{m['epoch']:>3} ({m['time_used_s']:.0f} s)"
    line = (f"epoch {horizon}  train_loss {m['train_loss']:.4f}  train_acc {m['train_acc']:.4f}"
            f"  val_acc {val}  lr {m['lr']:.2e}  {m['epoch_seconds']:.1f}s  {m['images_per_second']:,.0f} img/s")
    return line + ("  DIVERGED" if m["status"] == "diverged" else "")


def check_same_run(saved: dict[str, Any], trainer: Trainer, path: Path) -> None:
    """Refuse to resume a checkpoint into a run asked for with another config or EMA setting.

    A changed `epochs` would jump the learning rate from about 0 back up the cosine; a
    changed EMA would restart the average from the first weights; another config would
    mix two runs. The message names the first key that differs.
    """
    asked = {**trainer.config, "ema_decay": trainer.ema.decay if trainer.ema is not None else None}
    had = {**saved.get("config", {}), "ema_decay": saved.get("ema_decay")}
    for key in asked:
        if had.get(key) != asked[key]:
            raise UserError(f"cannot resume {path}: it was trained with {key}={had.get(key)!r}, this run asks for "
                            f"{key}={asked[key]!r}; resume with the same flags, or train into another --out")


def train_with_checkpoints(
    trainer: Trainer,
    path: Path,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_history: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run `trainer` to its horizon, saving a checkpoint (with the history) after every epoch.

    With `resume` and a checkpoint at `path`, it continues from there (the same run only:
    `check_same_run`). `on_history` gets the whole history after each epoch. Returns it.
    """
    history: list[dict[str, Any]] = []
    if resume and path.is_file():
        state = load_checkpoint(path)
        check_same_run(state, trainer, path)
        trainer.load_state_dict(state)
        history = state.get("history", [])
    for metrics in trainer.epochs():
        history.append(metrics)
        save_checkpoint(path, {**trainer.state_dict(), "history": history})
        if on_history:
            on_history(history)
        if on_epoch:
            on_epoch(metrics)
    return history


def forward_seconds(model: Any, images: Any, mean: Any, std: Any, views: list, count: int) -> float:
    """Seconds to predict `count` images with `views` TTA views, timed on a slice of `images`
    (a second pass, so allocation and kernel choice are not counted) and scaled."""
    import time

    sample = images[:min(len(images), 256)]
    if not len(sample):
        return 0.0
    predict_logits(model, sample[:8], mean, std, views)
    start = time.perf_counter()
    predict_logits(model, sample, mean, std, views)
    return (time.perf_counter() - start) * count / len(sample)


def test_pass_seconds(trainer: Trainer, images: Any) -> float:
    """What the final test pass of a time-budgeted `train_to_folder` costs at this speed:
    one pass of one set of weights."""
    return forward_seconds(trainer.model, images, trainer.data.mean, trainer.data.std, [(0, 0, False)], len(images))


def train_to_folder(
    config: dict[str, Any],
    spec: DataSpec,
    out: str | Path,
    *,
    resume: bool = False,
    compile_model: bool = False,
    device: str | None = None,
    ema_decay: float | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    time_budget_s: float | None = None,
    tail_s: float = 0.0,
) -> dict[str, Any]:
    """Train `config` into `out`, checkpointing every epoch, then evaluate the test set once.

    Writes checkpoint.pt (every epoch), then weights.pt (and weights_ema.pt with
    `ema_decay`), config.json, model.json (what `search.predict` needs), summary.txt and
    metrics.json. Returns metrics.json's content. `search.retrain` trains each seed with it.

    With `time_budget_s`, the whole call (loading, training and the test pass) ends within
    that many seconds, leaving `tail_s` more for what the caller does next: the training
    follows the elapsed share of its time (`trainable.loop.TimeBudget`), the config's
    `epochs` is only a cap, and the test pass's time is measured and kept back.
    """
    import time

    called = time.perf_counter()
    cfg = with_defaults(config)  # validated by the command line that took it
    out = Path(out)
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise UserError(f"{out} already holds a training run; pass --resume to continue it, or another --out")
    if resume and not ckpt_path.exists():
        raise UserError(f"nothing to resume: {ckpt_path} does not exist")
    if resume:  # nothing of this run writes here yet: a temp file is a killed write's
        remove_temp_files(out, before=time.time())
    loaded = spec.load(download=False)
    data = spec.to_device(loaded, device or default_device())
    trainer = Trainer(cfg, data, compile_model=compile_model, ema_decay=ema_decay)
    trainer.progress_label = "epoch in progress"  # lines within an epoch only when it runs long
    if time_budget_s is not None:
        test_s = test_pass_seconds(trainer, loaded.test_images)
        left = time_budget_s - (time.perf_counter() - called)
        trainer.time_budget = TimeBudget(seconds=left, tail_s=test_s + tail_s)

    def progress(history: list[dict[str, Any]]) -> None:
        write_json(out / METRICS, {"config": cfg, "status": "running", "epochs": history})

    history = train_with_checkpoints(trainer, ckpt_path, resume, on_epoch, on_history=progress)
    # The one and only look at the test set, after the last epoch; never used to choose anything.
    images, labels = loaded.test_images, loaded.test_labels
    final: dict[str, Any] = {}
    if time_budget_s is not None:
        # Under a time budget one pass, of the weights a prediction uses (the EMA's when kept),
        # without TTA: on 2 CPU cores each pass over 10,000 images took about 11 s, so the
        # four figures with TTA would cost a 6-minute deadline 2.5 minutes of training.
        key = "test_acc_ema" if trainer.ema is not None else "test_acc"
        final[key] = trainer.evaluate(images, labels, use_ema=trainer.ema is not None, progress="test pass")["acc"]
    else:
        plain = trainer.evaluate(images, labels, progress="test pass")
        final = {"test_acc": plain["acc"], "test_loss": plain["loss"],
                 "test_acc_tta": trainer.evaluate(images, labels, tta=True, progress="test pass")["acc"]}
        if trainer.ema is not None:
            final["test_acc_ema"] = trainer.evaluate(images, labels, use_ema=True, progress="test pass")["acc"]
            final["test_acc_ema_tta"] = trainer.evaluate(images, labels, tta=True, use_ema=True,
                                                         progress="test pass")["acc"]
    if trainer.ema is not None:
        save_checkpoint(out / "weights_ema.pt", trainer.ema.module.state_dict())
    save_checkpoint(out / "weights.pt", trainer.model.state_dict())
    size = list(loaded.train_images.shape[2:])
    write_json(out / "config.json", cfg)
    write_json(out / "model.json", {"num_classes": data.num_classes, "classes": data.classes, "params": trainer.params,
                                    "mean": data.mean.flatten().tolist(), "std": data.std.flatten().tolist(),
                                    "image_size": size, "channels": data.channels, "dataset": spec.dataset})
    write_text(out / "summary.txt", layer_summary(cfg, data.num_classes, size, data.channels) + "\n")
    result = {"config": cfg, "seed": cfg["seed"], "params": trainer.params, "dataset": spec.dataset,
              "classes": data.classes, "status": trainer.status, **final, "epochs": history}
    write_json(out / METRICS, result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m trainable.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="JSON file with the config dict (see trainable/config.py)")
    parser.add_argument("--epochs", type=int, help="override the config's 'epochs' (the cosine horizon)")
    parser.add_argument("--dataset", choices=DATASETS, default="cifar10", help="data source (default cifar10)")
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument("--out", required=True, help="folder for metrics.json and checkpoint.pt")
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of train held out for val (default 0.1)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the stratified train/val split (default 0)")
    parser.add_argument("--subset", type=int, help="use only this many training images (stratified)")
    parser.add_argument("--seed", type=int, help="override the config's 'seed' (weights, order, augmentation)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (pays off on long GPU runs)")
    parser.add_argument("--device", help="torch device (default: cuda when present, else cpu)")
    args = parser.parse_args(argv)

    config = read_json(args.config, "config file")
    if not isinstance(config, dict):
        raise UserError(f"config file {args.config} must hold a JSON object")
    if args.epochs is not None:
        config["epochs"] = args.epochs
    if args.seed is not None:
        config["seed"] = args.seed
    cfg = validate_config(config)
    print(f"training {args.config} for {cfg['epochs']} epochs on {args.dataset} -> {args.out}", flush=True)
    spec = DataSpec(args.dataset, args.data_dir, args.val_fraction, args.split_seed, args.subset)
    result = train_to_folder(
        cfg, spec, args.out, resume=args.resume, compile_model=args.compile, device=args.device,
        on_epoch=lambda m: print(format_epoch(m, cfg["epochs"]), flush=True),
    )
    print(f"params {result['params']:,}  status {result['status']}  test_acc {result['test_acc']:.4f}")
    print(f"wrote {Path(args.out) / METRICS} and {Path(args.out) / CHECKPOINT}")
    return 0


if __name__ == "__main__":
    run_main(main)
