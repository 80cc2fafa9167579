"""A real SLURM for the tests marked `slurm`: slurm/local-cluster.sh with 2 emulated nodes
(node1 = 127.0.0.11, node2 = 127.0.0.12), each with 2 fake GPUs, in a private state directory,
started once per session and stopped at the end (only the daemons it started). Where SLURM cannot
run, the tests skip with the reason, or fail where SLURM is expected (TRIXMED_REQUIRE_SLURM=1, as
.ci/run sets it); `make test` installs it first (slurm/local-cluster.sh install)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:   # `launch` is a top-level folder of the checkout, not part of the package
    sys.path.insert(0, str(REPO))

from launch.local_slurm import LocalSlurm, SlurmUnavailable  # noqa: E402
from trixmed.testing import slurm_unavailable  # noqa: E402

GPUS_PER_NODE = 2


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    try:
        with LocalSlurm.start(tmp_path_factory.mktemp("slurm-state"), nodes=2, gpus=GPUS_PER_NODE) as cluster:
            yield cluster
    except SlurmUnavailable as exc:
        slurm_unavailable(str(exc))


@pytest.fixture(scope="session")
def job_logs(tmp_path_factory) -> Path:
    """TRIXMED_LOG_ROOT of every test job: logs/<name>-<id>/ lands here, not in the checkout."""
    return tmp_path_factory.mktemp("job-logs")
