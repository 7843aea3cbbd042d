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


# Each method: (sampler, scheduler, built-in space version or None for SPACE above, seed
# offset). Every method draws from a seed stream of its own, so no two share their first
# configs. "random_fifo_v1" is the row that shows what the space alone changes.
METHODS: dict[str, tuple[str, str, int | None, int]] = {
    "asha_tpe": ("tpe", "asha", 2, 0),
    "random_fifo": ("random", "fifo", 2, 1000),
    "random_fifo_v1": ("random", "fifo", 1, 2000),
}
LABELS = {"asha_tpe": "ASHA + TPE (built-in space v2, start-up of 10 launches)",
          "random_fifo": "random search + FIFO, built-in space v2",
          "random_fifo_v1": "random search + FIFO, built-in space v1 (before)",
          "custom_asha_tpe": "ASHA + TPE, the benchmark's own space", "custom_random_fifo": "random + FIFO, own space"}


def run(data_dir: str | None, quick: bool, out: Path, seeds: int | list[int] = 3, subset: int | None = None,
        methods: tuple[str, ...] = tuple(METHODS), horizon: int | None = None,
        fifo_trials: int | None = None) -> dict[str, Any]:
    """ASHA+TPE against random+FIFO at an equal number of epochs, per seed."""
    from search.run import run_search
    from search.settings import SearchSettings

    max_epochs = horizon or (3 if quick else 6)
    fifo_trials = fifo_trials or (4 if quick else 10)
    epoch_budget = fifo_trials * max_epochs  # what random+FIFO spends: the compute both get
    # ASHA (grace 1, reduction factor 2) spends about 2 epochs a trial at a 4-to-6-epoch
    # horizon: half the budget in trials covers it (the curve is cut at the budget; more
    # trials would only run past it). TPE proposes what comes after its 10 launched start-up
    # trials.
    asha_trials = max(12, epoch_budget // 2)
    dataset, data_dir_arg = ("imagefolder", data_dir) if data_dir else ("synthetic", None)
    subset = subset or (1000 if quick else 5000)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        custom = Path(tmp) / "space.py"
        custom.write_text(SPACE)
        for seed in range(seeds) if isinstance(seeds, int) else seeds:
            for label in methods:
                sampler, scheduler, version, offset = METHODS[label]
                settings = SearchSettings(
                    name=f"{label}-{seed}", storage=tmp, gpus=0,
                    trials=asha_trials if scheduler == "asha" else fifo_trials, max_epochs=max_epochs,
                    grace_epochs=1, reduction_factor=2, param_budget=BUDGET,
                    space=None if version else str(custom), seed=seed + offset,
                    sampler=sampler, scheduler=scheduler, dataset=dataset, data_dir=data_dir_arg,
                    subset=subset, warm_start=False, verbose=0, time_budget=None,
                    extra={"space_version": version} if version else {})
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
    """Per seed: every method's best within the budget, and the epochs ASHA+TPE took to match
    random-FIFO's final best (on the same space)."""
    seeds = sorted({r["seed"] for r in runs})
    summary: dict[str, Any] = {"seeds": seeds, "epoch_budget": epoch_budget, "per_seed": []}
    for seed in seeds:
        of_seed = {r["method"]: r for r in runs if r["seed"] == seed}
        entry: dict[str, Any] = {"seed": seed}
        for label, r in of_seed.items():
            entry[f"{label}_best"] = r["final_best"]
            entry[f"{label}_epochs"] = r["epochs_used"]
            entry[f"{label}_proposed_by_within_budget"] = r["proposed_by_within_budget"]
            entry[f"{label}_rejected"] = r["rejected"]
        asha, fifo = of_seed.get("asha_tpe"), of_seed.get("random_fifo")
        if asha and fifo:
            matched = asha["curve"][asha["curve"]["best_val_acc"] >= fifo["final_best"]]
            entry["asha_tpe_epochs_to_match_random_fifo"] = int(matched["epochs"].iloc[0]) if len(matched) else None
        summary["per_seed"].append(entry)
    matched = [p.get("asha_tpe_epochs_to_match_random_fifo") for p in summary["per_seed"]]
    summary["mean_share_of_epochs_to_match"] = (
        sum(m / epoch_budget for m in matched) / len(matched) if matched and all(m is not None for m in matched) else None)
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
    colours = {"asha_tpe": "crimson", "random_fifo": "steelblue", "random_fifo_v1": "grey"}
    grid = np.arange(1, budget + 1)
    for method, colour in colours.items():
        curves = []
        for r in (r for r in runs if r["method"] == method):
            curve = r["curve"].set_index("epochs")["best_val_acc"].reindex(grid).ffill()
            curves.append(curve.to_numpy())
        if not curves:
            continue
        stacked = np.vstack(curves)
        ax.plot(grid, np.nanmean(stacked, axis=0), color=colour, label=f"{LABELS[method]} (mean of {len(curves)} seeds)")
        ax.fill_between(grid, np.nanmin(stacked, axis=0), np.nanmax(stacked, axis=0), color=colour, alpha=0.2)
    ax.set_xlabel("epochs consumed"), ax.set_ylabel("best val_acc so far"), ax.set_xlim(0, budget)
    ax.set_title("Search efficiency at equal compute (band: min-max over seeds)"), ax.legend(), ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import search_benchmark_parser, write_results

    parser = search_benchmark_parser("python -m benchmarks.search_efficiency", __doc__, "5,000; 1,000 with --quick",
                                     "10; 4 with --quick")
    parser.add_argument("--horizon", type=int, help="epochs a trial may train (default: 6; 3 with --quick)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, of {', '.join(METHODS)} (default: all)")
    args = parser.parse_args(argv)
    methods = tuple(m for m in args.methods.split(",") if m)
    if unknown := [m for m in methods if m not in METHODS]:
        parser.error(f"unknown method {unknown[0]!r}: choose from {', '.join(METHODS)}")
    out = Path(args.out)
    write_results(out, run(args.data_dir, args.quick, out, seeds=args.seeds, subset=args.subset, methods=methods,
                           horizon=args.horizon, fifo_trials=args.fifo_trials))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
