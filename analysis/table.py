"""Print the trial table of one or more experiments.

    python -m analysis.table runs/NAME [runs/OTHER ...] [--top K] [--sort COLUMN]
                             [--status STATUS] [--format table|csv|markdown|json] [--columns all]
    python -m analysis.table runs/NAME --front      # the Pareto front and the best at each size
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis.trials import COLUMNS, STATUSES, load
from trainable.cli import ArgumentParser, run_main, short_count
from trainable.errors import UserError

FORMATS = ("table", "csv", "markdown", "json")
# What fits an 80-column terminal, rounded: the table and markdown show these unless
# --columns all; csv and json, being data, give every column at full precision.
NARROW = ["trial_id", "status", "params", "blocks", "widths", "opt", "lr", "bs", "epochs", "best_val", "at"]
# The front's compact view adds the costs and the knee.
FRONT_EXTRA = ["macs", "latency_ms", "knee"]


def stack(paths: Sequence[str | Path]) -> pd.DataFrame:
    """One table for several experiments, with an `experiment` column when there are several."""
    frames = []
    for path in paths:
        frame = load(path)
        if len(paths) > 1:
            frame.insert(0, "experiment", Path(path).name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def select(df: pd.DataFrame, sort: str = "best_val_acc", status: str | None = None,
           top: int | None = None) -> pd.DataFrame:
    """Filter by status, sort (descending for accuracy-like columns), keep the top K."""
    if sort not in df.columns:
        raise UserError(f"--sort {sort!r} is not a column; columns: {', '.join(df.columns)}")
    if status:
        if status not in STATUSES:
            raise UserError(f"--status must be one of {', '.join(STATUSES)}, got {status!r}")
        df = df[df["status"] == status]
    ascending = sort in ("trial_id", "status", "params", "wall_seconds", "gpu_seconds", "experiment", "error")
    df = df.sort_values(sort, ascending=ascending, na_position="last", kind="stable")
    return df.head(top) if top else df


def _short_list(value: object) -> str:
    return "-".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def narrow(df: pd.DataFrame) -> pd.DataFrame:
    """The compact view for a terminal."""
    out = pd.DataFrame({
        "trial_id": df["trial_id"],
        "status": df["status"],
        "params": df["params"].map(short_count),
        "blocks": df["blocks"].map(_short_list),
        "widths": df["widths"].map(_short_list),
        "opt": df["optimizer"],
        "lr": df["lr"].map(lambda v: f"{v:.1e}" if pd.notna(v) else "-"),
        "bs": df["batch_size"],
        "epochs": df["epochs_trained"],
        "best_val": df["best_val_acc"].map(lambda v: f"{v:.4f}" if pd.notna(v) else "-"),
        "at": df["best_epoch"].map(lambda v: f"{int(v)}" if pd.notna(v) else "-"),
    })
    if "experiment" in df.columns:
        out.insert(0, "experiment", df["experiment"])
    return out


def narrow_front(front: pd.DataFrame) -> pd.DataFrame:
    """The terminal view of a front: the narrow table plus MACs, latency and the knee."""
    out = narrow(front)
    out.insert(3, "macs", front["macs"].map(short_count))
    out.insert(4, "latency", front["latency_ms"].map(lambda v: f"{v:.3g}ms" if pd.notna(v) else "-"))
    out["knee"] = front["knee"].map(lambda k: "<- knee" if k else "")
    return out


def narrow_sizes(sizes: pd.DataFrame) -> pd.DataFrame:
    """The terminal view of `analysis.front.size_table`: figures formatted, gaps as '-'."""
    shown = sizes.copy()
    shown["best_val_acc"] = shown["best_val_acc"].map(lambda v: f"{v:.4f}" if pd.notna(v) else "-")
    shown["trial_id"] = shown["trial_id"].fillna("-")
    column = shown.columns[-1]
    shown[column] = shown[column].map(short_count if column in ("params", "macs")
                                      else lambda v: f"{v:.3g}ms" if pd.notna(v) else "-")
    return shown


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-style Markdown table (no extra dependency)."""
    def cell(value: object) -> str:
        return _short_list(value).replace("|", "\\|") if value is not None and not (
            isinstance(value, float) and pd.isna(value)) else ""

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def render(df: pd.DataFrame, fmt: str, columns: str = "narrow") -> str:
    if fmt == "csv":
        frame = df.copy()
        for column in ("blocks", "widths"):
            frame[column] = frame[column].map(json.dumps)
        return frame.to_csv(index=False).rstrip("\n")
    if fmt == "json":
        return df.to_json(orient="records", indent=2)
    shown = df if columns == "all" else narrow(df)
    if fmt == "markdown":
        return to_markdown(shown)
    return shown.to_string(index=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m analysis.table", description="Print the trial table of experiments.")
    parser.add_argument("experiments", nargs="+", help="experiment folders (runs/NAME); several are stacked")
    parser.add_argument("--top", type=int, help="only the first K rows after sorting")
    parser.add_argument("--sort", default="best_val_acc", help=f"column to sort by (default best_val_acc); one of {', '.join(COLUMNS)}")
    parser.add_argument("--status", help=f"only trials in this status: {', '.join(STATUSES)}")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    parser.add_argument("--columns", choices=("narrow", "all"), default="narrow",
                        help="table and markdown: the columns that matter, rounded (narrow, the default), or all "
                             "of them at full precision; csv and json always give all")
    parser.add_argument("--front", action="store_true",
                        help="the Pareto front of best val_acc against the search's --minimize cost (params if it "
                             "had none), cheapest first with the knee marked, then the best val_acc at each size")
    args = parser.parse_args(argv)
    if args.top is not None and args.top <= 0:
        raise UserError(f"--top must be positive, got {args.top}")
    if args.front:
        if len(args.experiments) > 1:
            raise UserError("--front takes one experiment")
        sys.stdout.write(render_front(args.experiments[0], args.format) + "\n")
        return 0
    df = select(stack(args.experiments), args.sort, args.status, args.top)
    sys.stdout.write(render(df, args.format, args.columns) + "\n")
    return 0


def render_front(folder: str | Path, fmt: str) -> str:
    """The front and the size table of one experiment, in `fmt`."""
    from analysis.front import front_table, objective_of, size_table

    objective = objective_of(folder)
    table = load(folder)
    front, sizes = front_table(table, objective), size_table(table, objective)
    if fmt == "json":
        return json.dumps({"objective": objective, "front": json.loads(front.to_json(orient="records")),
                           "sizes": json.loads(sizes.to_json(orient="records"))}, indent=2)
    if fmt == "csv":
        return render(front, "csv")
    shown = narrow_sizes(sizes)
    if fmt == "markdown":
        return "\n".join([to_markdown(narrow_front(front)), "", to_markdown(shown)])
    title = f"Pareto front: best val_acc against {objective} ({len(front)} of {len(table)} trials)"
    return "\n".join([title, narrow_front(front).to_string(index=False), "",
                      f"best val_acc at each size ({objective})", shown.to_string(index=False)])


if __name__ == "__main__":
    run_main(main)
