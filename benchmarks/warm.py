"""Benchmark 10: what `--warm-from` saves. Per seed: a short search (the "earlier" one),
then the same longer search twice, cold and warm-started from the short one. The figure:
the epochs the warm search needs to reach the cold search's final best, against the epochs
the cold search needed for it (both in the order the epochs were reported).

Real images when given (a stratified subset of the CIFAR-10 JPEGs), small models (the
space and budget of benchmark 4), ASHA + TPE, three seeds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks.search_efficiency import BUDGET, SPACE, best_so_far


def run(data_dir: str | None, quick: bool, out: Path, seeds: int = 3) -> dict[str, Any]:
    from search.run import run_search
    from search.settings import SearchSettings

    dataset, data_dir_arg = ("imagefolder", data_dir) if data_dir else ("synthetic", None)
    subset = 600 if quick else 4000
    short_trials, long_trials = (3, 4) if quick else (10, 12)
    short_epochs, long_epochs = (1, 2) if quick else (2, 4)
    per_seed = []
    with tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp) / "space.py"
        space.write_text(SPACE)
        for seed in range(seeds):
            common = dict(storage=tmp, gpus=0, grace_epochs=1, reduction_factor=2, param_budget=BUDGET,
                          space=str(space), dataset=dataset, data_dir=data_dir_arg, subset=subset, warm_start=False,
                          verbose=0)
            earlier = run_search(SearchSettings(name=f"earlier-{seed}", trials=short_trials, max_epochs=short_epochs,
                                                seed=seed, **common))
            # The longer searches use another seed than the earlier one: the warm one must
            # not simply replay the earlier search's first draws.
            cold = run_search(SearchSettings(name=f"cold-{seed}", trials=long_trials, max_epochs=long_epochs,
                                             seed=100 + seed, **common))
            warm = run_search(SearchSettings(name=f"warm-{seed}", trials=long_trials, max_epochs=long_epochs,
                                             seed=100 + seed, warm_from=str(earlier.folder), **common))
            per_seed.append(compare(seed, cold.folder, warm.folder))
            print(f"  seed {seed}: {per_seed[-1]}", flush=True)
    reached = [p for p in per_seed if p["warm_epochs_to_cold_best"] is not None]
    return {"per_seed": per_seed, "subset": subset, "data": dataset, "param_budget": BUDGET,
            "short": f"{short_trials} trials x {short_epochs} epochs", "long": f"{long_trials} trials x {long_epochs} epochs",
            "warm_reached_cold_best": f"{len(reached)} of {len(per_seed)} seeds",
            "mean_warm_epochs_over_cold_epochs": round(sum(p["warm_epochs_to_cold_best"] / p["cold_epochs_to_its_best"]
                                                           for p in reached) / len(reached), 3) if reached else None}


def compare(seed: int, cold: Path, warm: Path) -> dict[str, Any]:
    """Epochs each search took to reach the cold search's final best val accuracy."""
    from analysis.trials import load_experiment

    cold_curve = best_so_far(load_experiment(cold)[1])
    warm_curve = best_so_far(load_experiment(warm)[1])
    target = float(cold_curve["best_val_acc"].iloc[-1])
    cold_at = int(cold_curve[cold_curve["best_val_acc"] >= target]["epochs"].iloc[0])
    reached = warm_curve[warm_curve["best_val_acc"] >= target]
    return {"seed": seed, "cold_best": round(target, 4), "warm_best": round(float(warm_curve["best_val_acc"].iloc[-1]), 4),
            "cold_epochs_to_its_best": cold_at, "cold_epochs": int(cold_curve["epochs"].iloc[-1]),
            "warm_epochs_to_cold_best": int(reached["epochs"].iloc[0]) if len(reached) else None,
            "warm_epochs": int(warm_curve["epochs"].iloc[-1])}
