"""Benchmark 4: ASHA with the budget-aware TPE search against random search run to the end (FIFO).

Real images (a small CIFAR-10 subset), small models, the same epoch budget for both, several
seeds. For each, the best val accuracy reached against epochs consumed; how many epochs
ASHA+TPE needs to match random-FIFO's final best; and how many configs over the parameter
budget each drew (a search without the budget check would have trained them).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

SPACE = '''
def space(trial):
    n = trial.suggest_int("n_stages", 2, 3)
    base = trial.suggest_int("width", 8, 48, step=8)
    return {
        "blocks": [trial.suggest_int(f"blocks_{i}", 1, 3) for i in range(n)],
        "widths": [base * 2**i for i in range(n)],
        "lr": trial.suggest_float("lr", 3e-4, 3e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-4, 1e-1, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
        "warmup_epochs": 0,
    }
'''
BUDGET = 200_000  # small models only: about half of this space is over


def best_so_far(history: pd.DataFrame) -> pd.DataFrame:
    """Best val_acc against cumulative epochs, in the order the epochs were reported."""
    ordered = history.sort_values("wall_time")
    return pd.DataFrame({"epochs": range(1, len(ordered) + 1), "best_val_acc": ordered["val_acc"].cummax().values})


def run(data_dir: str | None, quick: bool, out: Path) -> dict[str, Any]:
    import ray

    from analysis.trials import load_experiment
    from search.run import SearchSettings, run_search

    seeds = [0, 1, 2]
    max_epochs = 3 if quick else 6
    fifo_trials = 4 if quick else 8
    epoch_budget = fifo_trials * max_epochs
    dataset, data_dir_arg = ("imagefolder", data_dir) if data_dir else ("synthetic", None)
    subset = 1000 if quick else 4000
    runs: list[dict[str, Any]] = []
    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            space = Path(tmp) / "space.py"
            space.write_text(SPACE)
            for seed in seeds:
                for label, sampler, scheduler, trials in (("asha_tpe", "tpe", "asha", fifo_trials * 3),
                                                          ("random_fifo", "random", "fifo", fifo_trials)):
                    settings = SearchSettings(
                        name=f"{label}-{seed}", storage=tmp, gpus=0, trials=trials, max_epochs=max_epochs,
                        grace_epochs=1, reduction_factor=2, param_budget=BUDGET, space=str(space), seed=seed,
                        sampler=sampler, scheduler=scheduler, dataset=dataset, data_dir=data_dir_arg,
                        subset=subset, warm_start=False, verbose=0, time_budget=None)
                    outcome = run_search(settings)
                    _, history = load_experiment(outcome.folder)
                    curve = best_so_far(history)
                    curve = curve[curve["epochs"] <= epoch_budget]  # the same budget for both
                    runs.append({"method": label, "seed": seed, "curve": curve, "rejected": outcome.rejected,
                                 "final_best": float(curve["best_val_acc"].iloc[-1]),
                                 "epochs_used": int(curve["epochs"].iloc[-1])})
    finally:
        ray.shutdown()

    summary: dict[str, Any] = {"seeds": seeds, "epoch_budget": epoch_budget, "max_epochs": max_epochs,
                               "subset": subset, "param_budget": BUDGET, "per_seed": []}
    for seed in seeds:
        asha = next(r for r in runs if r["seed"] == seed and r["method"] == "asha_tpe")
        fifo = next(r for r in runs if r["seed"] == seed and r["method"] == "random_fifo")
        matched = asha["curve"][asha["curve"]["best_val_acc"] >= fifo["final_best"]]
        summary["per_seed"].append({
            "seed": seed, "asha_tpe_best": asha["final_best"], "random_fifo_best": fifo["final_best"],
            "asha_tpe_epochs_to_match_random_fifo": int(matched["epochs"].iloc[0]) if len(matched) else None,
            "random_fifo_epochs": fifo["epochs_used"],
            "over_budget_configs_drawn": {"asha_tpe": asha["rejected"], "random_fifo": fifo["rejected"]},
        })
    plot(runs, out / "search_efficiency.png", epoch_budget)
    summary["plot"] = str(out / "search_efficiency.png")
    return summary


def plot(runs: list[dict[str, Any]], path: Path, budget: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colours = {"asha_tpe": "crimson", "random_fifo": "steelblue"}
    for method in colours:
        for i, r in enumerate(r for r in runs if r["method"] == method):
            ax.step(r["curve"]["epochs"], r["curve"]["best_val_acc"], where="post", color=colours[method],
                    alpha=0.8, label=method.replace("_", " + ").upper() if i == 0 else None)
    ax.set_xlabel("epochs consumed"), ax.set_ylabel("best val_acc so far"), ax.set_xlim(0, budget)
    ax.set_title("Search efficiency (one line per seed)"), ax.legend(), ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
