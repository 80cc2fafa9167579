"""Train/val/test labels for visits (by patient, except the leaky `visit-random`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from trixmed.config import SplitConfig


def assign_split(visits: pd.DataFrame, cfg: SplitConfig) -> np.ndarray:
    """One of train/val/test per visit row.

    safedrug: patients in file order; the first int(2n/3) train, the next half of the rest
        (rounded down) test, the remainder val — the split every SafeDrug-lineage paper uses.
    random: a seeded shuffle of patients cut by `ratios` (train, val, test).
    visit-random: the same cut over visits, so one patient's visits land in several splits.
        Leaky by construction; only for measuring what leakage does.
    """
    patients = pd.unique(visits["patient_id"])
    if cfg.kind == "visit-random":
        labels = _cut(len(visits), cfg.ratios)
        return labels[np.random.default_rng(cfg.seed).permutation(len(visits))]
    if cfg.kind == "safedrug":
        n = len(patients)
        train = int(n * 2 / 3)
        test = int((n - train) / 2)
        labels = np.array(["train"] * train + ["test"] * test + ["val"] * (n - train - test), dtype=object)
    else:
        labels = _cut(len(patients), cfg.ratios)[np.random.default_rng(cfg.seed).permutation(len(patients))]
    return visits["patient_id"].map(dict(zip(patients, labels))).to_numpy(dtype=object)


def _cut(n: int, ratios: list[float]) -> np.ndarray:
    n_train = int(round(n * ratios[0]))
    n_val = min(int(round(n * ratios[1])), n - n_train)
    return np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val), dtype=object)
