"""One training phase on Ray: a Ray Train `DataParallelTrainer` whose workers each run a `Trainer`.

Its backend (`process_group.RayTrainGroup`) tells the workers where their process group meets; each
`Trainer` joins it as every trixmed rank does. Ray's `TorchConfig` is not used: it would make the
group a second way, and import torch in Ray Train's controller.

Checkpoints live under `<run_dir>/.ray/<phase>-<hash>`: the name carries the content hash of the
stage's inputs and config, so running the stage again after an interruption resumes from its
latest checkpoint, while a changed config starts fresh instead of resuming stale weights.
Rank 0's progress reaches the console through `<run_dir>/logs/<phase>-progress.jsonl` (progress.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trixmed.config import Config, DistributedConfig
from trixmed.console import Console
from trixmed.errors import TrainingStopped
from trixmed.ray_resources import wait_for_resources
from trixmed.run_dir import HISTORY_FILE, RunDir
from trixmed.train.ray_session import ensure_ray, workers_log_dir


def fit(cfg: Config, phase: str, out_dir: Path, *, run_name: str, console: Console,
        report_to_tune: bool = False) -> dict[str, Any]:
    """`Fit` (session.py) on a Ray Train run of its own: its workers each run a `Trainer`."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from trixmed.train.process_group import RayTrainGroup
    from trixmed.train.progress import ProgressFollower
    from trixmed.train.trainer import train_worker

    ensure_ray(cfg)
    start_autoscaling_coordinator()
    rd = RunDir(Path(cfg.run_dir).resolve())
    d = cfg.distributed
    trainer = _trainer_class(tune_trial=report_to_tune)(
        train_worker,
        train_loop_config=trainer_spec(cfg, phase, out_dir),
        backend_config=RayTrainGroup(),
        scaling_config=ScalingConfig(num_workers=d.num_workers, use_gpu=d.use_gpu,
                                     resources_per_worker=worker_resources(d)),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(rd.ray_storage),
            # a worker group that cannot start (its resources are gone) is the controller's failure,
            # which Ray retries without limit unless told: as often as a worker's
            failure_config=FailureConfig(max_failures=d.max_failures, controller_failure_limit=d.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=_tune_reports() if report_to_tune else [],
        ),
    )
    wait_for_resources([worker_resources(d)] * d.num_workers, "distributed.num_workers")
    # a stop request applies to the run in progress, not to the next one (a resumed job's)
    rd.stop_request.unlink(missing_ok=True)
    with ProgressFollower(rd.progress(phase), console):
        trainer.fit()
    return read_history(rd, phase, out_dir)


def start_autoscaling_coordinator() -> None:
    """Start Ray's autoscaling coordinator now, unless it runs: Ray Train's controller asks it for
    the workers' resources, and waits for it, before it starts them (Ray Data's executions ask it
    too). Left to the controller, its start (a process importing Ray Data, ~1.2 s of a CPU) came
    after the controller's own, one after the other while the other core idled; started here, the
    two start side by side."""
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator,
    )

    get_or_create_autoscaling_coordinator()


def _trainer_class(tune_trial: bool) -> type:
    """Ray Train's `DataParallelTrainer` less two helper actors that trixmed's runs do not use. Each
    is a process of its own that imports Ray Train and Ray Data (1.3-1.7 s of a CPU) while the
    workers start, and the controller waits on the cleaner as the workers start and as it stops: on
    2 cores the two cost each phase 2-3 s before its first step, the demo ~5 s of its ~35. Dropped:
    - the dataset manager: Ray Train is given no datasets (each `Trainer` reads its own shard);
    - the placement-group cleaner, except in a Tune trial. It frees the workers' placement group
      when the controller dies without doing so. A placement group lives as long as the job that
      made it: a command's job ends with the failed phase, a sweep's goes on to its next trial.
    """
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    unused = (DatasetsCallback,) if tune_trial else (DatasetsCallback, PlacementGroupCleanerCallback)

    class Trainer(DataParallelTrainer):
        def _create_default_callbacks(self) -> list[Any]:
            return [c for c in super()._create_default_callbacks() if not isinstance(c, unused)]

    return Trainer


def _tune_reports() -> list[Any]:
    """The run's callback that reports its epochs to the calling trial (it runs in Ray Train's controller)."""
    from trixmed.train.tune_reports import EpochReports

    return [EpochReports()]


def trainer_spec(cfg: Config, phase: str, out_dir: Path) -> dict[str, Any]:
    """The spec every rank's `Trainer` is built from (see trainer.py)."""
    rd = RunDir(Path(cfg.run_dir).resolve())
    log_dir = workers_log_dir(cfg)
    return {
        "config": cfg,
        "phase": phase,
        "run_dir": str(rd.root),
        "out_dir": str(Path(out_dir).resolve()),
        "log_dir": str(Path(log_dir).resolve()) if log_dir else None,
        "progress": str(rd.progress(phase)),
        "stop_file": str(rd.stop_request),
        "fail_marker": str(rd.ray_storage / "fail_hook_fired"),
    }


def worker_resources(d: DistributedConfig) -> dict[str, float]:
    """What one training rank holds: CPUs, and a GPU on GPU runs."""
    return {"GPU": 1, "CPU": d.cpus_per_worker} if d.use_gpu else {"CPU": d.cpus_per_worker}


def read_history(rd: RunDir, phase: str, out_dir: Path) -> dict[str, Any]:
    """The finished phase's history.json; a run that ended on its stop request has none."""
    history_path = Path(out_dir) / HISTORY_FILE
    if not history_path.is_file() and rd.stop_request.exists():
        raise TrainingStopped(f"{phase}: stopped on request ({rd.stop_request}); running it again resumes it")
    if not history_path.is_file():
        raise RuntimeError(f"{history_path}: {phase} training finished without writing its history")
    return json.loads(history_path.read_text())
