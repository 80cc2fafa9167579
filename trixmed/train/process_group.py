"""Where a training rank finds its process group: rank 0's address and the env:// variables.

Both of trixmed's Ray paths use it, so a rank is told about its group one way and joins it one way
(`deepspeed_strategy.join_process_group`, in `Trainer.setup` or a worker group's `join`):
- a worker group (worker_group.py) asks its rank 0 for a `rendezvous` and exports it on every rank;
- Ray Train runs `RayTrainGroup`, the backend of trixmed's `DataParallelTrainer` (ray_fit.py), which
  does the same when Ray Train starts its workers, and leaves the group when it shuts them down.

`RayTrainGroup` stands where Ray's `TorchConfig` would. That one makes the group itself, and Ray
Train's controller, which never holds a tensor, imports torch to unpickle it: about 2 s of CPU in
every training phase on 2 cores (benchmarks/train_startup.py measures it). So this module imports no
torch: the controller loads it.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError
from ray.train.backend import Backend, BackendConfig

log = logging.getLogger(__name__)

# how long Ray Train's shutdown waits for the ranks to leave their group (Ray's own default)
LEAVE_TIMEOUT_S = 30.0


def rendezvous() -> tuple[str, int]:
    """Rank 0's side: this node's IP and a free port for the group's store."""
    with socket.socket() as s:
        s.bind(("", 0))
        return ray.util.get_node_ip_address(), s.getsockname()[1]


def export_group_env(address: str, port: int, rank: int, world: int, local_rank: int) -> None:
    """The env:// variables `join_process_group` (and DeepSpeed behind it) reads."""
    os.environ.update(MASTER_ADDR=address, MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank))


def _export_ray_train_env(address: str, port: int) -> None:
    """On a Ray Train worker: the group's variables, with the ranks Ray Train gave it."""
    ctx = ray.train.get_context()
    export_group_env(address, port, ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank())


def _leave_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


class _RayTrainGroupBackend(Backend):
    # every rank on a node sees all its GPUs, so rank `local_rank` takes cuda:<local_rank> (DeepSpeedStrategy)
    share_cuda_visible_devices = True

    def on_start(self, worker_group: Any, backend_config: BackendConfig) -> None:
        address, port = worker_group.execute_single(0, rendezvous)
        worker_group.execute(_export_ray_train_env, address, port)
        log.info("process group rendezvous at %s:%d for %d ranks", address, port, len(worker_group))

    def on_shutdown(self, worker_group: Any, backend_config: BackendConfig) -> None:
        try:
            ray.get(worker_group.execute_async(_leave_group), timeout=LEAVE_TIMEOUT_S)
        except GetTimeoutError:
            # the workers are ended next either way; this only says why their exit was not clean
            log.warning("the ranks did not leave their process group within %.0f s", LEAVE_TIMEOUT_S)


@dataclass
class RayTrainGroup(BackendConfig):
    """Ray Train's backend for trixmed's ranks: tells each where its group meets (env://)."""

    @property
    def backend_cls(self) -> type[Backend]:
        return _RayTrainGroupBackend

    @property
    def framework(self) -> Any:
        # what Ray Train's state export and dashboard call the run; a torch run it is
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TORCH
