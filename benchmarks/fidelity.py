"""Benchmark 6: does confirming the search's top configs at a longer horizon change the pick?

    python -m benchmarks.run --only fidelity --data-dir /tmp/cifar10-jpeg --out bench/

Per seed: a search (ASHA + TPE, a 4-epoch horizon, models under 200,000 params, 5,000
real CIFAR-10 images), then `search.auto`'s confirm stage itself on its top 6 configs at 12
epochs. Reports Kendall's tau between the two orders, whether the pick changed, and the
accuracy at 12 epochs of the search's pick against the confirmed pick; plots each seed's
top configs, search val accuracy against confirm val accuracy.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.search_efficiency import BUDGET, SPACE


def run(data_dir: str | None, quick: bool, out: Path | None = None, seeds: int = 3) -> dict[str, Any]:
    """Each seed's search and confirm stage in `out` (finished ones are read back, not rerun)."""
    from search.confirm import stage_confirm
    from search.run import run_search
    from search.settings import SearchSettings

    seeds = [0] if quick else list(range(seeds))
    out = Path(out or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    space = out / "fidelity_space.py"
    space.write_text(SPACE)
    dataset = ("imagefolder", data_dir) if data_dir else ("synthetic", None)
    horizon, top, factor = (2, 3, 2) if quick else (4, 6, 3)
    per_seed: dict[str, Any] = {}
    for seed in seeds:
        s = SearchSettings(name=f"fidelity-{seed}", storage=str(out), gpus=0, trials=6 if quick else 16,
                           max_epochs=horizon, grace_epochs=1, reduction_factor=2, param_budget=BUDGET,
                           space=str(space), warm_start=False, seed=seed, dataset=dataset[0], data_dir=dataset[1],
                           subset=600 if quick else 5000, verbose=0)
        if not (s.folder / "settings.json").exists():
            run_search(s)
        confirm = stage_confirm(s, "best", top, horizon * factor, 7200.0,
                                resume=(s.folder / "confirm" / "settings.json").exists(), recipe=None, epoch_s=1.0,
                                concurrent=2)
        search_pick, confirmed_pick = confirm["search_order"][0], confirm["confirm_order"][0]
        per_seed[str(seed)] = {
            "kendall_tau": confirm["kendall_tau"], "pick_changed": confirm["pick_changed"],
            "search_pick_acc_at_confirm_horizon": confirm["confirm_val_acc"].get(search_pick),
            "confirmed_pick_acc_at_confirm_horizon": confirm["confirm_val_acc"][confirmed_pick],
            "search_val_acc": confirm["search_val_acc"], "confirm_val_acc": confirm["confirm_val_acc"],
            "search_order": confirm["search_order"], "confirm_order": confirm["confirm_order"],
        }
    taus = [r["kendall_tau"] for r in per_seed.values() if r["kendall_tau"] is not None]
    gains = [r["confirmed_pick_acc_at_confirm_horizon"] - r["search_pick_acc_at_confirm_horizon"]
             for r in per_seed.values() if r["search_pick_acc_at_confirm_horizon"] is not None]
    plot(per_seed, out / "fidelity.png", horizon, horizon * factor)
    return {"data": dataset[0], "search_horizon": horizon, "confirm_horizon": horizon * factor, "top": top,
            "seeds": per_seed, "mean_kendall_tau": statistics.fmean(taus) if taus else None,
            "picks_changed": sum(r["pick_changed"] for r in per_seed.values()),
            "mean_gain_of_confirmed_pick": statistics.fmean(gains) if gains else None,
            "plot": str(out / "fidelity.png")}


def plot(per_seed: dict[str, Any], path: Path, short: int, long: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for seed, result in per_seed.items():
        ids = [t for t in result["search_order"] if t in result["confirm_val_acc"]]
        xs = [result["search_val_acc"][t] for t in ids]
        ys = [result["confirm_val_acc"][t] for t in ids]
        ax.scatter(xs, ys, label=f"seed {seed} (tau {result['kendall_tau']:.2f})" if result["kendall_tau"]
                   is not None else f"seed {seed}")
        if ids:
            ax.scatter([xs[0]], [ys[0]], marker="s", s=90, facecolors="none", edgecolors="k")
            best = result["confirm_order"][0]
            ax.scatter([result["search_val_acc"][best]], [result["confirm_val_acc"][best]], marker="*", s=160,
                       color="k")
    ax.set_xlabel(f"best val accuracy in the search ({short}-epoch horizon)")
    ax.set_ylabel(f"best val accuracy when confirmed ({long} epochs)")
    ax.set_title("Search pick (square) against confirmed pick (star)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
