"""DDI-aware set decoding with a safety weight α: a controllable safety–accuracy trade-off applied
at decoding time (the FLAME idea), on any model's probabilities.

Per visit, drugs are taken greedily in descending probability; drug j joins the set when

    p_j ≥ threshold + α · k_j,   k_j = drugs already chosen that interact with j.

At α = 0 that is plain thresholding; a larger α drops the less probable drug of an interacting
pair unless the model is confident in both. α is chosen on validation (`choose_alpha`): the best
validation Jaccard among the α whose validation DDI rate is within a target.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trixmed.data.ddi import check_ddi_matrix
from trixmed.eval.metrics import multilabel_metrics, summarize

def decode_sets(probs: np.ndarray, threshold: float, ddi: np.ndarray, alpha: float) -> np.ndarray:
    """[N, M] bool medication sets from probabilities, penalising interacting pairs by `alpha`."""
    p = np.asarray(probs, dtype=np.float64)
    chosen = p >= threshold
    if alpha == 0.0 or not chosen.any():
        return chosen
    check_ddi_matrix(ddi, p.shape[1])
    adj = np.asarray(ddi, dtype=bool)
    order = np.argsort(-p, axis=1, kind="stable")
    chosen = np.zeros_like(chosen)
    conflicts = np.zeros(p.shape, dtype=np.int64)   # k_j: chosen drugs interacting with j, so far
    rows = np.arange(len(p))
    # step r looks at every visit's r-th most probable drug at once; a visit whose drug falls below
    # the plain threshold has nothing left to add (probabilities only decrease along its order)
    for r in range(p.shape[1]):
        j = order[:, r]
        pj = p[rows, j]
        live = pj >= threshold
        if not live.any():
            break
        take = live & (pj >= threshold + alpha * conflicts[rows, j])
        chosen[rows[take], j[take]] = True
        conflicts[take] += adj[j[take]]
    return chosen


def safety_curve(y_true: np.ndarray, probs: np.ndarray, ddi: np.ndarray, threshold: float, alphas: Sequence[float],
                 patient_ids: np.ndarray, average: str = "visit") -> list[dict[str, float]]:
    """Jaccard, F1, DDI rate and drugs per visit of the decoded sets at each α."""
    out = []
    for alpha in alphas:
        per_visit = multilabel_metrics(y_true, decode_sets(probs, threshold, ddi, alpha), None, ddi)
        point = summarize(per_visit, patient_ids, average)
        out.append({"alpha": float(alpha), **{k: point[k] for k in ("jaccard", "f1", "ddi_rate", "avg_drugs")}})
    return out


def choose_alpha(curve: list[dict[str, float]], ddi_target: float) -> float:
    """The α of a validation curve with the best Jaccard among those with DDI rate ≤ `ddi_target`;
    none within it → the safest α (lowest DDI rate). Ties go to the smaller α."""
    within = [c for c in curve if c["ddi_rate"] <= ddi_target]
    if not within:
        return min(curve, key=lambda c: (c["ddi_rate"], c["alpha"]))["alpha"]
    return max(within, key=lambda c: (c["jaccard"], -c["alpha"]))["alpha"]
