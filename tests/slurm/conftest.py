"""A real SLURM for the tests marked `slurm`: slurm/local-cluster.sh with 2 emulated nodes
(node1 = 127.0.0.11, node2 = 127.0.0.12) in a private state directory, started once per session
and stopped at the end (only the daemons it started). Where SLURM cannot run, the tests skip with
the reason; `make test` installs it first (slurm/local-cluster.sh install)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:   # `launch` is a top-level folder of the checkout, not part of the package
    sys.path.insert(0, str(REPO))

from launch.local_slurm import LocalSlurm, SlurmUnavailable  # noqa: E402


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    try:
        with LocalSlurm.start(tmp_path_factory.mktemp("slurm-state"), nodes=2) as cluster:
            yield cluster
    except SlurmUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def job_logs(tmp_path_factory) -> Path:
    """TRIXMED_LOG_ROOT of every test job: logs/<name>-<id>/ lands here, not in the checkout."""
    return tmp_path_factory.mktemp("job-logs")
