"""Score predictions for one split of a dataset: point metrics on the whole split plus the
patient bootstrap (mean ± std). The CLI (`trixmed evaluate`) and the training engine share it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trixmed.errors import TrixmedError
from trixmed.eval.bootstrap import bootstrap
from trixmed.eval.metrics import METRICS, multilabel_metrics, summarize
from trixmed.eval.predictions import Predictions, predictions_from_frame, read_predictions

if TYPE_CHECKING:
    from trixmed.config import EvalConfig
    from trixmed.data.dataset import Dataset

LABELS = {
    "jaccard": "Jaccard",
    "prauc": "PRAUC",
    "precision": "Precision",
    "recall": "Recall",
    "f1": "F1",
    "ddi_rate": "DDI rate",
    "gt_ddi_rate": "DDI rate (ground truth)",
    "avg_drugs": "Avg. # drugs",
}


def evaluate_predictions(
    dataset: Dataset,
    predictions: Predictions | str | Path | Any,
    split: str = "test",
    eval_cfg: EvalConfig | None = None,
    *,
    missing_as_empty: bool = False,
) -> dict[str, Any]:
    """Metrics of `predictions` (a `Predictions`, a predictions file, or a DataFrame with its
    columns) on every visit of `split`.

    Rows for visits of other splits are ignored (one file may hold val and test); a visit of the
    split without a row is an error unless `missing_as_empty`, which scores it as an empty set.
    """
    from trixmed.config import EvalConfig

    cfg = eval_cfg or EvalConfig()
    med_vocab = dataset.vocab.med
    if isinstance(predictions, (str, Path)):
        preds = read_predictions(predictions, med_vocab)
    elif isinstance(predictions, Predictions):
        preds = predictions
    else:
        preds = predictions_from_frame(predictions, med_vocab)
    if preds.y_pred.ndim != 2 or preds.y_pred.shape != (len(preds.visit_keys), len(med_vocab)):
        raise ValueError(f"y_pred must be [{len(preds.visit_keys)} visit keys, {len(med_vocab)} medications], got {preds.y_pred.shape}")
    if preds.y_pred.dtype != bool and not np.isin(preds.y_pred, (0, 1)).all():
        raise ValueError("y_pred must hold only 0/1 (threshold the probabilities first)")
    if preds.y_prob is not None and preds.y_prob.shape != preds.y_pred.shape:
        raise ValueError(f"y_prob {preds.y_prob.shape} and y_pred {preds.y_pred.shape} differ in shape")

    samples = dataset.samples(split)
    if not samples:
        raise TrixmedError(dataset.root / "visits.parquet", f"split {split!r} has no visits")
    split_of = dict(zip(dataset.visits["visit_key"].astype(str), dataset.visits["split"].astype(str)))
    row_of: dict[str, int] = {}
    ignored = 0
    for i, key in enumerate(preds.visit_keys):
        sp = split_of.get(key)
        if sp is None:
            raise TrixmedError(preds.where(i), f"field 'visit_key': {key!r} is not a visit of dataset {dataset.root}")
        if sp == split:
            if key in row_of:
                raise TrixmedError(preds.where(i), f"field 'visit_key': {key!r} repeats {preds.where(row_of[key])}")
            row_of[key] = i
        else:
            ignored += 1
    missing = [s.visit_key for s in samples if s.visit_key not in row_of]
    if missing and not missing_as_empty:
        raise TrixmedError(
            preds.source,
            f"{len(missing)} of {len(samples)} {split} visits have no prediction, first {missing[0]!r} "
            "(use --missing-as-empty to score them as empty sets)",
        )

    n_med = len(med_vocab)
    take = np.array([row_of.get(s.visit_key, -1) for s in samples])
    present = take >= 0
    y_pred = np.zeros((len(samples), n_med), dtype=bool)
    y_pred[present] = preds.y_pred[take[present]]
    y_prob = None
    if preds.y_prob is not None:
        y_prob = np.zeros((len(samples), n_med), dtype=np.float64)
        y_prob[present] = preds.y_prob[take[present]]
    y_true = dataset.multi_hot([s.target for s in samples]).astype(bool)
    patient_ids = np.array([s.patient_id for s in samples])

    per_visit = multilabel_metrics(y_true, y_pred, y_prob, dataset.ddi)
    point = summarize(per_visit, patient_ids, cfg.average)
    boot = bootstrap(per_visit, patient_ids, cfg.bootstrap_rounds, cfg.bootstrap_fraction, cfg.seed, cfg.average)
    return {
        "dataset": str(dataset.root),
        "split": split,
        "n_visits": len(samples),
        "n_patients": int(len(np.unique(patient_ids))),
        "n_rows_other_splits": ignored,
        "n_missing_scored_empty": len(missing),
        "average": cfg.average,
        "bootstrap": {"rounds": cfg.bootstrap_rounds, "fraction": cfg.bootstrap_fraction, "seed": cfg.seed, "sampling": "patients, with replacement"},
        "metrics": {k: {"point": point[k], "mean": boot[k][0], "std": boot[k][1]} for k in METRICS if k in point},
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of a result from `evaluate_predictions`."""
    b = result["bootstrap"]
    head = f"{result['split']}: {result['n_visits']} visits, {result['n_patients']} patients"
    boot_col = f"bootstrap {b['rounds']} x {b['fraction']:.0%} patients"
    lines = [head, f"{'metric':<24} {'full split':>10}   {boot_col}"]
    for name in METRICS:
        m = result["metrics"].get(name)
        if m is None:
            lines.append(f"{LABELS[name]:<24} {'n/a':>10}   (no probabilities in the predictions)")
            continue
        lines.append(f"{LABELS[name]:<24} {m['point']:>10.4f}   {m['mean']:.4f} ± {m['std']:.4f}")
    return "\n".join(lines)
