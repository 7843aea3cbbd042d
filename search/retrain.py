"""Retrain a chosen config on the whole training set, for longer, and measure it once on test.

    python -m search.retrain runs/NAME                       # best.json's config
    python -m search.retrain runs/NAME --trial ID --seeds 3 --ema
    python -m search.retrain --config cfg.json --dataset cifar10 --data-dir ./data --out final/
    python -m search.retrain runs/NAME --front               # every member of the Pareto front

Trains on train + val together (no hold-out) for --epochs (default 200), or, with
--time-budget, for as long as that time allows: the learning rate then follows the elapsed
share of the time (budgeted training), so the run ends annealed and on time even on a
machine that slows down, and --epochs is only a cap. Then it evaluates
the official test set once: plain, with test-time augmentation, and with the weights' EMA
if --ema. Nothing is chosen by the test set. Writes to --out (default runs/NAME/final/):
weights.pt, config.json, model.json, metrics.json, summary.txt, curves.png.

With --front, every member of the search's Pareto front (front.json, or the front of
best val_acc against params for a search run without --minimize) is retrained the same
way, one after another, each into --out/TRIAL_ID (default runs/NAME/front/), and
front.csv there lists each member's cost, its search val_acc and its test accuracy.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from trainable.cli import ArgumentParser, param_count, parse_duration, read_json, run_main, sleep_when_waiting

if __name__ == "__main__":  # the command, not an import: before torch loads, for --time-budget
    sleep_when_waiting()

from trainable.checkpoint import copy_file, write_json  # noqa: E402
from search.records import read_settings  # noqa: E402
from trainable.config import parse_overrides, validate_config  # noqa: E402
from trainable.data import DATASETS, DataSpec  # noqa: E402
from trainable.errors import UserError  # noqa: E402
from trainable.model import count_params  # noqa: E402
from trainable.train import format_epoch, train_to_folder  # noqa: E402
from trainable.zoo import PARAM_BUDGET  # noqa: E402

# Long training with the learning rate decayed fully matters most for these models: one
# published run went 91.3 -> 94.1 at its first decay and reached 95.0 only near epoch 180;
# 150-250 epochs is where every sub-5M result at 95%+ was trained. 200 is the middle.
DEFAULT_EPOCHS = 200
DEFAULT_EMA_DECAY = 0.999
CURVES_S = 0.5  # drawing a seed's curves.png after its test pass (0.12 s measured on 2 CPU cores)


def config_from_experiment(folder: Path, trial: str | None) -> dict[str, Any]:
    """The config of `trial` (or of best.json) in a search experiment folder."""
    from search.records import BEST, TRIALS, read_best, read_settings, read_trials

    read_settings(folder)  # UserError if it is not an experiment of this tool
    if trial is None:
        best = read_best(folder)
        if best is None:
            raise UserError(f"{folder} has no finished trial yet (no {BEST}); let the search run longer")
        return best["config"]
    for row in read_trials(folder):
        if row.trial_id == trial:
            return row.run_config
    raise UserError(f"no trial {trial!r} in {folder / TRIALS}")


def plot_curves(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Training loss and accuracy per epoch, as a PNG."""
    from matplotlib.figure import Figure  # without pyplot: no display, no global state

    epochs = [m["epoch"] for m in history]
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    left.plot(epochs, [m["train_loss"] for m in history], label="train loss")
    left.set_xlabel("epoch"), left.set_ylabel("loss"), left.legend()
    right.plot(epochs, [m["train_acc"] for m in history], label="train acc")
    right.set_xlabel("epoch"), right.set_ylabel("accuracy"), right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def train_seed(
    config: dict[str, Any],
    spec: DataSpec,
    out: Path,
    ema_decay: float | None,
    resume: bool,
    compile_model: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    time_budget_s: float | None = None,
    tail_s: float = 0.0,
) -> dict[str, Any]:
    """Train one seed on train + val into `out` (`trainable.train.train_to_folder`), plus its curves."""
    result = train_to_folder(config, spec, out, resume=resume, compile_model=compile_model, ema_decay=ema_decay,
                             on_epoch=on_epoch, time_budget_s=time_budget_s, tail_s=tail_s)
    plot_curves(result["epochs"], out / "curves.png", f"seed {config['seed']}: test acc {result.get('test_acc', result.get('test_acc_ema')):.4f}")
    return result


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def retrain(
    config: dict[str, Any],
    spec: DataSpec,
    out: Path,
    *,
    seeds: int = 1,
    ema_decay: float | None = None,
    resume: bool = False,
    compile_model: bool = False,
    parallel: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    time_budget_s: float | None = None,
    tail_s: float = 0.0,
) -> dict[str, Any]:
    """Train `seeds` seeds of `config`; seed i uses config seed + i and writes `out/seed_i/`.

    With `time_budget_s` the whole call ends within that time, leaving `tail_s` after it:
    seeds in parallel each get all of it, seeds one after another a share each (the last
    one's tail is the caller's).

    The first seed's artefacts are also copied to `out/` itself: that is the model
    `search.predict` uses (no seed is picked by its test score). Returns the aggregate
    written to out/metrics.json: each seed's status and figures, and the mean and std of
    the seeds that did not diverge (a diverged seed is left out, with a warning).
    """
    base_seed = config["seed"]
    configs = [{**config, "seed": base_seed + i} for i in range(seeds)]
    folders = [out if seeds == 1 else out / f"seed_{i}" for i in range(seeds)]
    if parallel and seeds > 1:
        import ray

        task = ray.remote(num_gpus=1)(train_seed)
        results = ray.get([task.remote(c, spec, f, ema_decay, resume, compile_model, None, time_budget_s, tail_s)
                           for c, f in zip(configs, folders)])
    else:
        import time

        deadline = time.monotonic() + time_budget_s if time_budget_s is not None else None
        if deadline is not None:
            import matplotlib  # noqa: F401  (about 2 s the first time: paid now, inside the budget)
        results = []
        for index, (c, f) in enumerate(zip(configs, folders)):
            share = None
            if deadline is not None:  # what is left, split among this seed and the ones after it
                share = max(1.0, (deadline - time.monotonic()) / (seeds - index))
            last = index == seeds - 1
            results.append(train_seed(c, spec, f, ema_decay, resume, compile_model, on_epoch, share,
                                      CURVES_S + (tail_s if last else 0.0)))
    if seeds > 1:
        for name in ("weights.pt", "weights_ema.pt", "config.json", "model.json", "summary.txt", "curves.png"):
            source = folders[0] / name
            if source.is_file():
                copy_file(source, out / name)
    healthy = [r for r in results if r["status"] == "ok"]
    diverged = [r["seed"] for r in results if r["status"] != "ok"]
    if diverged:
        print(f"warning: seed(s) {', '.join(map(str, diverged))} diverged; left out of the mean and std",
              file=sys.stderr)
    status = "ok" if not diverged else ("diverged" if not healthy else "some seeds diverged")
    aggregate: dict[str, Any] = {
        "status": status, "seeds": [r["seed"] for r in results], "seeds_in_mean": [r["seed"] for r in healthy],
        "params": results[0]["params"], "config": config,
        # Every seed's own record (its status, test figures and epochs), so none is lost here.
        "per_seed": [{k: v for k, v in r.items() if k not in ("config", "classes")} for r in results],
    }
    for key in ("test_acc", "test_acc_tta", "test_acc_ema", "test_acc_ema_tta"):
        if all(key in r for r in results):
            aggregate[f"{key}_per_seed"] = [r[key] for r in results]
            if healthy:
                aggregate[f"{key}_mean"], aggregate[f"{key}_std"] = mean_std([r[key] for r in healthy])
    write_json(out / "metrics.json", aggregate)
    return aggregate


def main(argv: Sequence[str] | None = None) -> int:
    import time

    started = time.monotonic()  # --time-budget counts from here: reading the data is part of it
    parser = ArgumentParser(prog="python -m search.retrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", nargs="?", help="experiment folder of a search (runs/NAME)")
    parser.add_argument("--trial", help="retrain this trial id instead of best.json's")
    parser.add_argument("--front", action="store_true",
                        help="retrain every member of the experiment's Pareto front, each into --out/TRIAL_ID "
                             "(default EXPERIMENT/front), and list their test accuracy in front.csv")
    parser.add_argument("--config", help="a config JSON to retrain without an experiment")
    parser.add_argument("--dataset", choices=DATASETS, help="data (default: the experiment's, else cifar10)")
    parser.add_argument("--data-dir", help="data folder (default: the experiment's)")
    parser.add_argument("--subset", type=int, help="train on only this many images (quick checks)")
    parser.add_argument("--out", help="output folder (default EXPERIMENT/final, or EXPERIMENT/front with --front)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"epochs (default {DEFAULT_EPOCHS}); with --time-budget, the most it may train")
    parser.add_argument("--time-budget", metavar="DURATION",
                        help="train for this long (e.g. 15m, 1h30m; loading and the test pass included), the "
                             "learning rate following the elapsed share of the time, so the run ends annealed "
                             "and on time even if the machine slows down (default: train --epochs epochs)")
    parser.add_argument("--seeds", type=int, default=1, help="independent seeds; reports mean ± std (default 1)")
    parser.add_argument("--ema", action="store_true", help="also evaluate an exponential moving average of the weights")
    parser.add_argument("--ema-decay", type=float, default=DEFAULT_EMA_DECAY, help=f"per-step EMA decay (default {DEFAULT_EMA_DECAY})")
    parser.add_argument("--param-budget", type=param_count, default=PARAM_BUDGET,
                        help=f"refuse configs at or over this (default {PARAM_BUDGET:,})")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted retrain in --out")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--track", action="append", metavar="mlflow[=URI]|wandb",
                        help="log the retrain (config, each seed's test figures, the model folder as an artifact) to "
                             "MLflow (default store: the experiment's mlflow.db) or W&B (repeatable)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="change a config key for the long run, e.g. --set augment_policy=autoaugment "
                             "--set epochs=200 (repeatable; applied last)")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set)
    trackers: dict[str, str | None] = {}
    if args.track:  # search.tune.tracking imports Ray: only a tracked retrain pays for it
        from search.tune.tracking import parse_track

        trackers = parse_track(args.track)  # refused now, not after the training

    if bool(args.experiment) == bool(args.config):
        raise UserError("give an experiment folder or --config FILE (one of the two)")
    if args.front and (args.trial or args.config):
        raise UserError("--front retrains the experiment's front: give no --trial and no --config")
    if args.epochs <= 0 or args.seeds <= 0:
        raise UserError("--epochs and --seeds must be positive")
    if not 0 < args.ema_decay < 1:
        raise UserError(f"--ema-decay must be in (0, 1), got {args.ema_decay}")
    args.time_budget_s = parse_duration(args.time_budget) if args.time_budget else None
    settings: dict[str, Any] = {}
    if args.front:
        return retrain_front(Path(args.experiment), args, overrides)
    if args.experiment:
        folder = Path(args.experiment)
        config = config_from_experiment(folder, args.trial)
        settings = read_settings(folder)
        out = output_folder(args.out, args.experiment, args.config, args.front)
    else:
        config = read_json(args.config, "config file")
        out = output_folder(args.out, args.experiment, args.config, args.front)
    config = validate_config({**config, "epochs": args.epochs, **overrides})
    spec, num_classes, channels = retrain_data(args, settings, config)
    check_budget(config, num_classes, args.param_budget, channels)
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise UserError(f"{out} already holds a retrain; pass --resume to continue it, or another --out")
    if args.time_budget_s is not None:
        args.time_budget_s -= time.monotonic() - started
    result = run_retrain(config, spec, out, args, num_classes, channels)
    if trackers:
        from search.tune.tracking import log_retrain

        experiment = Path(args.experiment) if args.experiment else None
        log_retrain(trackers, experiment, (experiment or out).name, config, result, out)
    print(f"wrote {out}; next: python -m search.predict {out} --input cifar_test_nolabel.pkl --out submission.csv --tta")
    return 0


def output_folder(out: str | None, experiment: str | None, config: str | None, front: bool) -> Path:
    """Where a retrain writes: --out, else EXPERIMENT/final (EXPERIMENT/front with --front),
    else beside the --config file.

    >>> output_folder(None, "runs/a", None, False), output_folder(None, "runs/a", None, True)
    (PosixPath('runs/a/final'), PosixPath('runs/a/front'))
    """
    if out:
        return Path(out)
    if experiment:
        return Path(experiment) / ("front" if front else "final")
    return Path(str(config)).with_suffix("") / "final"


def retrain_data(args: Any, settings: dict[str, Any], config: dict[str, Any]) -> tuple[DataSpec, int, int]:
    """The retrain's data (train + val together, no hold-out; one split seed for every seed, so
    with --subset they all train on the same images), loaded once to fail early: the spec,
    its class count and its channel count."""
    spec = DataSpec(args.dataset or settings.get("dataset", "cifar10"), args.data_dir or settings.get("data_dir"),
                    val_fraction=0.0, split_seed=config["seed"], subset=args.subset)
    dataset = spec.load(download=True)
    searched = settings.get("subset")
    note = ""
    if searched and args.subset is None:  # the final model trains on everything unless told
        note = f" (the search used --subset {searched}; pass --subset {searched} to retrain on as many)"
    count = min(args.subset, len(dataset.train_images)) if args.subset else len(dataset.train_images)
    print(f"training images: {count:,} (train + val){note}", flush=True)
    return spec, dataset.num_classes, dataset.channels


def check_budget(config: dict[str, Any], num_classes: int, budget: int, in_channels: int = 3) -> int:
    params = count_params(config, num_classes, in_channels)
    if params >= budget:
        raise UserError(f"the config has {params:,} trainable params, not under --param-budget {budget:,}")
    return params


def run_retrain(config: dict[str, Any], spec: DataSpec, out: Path, args: Any, num_classes: int,
                in_channels: int = 3) -> dict[str, Any]:
    """Retrain `config` as the flags say, printing each epoch and the test figures."""
    import torch

    params = count_params(config, num_classes, in_channels)
    parallel = args.seeds > 1 and torch.cuda.device_count() > 1
    budget = getattr(args, "time_budget_s", None)
    length = (f"{budget / 60:.1f} min (at most {config['epochs']} epochs)" if budget is not None
              else f"{config['epochs']} epochs")
    print(f"retraining {params:,}-param config for {length} x {args.seeds} seed(s) on "
          f"{spec.dataset} (train + val) -> {out}" + (" in parallel as Ray tasks" if parallel else ""), flush=True)
    result = retrain(config, spec, out, seeds=args.seeds, ema_decay=args.ema_decay if args.ema else None,
                     resume=args.resume, compile_model=args.compile, parallel=parallel,
                     on_epoch=lambda m: print(format_epoch(m, config["epochs"]), flush=True),
                     time_budget_s=budget)
    for key, label in (("test_acc", "test"), ("test_acc_tta", "test + TTA"), ("test_acc_ema", "test, EMA"),
                       ("test_acc_ema_tta", "test, EMA + TTA")):
        if key + "_mean" in result:
            count = len(result["seeds_in_mean"])
            spread = f" ± {result[key + '_std']:.4f} over {count} seeds" if count > 1 else ""
            print(f"{label:>16}: {result[key + '_mean']:.4f}{spread}")
    if result["status"] != "ok":
        print(f"status: {result['status']} (see {out / 'metrics.json'})")
    return result


def front_members(folder: Path) -> list[dict[str, Any]]:
    """The experiment's Pareto front: front.json's members, or (a search run without
    --minimize) the front of best val_acc against params from its trial table."""
    from search.records import front_member, front_rows, read_front, read_trials

    members = read_front(folder)
    if members is None:
        members = [front_member(row) for row in front_rows(read_trials(folder), "params")]
    if not members:
        raise UserError(f"{folder} has no trial with a val_acc yet; let the search run longer")
    return members


def retrain_front(folder: Path, args: Any, overrides: dict[str, Any]) -> int:
    """`--front`: retrain each front member into OUT/TRIAL_ID; OUT/front.csv sums them up.

    A member whose retrain finished (its metrics.json is there) is skipped by --resume.
    """
    import pandas as pd

    settings = read_settings(folder)
    members = front_members(folder)
    out = output_folder(args.out, str(folder), None, True)
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise UserError(f"{out} already holds a front retrain; pass --resume to continue it, or another --out")
    configs = [validate_config({**m["config"], "epochs": args.epochs, **overrides}) for m in members]
    spec, num_classes, channels = retrain_data(args, settings, configs[0])
    for config in configs:
        check_budget(config, num_classes, args.param_budget, channels)
    print(f"retraining the {len(members)} members of {folder.name}'s Pareto front -> {out}", flush=True)
    rows = []
    for number, (member, config) in enumerate(zip(members, configs), start=1):
        target = out / member["trial_id"]
        print(f"\n[{number}/{len(members)}] trial {member['trial_id']}: search val_acc {member['val_acc']:.4f}",
              flush=True)
        done = target / "metrics.json"
        if done.is_file():
            result = read_json(done, "metrics")
        else:
            result = run_retrain(config, spec, target, args, num_classes, channels)
        rows.append({"trial_id": member["trial_id"], "params": member.get("params"), "macs": member.get("macs"),
                     "latency_ms": member.get("latency_ms"), "search_val_acc": member["val_acc"],
                     "search_epoch": member.get("epoch"), "epochs": config["epochs"],
                     "test_acc": result.get("test_acc_mean"), "test_acc_tta": result.get("test_acc_tta_mean"),
                     "status": result["status"], "folder": str(target)})
    table = pd.DataFrame(rows)
    table.to_csv(out / "front.csv", index=False)
    print("\n" + table.drop(columns=["folder"]).to_string(index=False))
    print(f"\nwrote {out / 'front.csv'}; next: python -m search.predict {out}/TRIAL_ID --input ... --out submission.csv")
    return 0


if __name__ == "__main__":
    run_main(main)
