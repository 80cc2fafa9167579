"""Every wait for Ray resources is bounded: a request the cluster cannot hold ends, after
$TRIXMED_RAY_RESOURCE_TIMEOUT seconds, in one line naming the config key and what is missing,
instead of waiting until the job's time limit (the local Ray here has 2 CPUs and no GPU)."""

from __future__ import annotations

import io

import pytest

from trixmed.config import DistributedConfig, load_config
from trixmed.console import Console
from trixmed.errors import TrixmedError
from trixmed.testing import TINY_OVERRIDES

pytestmark = pytest.mark.timeout(120)

NO_GPU = "0 GPU (0 free, at most 0 on one node)"


def test_resources_that_fit_are_released_after_the_check(ray_session):
    from trixmed.ray_resources import wait_for_resources

    wait_for_resources([{"CPU": 1}] * 2, "stratify.num_workers", timeout=30)
    wait_for_resources([{"CPU": 1}] * 2, "stratify.num_workers", timeout=30)   # the first check holds nothing


def test_an_actor_pool_the_cluster_cannot_hold_is_one_line(ray_session):
    from trixmed.ray_resources import wait_for_resources

    with pytest.raises(TrixmedError) as err:
        wait_for_resources([{"GPU": 1, "CPU": 0.5}] * 2, "extract.actors", timeout=1)
    assert str(err.value) == ("extract.actors: Ray could not place 2 × (1 GPU + 0.5 CPU) within 1 s "
                              f"(TRIXMED_RAY_RESOURCE_TIMEOUT): the cluster has {NO_GPU}, 2 CPU (2 free, at most 2 on one node)")


def test_a_tune_worker_group_that_cannot_start_is_one_line(ray_session, monkeypatch):
    from trixmed.train.worker_group import WorkerGroup

    monkeypatch.setenv("TRIXMED_RAY_RESOURCE_TIMEOUT", "1")
    with pytest.raises(TrixmedError) as err:
        WorkerGroup.start(DistributedConfig(num_workers=3, cpus_per_worker=1), None, slot=0)
    assert str(err.value) == ("distributed.num_workers: worker group 0: Ray could not place 3 × (1 CPU) within 1 s "
                              "(TRIXMED_RAY_RESOURCE_TIMEOUT): the cluster has 2 CPU (2 free, at most 2 on one node)")


def test_a_ray_train_run_that_cannot_be_placed_is_one_line(ray_session, monkeypatch, tmp_path):
    from trixmed.train.ray_fit import fit

    monkeypatch.setenv("TRIXMED_RAY_RESOURCE_TIMEOUT", "1")
    cfg = load_config(None, [*TINY_OVERRIDES, f"run_dir={tmp_path}", "distributed.num_workers=2",
                             "distributed.cpus_per_worker=1.5"])
    with pytest.raises(TrixmedError) as err:
        fit(cfg, "warmup", tmp_path / "warmup", run_name="unplaceable", console=Console(stream=io.StringIO()))
    assert str(err.value) == ("distributed.num_workers: Ray could not place 2 × (1.5 CPU) within 1 s "
                              "(TRIXMED_RAY_RESOURCE_TIMEOUT): the cluster has 2 CPU (2 free, at most 2 on one node)")
