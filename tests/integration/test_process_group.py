"""Ray Train's backend for trixmed's ranks (train/process_group.py): the workers meet in one gloo
group that they join as every trixmed rank does (env://, `join_process_group`), leave it when Ray
Train shuts them down, and Ray Train's controller never imports torch.

The probe and the train function travel by value (Ray's workers cannot import a test module), so
they name no torch outside their bodies.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ray.train import UserCallback


class ControllerProbe(UserCallback):
    """Runs in Ray Train's controller: writes what each report saw there and from the workers."""

    def __init__(self, out: str):
        self.out = out

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        Path(self.out).write_text(json.dumps({"controller_has_torch": "torch" in sys.modules,
                                              "workers": metrics}))


def _meet(config: dict[str, Any]) -> None:
    import os

    import ray.train
    import torch
    import torch.distributed as dist

    from trixmed.train.deepspeed_strategy import join_process_group

    joined_before = dist.is_initialized()
    join_process_group(use_gpu=False)
    total = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(total)
    ray.train.report({"joined_before_train_fn": joined_before, "sum": total.item(),
                      "env": {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
                      "backend": dist.get_backend()})
    Path(config["pids"], f"{os.getpid()}").touch()


def test_ray_train_workers_meet_through_env_and_the_controller_never_imports_torch(ray_session, tmp_path):
    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from trixmed.train.process_group import RayTrainGroup

    probe, pids = tmp_path / "probe.json", tmp_path / "pids"
    pids.mkdir()
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        DataParallelTrainer(
            _meet, train_loop_config={"pids": str(pids)}, backend_config=RayTrainGroup(),
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
            run_config=RunConfig(name="process-group", storage_path=str(tmp_path / "ray"),
                                 callbacks=[ControllerProbe(str(probe))]),
        ).fit()
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])

    seen = json.loads(probe.read_text())
    assert seen["controller_has_torch"] is False
    assert [w["env"] for w in seen["workers"]] == [
        {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}]
    # the group is the ranks' own: none before the train function joined it, then one of both ranks
    assert [w["joined_before_train_fn"] for w in seen["workers"]] == [False, False]
    assert [w["sum"] for w in seen["workers"]] == [3.0, 3.0]
    assert [w["backend"] for w in seen["workers"]] == ["gloo", "gloo"]
    assert len(list(pids.iterdir())) == 2


def test_a_rank_leaves_its_group_when_ray_train_shuts_it_down(ray_session, tmp_path):
    """The backend's shutdown runs on the workers before Ray Train ends them."""
    import ray

    from trixmed.train.process_group import _RayTrainGroupBackend

    class Group:   # the part of Ray Train's worker group the backend uses
        def __init__(self, actors: list[Any]):
            self.actors = actors

        def execute_async(self, fn: Any) -> list[Any]:
            return [a.run.remote(fn) for a in self.actors]

    @ray.remote(num_cpus=0)
    class Rank:
        def run(self, fn: Any) -> Any:
            return fn()

        def join(self, port: int, rank: int) -> bool:
            import torch.distributed as dist

            from trixmed.train.process_group import export_group_env

            export_group_env("127.0.0.1", port, rank, 2, rank)
            dist.init_process_group("gloo")
            return dist.is_initialized()

        def joined(self) -> bool:
            import torch.distributed as dist

            return dist.is_initialized()

    from trixmed.testing import free_local_port

    actors = [Rank.remote() for _ in range(2)]
    port = free_local_port()
    assert ray.get([a.join.remote(port, r) for r, a in enumerate(actors)]) == [True, True]
    _RayTrainGroupBackend().on_shutdown(Group(actors), None)
    assert ray.get([a.joined.remote() for a in actors]) == [False, False]
    for a in actors:
        ray.kill(a)
