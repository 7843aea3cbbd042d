"""The Pareto view of an experiment: its front, the best accuracy at each size, and the
hypervolume against epochs consumed. Ray-free; reads what `analysis.trials` loads.

The cost is the experiment's `--minimize` objective (params when it had none): a column of
the trial table (`search.records.COST_COLUMN`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from search.pareto import front_indices, hypervolume, knee
from search.records import COST_COLUMN, read_settings
from trainable.zoo import PARAM_BUDGET

# The sizes of the OFA-style table: the best val accuracy at or under each.
PARAM_STEPS = (250_000, 500_000, 1_000_000, 2_000_000, 5_000_000)
LATENCY_QUANTILES = (0.1, 0.25, 0.5, 0.75, 1.0)


def objective_of(folder: str | Path) -> str:
    """The cost an experiment traded against accuracy: its --minimize, else params."""
    return read_settings(folder).get("minimize") or "params"


def reference_cost(table: pd.DataFrame, objective: str, budget: int) -> float:
    """The hypervolume's reference cost: the parameter budget for params, else 1.1 x the
    costliest trial's cost (MACs and latency have no cap to refer to)."""
    if objective == "params":
        return float(budget)
    column = COST_COLUMN[objective]
    worst = table[column].dropna().max()
    return float(worst) * 1.1 if pd.notna(worst) and worst > 0 else 1.0


def reference_text(value: float) -> str:
    """A hypervolume reference cost as people write it: 1,000,000 params, 2.5 ms.

    >>> reference_text(1e6), reference_text(2.5)
    ('1,000,000', '2.5')
    """
    return f"{value:,.0f}" if value >= 100 else f"{value:.4g}"


def front_table(table: pd.DataFrame, objective: str) -> pd.DataFrame:
    """The table's non-dominated trials (best_val_acc against the cost), cheapest first,
    with a `knee` column marking the knee."""
    column = COST_COLUMN[objective]
    # As `search.records.front_rows` ranks a search's rows: diverged trials and rows without
    # both figures left out, the front in the table's order (best first), then cheapest first.
    scored = table[(table["status"] != "diverged") & table["best_val_acc"].notna() & table[column].notna()]
    scored = scored.sort_values("best_val_acc", ascending=False, kind="stable")
    chosen = sorted(front_indices(list(zip(scored["best_val_acc"], -scored[column]))))
    front = scored.iloc[chosen].sort_values(column, kind="stable").copy()
    at = knee(list(zip(front["best_val_acc"], front[column])))
    front["knee"] = [i == at for i in range(len(front))]
    return front.reset_index(drop=True)


def size_table(table: pd.DataFrame, objective: str) -> pd.DataFrame:
    """OFA-style: the best val accuracy (and its trial) at or under each size.

    Params use fixed steps (0.25M to 5M); MACs and latency use the quantiles of the costs
    the search saw, as they have no natural steps.
    """
    column = COST_COLUMN[objective]
    scored = table.dropna(subset=[column, "best_val_acc"])
    scored = scored[scored["status"] != "diverged"]
    if objective == "params":
        limits = [float(step) for step in PARAM_STEPS]
        names = [f"<= {step / 1e6:g}M params" for step in PARAM_STEPS]
    else:
        limits = [float(scored[column].quantile(q)) for q in LATENCY_QUANTILES] if len(scored) else []
        unit = "ms" if objective == "latency" else "MACs"
        names = [f"<= {limit:,.4g} {unit} (q{int(q * 100)})" for limit, q in zip(limits, LATENCY_QUANTILES)]
    rows = []
    for name, limit in zip(names, limits):
        under = scored[scored[column] <= limit]
        if len(under):
            best = under.loc[under["best_val_acc"].idxmax()]
            rows.append({"size": name, "best_val_acc": float(best["best_val_acc"]), "trial_id": best["trial_id"],
                         column: best[column]})
        else:
            rows.append({"size": name, "best_val_acc": None, "trial_id": None, column: None})
    return pd.DataFrame(rows, columns=["size", "best_val_acc", "trial_id", column])


def hypervolume_curve(table: pd.DataFrame, curves: pd.DataFrame, objective: str, reference: float) -> pd.DataFrame:
    """The hypervolume of the trials' (best val_acc so far, cost) after each epoch consumed,
    in the order the epochs were reported (`search.pareto.hypervolume`, cost scaled by
    `reference`, accuracy from 0)."""
    column = COST_COLUMN[objective]
    cost = dict(zip(table["trial_id"], table[column]))
    best: dict[str, float] = {}
    rows = []
    ordered = curves.dropna(subset=["val_acc"]).sort_values("wall_time", kind="stable")
    for consumed, (trial_id, value, status) in enumerate(zip(ordered["trial_id"], ordered["val_acc"],
                                                             ordered["status"]), start=1):
        if status != "diverged" and pd.notna(cost.get(trial_id)):
            best[trial_id] = max(best.get(trial_id, 0.0), float(value))
        points = [(acc, float(cost[t])) for t, acc in best.items()]
        rows.append({"epochs": consumed, "hypervolume": hypervolume(points, reference)})
    return pd.DataFrame(rows, columns=["epochs", "hypervolume"])


def front_summary(folder: str | Path, table: pd.DataFrame, curves: pd.DataFrame) -> dict[str, Any]:
    """Everything the report says of the front: objective, members, knee, sizes, hypervolume."""
    settings = read_settings(folder)
    objective = settings.get("minimize") or "params"
    reference = reference_cost(table, objective, int(settings.get("param_budget", PARAM_BUDGET)))
    hv = hypervolume_curve(table, curves, objective, reference)
    return {"objective": objective, "front": front_table(table, objective), "sizes": size_table(table, objective),
            "reference": reference, "hypervolume": hv}
