from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from trixmed.eval.metrics import (
    METRICS,
    average_precision,
    choose_threshold,
    ddi_rate,
    multilabel_metrics,
    summarize,
)

# drugs A B C D = columns 0 1 2 3
A, B, C, D = range(4)


def hot(*sets: set[int], m: int = 4) -> np.ndarray:
    out = np.zeros((len(sets), m), dtype=np.uint8)
    for r, s in enumerate(sets):
        out[r, list(s)] = 1
    return out


def ddi_with(*pairs: tuple[int, int], m: int = 4) -> np.ndarray:
    out = np.zeros((m, m), dtype=np.uint8)
    for i, j in pairs:
        out[i, j] = 1   # one direction only: the rate must look at both ddi[i, j] and ddi[j, i]
    return out


def test_hand_computed_cases():
    truth = hot({A, B, C}, {A}, set(), set(), {C})
    pred = hot({A, B, D}, set(), {B}, set(), {C})
    m = multilabel_metrics(truth, pred, None, ddi_with((A, D), (C, B)))
    # 1: inter 2, union 4, 3 predicted, 3 true   2: empty prediction   3: empty truth
    # 4: both empty (SafeDrug: Jaccard 0)         5: one drug, right
    np.testing.assert_allclose(m["jaccard"], [0.5, 0, 0, 0, 1])
    np.testing.assert_allclose(m["precision"], [2 / 3, 0, 0, 0, 1])
    np.testing.assert_allclose(m["recall"], [2 / 3, 0, 0, 0, 1])
    np.testing.assert_allclose(m["f1"], [2 / 3, 0, 0, 0, 1])
    np.testing.assert_allclose(m["n_drugs"], [3, 0, 1, 0, 1])
    # predicted {A,B,D}: pairs AB AD BD, AD interacts; no other set has a pair
    np.testing.assert_allclose(m["ddi_pairs"], [1, 0, 0, 0, 0])
    np.testing.assert_allclose(m["n_pairs"], [3, 0, 0, 0, 0])
    # true {A,B,C}: pairs AB AC BC, BC interacts (given as ddi[C, B])
    np.testing.assert_allclose(m["gt_ddi_pairs"], [1, 0, 0, 0, 0])
    assert "prauc" not in m
    s = summarize(m)
    assert list(s) == [k for k in METRICS if k != "prauc"]
    assert s["jaccard"] == pytest.approx(1.5 / 5)
    assert s["ddi_rate"] == pytest.approx(1 / 3)
    assert s["gt_ddi_rate"] == pytest.approx(1 / 3)
    assert s["avg_drugs"] == pytest.approx(1.0)


def test_ddi_rate_indexes_by_drug_not_by_position_in_the_predicted_list():
    # only A and C interact; the prediction lists C first, then A
    ddi = ddi_with((A, C))
    assert ddi_rate([[C, A]], ddi) == 1.0
    # indexing by position in the list would look up ddi[0, 1] = A–B and find nothing
    assert ddi[0, 1] == 0
    assert ddi_rate(hot({C, A}), ddi) == 1.0
    # pooled over visits, not averaged: (1 + 0) / (1 + 3)
    assert ddi_rate([[C, A], [B, D, C]], ddi) == pytest.approx(1 / 4)
    assert ddi_rate([[B], [], [D]], ddi) == 0.0


def test_ddi_rate_ignores_self_pairs_and_uses_both_directions():
    ddi = np.eye(4, dtype=np.uint8)           # a "self interaction" is not a pair
    ddi[D, B] = 1
    assert ddi_rate([[A, B, D]], ddi) == pytest.approx(1 / 3)


def test_prauc_hand_computed_and_ties():
    # ranking A(.9, true) B(.8) C(.7, true) D(.1): AP = .5·1 + .5·2/3
    m = multilabel_metrics(hot({A, C}), hot({A}), np.array([[0.9, 0.8, 0.7, 0.1]]), np.zeros((4, 4)))
    assert m["prauc"][0] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # A and B tie at the top: one step with precision 1/2 and recall 1
    assert average_precision(hot({A}), np.array([[0.5, 0.5, 0.2, 0.1]]))[0] == pytest.approx(0.5)
    # empty truth → 0, as scikit-learn returns
    assert average_precision(hot(set()), np.array([[0.5, 0.4, 0.2, 0.1]]))[0] == 0.0


def test_average_precision_equals_sklearn_per_visit():
    rng = np.random.default_rng(0)
    truth = (rng.random((200, 30)) < 0.2).astype(np.uint8)
    truth[0] = 0
    scores = np.round(rng.random((200, 30)), 1)   # rounding makes many ties
    ours = average_precision(truth, scores)
    with pytest.warns(UserWarning):  # sklearn warns on the all-negative row
        ref = [average_precision_score(t, s) for t, s in zip(truth, scores)]
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def _safedrug_reference(y_gt, y_pred):
    """SafeDrug's `multi_label_metric` set logic, visit by visit (reference for the vectorised code)."""
    ja, prc, rec, f1 = [], [], [], []
    for t_row, p_row in zip(y_gt, y_pred):
        target, out = set(np.where(t_row == 1)[0]), set(np.where(p_row == 1)[0])
        inter, union = target & out, target | out
        ja.append(0 if len(union) == 0 else len(inter) / len(union))
        p = 0 if len(out) == 0 else len(inter) / len(out)
        r = 0 if len(target) == 0 else len(inter) / len(target)
        prc.append(p), rec.append(r), f1.append(0 if p + r == 0 else 2 * p * r / (p + r))
    return ja, prc, rec, f1


def test_vectorised_metrics_match_safedrug_loops():
    rng = np.random.default_rng(1)
    truth = (rng.random((300, 20)) < 0.15).astype(np.uint8)
    pred = (rng.random((300, 20)) < 0.15).astype(np.uint8)
    ddi = (rng.random((20, 20)) < 0.2).astype(np.uint8)
    m = multilabel_metrics(truth, pred, None, ddi)
    for name, ref in zip(("jaccard", "precision", "recall", "f1"), _safedrug_reference(truth, pred)):
        np.testing.assert_allclose(m[name], ref, err_msg=name)
    # SafeDrug's ddi_rate_score loop
    all_cnt = dd_cnt = 0
    for row in pred:
        meds = list(np.where(row == 1)[0])
        for i, mi in enumerate(meds):
            for mj in meds[i + 1:]:
                all_cnt += 1
                dd_cnt += int(ddi[mi, mj] == 1 or ddi[mj, mi] == 1)
    assert summarize(m)["ddi_rate"] == pytest.approx(dd_cnt / all_cnt)


def test_patient_average_is_the_mean_of_patient_means():
    m = multilabel_metrics(hot({A}, {A}, {B}), hot({A}, {A}, {A}), None, np.zeros((4, 4)))
    assert summarize(m)["jaccard"] == pytest.approx(2 / 3)
    assert summarize(m, np.array(["p1", "p1", "p2"]), "patient")["jaccard"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        summarize(m, None, "patient")


def test_choose_threshold_maximises_jaccard_and_prefers_the_smaller_on_ties():
    truth = np.array([[1, 0], [0, 1]])
    prob = np.array([[0.6, 0.4], [0.3, 0.7]])
    assert choose_threshold(truth, prob, [0.3, 0.5, 0.65, 0.8]) == 0.5
    assert choose_threshold(truth, prob, [0.55, 0.45, 0.5]) == 0.45
    assert 0.4 < choose_threshold(truth, prob) <= 0.6


def test_rejects_non_binary_and_mismatched_shapes():
    with pytest.raises(ValueError, match="0/1"):
        multilabel_metrics(np.array([[0.5, 1]]), np.array([[0, 1]]), None, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="ddi"):
        multilabel_metrics(np.array([[0, 1]]), np.array([[0, 1]]), None, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        multilabel_metrics(np.array([[0, 1]]), np.array([[0, 1]]), np.array([[np.nan, 1.0]]), np.zeros((2, 2)))


def test_ground_truth_ddi_rate_of_a_published_benchmark(benchmark_dir):
    import json

    import pandas as pd

    root = benchmark_dir("mimic3_safedrug131")
    records = pd.read_parquet(root / "records.parquet")
    stats = json.loads((root / "meta.json").read_text())["stats"]
    with np.load(root / "graphs.npz", allow_pickle=False) as z:
        ddi = z["ddi_A"]
    # meta.json's figures come from SafeDrug's ddi_rate_score, rounded to 5 places
    meds = [list(m) for m in records["med"]]
    test = [m for m, s in zip(meds, records["split_safedrug"]) if s == "test"]
    assert ddi_rate(meds, ddi) == pytest.approx(stats["ddi_rate_ground_truth_all"], abs=5e-6)
    assert ddi_rate(test, ddi) == pytest.approx(stats["ddi_rate_ground_truth_test"], abs=5e-6)
