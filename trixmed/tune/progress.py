"""What a person sees while a sweep runs: one line per trial start and end, a bar over the trials.

Ray Tune's own status tables stay off the console unless `--verbose` (they go to the experiment's
files). The callback is saved with the experiment (Tune pickles its run config for `restore`), so
it holds no open stream: the console is made where it is used.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from trixmed.console import Console


class SweepProgress(Callback):
    def __init__(self, total: int, *, verbose: bool = False):
        self.total = total
        self.verbose = verbose
        self._console: Console | None = None
        self._started: dict[str, float] = {}
        self._ended = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_console": None}

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = Console(verbose=self.verbose)
            self._console.start_bar("trials", self.total, initial=self._ended)
        return self._console

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started[trial.trial_id] = time.perf_counter()
        params = ", ".join(f"{k}={v}" for k, v in trial.config.items())
        self.console.line(f"[tune] trial {trial.trial_id} started: {params}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        scores = result.get("scores")
        if scores:
            what = (f"val jaccard {scores['jaccard']:.4f}, f1 {scores['f1']:.4f} (threshold {scores['threshold']:.2f}, "
                    f"α {scores['ddi_alpha']:g})")
        else:
            what = f"stopped by the scheduler after epoch {result.get('epoch', 0)} (val jaccard {result.get('val_jaccard', float('nan')):.4f})"
        self._end(trial, what)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "failed (its log: <trial>/run/logs/trial.log)")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._console is not None:
            self._console.close_bar()

    def _end(self, trial: Any, what: str) -> None:
        self._ended += 1
        took = time.perf_counter() - self._started.pop(trial.trial_id, time.perf_counter())
        self.console.line(f"[tune] trial {trial.trial_id} {what} in {took:.1f} s ({self._ended}/{self.total})")
        self.console.advance_bar(self._ended)
