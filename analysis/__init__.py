"""Trial tables, plots and reports from an experiment folder; no Ray runtime needed.

>>> import analysis
>>> df = analysis.load("runs/NAME")        # doctest: +SKIP
>>> history = analysis.curves("runs/NAME")  # doctest: +SKIP
"""

from analysis.trials import curves, load, load_experiment

__all__ = ["load", "curves", "load_experiment"]
