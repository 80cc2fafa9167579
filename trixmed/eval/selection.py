"""From a model's probabilities on validation and test to its scored result, every choice on
validation: the decision threshold first, then the DDI safety weight α (`trixmed.eval.decode`);
test is decoded and scored once with both. The evaluate stage and the baselines share it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trixmed.eval.decode import choose_alpha, decode_sets, safety_curve
from trixmed.eval.evaluate import evaluate_predictions, format_table
from trixmed.eval.metrics import choose_threshold
from trixmed.eval.predictions import Predictions, write_predictions
from trixmed.io import write_json

if TYPE_CHECKING:
    from trixmed.config import EvalConfig
    from trixmed.data.dataset import Dataset, Sample

SPLITS = ("val", "test")


def select_and_score(ds: Dataset, cfg: EvalConfig, scores: dict[str, tuple[list[Sample], np.ndarray]],
                     out: Path, predictions: dict[str, str], metrics: str, table: str,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """`scores[split]` = (samples, probabilities [N, n_med]) for val and test. Writes the decided
    sets of both splits (`predictions[split]` file names in `out`), the test result (`metrics`,
    with the choices, the safety curves and `extra`) and its table; returns the result."""
    truth = {split: ds.multi_hot([s.target for s in samples]).astype(bool) for split, (samples, _) in scores.items()}
    patients = {split: np.array([s.patient_id for s in samples]) for split, (samples, _) in scores.items()}
    val_probs = scores["val"][1]
    threshold = cfg.threshold if cfg.threshold is not None else float(choose_threshold(truth["val"], val_probs))
    curves = {split: safety_curve(truth[split], scores[split][1], ds.ddi, threshold, cfg.ddi_alpha_grid,
                                  patients[split], cfg.average) for split in SPLITS}
    target = None
    if cfg.ddi_alpha is None:
        target = _ground_truth_rate(truth["val"], ds.ddi) if cfg.ddi_target == "ground_truth" else float(cfg.ddi_target)
        alpha = choose_alpha(curves["val"], target)
    else:
        alpha = float(cfg.ddi_alpha)
    decided = {split: decode_sets(probs, threshold, ds.ddi, alpha) for split, (_, probs) in scores.items()}
    for split, (samples, probs) in scores.items():
        write_predictions(out / predictions[split], [s.visit_key for s in samples], probs, ds.vocab.med, decided[split])
    samples, probs = scores["test"]
    return score_test(ds, cfg, samples, probs, decided["test"], out, metrics, table, {
        "threshold": threshold, "threshold_chosen_on": "val" if cfg.threshold is None else "config",
        "ddi_alpha": alpha, "ddi_alpha_chosen_on": "val" if cfg.ddi_alpha is None else "config",
        "ddi_target": target,
        # the test curve is for plotting the trade-off only; nothing is chosen on it
        "safety_curve": curves,
        **(extra or {}),
    })


def score_test(ds: Dataset, cfg: EvalConfig, samples: list[Sample], probs: np.ndarray, decided: np.ndarray,
               out: Path, metrics: str, table: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Score decided test sets once (bootstrap as configured); write the result with `extra` and its table."""
    result = evaluate_predictions(ds, Predictions([s.visit_key for s in samples], decided, probs.astype(np.float64)),
                                  "test", cfg)
    result.update(extra)
    write_json(out / metrics, result)
    (out / table).write_text(format_table(result) + "\n", encoding="utf-8")
    return result


def _ground_truth_rate(y_true: np.ndarray, ddi: np.ndarray) -> float:
    from trixmed.data.ddi import ddi_pair_counts, pooled_rate

    return float(pooled_rate(*ddi_pair_counts(y_true, ddi)))
