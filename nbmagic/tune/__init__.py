"""Tuning: search spaces, the form, local trials with Optuna, Katib Experiments."""
