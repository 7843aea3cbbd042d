"""Trial tables, plots and reports from an experiment folder; no Ray runtime needed.

For an experiment folder that `search.run` or `search.auto` wrote (tests/test_analysis.py
runs these on real searches)::

    import analysis
    df = analysis.load("runs/NAME")          # one row per trial, best first
    history = analysis.curves("runs/NAME")   # one row per trial epoch
"""

from analysis.trials import curves, load, load_experiment

__all__ = ["load", "curves", "load_experiment"]
