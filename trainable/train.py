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

from trainable.checkpoint import load_checkpoint, save_checkpoint, write_json
from trainable.cli import ArgumentParser, read_json, run_main
from trainable.config import validate_config
from trainable.data import DATASETS, load_dataset, to_device
from trainable.errors import UserError
from trainable.loop import Trainer, default_device

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"


def format_epoch(m: dict[str, Any], total: int) -> str:
    """One progress line for an epoch's metrics."""
    val = "-" if m["val_acc"] is None else f"{m['val_acc']:.4f}"
    line = (f"epoch {m['epoch']:>3}/{total}  train_loss {m['train_loss']:.4f}  train_acc {m['train_acc']:.4f}"
            f"  val_acc {val}  lr {m['lr']:.2e}  {m['epoch_seconds']:.1f}s  {m['images_per_second']:,.0f} img/s")
    return line + ("  DIVERGED" if m["status"] == "diverged" else "")


def train_with_checkpoints(
    trainer: Trainer,
    path: Path,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run `trainer` to its horizon, saving a checkpoint (with the history) after every epoch.

    With `resume` and a checkpoint at `path`, it continues from there. Returns every epoch's metrics.
    """
    history: list[dict[str, Any]] = []
    if resume and path.is_file():
        state = load_checkpoint(path)
        trainer.load_state_dict(state)
        history = state.get("history", [])
    for metrics in trainer.epochs():
        history.append(metrics)
        save_checkpoint(path, {**trainer.state_dict(), "history": history})
        if on_epoch:
            on_epoch(metrics)
    return history


def train_to_folder(
    config: dict[str, Any],
    dataset: str,
    data_dir: str | None,
    out: str | Path,
    *,
    resume: bool = False,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    subset: int | None = None,
    compile_model: bool = False,
    device: str | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train `config`, checkpointing into `out` every epoch; return the metrics.json content."""
    cfg = validate_config(config)
    out = Path(out)
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise UserError(f"{out} already holds a training run; pass --resume to continue it, or another --out")
    if resume and not ckpt_path.exists():
        raise UserError(f"nothing to resume: {ckpt_path} does not exist")
    loaded = load_dataset(dataset, data_dir)
    data = to_device(loaded, device or default_device(), val_fraction, split_seed, subset)
    trainer = Trainer(cfg, data, compile_model=compile_model)
    history = train_with_checkpoints(trainer, ckpt_path, resume, on_epoch)
    test = trainer.evaluate(loaded.test_images, loaded.test_labels)  # once, at the end, never for selection
    result = {
        "config": cfg,
        "params": trainer.params,
        "dataset": dataset,
        "classes": data.classes,
        "status": trainer.status,
        "epochs": history,
        "test_acc": test["acc"],
        "test_loss": test["loss"],
    }
    write_json(out / METRICS, result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m trainable.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="JSON file with the config dict (see trainable/config.py)")
    parser.add_argument("--epochs", type=int, help="override the config's 'epochs' (the cosine horizon)")
    parser.add_argument("--dataset", choices=DATASETS, default="cifar10", help="data source (default cifar10)")
    parser.add_argument("--data-dir", help="CIFAR-10 download folder or ImageFolder root with train/ and test/")
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
    result = train_to_folder(
        cfg, args.dataset, args.data_dir, args.out, resume=args.resume, val_fraction=args.val_fraction,
        split_seed=args.split_seed, subset=args.subset, compile_model=args.compile, device=args.device,
        on_epoch=lambda m: print(format_epoch(m, cfg["epochs"]), flush=True),
    )
    print(f"params {result['params']:,}  status {result['status']}  test_acc {result['test_acc']:.4f}")
    print(f"wrote {Path(args.out) / METRICS} and {Path(args.out) / CHECKPOINT}")
    return 0


if __name__ == "__main__":
    run_main(main)
