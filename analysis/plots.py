"""The report's plots, each a function from DataFrames to a PNG file (matplotlib, Agg)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from search.records import Status  # noqa: E402

MAIN_HYPERPARAMS = ["lr", "weight_decay", "batch_size", "warmup_epochs", "label_smoothing", "cutout", "dropout",
                    "params"]
LOG_SCALE = {"lr", "weight_decay", "params"}


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _message(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([]), ax.set_yticks([])


def learning_curves(table: pd.DataFrame, curves: pd.DataFrame, path: Path) -> Path:
    """val_acc per epoch of every trial; ASHA-stopped ones faded, the best one highlighted."""
    fig, ax = plt.subplots(figsize=(8, 5))
    best_id = table.iloc[0]["trial_id"] if len(table) else None
    for trial_id, history in curves.dropna(subset=["val_acc"]).groupby("trial_id"):
        status = history["status"].iloc[-1]
        if trial_id == best_id:
            continue
        style = {"alpha": 0.25, "color": "grey"} if status != Status.COMPLETED else {"alpha": 0.7}
        ax.plot(history["epoch"], history["val_acc"], linewidth=1, **style)
    best = curves[curves["trial_id"] == best_id]
    if len(best):
        ax.plot(best["epoch"], best["val_acc"], color="crimson", linewidth=2.5, label=f"best: {best_id}")
        ax.legend(loc="lower right")
    ax.set_xlabel("epoch"), ax.set_ylabel("val_acc")
    ax.set_title("Learning curves (grey: stopped by ASHA or unfinished)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


IMPORTANCE_LABEL = "PED-ANOVA importance (normalised to sum 1)"


def pareto_front(points: pd.DataFrame) -> pd.DataFrame:
    """Trials that no other trial beats on both fewer params and higher best val_acc.

    Diverged trials are left out, as in every ranking of this tool (`search.records.rank`).
    """
    points = points[points["status"] != Status.DIVERGED]
    ordered = points.sort_values(["params", "best_val_acc"], ascending=[True, False], kind="stable")
    front, best_so_far = [], -math.inf
    for _, row in ordered.iterrows():
        if row["best_val_acc"] > best_so_far:
            front.append(row)
            best_so_far = row["best_val_acc"]
    return pd.DataFrame(front)


def params_vs_accuracy(table: pd.DataFrame, budget: int, path: Path) -> Path:
    """Params against best val_acc, with the budget line and the Pareto front."""
    fig, ax = plt.subplots(figsize=(8, 5))
    points = table.dropna(subset=["params", "best_val_acc"])
    for status, group in points.groupby("status"):
        ax.scatter(group["params"], group["best_val_acc"], label=status, alpha=0.75)
    if len(points):
        front = pareto_front(points)
        ax.step(front["params"], front["best_val_acc"], where="post", color="black", linewidth=1.2,
                label="Pareto front")
    ax.axvline(budget, color="crimson", linestyle="--", label=f"budget {budget:,}")
    ax.set_xlabel("trainable params"), ax.set_ylabel("best val_acc")
    ax.set_title("Size against accuracy")
    ax.legend(loc="lower right"), ax.grid(alpha=0.3)
    return _save(fig, path)


def importance(importances: dict[str, float] | None, path: Path, note: str = "") -> Path:
    """Horizontal bars of Optuna's hyperparameter importances."""
    fig, ax = plt.subplots(figsize=(8, 5))
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="steelblue")
        # Optuna's default evaluator: how differently a parameter is distributed among the
        # best trials than among all of them, normalised to sum to 1 (not a variance share).
        ax.set_xlabel(IMPORTANCE_LABEL)
        ax.text(0.98, 0.02, note, transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="gray")
    else:
        _message(ax, note or "not enough completed trials to estimate importances")
    ax.set_title("Hyperparameter importance (optuna.importance)")
    return _save(fig, path)


def hyperparameters(table: pd.DataFrame, path: Path) -> Path:
    """best val_acc against each main hyperparameter, one panel each."""
    columns = [c for c in MAIN_HYPERPARAMS if c in table.columns and table[c].notna().any()]
    cols = 4
    rows = max(1, math.ceil(len(columns) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(14, 3.2 * rows), squeeze=False)
    for ax, column in zip(axes.flat, columns):
        data = table.dropna(subset=[column, "best_val_acc"])
        ax.scatter(data[column].astype(float), data["best_val_acc"], alpha=0.7, s=18)
        if column in LOG_SCALE and (data[column].astype(float) > 0).all() and len(data):
            ax.set_xscale("log")
        ax.set_xlabel(column), ax.set_ylabel("best val_acc"), ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.suptitle("val_acc against each hyperparameter")
    return _save(fig, path)


def rungs(table: pd.DataFrame, milestones: list[int], path: Path) -> Path:
    """How many trials reached each ASHA milestone epoch."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    counts = [int((table["epochs_trained"] >= m).sum()) for m in milestones]
    bars = ax.bar([str(m) for m in milestones], counts, color="darkseagreen")
    for bar, count in zip(bars, counts):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), str(count), ha="center", va="bottom")
    ax.set_xlabel("epoch milestone (ASHA rung)"), ax.set_ylabel("trials that reached it")
    ax.set_title("ASHA rungs")
    return _save(fig, path)


def best_trial(curves: pd.DataFrame, trial_id: Any, path: Path) -> Path:
    """Loss and accuracy per epoch of the best trial."""
    history = curves[curves["trial_id"] == trial_id]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(history["epoch"], history["train_loss"], label="train")
    left.plot(history["epoch"], history["val_loss"], label="val")
    left.set_xlabel("epoch"), left.set_ylabel("loss"), left.legend(), left.grid(alpha=0.3)
    right.plot(history["epoch"], history["train_acc"], label="train")
    right.plot(history["epoch"], history["val_acc"], label="val")
    right.set_xlabel("epoch"), right.set_ylabel("accuracy"), right.legend(), right.grid(alpha=0.3)
    fig.suptitle(f"Best trial {trial_id}")
    return _save(fig, path)
