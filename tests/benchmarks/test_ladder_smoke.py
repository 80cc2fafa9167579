"""benchmarks/ladder.py --smoke: two seeds of the demo, the ensemble and per-drug thresholds on
validation, the candidate chosen on validation scored on test."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from test_smoke import run_smoke

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))   # the scripts import their helpers as they run

from ladder import mean_jaccard, per_drug_thresholds  # noqa: E402


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ladder_smoke(tmp_path):
    report = run_smoke("ladder.py", tmp_path / "ladder.json", timeout=850)
    names = [r["candidate"] for r in report["rungs"]]
    assert names == ["seed 42", "seed 43", "ensemble of 2 seeds"]
    best = max(report["rungs"], key=lambda r: r["val"]["jaccard"])
    assert report["chosen_on_val"] == best["candidate"]
    # two seeds give two models, and the ensemble is neither of them
    assert len({r["val"]["jaccard"] for r in report["rungs"]}) > 1
    for r in report["rungs"]:
        assert 0 < r["two_fold_val_jaccard"]["global"] <= 1 and 0 < r["two_fold_val_jaccard"]["per_drug"] <= 1
    assert 0 < report["test"]["jaccard"]["mean"] <= 1
    table = (tmp_path / "ladder.md").read_text()
    assert f"Chosen on validation: **{report['chosen_on_val']}**" in table


def test_per_drug_thresholds_fit_each_drug_and_never_score_worse_than_the_start():
    rng = np.random.default_rng(0)
    truth = rng.random((400, 3)) < [0.5, 0.1, 0.3]
    # drug 0 is well separated at 0.5, drug 1 only at a high cut, drug 2 at a low one
    probs = np.where(truth, [0.7, 0.9, 0.35], [0.3, 0.6, 0.05]) + rng.normal(0, 0.02, truth.shape)
    thr = per_drug_thresholds(truth, probs, 0.5)
    assert 0.3 < thr[0] <= 0.7 and 0.6 < thr[1] <= 0.9 and 0.05 < thr[2] <= 0.35
    # every drug separated: the sets are the true ones (a visit with no drug scores 0 either way)
    assert mean_jaccard(truth, probs >= thr) == mean_jaccard(truth, truth) > mean_jaccard(truth, probs >= 0.5)
