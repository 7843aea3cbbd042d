"""Benchmark 11: does the search pay? `search.auto` against fixed recipes at the same deadline.

    python -m benchmarks.deadline --data-dir /tmp/cifar10-jpeg --out bench/deadline --deadlines 6m,15m --seeds 0,1
    python -m benchmarks.deadline --quick --out bench/deadline-smoke        # synthetic, seconds: a smoke run

For each seed and deadline, back to back so that they share the machine's conditions, and
each as a user would run it (a subprocess per command):
- `search.auto --time-budget D` on `--train-images` training images under `--param-budget`;
- the seed's recipe (`trainable.zoo.SEED`) scaled into the budget, `search.retrain
  --time-budget D --ema`, then `search.predict --tta --ema`;
- the deadline recipe (`trainable.zoo.DEADLINE_RECIPE`: pre-activation, TrivialAugment,
  cutout 8, label smoothing 0.1, Nesterov SGD; EMA and TTA) scaled into the budget, the same way;
- on request (`--methods wrn_recipe`), WRN-40-2's recipe (`trainable.zoo.WRN_40_2`:
  pre-activation [6,6,6], TrivialAugment, cutout 16, SGD 0.1) scaled into the budget, the same way.

Each is scored on the CIFAR-10 test images, given as the course's pickle (b'data' N x 32 x
32 x 3, b'ids') through `search.predict`'s output. The fixed recipes' retrain gets the whole
deadline and their prediction comes after it; `search.auto` fits its prediction inside.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from trainable.checkpoint import write_json
from trainable.cli import ArgumentParser, param_count, parse_duration, run_main
from trainable.errors import UserError

METHODS = ("auto", "seed_recipe", "deadline_recipe")  # the default run
FIXED = {"seed_recipe": "seed", "deadline_recipe": "deadline", "wrn_recipe": "wrn-40-2"}  # trainable.zoo.RECIPES


def write_test_pickle(data_dir: str | None, path: Path, count: int | None) -> np.ndarray:
    """The test split as the course's pickle (ids 0..N-1); returns the true labels."""
    from benchmarks.common import stratified
    from trainable.data import load_dataset, make_synthetic

    dataset = load_dataset("imagefolder", data_dir) if data_dir else make_synthetic(n_train=400, n_test=200)
    dataset = stratified(dataset, None, count)
    images = dataset.test_images.permute(0, 2, 3, 1).contiguous().numpy()
    with open(path, "wb") as handle:
        pickle.dump({b"data": images, b"ids": np.arange(len(images))}, handle)
    return dataset.test_labels.numpy()


def score(csv: Path, truth: np.ndarray) -> float:
    import pandas as pd

    table = pd.read_csv(csv)
    return float((table["Labels"].to_numpy() == truth[table["ID"].to_numpy()]).mean())


def run_command(argv: list[str], log: Path) -> float:
    """Run one command as a user would; its wall seconds (an error stops the benchmark)."""
    start = time.time()
    with open(log, "w") as handle:
        code = subprocess.run([sys.executable, "-m", *argv], stdout=handle, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise UserError(f"{argv[0]} failed (exit {code}); see {log}")
    return time.time() - start


def one(method: str, seed: int, deadline: str, data: list[str], budget: int, test: Path, out: Path) -> dict[str, Any]:
    """Run one method at one deadline; its score and times (read back if it already ran)."""
    from trainable.model import count_params
    from trainable.zoo import RECIPES, fit_to_budget

    folder = out / f"{method}-{deadline}-seed{seed}"
    done = folder / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / "submission.csv"
    result: dict[str, Any] = {"method": method, "seed": seed, "deadline": deadline}
    if method == "auto":
        runs = folder / "runs"
        wall = run_command(["search.auto", *data, "--gpus", "0", "--param-budget", str(budget), "--time-budget", deadline,
                            "--seed", str(seed), "--input", str(test), "--out", str(csv), "--storage", str(runs),
                            "--name", "auto", "--verbose", "0"], folder / "auto.log")
        record = json.loads((runs / "auto" / "auto.json").read_text())
        retrained = record["stages"]["retrain"]
        result.update(wall_s=wall, startup_s=record["runs"][0]["startup_s"], mode=record["plan"]["mode"],
                      trial=retrained["trial_id"], epochs=retrained["epochs"], widths=retrained["config"]["widths"],
                      params=count_params(retrained["config"]),
                      stages_s=sum(st.get("used_s", 0) for st in record["stages"].values()))
    else:
        recipe = {**fit_to_budget(RECIPES[FIXED[method]], budget), "seed": seed}
        (folder / "config.json").write_text(json.dumps(recipe))
        model = folder / "final"
        train = run_command(["search.retrain", "--config", str(folder / "config.json"), *data, "--ema",
                             "--epochs", "300", "--time-budget", deadline, "--out", str(model)], folder / "retrain.log")
        predict = run_command(["search.predict", str(model), "--input", str(test), "--out", str(csv), "--tta",
                               "--ema"], folder / "predict.log")
        metrics = json.loads((model / "metrics.json").read_text())
        result.update(wall_s=train + predict, retrain_s=train, predict_s=predict, params=metrics["params"],
                      epochs=len(metrics["per_seed"][0]["epochs"]), widths=recipe["widths"])
    result["score"] = score(csv, np.load(out / "truth.npy"))
    write_json(done, result)
    return result


def run(data_dir: str | None, quick: bool, out: Path, deadlines: Sequence[str] = ("6m", "15m"),
        seeds: Sequence[int] = (0, 1), train_images: int = 3000, budget: int = 200_000,
        methods: Sequence[str] = METHODS) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        deadlines, seeds, train_images, budget = ["75s"], [0], 400, 100_000
    test = out / "test.pkl"
    if not test.is_file():
        np.save(out / "truth.npy", write_test_pickle(data_dir, test, None if data_dir else 200))
    data = (["--dataset", "imagefolder", "--data-dir", data_dir] if data_dir else ["--dataset", "synthetic"]) + [
        "--subset", str(train_images)]
    rows = []
    for deadline in deadlines:
        for seed in seeds:
            for method in methods:
                print(f"{method} at {deadline}, seed {seed}", flush=True)
                rows.append(one(method, seed, deadline, data, budget, test, out))
                print(f"  score {rows[-1]['score']:.4f}, {rows[-1]['wall_s'] / 60:.1f} min", flush=True)
    table = {d: {m: float(np.mean([r["score"] for r in rows if r["deadline"] == d and r["method"] == m]))
                 for m in methods} for d in deadlines}
    return {"deadlines": list(deadlines), "seeds": list(seeds), "train_images": train_images, "budget": budget,
            "mean_score": table, "runs": rows}


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m benchmarks.deadline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for every run, the scores and results.json")
    parser.add_argument("--data-dir", help="CIFAR-10 as an ImageFolder (train/, test/); default synthetic data")
    parser.add_argument("--deadlines", default="6m,15m", help="comma-separated deadlines (default 6m,15m)")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    parser.add_argument("--train-images", type=int, default=3000, help="training images (default 3000)")
    parser.add_argument("--param-budget", type=param_count, default=200_000, help="parameter budget (default 200k)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated methods to run (default {','.join(METHODS)}; also wrn_recipe)")
    parser.add_argument("--quick", action="store_true", help="a smoke run on synthetic data: not a measurement")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - {"auto", *FIXED})
    if unknown:
        raise UserError(f"--methods: unknown {', '.join(unknown)}; choose from auto, {', '.join(FIXED)}")
    deadlines = [d.strip() for d in args.deadlines.split(",") if d.strip()]
    for deadline in deadlines:
        parse_duration(deadline)  # refused now, not after the first run
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise UserError(f"--seeds takes whole numbers, e.g. 0,1; got {args.seeds!r}") from None
    result = run(args.data_dir, args.quick, Path(args.out), deadlines, seeds, args.train_images, args.param_budget,
                 methods)
    write_json(Path(args.out) / "results.json", result)
    for deadline, scores in result["mean_score"].items():
        print(f"{deadline}: " + ", ".join(f"{m} {v:.4f}" for m, v in scores.items()))
    print(f"wrote {Path(args.out) / 'results.json'}")
    return 0


if __name__ == "__main__":
    run_main(main)
