"""Benchmark 8: Pareto search (MO-ASHA + multi-objective TPE) against random search run to
the end (FIFO), both trading val accuracy against params, at equal compute.

Real images when given (a stratified subset of the CIFAR-10 JPEGs), small models under
200,000 params, the same number of epochs for both, three seeds. For each search: the
hypervolume of (best val accuracy so far, params) against epochs consumed, with the
reference point (accuracy 0, the 200,000-param budget); and the front it ends with.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.search_efficiency import proposers, tally

BUDGET = 200_000
# (sampler, scheduler, seed offset): both over the built-in space (version 2, under 200,000 params), each method
# on a seed stream of its own, so no two share their first configs.
METHODS = {"mo_asha_tpe": ("tpe", "asha", 0), "random_fifo": ("random", "fifo", 1000)}
LABELS = {"mo_asha_tpe": "MO-ASHA + multi-objective TPE", "random_fifo": "random search + FIFO (every trial to the end)"}


def run(data_dir: str | None, quick: bool, out: Path, seeds: int | list[int] = 3, subset: int | None = None,
        fifo_trials: int | None = None) -> dict[str, Any]:
    """Both methods on each seed; the hypervolume curves cut at the common epoch budget."""
    from search.run import run_search
    from search.settings import SearchSettings

    max_epochs = 2 if quick else 4
    fifo_trials = fifo_trials or (3 if quick else 8)
    epoch_budget = fifo_trials * max_epochs  # what random+FIFO spends: the compute both get
    # MO-ASHA with grace 1 and reduction factor 2 spends about two epochs a trial at this
    # horizon: twice the trials consume about the same epochs; its curve is cut at the budget.
    mo_trials = 2 * fifo_trials
    dataset, data_dir_arg = ("imagefolder", data_dir) if data_dir else ("synthetic", None)
    subset = subset or (600 if quick else 4000)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds) if isinstance(seeds, int) else seeds:
            for method, (sampler, scheduler, offset) in METHODS.items():
                settings = SearchSettings(
                    name=f"{method}-{seed}", storage=tmp, gpus=0, trials=mo_trials if scheduler == "asha" else fifo_trials,
                    max_epochs=max_epochs, grace_epochs=1, reduction_factor=2, param_budget=BUDGET,
                    seed=seed + offset, sampler=sampler, scheduler=scheduler, dataset=dataset, data_dir=data_dir_arg,
                    subset=subset, warm_start=False, verbose=0, minimize="params")
                outcome = run_search(settings)
                runs.append(measure(outcome.folder, method, seed, epoch_budget))
                runs[-1]["proposed_by"] = tally(proposers(outcome.folder).values())
    summary = summarise(runs, epoch_budget)
    summary.update(max_epochs=max_epochs, subset=subset, param_budget=BUDGET, data=dataset,
                   reference_point={"val_acc": 0.0, "params": BUDGET})
    plot(runs, out / "pareto_hypervolume.png", epoch_budget)
    summary["plot"] = str(out / "pareto_hypervolume.png")
    return summary


def measure(folder: Path, method: str, seed: int, epoch_budget: int) -> dict[str, Any]:
    """One search's hypervolume curve (cut at the budget) and its final front."""
    from analysis.front import front_table, hypervolume_curve
    from analysis.trials import load_experiment

    table, curves = load_experiment(folder)
    within = curves.dropna(subset=["val_acc"]).sort_values("wall_time", kind="stable").head(epoch_budget)
    curve = hypervolume_curve(table, within, "params", float(BUDGET))
    front = front_table(table[table["trial_id"].isin(within["trial_id"])], "params")
    run = {"method": method, "seed": seed, "curve": curve, "epochs_used": int(curve["epochs"].iloc[-1]),
           "final_hypervolume": float(curve["hypervolume"].iloc[-1]),
           "front": [(int(p), round(float(a), 4)) for p, a in zip(front["params"], front["best_val_acc"])]}
    print(f"  {method} seed {seed}: hypervolume {run['final_hypervolume']:.4f} after {run['epochs_used']} epochs; "
          f"front (params, val_acc) {run['front']}", flush=True)
    return run


def summarise(runs: list[dict[str, Any]], epoch_budget: int) -> dict[str, Any]:
    """Per seed, each method's hypervolume at the budget; their means and spreads."""
    summary: dict[str, Any] = {"epoch_budget": epoch_budget, "per_seed": []}
    for seed in sorted({r["seed"] for r in runs}):
        entry: dict[str, Any] = {"seed": seed}
        for r in (r for r in runs if r["seed"] == seed):
            entry[f"{r['method']}_hypervolume"] = round(r["final_hypervolume"], 4)
            entry[f"{r['method']}_epochs"] = r["epochs_used"]
            entry[f"{r['method']}_front"] = r["front"]
            entry[f"{r['method']}_proposed_by"] = r["proposed_by"]
        summary["per_seed"].append(entry)
    for method in METHODS:
        values = [r["final_hypervolume"] for r in runs if r["method"] == method]
        summary[f"{method}_hypervolume_mean"] = round(float(np.mean(values)), 4)
        summary[f"{method}_hypervolume_range"] = [round(min(values), 4), round(max(values), 4)]
    return summary


def plot(runs: list[dict[str, Any]], path: Path, budget: int) -> None:
    """Hypervolume against epochs consumed: mean over seeds and its min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    grid = np.arange(1, budget + 1)
    for method, colour in (("mo_asha_tpe", "crimson"), ("random_fifo", "steelblue")):
        stacked = np.vstack([r["curve"].set_index("epochs")["hypervolume"].reindex(grid).ffill().to_numpy()
                             for r in runs if r["method"] == method])
        ax.plot(grid, np.nanmean(stacked, axis=0), color=colour,
                label=f"{LABELS[method]} (mean of {len(stacked)} seeds)")
        ax.fill_between(grid, np.nanmin(stacked, axis=0), np.nanmax(stacked, axis=0), color=colour, alpha=0.2)
    ax.set_xlabel("epochs consumed"), ax.set_ylabel(f"hypervolume (reference: val_acc 0, {BUDGET:,} params)")
    ax.set_xlim(0, budget), ax.grid(alpha=0.3), ax.legend()
    ax.set_title("Pareto search at equal compute (band: min-max over seeds)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)



def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import search_benchmark_parser, write_results

    parser = search_benchmark_parser("python -m benchmarks.pareto", __doc__, "4,000; 600 with --quick",
                                     "8; 3 with --quick")
    args = parser.parse_args(argv)
    out = Path(args.out)
    write_results(out, run(args.data_dir, args.quick, out, seeds=args.seeds, subset=args.subset,
                           fifo_trials=args.fifo_trials))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
