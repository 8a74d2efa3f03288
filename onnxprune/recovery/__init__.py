"""Recovery without retraining: calibration statistics, data-aware criteria, bias and least-squares
re-fit, per-group sensitivity and budgets. Imports ``core``, ``structured``, ``sparse`` and ``runtime``."""
