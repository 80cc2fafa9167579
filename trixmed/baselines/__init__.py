"""Baselines scored by the same harness as TRIXMED: per-drug logistic regression and a two-layer
MLP on multi-hot codes (`multihot.py`), epoch, threshold and safety weight chosen on validation
(`run.py`). Nothing heavy is imported here: the command line reads `BASELINES` for its help."""

BASELINES = ("lr", "mlp")
