from __future__ import annotations

import numpy as np
import pytest

from trixmed.eval.bootstrap import bootstrap
from trixmed.eval.metrics import multilabel_metrics


def per_visit_for(jaccards: list[float]) -> dict[str, np.ndarray]:
    """Per-visit arrays whose Jaccard is 1 or 0 as given (truth {0}, prediction {0} or {1})."""
    n = len(jaccards)
    truth = np.zeros((n, 2), dtype=np.uint8)
    truth[:, 0] = 1
    pred = np.zeros((n, 2), dtype=np.uint8)
    pred[np.arange(n), [0 if j else 1 for j in jaccards]] = 1
    return multilabel_metrics(truth, pred, None, np.zeros((2, 2)))


def test_one_patient_gives_zero_spread():
    pv = per_visit_for([1, 0, 1])
    out = bootstrap(pv, np.array(["p", "p", "p"]), rounds=5, fraction=0.8, seed=3)
    assert out["jaccard"] == (pytest.approx(2 / 3), 0.0)


def test_each_round_draws_round_fraction_patients_with_replacement():
    # two one-visit patients, Jaccard 1 and 0; 50 % → round(1.0) = 1 patient per round,
    # so every round scores exactly 0 or 1 and the std is that of a 0/1 variable (ddof=0)
    pv = per_visit_for([1, 0])
    mean, std = bootstrap(pv, np.array(["a", "b"]), rounds=10, fraction=0.5, seed=0)["jaccard"]
    k = round(mean * 10)
    assert mean == pytest.approx(k / 10)
    assert std == pytest.approx(np.sqrt(mean * (1 - mean)))


def test_seeded_and_sensitive_to_the_seed():
    rng = np.random.default_rng(0)
    pv = per_visit_for(list(rng.integers(0, 2, 60)))
    pids = np.repeat([f"p{i}" for i in range(20)], 3)
    a = bootstrap(pv, pids, seed=7)
    assert a == bootstrap(pv, pids, seed=7)
    assert a != bootstrap(pv, pids, seed=8)
    assert set(a) == {"jaccard", "precision", "recall", "f1", "ddi_rate", "gt_ddi_rate", "avg_drugs"}


def test_patient_average_weights_patients_not_visits():
    # patient a: two visits scoring 1; patient b: one visit scoring 0. A round draws two patients:
    # {a, a} → 1 either way; {b, b} → 0; {a, b} → 1/2 by patient but 2/3 by visit
    pv = per_visit_for([1, 1, 0])
    pids = np.array(["a", "a", "b"])
    expected = {1.0: 1.0, 0.0: 0.0, 0.5: 2 / 3}
    seen = set()
    for seed in range(12):
        by_patient = bootstrap(pv, pids, rounds=1, fraction=1.0, seed=seed, average="patient")["jaccard"][0]
        by_visit = bootstrap(pv, pids, rounds=1, fraction=1.0, seed=seed, average="visit")["jaccard"][0]
        assert by_visit == pytest.approx(expected[by_patient])
        seen.add(by_patient)
    assert 0.5 in seen


def test_rejects_bad_arguments():
    pv = per_visit_for([1])
    with pytest.raises(ValueError):
        bootstrap(pv, np.array(["a"]), rounds=0)
    with pytest.raises(ValueError):
        bootstrap(pv, np.array(["a"]), fraction=0)
    with pytest.raises(ValueError):
        bootstrap(pv, np.array(["a", "b"]))
