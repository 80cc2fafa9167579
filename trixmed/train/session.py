"""The runtime seam, as two protocols: what a `Trainer` needs from whatever runs it (`Session`, and
its two kinds), and what a pipeline stage needs from whatever trains a phase (`Fit`).

A session gives the trainer its ranks, the checkpoint to resume from (None: a fresh run) and a
per-epoch report that carries the next checkpoint. Both kinds keep checkpoints in the run
directory under `RunDir.run_storage(run name)`, whose name carries the stage's input and config
hash (`<phase>-<hash>`, a trial's prefixed with its name): running the stage again with the same
name resumes from its latest checkpoint, a changed config starts fresh.

- `RayTrainSession`, under Ray Train (`ray_fit.fit`): Ray Train stores the checkpoints, keeps
  the latest, and hands the next run of the same name the latest one.
- `GroupSession`, in a sweep's long-lived worker group (`worker_group.py`): it stores them
  itself, the latest only, and the group removes them once the phase is exported.

A `Fit` is either `ray_fit.fit` (a Ray Train run of its own) or `worker_group.leased_fit(name)` (a
run on a group borrowed from a sweep's leases); both take the same arguments and keywords.
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from trixmed.config import Config
    from trixmed.console import Console

_CHECKPOINT = "checkpoint-{}"                      # a worker group's n-th checkpoint of a run
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


class Fit(Protocol):
    def __call__(self, cfg: Config, phase: str, out_dir: Path, *, run_name: str, console: Console,
                 report_to_tune: bool = False) -> dict[str, Any]:
        """Train `phase` ("warmup" | "experts") into `out_dir` (rank 0 writes `model` and
        `history.json`) under `run_name`, resuming from that run's latest checkpoint; return the
        history. `report_to_tune`: report every epoch to the Tune trial the call runs in, once each,
        first those of the epochs a resumed run had trained before (Tune starts a restored trial's
        record over). A stop request (`RunDir.stop_request`) ends it unexported (`TrainingStopped`)."""


class Checkpoint(Protocol):
    """A checkpoint to resume from, as Ray Train's `Checkpoint` offers it."""

    def as_directory(self) -> AbstractContextManager[str]: ...


class Session(Protocol):
    rank: int
    world: int
    local_rank: int

    def checkpoint(self) -> Checkpoint | None:
        """The latest checkpoint of this run's storage; None for a fresh run."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Called by every rank after an epoch (or at a step stop): `checkpoint_dir` holds this
        rank's share of the next checkpoint (DeepSpeed's shards; rank 0's the trainer state and
        the best weights too), which the call may move away. None: an epoch a resumed run had
        trained before, reported again."""


class RayTrainSession:
    """A Ray Train worker's session: ranks from its context, checkpoints in Ray Train's storage."""

    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world, self.local_rank = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()

    def checkpoint(self) -> Checkpoint | None:
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train
        from ray.train import Checkpoint

        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)


class GroupSession:
    """A rank's session inside a worker group: ranks fixed when the group started, checkpoints in
    `storage` (shared by the ranks: the run directory), and the reports kept for the caller.

    Each report's checkpoint is gathered from every rank into a hidden staging directory, which
    rank 0 renames to `checkpoint-<n>` once all are in, and only then removes the one before: a
    run killed at any point leaves its latest complete checkpoint behind."""

    def __init__(self, rank: int, world: int, storage: Path):
        self.rank, self.world, self.local_rank = rank, world, 0   # one GPU visible per actor
        self.storage = Path(storage)
        self.reported: list[dict[str, Any]] = []   # the metrics of each report, until the caller takes them
        self.saved = 0   # the number of the latest checkpoint: the next is saved + 1

    def checkpoint(self) -> Checkpoint | None:
        import torch.distributed as dist
        from ray.train import Checkpoint

        found = _numbered(self.storage)
        if self.rank == 0:   # what a killed run left half-written, or had not yet removed
            for path in self.storage.iterdir() if self.storage.is_dir() else ():
                if not found or path != found[-1][1]:
                    shutil.rmtree(path, ignore_errors=True)
        dist.barrier()   # before any rank stages its next checkpoint there
        if not found:
            return None
        self.saved, latest = found[-1]
        return Checkpoint.from_directory(str(latest))

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import torch.distributed as dist

        self.reported.append(metrics)
        if checkpoint_dir is None:
            return
        self.saved += 1
        name = _CHECKPOINT.format(self.saved)
        staging = self.storage / f".{name}.tmp"
        source = Path(checkpoint_dir)
        for path in sorted(source.rglob("*")):
            if path.is_file():
                target = staging / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(path, target)
        dist.barrier()   # every rank's share is in
        if self.rank == 0:
            os.replace(staging, self.storage / name)
            # older ones only: another rank may already be staging the next
            for number, path in _numbered(self.storage):
                if number < self.saved:
                    shutil.rmtree(path, ignore_errors=True)


def _numbered(storage: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints in `storage`, oldest first."""
    if not storage.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in storage.iterdir() if (m := _CHECKPOINT_NAME.fullmatch(p.name))]
    return sorted(found)

