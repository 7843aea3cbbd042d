"""Benchmark 4: ASHA with the budget-aware TPE search against random search run to the end (FIFO).

Real images (5,000 CIFAR-10 training images), small models, the same epoch budget for
both, three seeds. For each: the best val accuracy reached against epochs consumed; how
many epochs ASHA+TPE needs to match random-FIFO's final best; who proposed each launched
ASHA+TPE config (TPE's random start-up or TPE itself); and how many configs over the
parameter budget each drew (a search without the budget check would have trained them).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from search.records import load_study

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


def proposers(folder: Path) -> dict[str, str]:
    """Who proposed each launched trial (warm_start, startup, tpe, rung_K, random), by trial id."""
    study = load_study(folder)
    return {t.user_attrs["ray_trial_id"]: t.user_attrs.get("proposed_by", "unknown")
            for t in study.get_trials(deepcopy=False) if "ray_trial_id" in t.user_attrs}


def tally(names: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return counts


def run(data_dir: str | None, quick: bool, out: Path) -> dict[str, Any]:
    """ASHA+TPE against random+FIFO at an equal number of epochs, per seed."""
    from search.run import run_search
    from search.settings import SearchSettings

    seeds = [0, 1, 2]
    max_epochs = 3 if quick else 6
    fifo_trials = 4 if quick else 10
    epoch_budget = fifo_trials * max_epochs  # what random+FIFO spends: the compute both get
    # ASHA+TPE gets enough trials that TPE (after its ~10 random start-up launches) proposes
    # at least half of those launched within the budget; its curve is cut at the budget.
    asha_trials = fifo_trials * 3 if quick else 36
    dataset, data_dir_arg = ("imagefolder", data_dir) if data_dir else ("synthetic", None)
    subset = 1000 if quick else 5000
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp) / "space.py"
        space.write_text(SPACE)
        for seed in seeds:
            for label, sampler, scheduler, trials in (("asha_tpe", "tpe", "asha", asha_trials),
                                                      ("random_fifo", "random", "fifo", fifo_trials)):
                settings = SearchSettings(
                    name=f"{label}-{seed}", storage=tmp, gpus=0, trials=trials, max_epochs=max_epochs,
                    grace_epochs=1, reduction_factor=2, param_budget=BUDGET, space=str(space), seed=seed,
                    sampler=sampler, scheduler=scheduler, dataset=dataset, data_dir=data_dir_arg,
                    subset=subset, warm_start=False, verbose=0, time_budget=None)
                outcome = run_search(settings)
                runs.append(measure(outcome.folder, label, seed, epoch_budget))

    summary = summarise(runs, epoch_budget)
    summary.update(max_epochs=max_epochs, subset=subset, param_budget=BUDGET, data=dataset)
    plot(runs, out / "search_efficiency.png", epoch_budget)
    summary["plot"] = str(out / "search_efficiency.png")
    return summary


def measure(folder: Path, label: str, seed: int, epoch_budget: int) -> dict[str, Any]:
    """One search's anytime curve (cut at the epoch budget) and who proposed its trials."""
    from analysis.trials import load_experiment
    from search.records import rejected_count

    _, history = load_experiment(folder)
    full = best_so_far(history)
    curve = full[full["epochs"] <= epoch_budget]  # the same budget for both
    who = proposers(folder)
    within = _trials_within(history, epoch_budget)
    run = {"method": label, "seed": seed, "curve": curve, "rejected": rejected_count(folder),
           "final_best": float(curve["best_val_acc"].iloc[-1]), "epochs_used": int(curve["epochs"].iloc[-1]),
           "proposed_by": tally(who.values()), "proposed_by_within_budget": tally(who[t] for t in within)}
    print(f"  {label} seed {seed}: best {run['final_best']:.4f} in {run['epochs_used']} epochs; "
          f"launched {len(who)} {run['proposed_by']}, within the budget "
          f"{run['proposed_by_within_budget']}; rejected {run['rejected']}", flush=True)
    return run


def summarise(runs: list[dict[str, Any]], epoch_budget: int) -> dict[str, Any]:
    """Per seed: both methods' best within the budget, and the epochs ASHA+TPE took to match random-FIFO."""
    seeds = sorted({r["seed"] for r in runs})
    summary: dict[str, Any] = {"seeds": seeds, "epoch_budget": epoch_budget, "per_seed": []}
    for seed in seeds:
        asha = next(r for r in runs if r["seed"] == seed and r["method"] == "asha_tpe")
        fifo = next(r for r in runs if r["seed"] == seed and r["method"] == "random_fifo")
        matched = asha["curve"][asha["curve"]["best_val_acc"] >= fifo["final_best"]]
        summary["per_seed"].append({
            "seed": seed, "asha_tpe_best": asha["final_best"], "random_fifo_best": fifo["final_best"],
            "asha_tpe_epochs_to_match_random_fifo": int(matched["epochs"].iloc[0]) if len(matched) else None,
            "random_fifo_epochs": fifo["epochs_used"],
            "asha_tpe_proposed_by": asha["proposed_by"],
            "asha_tpe_proposed_by_within_budget": asha["proposed_by_within_budget"],
            "over_budget_configs_drawn": {"asha_tpe": asha["rejected"], "random_fifo": fifo["rejected"]},
        })
    matched = [p["asha_tpe_epochs_to_match_random_fifo"] for p in summary["per_seed"]]
    summary["mean_share_of_epochs_to_match"] = (
        sum(m / epoch_budget for m in matched) / len(matched) if all(m is not None for m in matched) else None)
    return summary


def _trials_within(history: pd.DataFrame, budget: int) -> list[str]:
    """The trials that had reported an epoch by the time `budget` epochs were consumed."""
    return list(history.sort_values("wall_time").head(budget)["trial_id"].unique())


def plot(runs: list[dict[str, Any]], path: Path, budget: int) -> None:
    """The anytime curve: best val_acc against epochs consumed, mean over seeds and its range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 5))
    colours = {"asha_tpe": "crimson", "random_fifo": "steelblue"}
    labels = {"asha_tpe": "ASHA + budget-aware TPE", "random_fifo": "random search + FIFO (every trial to the end)"}
    grid = np.arange(1, budget + 1)
    for method, colour in colours.items():
        curves = []
        for r in (r for r in runs if r["method"] == method):
            curve = r["curve"].set_index("epochs")["best_val_acc"].reindex(grid).ffill()
            curves.append(curve.to_numpy())
        stacked = np.vstack(curves)
        ax.plot(grid, np.nanmean(stacked, axis=0), color=colour, label=f"{labels[method]} (mean of {len(curves)} seeds)")
        ax.fill_between(grid, np.nanmin(stacked, axis=0), np.nanmax(stacked, axis=0), color=colour, alpha=0.2)
    ax.set_xlabel("epochs consumed"), ax.set_ylabel("best val_acc so far"), ax.set_xlim(0, budget)
    ax.set_title("Search efficiency at equal compute (band: min-max over seeds)"), ax.legend(), ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
