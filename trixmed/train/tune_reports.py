"""A trial's epochs as Ray Train reports them to Tune (`tune.trainer: ray_train`), each one once."""

from __future__ import annotations

from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback


class EpochReports(TuneReportCallback):
    """Ray Train's reports, forwarded to the trial's Tune session unless they repeat an epoch.

    A training run resumed from its checkpoint reports the epochs it resumes after again: a trial
    restored with its sweep needs them, Tune having started its record over; a worker group that Ray
    Train restarted within the run has reported them to this trial already."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: set[int] = set()   # lives in the run's controller, across its worker groups

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if "train_loss" in metrics[0]:   # an epoch's report, not a step stop's
            if metrics[0]["epoch"] in self.epochs:
                return
            self.epochs.add(metrics[0]["epoch"])
        super().after_report(run_context, metrics, checkpoint)
