"""Plots and a report of an experiment: PNGs, report.md, a self-contained report.html, and
report.png, the page as one picture.

    python -m analysis.report runs/NAME --out runs/NAME/report
"""

from __future__ import annotations

import base64
import html
import warnings
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from analysis import plots
from analysis.table import narrow, narrow_front, narrow_sizes, to_markdown
from analysis.trials import STATUSES, load_experiment, rejected_count, settings_of
from search.records import load_study, milestones, ran_seconds, read_auto
from trainable.checkpoint import write_text
from trainable.cli import ArgumentParser, format_duration, run_main
from trainable.zoo import PARAM_BUDGET


# Optuna's importances use the trials that ran to the end; under ASHA those are a small,
# pre-selected set, and on fewer than this many the ranking is noise.
MIN_IMPORTANCE_TRIALS = 10


def optuna_importances(folder: Path) -> tuple[dict[str, float] | None, str]:
    """optuna.importance (its default evaluator, PED-ANOVA) over the completed trials, or (None, why not).

    The second value says how many trials were used, or why there is no estimate.
    """
    import optuna

    study = load_study(folder)
    if study is None:
        return None, "no readable Optuna study in the experiment"
    try:
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(complete) < MIN_IMPORTANCE_TRIALS:
            return None, (f"no importance plot: {len(complete)} trial(s) ran to the end, and an estimate needs at "
                          f"least {MIN_IMPORTANCE_TRIALS}")
        # A Pareto search's study has two objectives: importance is for val_acc, the first.
        target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            importances = optuna.importance.get_param_importances(study, target=target)
        said = "; ".join(sorted({str(w.message).splitlines()[0] for w in caught}))
        return importances, f"from {len(complete)} completed trials" + (f" (Optuna: {said})" if said else "")
    except Exception as exc:  # too few distinct values, a locked database, ...
        return None, f"importances unavailable: {type(exc).__name__}: {exc}"


def asha_milestones(settings: dict[str, Any]) -> list[int]:
    """The rung epochs below the horizon (`search.records.milestones`), and the horizon."""
    grace, factor, horizon = (int(settings.get(k, d)) for k, d in
                              (("grace_epochs", 1), ("reduction_factor", 3), ("max_epochs", 1)))
    return [m for m in milestones(grace, horizon, factor) if m < horizon] + [horizon]


def totals(table: pd.DataFrame, curves: pd.DataFrame, folder: Path) -> dict[str, Any]:
    """Trials by status, budget rejections, wall time and GPU-hours of the search.

    The wall time is the time the search ran: each driver run from its start to its last
    report (drivers.json), without the downtime between a stop and a --resume.
    """
    counts = table["status"].value_counts().to_dict()
    wall = ran_seconds(folder)
    return {
        "trials": len(table),
        **{status: int(counts.get(status, 0)) for status in STATUSES},
        "rejected_for_budget": rejected_count(folder),
        "wall_hours": wall / 3600,
        "gpu_hours": float(table["gpu_seconds"].sum()) / 3600,
    }


def stage_table(folder: Path) -> pd.DataFrame | None:
    """search.auto's stages from auto.json: planned and used minutes and what each decided."""
    record = read_auto(folder)
    if record is None:
        return None
    rows = []
    for stage, entry in record.get("stages", {}).items():
        if entry.get("skipped") and stage == "search":
            outcome = record.get("plan", {}).get("reason", "skipped")
        elif entry.get("skipped"):
            outcome = "skipped"
        elif stage == "search":
            outcome = f"best trial {entry.get('best')}"
        elif stage == "confirm":
            tau = entry.get("kendall_tau")
            outcome = (f"top {len(entry.get('search_order', []))} at {entry.get('confirm_epochs')} epochs; Kendall tau "
                       f"{'n/a' if tau is None else f'{tau:.2f}'}; pick {'changed' if entry.get('pick_changed') else 'held'}")
        elif stage == "retrain":
            outcome = f"trial {entry.get('trial_id')}, {entry.get('epochs')} epochs x {entry.get('seeds')} seed(s)"
        else:
            outcome = f"{entry.get('rows')} rows to {entry.get('submission')}"
        rows.append({"stage": stage, "status": entry.get("status"),
                     "planned_min": round(entry.get("planned_s", 0) / 60, 2),
                     "used_min": round(entry.get("used_s", 0) / 60, 2), "outcome": outcome})
    return pd.DataFrame(rows, columns=["stage", "status", "planned_min", "used_min", "outcome"])


def make_report(path: str | Path, out: str | Path) -> dict[str, Path]:
    """Write every plot, report.md, report.html and report.png into `out`; return the files written."""
    folder, out = Path(path), Path(out)
    settings = settings_of(folder)
    table, curves = load_experiment(folder)
    importances, note = optuna_importances(folder)
    # The model that was submitted is the report's "best" (search.auto may have confirmed
    # another config than the search's top, or retrained a trial at length).
    record = read_auto(folder) or {}
    submitted = record.get("stages", {}).get("retrain", {}).get("trial_id")
    best_id = submitted if submitted in set(table["trial_id"]) else table.iloc[0]["trial_id"]
    best_caption = "Submitted model (trial {})".format(best_id) if submitted == best_id else "Best trial"
    files = {
        "Learning curves": plots.learning_curves(table, curves, out / "learning_curves.png"),
        "Params against val_acc": plots.params_vs_accuracy(table, int(settings.get("param_budget", PARAM_BUDGET)),
                                                           out / "params_vs_val_acc.png"),
        "Hyperparameter importance": plots.importance(importances, out / "importance.png", note),
        "val_acc against each hyperparameter": plots.hyperparameters(table, out / "hyperparameters.png"),
        "ASHA rungs": plots.rungs(table, asha_milestones(settings), out / "asha_rungs.png"),
        best_caption: plots.best_trial(curves, best_id, out / "best_trial.png"),
    }
    pareto = None
    if settings.get("minimize"):
        from analysis.front import front_summary, reference_text

        pareto = front_summary(folder, table, curves)
        files["Pareto front"] = plots.front(table, pareto["objective"], int(settings.get("param_budget", PARAM_BUDGET)),
                                            out / "pareto_front.png")
        files["Hypervolume"] = plots.hypervolume(pareto["hypervolume"], pareto["objective"], pareto["reference"],
                                                 out / "hypervolume.png")
    sums = totals(table, curves, folder)
    top = narrow(table.head(10))
    total_lines = [
        f"trials: {sums['trials']} ({', '.join(f'{sums[s]} {s}' for s in STATUSES)})",
        f"configs rejected for the parameter budget: {sums['rejected_for_budget'] if sums['rejected_for_budget'] is not None else 'unknown'}",
        f"wall time: {format_duration(sums['wall_hours'] * 3600)}; GPU-hours: {sums['gpu_hours']:.2f}",
        f"budget: fewer than {int(settings.get('param_budget', 0)):,} trainable params; "
        f"ASHA over {settings.get('max_epochs')} epochs (grace {settings.get('grace_epochs')}, "
        f"reduction factor {settings.get('reduction_factor')})",
    ]
    title = f"Search report: {folder.name}"
    md = [f"# {title}", "", *[f"- {line}" for line in total_lines], ""]
    stages = stage_table(folder)
    if stages is not None:
        md += ["## Stages (search.auto)", "", to_markdown(stages), ""]
    md += ["## Top 10 trials", "", to_markdown(top), ""]
    if pareto is not None:
        md += [f"## Pareto front (val_acc against {pareto['objective']})", "",
               to_markdown(narrow_front(pareto["front"])), "", "Best val_acc at each size:", "",
               to_markdown(narrow_sizes(pareto["sizes"])), "",
               f"Hypervolume reference point: val_acc 0 and {pareto['objective']} {reference_text(pareto['reference'])}; "
               f"final hypervolume {pareto['hypervolume']['hypervolume'].iloc[-1]:.4f}.", ""]
    for caption, file in files.items():
        md += [f"## {caption}", "", f"![{caption}]({file.name})", ""]
    if note:
        md += [f"Importance: {note}", ""]
    write_text(out / "report.md", "\n".join(md))

    body = [f"<h1>{html.escape(title)}</h1>", "<ul>", *[f"<li>{html.escape(line)}</li>" for line in total_lines],
            "</ul>"]
    if stages is not None:
        body += ["<h2>Stages (search.auto)</h2>", stages.to_html(index=False, border=0)]
    body += ["<h2>Top 10 trials</h2>", top.to_html(index=False, border=0)]
    if pareto is not None:
        body += [f"<h2>Pareto front (val_acc against {html.escape(pareto['objective'])})</h2>",
                 narrow_front(pareto["front"]).to_html(index=False, border=0), "<p>Best val_acc at each size:</p>",
                 narrow_sizes(pareto["sizes"]).to_html(index=False, border=0),
                 f"<p>Hypervolume reference point: val_acc 0 and {html.escape(pareto['objective'])} "
                 f"{reference_text(pareto['reference'])}.</p>"]
    for caption, file in files.items():
        data = base64.b64encode(file.read_bytes()).decode()
        body += [f"<h2>{html.escape(caption)}</h2>",
                 f'<img alt="{html.escape(caption)}" data-file="{file.name}" src="data:image/png;base64,{data}">']
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:100%}"
            "table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
    write_text(out / "report.html", page)
    picture = plots.page(title, total_lines, files, out / "report.png")
    return {**files, "report.md": out / "report.md", "report.html": out / "report.html", "report.png": picture}


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m analysis.report", description="Write plots and a report of an experiment.")
    parser.add_argument("experiment", help="experiment folder (runs/NAME)")
    parser.add_argument("--out", help="folder for the PNGs, report.md, report.html and report.png, the page as one "
                                      "picture (default EXPERIMENT/report)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.experiment) / "report"
    files = make_report(args.experiment, out)
    print(f"wrote {len(files) - 3} plots, {files['report.md']}, {files['report.html']} and the page as one picture, "
          f"{files['report.png']}")
    return 0


if __name__ == "__main__":
    run_main(main)
