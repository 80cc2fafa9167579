"""One Ray instance for the whole integration session (ray.init costs seconds and ~1 GB)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from trixmed.train.ray_session import quiet_data_context, train_env

    # local test cluster only: Ray 2.60's token auth is for dashboards reachable by others
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = not ray.is_initialized()
    if started:
        os.environ.update(train_env())   # Ray's processes inherit them, as from `ensure_ray`
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    quiet_data_context()   # as `ensure_ray` does for the command line
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def trained_tiny_run(ray_session, tmp_path_factory):
    """A tiny dataset trained through every stage (2 Ray workers, ZeRO-2): its run directory."""
    from trixmed.config import load_config
    from trixmed.pipeline.stages import run_pipeline
    from trixmed.testing import TINY_OVERRIDES, make_tiny_dataset

    root = tmp_path_factory.mktemp("tiny-run")
    make_tiny_dataset(root)
    run_pipeline(load_config(None, [*TINY_OVERRIDES, f"run_dir={root}"]),
                 stages=["warmup", "extract", "stratify", "experts", "evaluate"])
    return root

