"""Every plot of the report at the sizes a real search makes: 1 trial, 3 trials stopped after
one epoch, 200 trials. Tables are built in `analysis.load`'s format (no search needed)."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis import plots
from analysis.trials import COLUMNS, CURVE_COLUMNS


def experiment(trials: int, epochs_each: int, seed: int = 0):
    """A trial table (best first) and curves of `trials` trials of `epochs_each` epochs."""
    rng = np.random.default_rng(seed)
    rows, curves = [], []
    for i in range(trials):
        params = int(rng.integers(20_000, 200_000))
        values = np.clip(0.1 + 0.05 * np.arange(1, epochs_each + 1) + rng.normal(0, 0.03, epochs_each), 0, 1)
        status = "completed" if epochs_each > 1 and i % 3 == 0 else "stopped"
        rows.append({"trial_id": f"t{i:03d}", "status": status, "params": params, "blocks": [1, 1],
                     "widths": [8, 16], "optimizer": "sgd", "lr": float(10 ** rng.uniform(-3, -1)),
                     "weight_decay": float(10 ** rng.uniform(-4, -2)), "batch_size": int(rng.choice([64, 128, 256])),
                     "warmup_epochs": float(rng.uniform(0, 2)), "label_smoothing": float(rng.uniform(0, 0.2)),
                     "cutout": int(rng.choice([0, 8, 16])), "dropout": float(rng.uniform(0, 0.3)),
                     "epochs_trained": epochs_each, "best_val_acc": float(values.max()),
                     "best_epoch": int(values.argmax()) + 1, "gpu_seconds": 0.0})
        curves += [{"trial_id": f"t{i:03d}", "epoch": e + 1, "val_acc": float(v), "train_loss": 1.0 - v / 2,
                    "val_loss": 1.1 - v / 2, "train_acc": float(v), "status": status} for e, v in enumerate(values)]
    table = pd.DataFrame(rows).reindex(columns=COLUMNS).sort_values("best_val_acc", ascending=False)
    return table.reset_index(drop=True), pd.DataFrame(curves).reindex(columns=CURVE_COLUMNS + ["status"])


@pytest.mark.parametrize("trials,epochs_each", [(1, 1), (3, 1), (200, 6)])
def test_every_plot_renders_at_the_sizes_a_search_makes(tmp_path, trials, epochs_each):
    table, curves = experiment(trials, epochs_each)
    files = [
        plots.learning_curves(table, curves, tmp_path / "curves.png"),
        plots.params_vs_accuracy(table, 200_000, tmp_path / "params.png"),
        plots.hyperparameters(table, tmp_path / "hyper.png"),
        plots.rungs(table, [1, 3, 9], tmp_path / "rungs.png"),
        plots.best_trial(curves, table.iloc[0]["trial_id"], tmp_path / "best.png"),
        plots.front(table, "params", 200_000, tmp_path / "front.png"),
    ]
    for path in files:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] >= 600
            # Not a blank canvas: a drawn plot has many distinct colours.
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50, path.name
    # The report as one picture: the figures tiled two to a row under the summary lines.
    page = plots.page("Search report: t", ["trials: 3", "wall time: 34 s"], {p.stem: p for p in files},
                      tmp_path / "report.png")
    with Image.open(page) as image:
        width, height = image.size
        assert width == 14 * 80 and height == round((0.8 + 0.22 * 2 + 4.6 * 3) * 80)
        rows = np.asarray(image.convert("L"))
        # Each of the three rows of figures holds drawn pixels, in both columns.
        for row in range(3):
            top = int((1.55 + 4.6 * row) * 80)
            band = rows[top:top + int(4.6 * 80)]
            assert (band[:, :width // 2] < 200).mean() > 0.01 and (band[:, width // 2:] < 200).mean() > 0.01


def test_one_epoch_trials_show_as_points_and_axes_read_as_people_count(tmp_path, monkeypatch):
    saved = {}
    original = plots._save

    def keep(fig, path):  # the figure as drawn, before it becomes pixels
        saved[path.name] = fig
        return original(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    table, curves = experiment(3, 1)
    plots.learning_curves(table, curves, tmp_path / "curves.png")
    plots.params_vs_accuracy(table, 200_000, tmp_path / "params.png")
    plots.rungs(table, [1, 3], tmp_path / "rungs.png")
    plots.hyperparameters(experiment(40, 3)[0], tmp_path / "hyper.png")
    curves_ax = saved["curves.png"].axes[0]
    assert len(curves_ax.get_lines()) == 3 and all(line.get_marker() == "o" for line in curves_ax.get_lines())
    assert all(float(tick).is_integer() for tick in curves_ax.get_xticks())  # no epoch 1.2
    params_ax = saved["params.png"].axes[0]
    labels = [label.get_text() for label in params_ax.get_xticklabels()]
    assert any(label.endswith("k") for label in labels) and not any("00000" in label for label in labels)
    front_line = [line for line in params_ax.get_lines() if line.get_label().startswith("Pareto front")]
    assert front_line and front_line[0].get_marker() == "D"  # drawn even when the front is one trial
    assert all(float(tick).is_integer() for tick in saved["rungs.png"].axes[0].get_yticks())
    batch_ax = next(ax for ax in saved["hyper.png"].axes if ax.get_xlabel() == "batch_size")
    assert [label.get_text() for label in batch_ax.get_xticklabels()] == ["64", "128", "256"]


def test_importance_shows_the_largest_and_its_note_covers_no_bar(tmp_path, monkeypatch):
    saved = {}
    original = plots._save

    def keep(fig, path):
        saved[path.name] = fig
        return original(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    importances = {f"a_long_hyperparameter_name_{i}": 0.5 / (i + 1) for i in range(28)}
    plots.importance(importances, tmp_path / "importance.png", "from 15 completed trials " + "(Optuna: a warning) " * 8)
    fig = saved["importance.png"]
    ax = fig.axes[0]
    names = [label.get_text() for label in ax.get_yticklabels()]
    assert len(names) == 15 and names[-1] == "a_long_hyperparameter_name_0"  # largest on top
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()  # the figure was made without pyplot
    note = next(t for t in ax.texts if "the 15 largest of 28" in t.get_text())
    # Under the axis label, not over the bars; and inside the saved picture.
    assert note.get_window_extent(renderer).y1 < ax.xaxis.label.get_window_extent(renderer).y0
    labels = max(label.get_window_extent(renderer).width for label in ax.get_yticklabels())
    assert ax.get_window_extent(renderer).x0 - labels >= 0  # no name cut at the left edge
    # A key every trial shares gets no panel of its own.
    table = experiment(10, 3)[0].assign(cutout=8)
    plots.hyperparameters(table, tmp_path / "hyper.png")
    assert "cutout" not in {a.get_xlabel() for a in saved["hyper.png"].axes}
