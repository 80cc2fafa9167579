from __future__ import annotations

from pathlib import Path

import pytest

from trixmed.paths import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (processed MIMIC benchmarks); the test is skipped where it is absent."""
    root = shared_data_dir()
    if root is None:
        pytest.skip("../shared/data not found (set TRIXMED_SHARED_DATA): credentialed MIMIC benchmarks are not bundled")
    return root


@pytest.fixture(scope="session")
def benchmark_dir(shared_data: Path):
    """Path of one processed benchmark folder by name, e.g. benchmark_dir('mimic3_safedrug131')."""

    def get(name: str) -> Path:
        path = shared_data / "benchmark" / name
        if not path.is_dir():
            pytest.skip(f"{path} not found")
        return path

    return get
