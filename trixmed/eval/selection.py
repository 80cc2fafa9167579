"""From a model's probabilities on validation and test to its scored result, every choice on
validation: the decision threshold first, then the DDI safety weight α (`trixmed.eval.decode`);
test is decoded and scored once with both.

`choose` is the one decision rule. The evaluate stage and the baselines decide their sets with it
(`select_and_score`), and a Tune trial is scored by the validation metrics of the sets it decides
(`validation_scores`), so that a sweep ranks trials by the rule that scores the run. What it chose
is written into the metrics file (`Choices`) and read back by `read_choices` alone: predict,
explain and transfer decide a new patient's set as the evaluation decided the test sets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trixmed.errors import TrixmedError
from trixmed.eval.decode import choose_alpha, decode_sets, safety_curve
from trixmed.eval.evaluate import evaluate_predictions, format_table
from trixmed.eval.metrics import choose_threshold, multilabel_metrics, summarize
from trixmed.eval.predictions import Predictions, write_predictions
from trixmed.io import read_json, write_json

if TYPE_CHECKING:
    from trixmed.config import EvalConfig
    from trixmed.data.dataset import Dataset, Sample

SPLITS = ("val", "test")
# the validation metrics a sweep ranks trials by (and shows)
VALIDATION_SCORES = ("jaccard", "f1", "prauc", "ddi_rate", "avg_drugs")


@dataclass(frozen=True)
class Choices:
    """How a run decides medication sets, each part chosen on validation or taken from the config.
    Its fields are keys of the metrics file, beside the test scores they produced."""

    threshold: float
    threshold_chosen_on: str         # "val" | "config" (transfer: "source val" | "source config")
    ddi_alpha: float
    ddi_alpha_chosen_on: str
    ddi_target: float | None         # the validation DDI rate α was held to; None when α came from the config
    best_epoch: int | None = None    # the trained epoch whose weights were kept (on validation); None: not trained in epochs

    def decide(self, probs: np.ndarray, ddi: np.ndarray) -> np.ndarray:
        """[N, M] bool medication sets from probabilities."""
        return decode_sets(probs, self.threshold, ddi, self.ddi_alpha)


def choose(cfg: EvalConfig, truth: np.ndarray, probs: np.ndarray, patients: np.ndarray, ddi: np.ndarray,
           best_epoch: int | None = None) -> tuple[Choices, list[dict[str, float]]]:
    """The choices on validation (`truth`, `probs` [N, n_med], each visit's patient): the threshold
    with the best Jaccard, then the α with the best Jaccard within the DDI target, unless the config
    fixes them; and the validation safety curve at that threshold."""
    threshold = cfg.threshold if cfg.threshold is not None else float(choose_threshold(truth, probs))
    curve = safety_curve(truth, probs, ddi, threshold, cfg.ddi_alpha_grid, patients, cfg.average)
    target = None
    if cfg.ddi_alpha is None:
        target = _ground_truth_rate(truth, ddi) if cfg.ddi_target == "ground_truth" else float(cfg.ddi_target)
        alpha = choose_alpha(curve, target)
    else:
        alpha = float(cfg.ddi_alpha)
    return Choices(threshold, "val" if cfg.threshold is None else "config", alpha,
                   "val" if cfg.ddi_alpha is None else "config", target, best_epoch), curve


def validation_scores(ds: Dataset, cfg: EvalConfig, samples: list[Sample], probs: np.ndarray) -> dict[str, float]:
    """The validation metrics of the sets `choose` decides on these validation probabilities, and
    its threshold and α: the numbers the evaluate stage's validation predictions would score."""
    truth, patients = _truth(ds, samples)
    choices, _ = choose(cfg, truth, probs, patients, ds.ddi)
    point = summarize(multilabel_metrics(truth, choices.decide(probs, ds.ddi), probs, ds.ddi), patients, cfg.average)
    return {**{k: point[k] for k in VALIDATION_SCORES}, "threshold": choices.threshold, "ddi_alpha": choices.ddi_alpha}


def select_and_score(ds: Dataset, cfg: EvalConfig, scores: dict[str, tuple[list[Sample], np.ndarray]],
                     out: Path, predictions: dict[str, str], metrics: str, table: str, *,
                     best_epoch: int | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """`scores[split]` = (samples, probabilities [N, n_med]) for val and test. Writes the decided
    sets of both splits (`predictions[split]` file names in `out`), the test result (`metrics`,
    with the choices, the safety curves and `extra`) and its table; returns the result."""
    truth, patients = {}, {}
    for split, (samples, _) in scores.items():
        truth[split], patients[split] = _truth(ds, samples)
    choices, val_curve = choose(cfg, truth["val"], scores["val"][1], patients["val"], ds.ddi, best_epoch)
    # the test curve is for plotting the trade-off only; nothing is chosen on it
    curves = {"val": val_curve, "test": safety_curve(truth["test"], scores["test"][1], ds.ddi, choices.threshold,
                                                     cfg.ddi_alpha_grid, patients["test"], cfg.average)}
    decided = {split: choices.decide(probs, ds.ddi) for split, (_, probs) in scores.items()}
    for split, (samples, probs) in scores.items():
        write_predictions(out / predictions[split], [s.visit_key for s in samples], probs, ds.vocab.med, decided[split])
    samples, probs = scores["test"]
    return score_test(ds, cfg, samples, probs, decided["test"], out, metrics, table,
                      {**choices_record(choices), "safety_curve": curves, **(extra or {})})


def score_test(ds: Dataset, cfg: EvalConfig, samples: list[Sample], probs: np.ndarray, decided: np.ndarray,
               out: Path, metrics: str, table: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Score decided test sets once (bootstrap as configured); write the result with `extra` and its table."""
    result = evaluate_predictions(ds, Predictions([s.visit_key for s in samples], decided, probs.astype(np.float64)),
                                  "test", cfg)
    result.update(extra)
    write_json(out / metrics, result)
    (out / table).write_text(format_table(result) + "\n", encoding="utf-8")
    return result


def choices_record(choices: Choices) -> dict[str, Any]:
    """The choices as the metrics file's keys (`read_choices` reads them back)."""
    return dataclasses.asdict(choices)


def read_choices(metrics: Path, needed_by: str) -> Choices:
    """The choices recorded in a run's metrics file; one-line errors for `needed_by` (a command)
    when the file or a choice is missing."""
    if not metrics.is_file():
        raise TrixmedError(metrics, f"missing; {needed_by} needs a trained and evaluated run (`trixmed run`)")
    raw = read_json(metrics)
    fields = dataclasses.fields(Choices)
    missing = [f.name for f in fields if f.default is dataclasses.MISSING and f.name not in raw]
    if missing:
        raise TrixmedError(metrics, f"{missing[0]}: missing (an evaluation of an older trixmed; "
                                    "`trixmed evaluate --force` on the run writes it again)")
    return Choices(**{f.name: raw.get(f.name, f.default) for f in fields})


def _truth(ds: Dataset, samples: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """[N, n_med] bool true sets of the samples, and each sample's patient id."""
    return ds.multi_hot([s.target for s in samples]).astype(bool), np.array([s.patient_id for s in samples])


def _ground_truth_rate(y_true: np.ndarray, ddi: np.ndarray) -> float:
    from trixmed.data.ddi import ddi_pair_counts, pooled_rate

    return float(pooled_rate(*ddi_pair_counts(y_true, ddi)))
