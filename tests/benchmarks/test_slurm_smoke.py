"""benchmarks/slurm.py --smoke on a real local 2-node SLURM (it starts and stops its own)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from launch.local_slurm import unavailable_reason  # noqa: E402
from trixmed.testing import slurm_unavailable  # noqa: E402


@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_slurm_benchmark_smoke(tmp_path: Path) -> None:
    reason = unavailable_reason()
    if reason:
        slurm_unavailable(reason)
    out = tmp_path / "slurm.json"
    proc = subprocess.run([sys.executable, "benchmarks/slurm.py", "--smoke", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert f"wrote {out}" in proc.stdout
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["nodes"] == 2
    r = report["result"]
    assert r["train_worker_ips"] == ["127.0.0.11", "127.0.0.12"]
    # the job's timeline is in order: plan, then Ray up, then trixmed (whose first training step
    # comes after the cluster is up), then shutdown, all within the job
    assert 0 <= r["queue_s"] < r["sbatch_to_first_step_s"] < r["queue_s"] + r["job_wall_s"]
    assert r["plan_s"] > 0 and r["ray_start_s"] > 0 and r["trixmed_s"] > 0 and r["shutdown_s"] > 0
    assert r["sbatch_to_first_step_s"] > r["queue_s"] + r["startup_s"]
    assert r["startup_s"] + r["trixmed_s"] + r["shutdown_s"] <= r["job_wall_s"]
    assert 0 < r["startup_share"] < r["startup_and_shutdown_share"] < 1
