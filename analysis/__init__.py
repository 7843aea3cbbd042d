"""Trial tables, plots and reports from an experiment folder; no Ray runtime needed."""
