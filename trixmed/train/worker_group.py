"""Long-lived training workers, for many short training runs in a row (a sweep's trials).

Ray Train starts a new worker group for every run: processes that import torch and DeepSpeed,
join a process group and initialise DeepSpeed, about 25 s on 2 cores before the first step
(benchmarks/tune.py), which is longer than a demo trial trains. A worker group pays that once.
Its `TrainWorker` actors join one process group when the group starts, then run one `Trainer`
after another, driven epoch by epoch by the caller (`WorkerGroup.fit`). The trainer, its DeepSpeed
strategy and the model are the ones Ray Train runs; only the session differs (`GroupSession`,
session.py): ranks fixed when the group starts, each epoch's checkpoint kept by the session itself
in the run directory (`RunDir.run_storage(run name)`, the latest only, removed once the phase is
exported), and each epoch's metrics returned to the caller rather than to Ray Train. A run of the
same name on any group, such as an interrupted trial that Tune restores, resumes from that
checkpoint: after its last epoch, or at the step where a stop request ended it.

`WorkerLeases` is a named actor that lends groups to concurrent callers, one caller per group,
starting a group the first time a slot is taken. A rank that fails can leave the others blocked
in a collective, so a failed run breaks its group: every actor of it is killed and the slot's
next lease starts a new one.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trixmed.config import Config, DistributedConfig
from trixmed.console import Console, redirect_output
from trixmed.run_dir import RunDir
from trixmed.train.process_group import export_group_env, rendezvous
from trixmed.train.progress import ProgressFollower
from trixmed.train.ray_fit import read_history, trainer_spec, worker_resources
from trixmed.train.session import Fit, GroupSession


class TrainWorker:
    """One rank of a worker group (a Ray actor): joins the process group once, then trains run after run."""

    def __init__(self, rank: int, world: int, log: str | None):
        self.rank, self.world = rank, world
        self.trainer: Any = None
        if log:   # until a run sends it to the run's own logs (DeepSpeed speaks when imported)
            redirect_output(Path(log))

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0's address for the process group (process_group.py)."""
        return rendezvous()

    def join(self, address: str, port: int, use_gpu: bool) -> None:
        """Join the group's process group once, the way Ray Train's workers join theirs; one GPU is
        visible to each actor, so every local rank is 0."""
        from trixmed.train.deepspeed_strategy import join_process_group

        export_group_env(address, port, self.rank, self.world, local_rank=0)
        join_process_group(use_gpu)

    def start(self, spec: dict[str, Any], storage: str) -> tuple[list[int], list[dict[str, Any]]]:
        """Set up a run's trainer, resumed from the latest checkpoint in `storage` if there is one;
        returns the epochs it will train and the metrics of those it resumed after."""
        from trixmed.train.trainer import Trainer

        self.trainer = Trainer(spec, GroupSession(self.rank, self.world, Path(storage)))
        self.trainer.setup()
        return list(self.trainer.epochs()), self._reported()

    def epoch(self, epoch: int) -> tuple[dict[str, Any] | None, bool]:
        """One epoch on this rank: (the metrics reported, None where a step stop request ended the
        epoch in its middle; whether early stopping ended the run)."""
        ended = self.trainer.run_epoch(epoch) is not None
        return self._reported()[-1] if ended else None, self.trainer.state["stopped"]

    def _reported(self) -> list[dict[str, Any]]:
        reported, self.trainer.session.reported = self.trainer.session.reported, []
        return reported

    def finish(self, export: bool) -> None:
        """End the run: export its best weights and history (rank 0 writes), or just let it go."""
        trainer, self.trainer = self.trainer, None
        if export:
            trainer.export()
        else:
            trainer.close()


class WorkerGroup:
    """The caller's side of one group: its actors, and runs driven epoch by epoch."""

    def __init__(self, actors: list[Any]):
        self.actors = actors
        self.broken = False

    @classmethod
    def start(cls, dist: DistributedConfig, log_dir: str | None, slot: int) -> WorkerGroup:
        """Start `dist.num_workers` ranks, packed like Ray Train's, and join their process group;
        their output goes to `log_dir` (None: Ray's worker logs) until a run redirects it."""
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from trixmed.errors import TrixmedError
        from trixmed.ray_resources import resource_timeout, shortage

        bundle = worker_resources(dist)
        group = placement_group([bundle] * dist.num_workers, strategy="PACK")
        try:
            ray.get(group.ready(), timeout=resource_timeout())
        except ray.exceptions.GetTimeoutError:
            problem = f"worker group {slot}: {shortage([bundle] * dist.num_workers, resource_timeout())}"
            remove_placement_group(group)
            raise TrixmedError("distributed.num_workers", problem) from None
        remote = ray.remote(TrainWorker)
        actors = [remote.options(num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0),
                                 scheduling_strategy=PlacementGroupSchedulingStrategy(group, i)).remote(
                      i, dist.num_workers, log_dir and str(Path(log_dir) / f"worker-group{slot}-rank{i}.log"))
                  for i in range(dist.num_workers)]
        self = cls(actors)
        self._group = group
        address, port = self._call("rendezvous", [actors[0].rendezvous.remote()])[0]
        self._all("join", address, port, dist.use_gpu)
        return self

    def fit(self, cfg: Config, phase: str, out_dir: Path, *, run_name: str, console: Console,
            on_epoch: Callable[[dict[str, Any]], None] = lambda metrics: None) -> dict[str, Any]:
        """Train `phase` into `out_dir` like `ray_fit.fit`, checkpointing every epoch under
        `run_name` and resuming from its latest checkpoint, calling `on_epoch` with rank 0's metrics
        after every epoch (first with those of the epochs it resumes after); a stop request
        (`RunDir.stop_request`) ends it after the current epoch, or at a step (`TrainingStopped`),
        unexported. Any failure breaks the group: its ranks' state is unknown."""
        rd = RunDir(Path(cfg.run_dir).resolve())
        storage = rd.run_storage(run_name)
        rd.stop_request.unlink(missing_ok=True)
        try:
            with ProgressFollower(rd.progress(phase), console):
                epochs, resumed = self._all("start", trainer_spec(cfg, phase, out_dir), str(storage))[0]
                for metrics in resumed:
                    on_epoch(metrics)
                finished = True
                for epoch in epochs:
                    metrics, stopped = self._all("epoch", epoch)[0]
                    if metrics is not None:
                        on_epoch(metrics)
                    if metrics is None or rd.stop_request.exists():
                        finished = False
                        break
                    if stopped:
                        break
                self._all("finish", finished)
        except BaseException:
            self.broken = True
            raise
        if finished:
            # exported: the stage completes without training again, and then skips this run name
            # (a changed config trains under another); a sweep's trials would each leave one
            shutil.rmtree(storage, ignore_errors=True)
        return read_history(rd, phase, out_dir)

    def close(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            ray.kill(actor)
        if getattr(self, "_group", None) is not None:
            remove_placement_group(self._group)

    def _all(self, method: str, *args: Any) -> list[Any]:
        return self._call(method, [getattr(a, method).remote(*args) for a in self.actors])

    @staticmethod
    def _call(method: str, refs: list[Any]) -> list[Any]:
        """Every rank's result, in rank order; the first failure is raised at once, without waiting
        for ranks that may now wait forever in a collective."""
        import ray
        from ray.exceptions import RayActorError

        pending, done = list(refs), {}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                done[ready[0]] = ray.get(ready[0])
            except RayActorError as exc:
                # an error of the caller's, not of the caller's own actor (Tune would take an
                # ActorDiedError for its trial's process and retry the trial)
                raise RuntimeError(f"training rank {refs.index(ready[0])} of the worker group died "
                                   f"during {method}") from exc
        return [done[r] for r in refs]


class WorkerLeases:
    """Lends worker groups, one caller at a time per group (a named Ray actor with a thread per call)."""

    def __init__(self, distributed: DistributedConfig, slots: int, log_dir: str | None):
        self.dist = distributed
        self.log_dir = log_dir
        self.free = list(range(slots))
        self.groups: dict[int, WorkerGroup] = {}
        self.cond = threading.Condition()
        self.start_seconds: list[float] = []   # each group's start, for the sweep's cost account

    def acquire(self) -> tuple[int, list[Any]]:
        with self.cond:
            self.cond.wait_for(lambda: bool(self.free))
            slot = self.free.pop(0)
        try:
            if slot not in self.groups:
                t0 = time.perf_counter()
                self.groups[slot] = WorkerGroup.start(self.dist, self.log_dir, slot)
                self.start_seconds.append(round(time.perf_counter() - t0, 3))
        except BaseException:
            self.release(slot, broken=True)
            raise
        return slot, self.groups[slot].actors

    def release(self, slot: int, broken: bool) -> None:
        group = self.groups.pop(slot, None) if broken else None
        if group is not None:
            group.close()
        with self.cond:
            self.free.append(slot)
            self.cond.notify()

    def close(self) -> list[float]:
        """End every group; returns the seconds each group that ever started took to start."""
        for group in self.groups.values():
            group.close()
        self.groups.clear()
        return self.start_seconds


def start_leases(name: str, cfg: Config, slots: int) -> Any:
    """The named `WorkerLeases` actor for `slots` concurrent callers (owned by the caller: it and
    its groups end with the caller's process). The groups' ranks log to the run's logs."""
    import ray

    from trixmed.train.ray_session import workers_log_dir

    log_dir = workers_log_dir(cfg)
    return ray.remote(WorkerLeases).options(name=name, num_cpus=0, max_concurrency=slots + 2).remote(
        cfg.distributed, slots, str(log_dir.resolve()) if log_dir else None)


def leased_fit(leases_name: str) -> Fit:
    """`Fit` (session.py) on a group borrowed from the named leases for the call."""
    import ray

    def fit(cfg: Config, phase: str, out_dir: Path, *, run_name: str, console: Console,
            report_to_tune: bool = False) -> dict[str, Any]:
        from ray import tune

        leases = ray.get_actor(leases_name)
        slot, actors = ray.get(leases.acquire.remote())
        group = WorkerGroup(actors)
        console.line(f"[{phase}] {run_name} on the sweep's worker group {slot} ({len(actors)} ranks)")
        try:
            return group.fit(cfg, phase, out_dir, run_name=run_name, console=console,
                             on_epoch=tune.report if report_to_tune else lambda metrics: None)
        finally:
            ray.get(leases.release.remote(slot, group.broken))

    return fit
