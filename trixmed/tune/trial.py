"""One Ray Tune trial: stratify + experts + validation scoring, over the sweep's shared warm-up.

A trial's run directory (`<experiment>/<trial>/run/`) links the base run's dataset, warm-up model
and features, which no parameter of a sweep over clustering, routing or the experts changes
(their stage hashes leave those sections out). Clusters are computed once per distinct clustering
setting in `<experiment>/shared/<hash>/` and linked by every trial that uses them. The experts
train through the same stage as `trixmed run`, on one of the sweep's worker groups (`tune.trainer:
workers`, started once per sweep: train/worker_group.py; the trial reports each epoch to Tune) or
in a Ray Train run of their own (`ray_train`; its callback reports the epochs: train/tune_reports.py). Either
way, a trial restored with its sweep resumes its training from the last epoch's checkpoint, and
reports the epochs before it again (Tune starts a restored trial's record over). A last
report adds the validation scores of the sets the evaluate stage's rule decides (threshold, then DDI
safety weight α, both chosen on validation: `trixmed.eval.selection`). Test visits are never scored
here.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trixmed.config import Config
from trixmed.console import Console, redirect_output
from trixmed.io import read_json, write_json
from trixmed.pipeline.stages import STAGES, config_hash, run_stage
from trixmed.run_dir import ExperimentDir, RunDir
from trixmed.train.session import Fit
from trixmed.tune.space import SearchSpace

# the base run's stages a trial reads unchanged
SHARED_STAGES = ("prepare", "warmup", "extract")
TRIAL_LOG = "trial.log"
SCORES_FILE = "val_scores.json"
TRIAL_PREFIX = "trial_"        # a trial's directory: trial_<Tune's trial id>
TIMINGS_FILE = "timings.json"   # seconds the trial spent in each of its steps (benchmarks/tune.py reads them)


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of a sweep shares, handed to Ray Tune as it is (pickled, not rebuilt)."""

    config: Config          # the sweep's base config, its run_dir the base run
    space: SearchSpace
    experiment: Path
    leases: str | None      # the name of the sweep's `WorkerLeases` actor (None: each trial runs Ray Train)


def trial_main(params: dict[str, Any], spec: TrialSpec) -> None:
    """Ray Tune's entry point: one trial with `params` over the shared `spec`."""
    from ray import tune

    from trixmed.errors import TrainingStopped

    context = tune.get_context()
    # the trial's directory in the experiment (shared storage on a cluster), not Tune's local copy
    rd = trial_run(spec.experiment, context.get_trial_id())
    rd.logs.mkdir(parents=True, exist_ok=True)
    # the trial's own output (stage lines, DeepSpeed, torch) goes to its log, not the sweep's console
    redirect_output(rd.logs / TRIAL_LOG)
    cfg = dataclasses.replace(spec.space.apply(spec.config, params), run_dir=str(rd.root))
    console = Console()
    console.line(f"[trial {context.get_trial_id()}] {spec.space.complete(params)}")

    clock = _Clock(rd.root / TIMINGS_FILE)
    base_rd = RunDir(spec.config.run_dir)
    _link_stages(base_rd, rd, SHARED_STAGES)
    _shared_clusters(cfg, base_rd, ExperimentDir(spec.experiment), rd, console)
    clock.lap("stratify_s")
    if cfg.test_hooks.fail_trial:
        raise RuntimeError(f"test_hooks.fail_trial is set: trial {context.get_trial_id()} fails on purpose")
    try:
        run_stage(cfg, "experts", console=console, fit=_trial_fit(spec.leases),
                  run_prefix=f"{context.get_trial_name()}-")
    except TrainingStopped as stop:
        clock.lap("experts_s")
        console.line(f"[trial {context.get_trial_id()}] {stop}")
        return   # the scheduler stopped it: no validation scores
    clock.lap("experts_s")
    scores = score_validation(cfg, rd)
    write_json(rd.root / SCORES_FILE, scores)
    clock.lap("scoring_s")
    history = read_json(rd.history("experts"))
    tune.report({"epoch": len(history["epochs"]), "val_jaccard": history["best_val_jaccard"], "scores": scores})


def _trial_fit(leases: str | None) -> Fit:
    """How the trial trains: on one of the sweep's worker groups, or in a Ray Train run of its own;
    either reports each epoch to Tune."""
    if leases:
        from trixmed.train.worker_group import leased_fit

        return functools.partial(leased_fit(leases), report_to_tune=True)
    from trixmed.train.ray_fit import fit

    return functools.partial(fit, report_to_tune=True)


def trial_dirname(trial: Any) -> str:
    """`trial_<id>`: short, stable, and the id the report and the dashboard's run names show."""
    return TRIAL_PREFIX + trial.trial_id


def trial_run(experiment: Path, trial_id: str) -> RunDir:
    """The run directory of one trial of the experiment at `experiment`."""
    return ExperimentDir.trial_run(Path(experiment) / (TRIAL_PREFIX + trial_id))


def score_validation(cfg: Config, rd: RunDir) -> dict[str, float]:
    """Validation scores of the trained experts, their sets decided by the evaluate stage's rule."""
    from trixmed.data.dataset import Dataset
    from trixmed.eval.selection import validation_scores
    from trixmed.pipeline.predict import model_predictions

    ds = Dataset(rd.dataset)
    val = model_predictions(cfg, rd, ds, "val")
    return validation_scores(ds, cfg.eval, val.samples, val.probs)


class _Clock:
    """Seconds per step of a trial, rewritten after each step (a stopped trial keeps what it did),
    and when it started and last ended a step (Unix time: the sweep's gaps between trials)."""

    def __init__(self, path: Path):
        self.path, self.laps = path, {"started_at": time.time()}
        self.t0 = self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        t = time.perf_counter()
        self.laps[name] = round(t - self.last, 3)
        self.laps["total_s"] = round(t - self.t0, 3)
        self.laps["ended_at"] = time.time()
        self.last = t
        write_json(self.path, self.laps)


def _link_stages(source: RunDir, target: RunDir, stages: tuple[str, ...]) -> None:
    target.root.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        link = target.stage_dir(stage)
        if not link.exists():
            link.symlink_to(source.stage_dir(stage).resolve(), target_is_directory=True)


def _shared_clusters(cfg: Config, base: RunDir, exp: ExperimentDir, rd: RunDir, console: Console) -> None:
    _link_stages(shared_clusters(cfg, base, exp, console), rd, ("stratify",))


def clustering_key(cfg: Config) -> str:
    """What names a clustering setting: the hash of the stratify stage's keys."""
    return config_hash(cfg, STAGES["stratify"].keys(cfg))[:16]


def shared_clusters(cfg: Config, base: RunDir, exp: ExperimentDir, console: Console) -> RunDir:
    """Stratify once per clustering setting, in `<experiment>/shared/<hash>/` (the sweep does it for
    every grid point before the trials start); concurrent trials with the same one wait on a lock."""
    key = clustering_key(cfg)
    shared = RunDir(exp.shared(key))
    shared.root.mkdir(parents=True, exist_ok=True)
    _link_stages(base, shared, ("prepare", "extract"))
    with open(shared.root.parent / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run_stage(dataclasses.replace(cfg, run_dir=str(shared.root)), "stratify", console=console)
    return shared
