"""Patient bootstrap of the test metrics, as SafeDrug/COGNet/MoleRec report them.

SafeDrug `src/SafeDrug.py` (test mode): 10 rounds, each
`np.random.choice(data_test, round(len(data_test) * 0.8), replace=True)` over *patients*, the
metrics computed on the sampled patients' visits (a patient drawn twice counts twice), then
mean and `np.std` (population std, ddof=0) over the rounds. We do the same with a seeded
`numpy.random.default_rng`, so the draws are reproducible but not SafeDrug's own.
"""

from __future__ import annotations

import numpy as np

from trixmed.eval.metrics import summarize


def bootstrap(
    per_visit: dict[str, np.ndarray],
    patient_ids: np.ndarray,
    rounds: int = 10,
    fraction: float = 0.8,
    seed: int = 0,
    average: str = "visit",
) -> dict[str, tuple[float, float]]:
    """Metric name → (mean, std) over `rounds` resamples of round(fraction · n_patients) patients."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    pids = np.asarray(patient_ids)
    if len(pids) != len(next(iter(per_visit.values()))):
        raise ValueError("patient_ids must give one patient per visit")
    patients, inverse = np.unique(pids, return_inverse=True)
    if len(patients) == 0:
        raise ValueError("no visits to bootstrap")
    # visit rows of each patient, in row order
    order = np.argsort(inverse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(patients)))])
    rows_of = [order[bounds[i]:bounds[i + 1]] for i in range(len(patients))]
    n_draw = max(1, round(len(patients) * fraction))  # Python's round, as SafeDrug
    rng = np.random.default_rng(seed)
    results: list[dict[str, float]] = []
    for _ in range(rounds):
        drawn = rng.choice(len(patients), size=n_draw, replace=True)
        rows = np.concatenate([rows_of[i] for i in drawn])
        # each draw is its own "patient", so a patient drawn twice weighs twice under either average
        groups = np.repeat(np.arange(n_draw), [len(rows_of[i]) for i in drawn])
        results.append(summarize({k: v[rows] for k, v in per_visit.items()}, groups, average))
    return {k: (float(np.mean([r[k] for r in results])), float(np.std([r[k] for r in results]))) for k in results[0]}
