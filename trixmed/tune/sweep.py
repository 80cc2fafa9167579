"""`run_sweep`: one Ray Tune experiment over a run's shared warm-up (the `trixmed tune` command).

    prepare → warm-up → extract      once, in the run directory (skipped when already complete)
    clusterings                      once per clustering setting of the grid, shared by its trials
    worker groups                    started once, at the first trial (`tune.trainer: workers`)
    trials                           stratify + experts + validation scores each (trial.py), scheduled
                                     by ASHA on the per-epoch validation Jaccard
    summary.json, best.yaml          every trial, and the best one chosen on validation: its whole
                                     config, ready for `trixmed run`

The experiment lives in `<run_dir>/tune/<space>/` (`ExperimentDir`). Running the same command
again resumes an interrupted sweep with `Tuner.restore` (finished trials are kept, not re-run);
a different space or config for the same experiment is refused unless `--force` starts it over.
Restoring reads Ray Tune's own pickled state: resume only experiments you created.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trixmed.config import Config, to_dict
from trixmed.console import Console
from trixmed.errors import TrixmedError
from trixmed.io import read_json, write_json
from trixmed.pipeline.stages import check_dataset_fits, run_stage
from trixmed.run_dir import ExperimentDir, RunDir
from trixmed.tune.space import SearchSpace
from trixmed.tune.summary import FORMAT, METRIC, build_summary, write_best_config
from trixmed.tune.trial import SHARED_STAGES, TrialSpec, clustering_key, shared_clusters, trial_dirname, trial_main

CLUSTERINGS_LOG = "clusterings.log"
# keys that say where or how fast a sweep runs, not what its trials train: free to change on resume
_RESUMABLE_KEYS = ("run_dir", "extract", "plan", "distributed.ray_address", "tune.max_concurrent_trials",
                   "tune.trial_cpus")


@dataclass
class SweepResult:
    experiment: ExperimentDir
    summary: dict[str, Any] | None   # None when the sweep was interrupted before every trial ended
    unfinished: int


def run_sweep(cfg: Config, space: SearchSpace, *, name: str | None = None, force: bool = False,
              verbose: bool = False, console: Console | None = None) -> SweepResult:
    """Validate the space on `cfg`, run the shared stages, then the trials; write summary.json and best.yaml."""
    console = console or Console()
    rd = RunDir(Path(cfg.run_dir).resolve())
    cfg.run_dir = str(rd.root)
    exp = rd.experiment(name or space.name)
    configs = space.check(cfg)              # every key, before anything launches
    run_stage(cfg, "prepare", console=console)
    for point in configs:                   # what the dataset alone refutes, before the warm-up
        check_dataset_fits(point, rd)
    for stage in SHARED_STAGES[1:]:
        run_stage(cfg, stage, console=console)

    leases = f"trixmed-workers-{uuid.uuid4().hex[:12]}" if cfg.tune.trainer == "workers" else None
    tuner = _tuner(cfg, space, exp, leases, force=force, verbose=verbose)
    t0 = time.perf_counter()
    # every trial of a grid point reads the same clusters: compute each setting once, up front,
    # unless a sampled key changes them (then the first trial that needs one computes it)
    if not any(key.startswith("stratify.") for key in space.sample):
        _clusterings(configs, rd, exp, console)
    clusterings_s = time.perf_counter() - t0
    console.line(f"[tune] {exp.name}: {space.size} trials ({cfg.tune.scheduler}, "
                 f"{cfg.tune.max_concurrent_trials} at a time) → {exp.root}")
    group_starts: list[float] = []
    trials_started_at = time.time()
    with _quiet_tune(verbose), _worker_leases(cfg, leases, group_starts):
        results = tuner.fit()
    trials_ended_at = time.time()
    wall = time.perf_counter() - t0
    # Tune's saved trial states, not the results' `done` flag (lost for trials a restored sweep
    # finished earlier); an interrupted sweep may not have created every trial yet
    from ray.tune import ExperimentAnalysis

    states = [t.status for t in ExperimentAnalysis(str(exp.root)).trials]
    unfinished = space.size - sum(state in ("TERMINATED", "ERROR") for state in states)
    if unfinished:
        return SweepResult(exp, None, unfinished)
    summary = build_summary(cfg, space, exp, results, wall)
    summary["sweep_costs"] = {"clusterings_s": round(clusterings_s, 3), "trainer": cfg.tune.trainer,
                              "worker_group_starts_s": group_starts, "trials_started_at": trials_started_at,
                              "trials_ended_at": trials_ended_at}
    write_json(exp.summary, summary)
    write_best_config(exp, summary, cfg, space)
    return SweepResult(exp, summary, 0)


def _clusterings(configs: list[Config], rd: RunDir, exp: ExperimentDir, console: Console) -> None:
    """Each distinct clustering of the grid, once; their profiles go to the experiment's log."""
    settings = {clustering_key(point): point for point in configs}
    exp.root.mkdir(parents=True, exist_ok=True)
    log = exp.root / CLUSTERINGS_LOG
    console.line(f"[tune] clusterings: {len(settings)} settings → {exp.root / 'shared'}")
    t0 = time.perf_counter()
    with open(log, "a", encoding="utf-8") as fh:
        quiet = Console(stream=fh, bar_stream=fh)
        for point in settings.values():
            shared_clusters(point, rd, exp, quiet)
    console.line(f"[tune] clusterings done in {time.perf_counter() - t0:.1f} s (profiles: {log})")


def _tuner(cfg: Config, space: SearchSpace, exp: ExperimentDir, leases: str | None, *,
           force: bool, verbose: bool) -> Any:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from trixmed.train.ray_session import ensure_ray
    from trixmed.tune.progress import SweepProgress
    from trixmed.tune.scheduler import GracefulASHA

    ensure_ray(cfg)
    # the summary's format too: the finished trials of an older one were scored by another rule
    record = {"format": FORMAT, "space": {k: v for k, v in space.to_dict().items() if k != "path"},
              "config": _trial_keys(cfg)}
    if force and exp.root.exists():
        shutil.rmtree(exp.root)
    trainable = tune.with_resources(tune.with_parameters(trial_main, spec=TrialSpec(cfg, space, exp.root, leases)),
                                    {"CPU": cfg.tune.trial_cpus})
    if exp.sweep.is_file():
        started = read_json(exp.sweep)
        if started.get("format") != FORMAT:
            raise TrixmedError(exp.sweep, "this experiment was started by an older trixmed, which scored its trials "
                               "by another rule; pass --force to start it over, or --name to keep both")
        if started != record:
            raise TrixmedError(exp.sweep, "this experiment was started with another search space or config; "
                               "pass --force to start it over, or --name to keep both")
        if tune.Tuner.can_restore(str(exp.root)):
            return tune.Tuner.restore(str(exp.root), trainable, resume_unfinished=True, resume_errored=False,
                                      restart_errored=False)
    exp.root.mkdir(parents=True, exist_ok=True)
    write_json(exp.sweep, record)
    t = cfg.tune
    scheduler = FIFOScheduler() if t.scheduler == "fifo" else GracefulASHA(
        time_attr="training_iteration", metric=METRIC, mode="max",
        # the epochs, plus the last report that adds the validation scores
        max_t=cfg.experts.epochs + 1, grace_period=t.grace_period, reduction_factor=t.reduction_factor)
    return tune.Tuner(
        trainable,
        param_space=space.param_space(),
        # the concurrency limit goes to the search algorithm: Tune ignores max_concurrent_trials
        # for a BasicVariantGenerator it did not create itself
        tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=space.num_samples,
                                    search_alg=BasicVariantGenerator(random_state=cfg.seed,
                                                                     max_concurrent=t.max_concurrent_trials),
                                    # a trial's process outlives it: torch, DeepSpeed and trixmed stay imported
                                    reuse_actors=True,
                                    trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname),
        run_config=tune.RunConfig(name=exp.name, storage_path=str(exp.root.parent),
                                  failure_config=tune.FailureConfig(max_failures=t.max_failures),
                                  callbacks=[SweepProgress(space.size, verbose=verbose)],
                                  verbose=1 if verbose else 0),
    )


@contextlib.contextmanager
def _worker_leases(cfg: Config, name: str | None, group_starts: list[float]) -> Iterator[None]:
    """The sweep's `WorkerLeases` actor, one worker group per concurrent trial, ended with the
    sweep; `group_starts` gets the seconds each group took to start."""
    if name is None:
        yield
        return
    import ray

    from trixmed.train.worker_group import start_leases

    leases = start_leases(name, cfg, cfg.tune.max_concurrent_trials)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):   # an interrupted sweep: the actor may already be gone
            group_starts += ray.get(leases.close.remote(), timeout=60)
        ray.kill(leases)


@contextlib.contextmanager
def _quiet_tune(verbose: bool) -> Iterator[None]:
    """Tune's newer console engine prints trial errors and its tables even at verbose=0; the
    legacy engine at verbose=0 logs them instead (to the run's ray.log). Tune reads the switch
    when a sweep starts."""
    old = os.environ.get("RAY_AIR_NEW_OUTPUT")
    if not verbose:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = old


def _trial_keys(cfg: Config) -> dict[str, Any]:
    raw = to_dict(cfg)
    for key in _RESUMABLE_KEYS:
        *parents, last = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node.pop(last)
    return raw

