"""Medication-recommendation metrics, as SafeDrug/COGNet compute them (docs/metrics.md).

Everything is per visit first (`multilabel_metrics`), then reduced (`summarize`): mean over
visits (or over patients, SafeDrug's exact reduction) for Jaccard / precision / recall / F1 /
PRAUC, pooled over visits for the DDI rates, visits-weighted for the average number of drugs.
Keeping the per-visit pieces (interacting pairs, all pairs) lets `bootstrap` resample patients
without recomputing anything.

Edge cases (SafeDrug `multi_label_metric` / `ddi_rate_score`):
    empty union (no truth, no prediction) → Jaccard 0
    no prediction → precision 0;  empty truth → recall 0;  precision + recall = 0 → F1 0
    empty truth → PRAUC 0 (scikit-learn's `average_precision_score` returns 0 there)
    no drug pair in any predicted set → DDI rate 0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trixmed.data.ddi import check_ddi_matrix, ddi_pair_counts, ddi_rate, pooled_rate

__all__ = ["METRICS", "average_precision", "choose_threshold", "ddi_rate", "multilabel_metrics", "summarize"]

# order of the metrics in tables and JSON
METRICS = ("jaccard", "prauc", "precision", "recall", "f1", "ddi_rate", "gt_ddi_rate", "avg_drugs")
MEAN_METRICS = ("jaccard", "prauc", "precision", "recall", "f1")
DEFAULT_THRESHOLD_GRID = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))


def multilabel_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    y_prob: np.ndarray | None,
    ddi: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per-visit metric arrays for [N, M] 0/1 truth and prediction (and optional scores).

    Keys: jaccard, precision, recall, f1, prauc (only with `y_prob`), n_drugs, ddi_pairs and
    n_pairs (interacting / all unordered pairs of the predicted set), gt_ddi_pairs, gt_n_pairs
    (the same for the true set). Column j of every matrix is drug j of the vocabulary, the same
    order as the rows and columns of `ddi`.
    """
    t = _binary(y_true, "y_true")
    p = _binary(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in shape")
    check_ddi_matrix(ddi, t.shape[1])
    inter = (t & p).sum(1)
    union = (t | p).sum(1)
    n_pred = p.sum(1)
    n_true = t.sum(1)
    jaccard = _safe_div(inter, union)
    precision = _safe_div(inter, n_pred)
    recall = _safe_div(inter, n_true)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    ddi_pairs, n_pairs = ddi_pair_counts(p, ddi)
    gt_ddi_pairs, gt_n_pairs = ddi_pair_counts(t, ddi)
    out = {
        "jaccard": jaccard,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "n_drugs": n_pred.astype(np.float64),
        "ddi_pairs": ddi_pairs,
        "n_pairs": n_pairs,
        "gt_ddi_pairs": gt_ddi_pairs,
        "gt_n_pairs": gt_n_pairs,
    }
    if y_prob is not None:
        prob = np.asarray(y_prob, dtype=np.float64)
        if prob.shape != t.shape:
            raise ValueError(f"y_prob {prob.shape} and y_true {t.shape} differ in shape")
        if not np.isfinite(prob).all():
            raise ValueError("y_prob holds NaN or infinite scores")
        out["prauc"] = average_precision(t, prob)
    return out


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """Per-row average precision, equal to scikit-learn's `average_precision_score` on each row.

    AP = Σ_k (R_k − R_{k−1}) · P_k over the distinct score thresholds (tied scores form one
    step); a row with no positive label scores 0, as scikit-learn returns there.
    """
    t = _binary(y_true, "y_true")
    s = np.asarray(y_score, dtype=np.float64)
    n, m = t.shape
    if m == 0:
        return np.zeros(n)
    order = np.argsort(-s, axis=1, kind="stable")
    s_sorted = np.take_along_axis(s, order, 1)
    tp = np.cumsum(np.take_along_axis(t, order, 1), axis=1, dtype=np.float64)
    # a threshold step ends where the next score differs (or at the last column)
    step_end = np.ones_like(s_sorted, dtype=bool)
    step_end[:, :-1] = s_sorted[:, :-1] != s_sorted[:, 1:]
    tp_at_end = np.where(step_end, tp, 0.0)
    prev_tp = np.zeros_like(tp)
    prev_tp[:, 1:] = np.maximum.accumulate(tp_at_end, axis=1)[:, :-1]
    precision = tp / np.arange(1, m + 1)
    gain = np.where(step_end, (tp - prev_tp) * precision, 0.0).sum(1)
    positives = t.sum(1)
    return _safe_div(gain, positives)


def summarize(
    per_visit: dict[str, np.ndarray],
    groups: np.ndarray | None = None,
    average: str = "visit",
) -> dict[str, float]:
    """Reduce per-visit arrays to the reported numbers (keys in `METRICS` order).

    average="visit": mean over visits. average="patient": mean over `groups` (patient ids) of
    each patient's mean over visits — SafeDrug's `eval`, which averages `multi_label_metric`
    per patient. DDI rates are pooled pair counts and avg_drugs is drugs / visits either way.
    """
    if average not in ("visit", "patient"):
        raise ValueError(f"average must be 'visit' or 'patient', got {average!r}")
    if average == "patient" and groups is None:
        raise ValueError("average='patient' needs the patient id of every visit (groups)")
    out: dict[str, float] = {}
    for name in MEAN_METRICS:
        if name not in per_visit:
            continue
        v = per_visit[name]
        out[name] = float(_group_mean(v, groups) if average == "patient" else v.mean()) if len(v) else 0.0
    out["ddi_rate"] = float(pooled_rate(per_visit["ddi_pairs"], per_visit["n_pairs"]))
    out["gt_ddi_rate"] = float(pooled_rate(per_visit["gt_ddi_pairs"], per_visit["gt_n_pairs"]))
    out["avg_drugs"] = float(per_visit["n_drugs"].mean()) if len(per_visit["n_drugs"]) else 0.0
    return {k: out[k] for k in METRICS if k in out}


def choose_threshold(
    y_true_val: np.ndarray,
    y_prob_val: np.ndarray,
    grid: Sequence[float] | None = None,
) -> float:
    """The threshold (predict where prob ≥ threshold) with the best mean validation Jaccard.

    Ties go to the smaller threshold. The default grid is 0.05, 0.10, …, 0.95.
    """
    t = _binary(y_true_val, "y_true_val")
    prob = np.asarray(y_prob_val, dtype=np.float64)
    if prob.shape != t.shape:
        raise ValueError(f"y_prob_val {prob.shape} and y_true_val {t.shape} differ in shape")
    candidates = sorted(float(g) for g in (grid if grid is not None else DEFAULT_THRESHOLD_GRID))
    if not candidates:
        raise ValueError("empty threshold grid")
    best, best_score = candidates[0], -1.0
    for thr in candidates:
        p = prob >= thr
        score = _safe_div((t & p).sum(1), (t | p).sum(1)).mean() if len(t) else 0.0
        if score > best_score + 1e-12:  # strictly better: ties keep the smaller threshold
            best, best_score = thr, score
    return best


# --------------------------------------------------------------------------------------------


def _binary(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [visits, drugs] matrix, got shape {a.shape}")
    if a.dtype != bool:
        if not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name} must hold only 0/1")
        a = a.astype(bool)
    return a


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _group_mean(values: np.ndarray, groups: np.ndarray) -> float:
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.bincount(inverse, weights=values)
    counts = np.bincount(inverse)
    return float((sums / counts).mean())
