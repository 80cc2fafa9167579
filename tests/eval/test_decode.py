"""DDI-aware decoding: α = 0 is thresholding, α removes the weaker drug of an interacting pair,
α is chosen on validation against a DDI target, and the config refuses what it cannot use."""

from __future__ import annotations

import numpy as np
import pytest

from trixmed.config import load_config
from trixmed.data.ddi import ddi_pair_counts
from trixmed.errors import TrixmedError
from trixmed.eval.decode import choose_alpha, decode_sets, safety_curve


def _ddi(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    a = np.zeros((n, n), dtype=np.uint8)
    for i, j in pairs:
        a[i, j] = a[j, i] = 1
    return a


def test_alpha_zero_is_plain_thresholding() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((200, 12))
    ddi = _ddi(12, [(0, 1), (2, 5), (3, 4), (1, 7)])
    np.testing.assert_array_equal(decode_sets(probs, 0.4, ddi, 0.0), probs >= 0.4)


def test_alpha_drops_the_less_probable_drug_of_an_interacting_pair() -> None:
    ddi = _ddi(4, [(0, 1)])
    probs = np.array([[0.9, 0.6, 0.55, 0.1],     # 1 interacts with the more probable 0: needs 0.5 + α
                      [0.6, 0.9, 0.2, 0.7]])     # here 0 is the weaker one
    assert decode_sets(probs, 0.5, ddi, 0.05).tolist() == [[True, True, True, False], [True, True, False, True]]
    assert decode_sets(probs, 0.5, ddi, 0.2).tolist() == [[True, False, True, False], [False, True, False, True]]


def test_more_alpha_never_adds_interacting_pairs() -> None:
    rng = np.random.default_rng(1)
    probs = rng.random((300, 20))
    ddi = _ddi(20, [(i, j) for i in range(20) for j in range(i + 1, 20) if rng.random() < 0.15])
    pairs = [int(ddi_pair_counts(decode_sets(probs, 0.3, ddi, a), ddi)[0].sum()) for a in (0.0, 0.1, 0.2, 0.4, 1.0)]
    assert pairs == sorted(pairs, reverse=True) and pairs[-1] < pairs[0]
    # every decoded set is a subset of the thresholded one
    assert not (decode_sets(probs, 0.3, ddi, 0.4) & ~(probs >= 0.3)).any()


def test_choose_alpha_best_jaccard_within_the_target() -> None:
    curve = [{"alpha": 0.0, "jaccard": 0.55, "ddi_rate": 0.090}, {"alpha": 0.1, "jaccard": 0.54, "ddi_rate": 0.080},
             {"alpha": 0.2, "jaccard": 0.52, "ddi_rate": 0.070}, {"alpha": 0.3, "jaccard": 0.52, "ddi_rate": 0.060}]
    assert choose_alpha(curve, 0.085) == 0.1
    assert choose_alpha(curve, 0.075) == 0.2        # ties go to the smaller α
    assert choose_alpha(curve, 0.5) == 0.0
    assert choose_alpha(curve, 0.01) == 0.3         # nothing within: the safest


def test_safety_curve_matches_the_metrics_at_each_alpha() -> None:
    rng = np.random.default_rng(2)
    probs = rng.random((50, 6))
    truth = rng.random((50, 6)) < 0.4
    ddi = _ddi(6, [(0, 1), (2, 3)])
    curve = safety_curve(truth, probs, ddi, 0.5, [0.0, 0.3], np.arange(50) // 2)
    assert [c["alpha"] for c in curve] == [0.0, 0.3]
    plain = probs >= 0.5
    jac = ((truth & plain).sum(1) / np.maximum((truth | plain).sum(1), 1)).mean()
    assert curve[0]["jaccard"] == pytest.approx(jac)
    assert curve[1]["ddi_rate"] <= curve[0]["ddi_rate"]


@pytest.mark.parametrize("override, message", [
    ("eval.ddi_alpha=-0.1", "<defaults>: eval.ddi_alpha: must be >= 0 or null, got -0.1"),
    ("eval.ddi_target=safe", "<defaults>: eval.ddi_target: must be a rate in [0, 1] or ground_truth, got 'safe'"),
    ("eval.ddi_target=1.5", "<defaults>: eval.ddi_target: must be a rate in [0, 1] or ground_truth, got 1.5"),
    ("eval.ddi_alpha_grid=[]", "<defaults>: eval.ddi_alpha_grid: must be a non-empty list of α >= 0, got []"),
])
def test_config_errors(override: str, message: str) -> None:
    with pytest.raises(TrixmedError) as exc:
        load_config(None, [override])
    assert str(exc.value) == message
