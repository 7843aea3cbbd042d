"""The report's plots, each a function from DataFrames to a PNG file.

Figures are matplotlib `Figure` objects saved straight to files, never pyplot's: pyplot
would pick a backend for the whole process, and in a notebook that would take the user's
inline plots away.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

from analysis.front import front_table, reference_text
from search.records import COST_COLUMN, Status
from trainable.cli import short_count

COST_LABEL = {"params": "trainable params", "macs": "MACs per image", "latency": "latency at batch 1 (ms)"}

MAIN_HYPERPARAMS = ["lr", "weight_decay", "batch_size", "warmup_epochs", "label_smoothing", "cutout", "dropout",
                    "params"]
LOG_SCALE = {"lr", "weight_decay", "params"}
CATEGORICAL = {"batch_size", "cutout"}  # a few values each: drawn as categories, not on a number line


def trials_text(count: int) -> str:
    return f"{count} trial" + ("" if count == 1 else "s")


def _counts_axis(axis: Any) -> None:
    """Tick labels of a params (or MACs) axis as 200k / 1.5M, not 200000 or 1e6; a log axis
    gets ticks at 1, 2 and 5 of each decade (its decades alone can leave one label)."""
    if axis.get_scale() == "log":
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(short_count))
    axis.set_minor_formatter(FuncFormatter(lambda value, pos: ""))  # log axes label minor ticks too: no smear


def _integer_axis(axis: Any, top: float | None = None) -> None:
    """Whole-number ticks (epochs, trial counts); with `top`, the range 0.5..top + 0.5, so that
    a run of one epoch still has a whole number under it."""
    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if top is not None and not math.isnan(top):
        axis.axes.set_xlim(0.5, top + 0.5) if axis is axis.axes.xaxis else axis.axes.set_ylim(0.5, top + 0.5)


def subplots(*grid: int, figsize: tuple[float, float], **kwargs: Any) -> tuple[Figure, Any]:
    """A figure and its axes, as pyplot.subplots gives them, without pyplot."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kwargs)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # "tight": long tick labels (a hyperparameter's name) and notes under the axes are kept
    # in the picture, not cut at its edge.
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _message(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([]), ax.set_yticks([])


def learning_curves(table: pd.DataFrame, curves: pd.DataFrame, path: Path) -> Path:
    """val_acc per epoch of every trial; ASHA-stopped ones faded, the best one highlighted."""
    fig, ax = subplots(figsize=(8, 5))
    best_id = table.iloc[0]["trial_id"] if len(table) else None
    for trial_id, history in curves.dropna(subset=["val_acc"]).groupby("trial_id"):
        status = history["status"].iloc[-1]
        if trial_id == best_id:
            continue
        style = {"alpha": 0.25, "color": "grey"} if status != Status.COMPLETED else {"alpha": 0.7}
        # Markers too: a trial stopped after one epoch is one point, which a line alone hides.
        ax.plot(history["epoch"], history["val_acc"], linewidth=1, marker="o", markersize=3, **style)
    best = curves[curves["trial_id"] == best_id]
    if len(best):
        ax.plot(best["epoch"], best["val_acc"], color="crimson", linewidth=2.5, marker="o", markersize=4,
                label=f"best: {best_id}")
        ax.legend(loc="lower right")
    _integer_axis(ax.xaxis, float(curves["epoch"].max()) if len(curves) else None)
    ax.set_xlabel("epoch"), ax.set_ylabel("val_acc")
    ax.set_title("Learning curves (grey: stopped by ASHA or unfinished)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


IMPORTANCE_LABEL = "PED-ANOVA importance (normalised to sum 1)"


def params_vs_accuracy(table: pd.DataFrame, budget: int, path: Path) -> Path:
    """Params against best val_acc, with the budget line and the Pareto front."""
    fig, ax = subplots(figsize=(8, 5))
    points = table.dropna(subset=["params", "best_val_acc"])
    for status, group in points.groupby("status"):
        ax.scatter(group["params"], group["best_val_acc"], label=status, alpha=0.75)
    if len(points):
        front = front_table(points, "params")
        # Steps with markers: a front of one trial is still drawn, as its legend entry says.
        ax.plot(front["params"], front["best_val_acc"], drawstyle="steps-post", color="black", linewidth=1.2,
                marker="D", markersize=5, label=f"Pareto front ({trials_text(len(front))})")
    ax.axvline(budget, color="crimson", linestyle="--", label=f"budget {short_count(budget)}")
    _counts_axis(ax.xaxis)
    ax.set_xlabel("trainable params"), ax.set_ylabel("best val_acc")
    ax.set_title("Size against accuracy")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8), ax.grid(alpha=0.3)
    return _save(fig, path)


def importance(importances: dict[str, float] | None, path: Path, note: str = "", most: int = 15) -> Path:
    """Horizontal bars of Optuna's hyperparameter importances: the `most` largest, the note
    (how many trials, Optuna's own warnings) under the axes where it covers no bar."""
    import textwrap

    fig, ax = subplots(figsize=(8, 5))
    if importances:
        shown = list(importances)[:most]  # Optuna gives them largest first
        names = shown[::-1]
        ax.barh(names, [importances[n] for n in names], color="steelblue")
        # Optuna's default evaluator: how differently a parameter is distributed among the
        # best trials than among all of them, normalised to sum to 1 (not a variance share).
        ax.set_xlabel(IMPORTANCE_LABEL)
        if len(importances) > most:
            note = f"the {most} largest of {len(importances)}; {note}"
        # Below the axis label, inside the axes' layout box, so tight_layout makes room for it.
        ax.annotate(textwrap.fill(note, 110), xy=(0, 0), xycoords="axes fraction", xytext=(-40, -36),
                    textcoords="offset points", ha="left", va="top", fontsize=7, color="gray")
    else:
        _message(ax, note or "not enough completed trials to estimate importances")
    ax.set_title("Hyperparameter importance (optuna.importance)")
    return _save(fig, path)


def hyperparameters(table: pd.DataFrame, path: Path) -> Path:
    """best val_acc against each main hyperparameter, one panel each."""
    # A key every trial shares (fixed by --set, or one value at this horizon) says nothing here.
    columns = [c for c in MAIN_HYPERPARAMS if c in table.columns and table[c].notna().any()
               and (len(table) < 2 or table[c].nunique() > 1)]
    cols = 4
    rows = max(1, math.ceil(len(columns) / cols))
    fig, axes = subplots(rows, cols, figsize=(14, 3.2 * rows), squeeze=False)
    jitter = np.random.default_rng(0)
    for ax, column in zip(axes.flat, columns):
        data = table.dropna(subset=[column, "best_val_acc"])
        values = data[column].astype(float)
        if column in CATEGORICAL:  # one column of points per value, spread a little to show their number
            levels = sorted(values.unique())
            x = values.map({v: i for i, v in enumerate(levels)}) + jitter.uniform(-0.15, 0.15, len(values))
            ax.scatter(x, data["best_val_acc"], alpha=0.7, s=18)
            ax.set_xticks(range(len(levels)), [f"{v:g}" for v in levels])
        else:
            ax.scatter(values, data["best_val_acc"], alpha=0.7, s=18)
            if column in LOG_SCALE and (values > 0).all() and len(data):
                ax.set_xscale("log")
            if column == "params":
                _counts_axis(ax.xaxis)
                ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.set_xlabel(column), ax.set_ylabel("best val_acc"), ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.suptitle("val_acc against each hyperparameter")
    return _save(fig, path)


def rungs(table: pd.DataFrame, milestones: list[int], path: Path) -> Path:
    """How many trials reached each ASHA milestone epoch."""
    fig, ax = subplots(figsize=(8, 4.5))
    counts = [int((table["epochs_trained"] >= m).sum()) for m in milestones]
    bars = ax.bar([str(m) for m in milestones], counts, color="darkseagreen")
    for bar, count in zip(bars, counts):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), str(count), ha="center", va="bottom")
    _integer_axis(ax.yaxis)
    ax.set_xlabel("epoch milestone (ASHA rung)"), ax.set_ylabel("trials that reached it")
    ax.set_title("ASHA rungs")
    return _save(fig, path)


def best_trial(curves: pd.DataFrame, trial_id: Any, path: Path) -> Path:
    """Loss and accuracy per epoch of the best trial."""
    history = curves[curves["trial_id"] == trial_id]
    fig, (left, right) = subplots(1, 2, figsize=(11, 4))
    left.plot(history["epoch"], history["train_loss"], label="train")
    left.plot(history["epoch"], history["val_loss"], label="val")
    left.set_xlabel("epoch"), left.set_ylabel("loss"), left.legend(), left.grid(alpha=0.3)
    right.plot(history["epoch"], history["train_acc"], label="train")
    right.plot(history["epoch"], history["val_acc"], label="val")
    right.set_xlabel("epoch"), right.set_ylabel("accuracy"), right.legend(), right.grid(alpha=0.3)
    for ax in (left, right):
        _integer_axis(ax.xaxis, float(history["epoch"].max()) if len(history) else None)
        for line in ax.get_lines():  # a trial of one epoch is one point
            line.set_marker("o"), line.set_markersize(3)
    fig.suptitle(f"Best trial {trial_id}")
    return _save(fig, path)


def front(table: pd.DataFrame, objective: str, budget: int, path: Path) -> Path:
    """Every trial's best val_acc against its cost: the front drawn and the knee marked,
    trials stopped early faded, and the parameter budget as a line (params only)."""
    column = COST_COLUMN[objective]
    fig, ax = subplots(figsize=(8, 5))
    points = table.dropna(subset=[column, "best_val_acc"])
    points = points[points["status"] != Status.DIVERGED]
    if points.empty:
        _message(ax, f"no trial has both a val_acc and a {column} yet")
        return _save(fig, path)
    early = points["status"] == Status.STOPPED
    ax.scatter(points.loc[~early, column], points.loc[~early, "best_val_acc"], color="steelblue", alpha=0.85,
               label="ran to the horizon (or running)")
    ax.scatter(points.loc[early, column], points.loc[early, "best_val_acc"], color="steelblue", alpha=0.25,
               label="stopped early by ASHA")
    members = front_table(points, objective)
    ax.plot(members[column], members["best_val_acc"], drawstyle="steps-post", color="black", linewidth=1.2,
            marker="D", markersize=5, label=f"Pareto front ({trials_text(len(members))})")
    at = members[members["knee"]]
    if len(at):
        ax.scatter(at[column], at["best_val_acc"], s=180, facecolors="none", edgecolors="crimson", linewidths=2,
                   label=f"knee: trial {at['trial_id'].iloc[0]}", zorder=5)
    if objective == "params":
        ax.axvline(budget, color="crimson", linestyle="--", label=f"budget {short_count(budget)}")
    ax.set_xscale("log"), ax.set_xlabel(COST_LABEL[objective] + " (log scale)"), ax.set_ylabel("best val_acc")
    if objective in ("params", "macs"):
        _counts_axis(ax.xaxis)
    ax.set_title(f"Pareto front: val_acc against {objective}")
    # Beside the axes, not over the points and lines.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8), ax.grid(alpha=0.3)
    return _save(fig, path)


def hypervolume(curve: pd.DataFrame, objective: str, reference: float, path: Path) -> Path:
    """The hypervolume of the trials so far against epochs consumed, its reference stated."""
    fig, ax = subplots(figsize=(8, 4.5))
    if curve.empty:
        _message(ax, "no epoch reported yet")
        return _save(fig, path)
    ax.plot(curve["epochs"], curve["hypervolume"], color="crimson", marker="o", markersize=3)
    _integer_axis(ax.xaxis)
    ax.set_xlabel("epochs consumed (all trials)"), ax.set_ylabel("hypervolume")
    ax.set_title(f"Hypervolume; reference point: val_acc 0, {objective} {reference_text(reference)} "
                 "(cost scaled by it)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def page(title: str, lines: list[str], figures: dict[str, Path], path: Path, columns: int = 2) -> Path:
    """The report as one picture: its title and summary lines above its figures, tiled
    `columns` to a row, each under its caption (to paste where a page of HTML cannot go)."""
    from matplotlib.image import imread

    rows = max(1, math.ceil(len(figures) / columns))
    head = 0.8 + 0.22 * len(lines)  # inches of text above the figures
    fig = Figure(figsize=(7 * columns, head + 4.6 * rows))
    fig.text(0.01, 1 - 0.3 / fig.get_figheight(), title, fontsize=18, weight="bold", va="top")
    for i, line in enumerate(lines):
        fig.text(0.015, 1 - (0.55 + 0.22 * i) / fig.get_figheight(), line, fontsize=10.5, va="top", family="monospace")
    top = 1 - (head + 0.3) / fig.get_figheight()  # room for the first row's captions
    grid = fig.add_gridspec(rows, columns, top=top, bottom=0.01, left=0.01, right=0.99, hspace=0.15, wspace=0.03)
    for i, (caption, file) in enumerate(figures.items()):
        ax = fig.add_subplot(grid[i // columns, i % columns])
        ax.imshow(imread(file))
        ax.set_title(caption, fontsize=12, loc="left")
        ax.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)  # the layout is set above: tight_layout would undo it
    return path
