"""ASHA whose stop decisions reach the trial's training run as a stop request.

Tune stops a trial by ending its process. The Ray Train run inside would die with it, and its
placement group would outlive it: Train's cleaner asks the state API whether the controller is
alive, which a local Ray without a dashboard (or a node with two Ray instances) cannot answer, so
the next trial would wait forever for those CPUs. Instead the run's stop request is created: the
run finishes its epoch, checkpoints, and ends itself; the trial then returns without scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from trixmed.tune.trial import trial_run


class GracefulASHA(ASHAScheduler):
    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision != TrialScheduler.STOP or "scores" in result:
            return decision
        stop = trial_run(Path(trial.path).parent, trial.trial_id).stop_request
        stop.parent.mkdir(parents=True, exist_ok=True)
        stop.touch()
        return TrialScheduler.CONTINUE
