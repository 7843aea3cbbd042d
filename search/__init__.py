"""Budgeted architecture and hyperparameter search with Ray Tune, Optuna and ASHA."""
